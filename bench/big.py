"""``python -m bench big|search``: a replicated Synthea load, then search latency, per database.

Load: FHIR transactions (https://hl7.org/fhir/R4/http.html#transaction) of the demo bundles,
replicated ``--scale`` times with fresh ids and identifiers (bench/replicate.py), into
``medikus serve --workers 2`` on a fresh PostgreSQL schema and a fresh SQLite file. Searches:
https://hl7.org/fhir/R4/search.html (bench/search.py). ``big`` defaults to scale 10 (about
250,000 resources); ``search`` is the same run at scale 1, for quick search figures. Prints a
table and writes ``bench/results/big-<timestamp>.json``; every database, process and spooled
file is removed at the end, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import explain, pgstats, replicate, search, suite
from bench.databases import KINDS, Database, fresh
from bench.ingest import Payload, Posted
from bench.report import (
    BigResult,
    DatabaseResult,
    big_table,
    noise_note,
    plans_text,
    run_meta,
    write_big_json,
)
from bench.search import Catalogue, NoValues, Query, QueryResult
from bench.server import Server, load_average
from medikus.loader import synthea_bundles

RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = ("big", "search")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    clients: int = 4  # posting threads
    workers: int = 2  # uvicorn workers
    budget_s: float = 3600.0  # no new bundle is sent after this long
    search: bool = True
    levels: tuple[int, ...] = (1, 16)
    rounds: int = 200  # per query and level, each client searches this often …
    seconds: float = 20.0  # … or this long, whichever ends first
    stats_wait: float = pgstats.SETTLE_SECONDS
    analyze: bool = True
    explain: bool = True
    seed: int = 0


def parse_args(command: str, argv: Sequence[str]) -> argparse.Namespace:
    scale = 10.0 if command == "big" else 1.0
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {command}",
        description=__doc__.splitlines()[0],
        epilog="Examples: python -m bench big --scale 10 --db postgresql; python -m bench search "
        "--db sqlite --rounds 50; make bench BENCH_ARGS='big --scale 10'.",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=scale,
        help=f"copies of the bundles (default {scale:g}; 0.5 = the first half of one copy)",
    )
    parser.add_argument("--bundles", type=int, help="replicate only the first N bundles")
    parser.add_argument("--db", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--clients", type=int, default=4, help="posting threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--budget", type=float, default=3600, help="load time budget, s")
    parser.add_argument("--no-search", action="store_true", help="load only")
    parser.add_argument(
        "--levels", default="1,16", help="concurrent search clients, comma-separated (1,16)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=200,
        help="searches per client, per query and level (default 200: 3,200 with 16 clients)",
    )
    parser.add_argument(
        "--seconds", type=float, default=20, help="at most this long per query and level"
    )
    parser.add_argument(
        "--stats-wait",
        type=float,
        default=pgstats.SETTLE_SECONDS,
        help="PostgreSQL: seconds to let backends publish scan counts before each snapshot",
    )
    parser.add_argument("--no-analyze", action="store_true", help="PostgreSQL: no ANALYZE")
    parser.add_argument("--no-explain", action="store_true", help="PostgreSQL: no plans")
    parser.add_argument("--seed", type=int, default=0, help="ids and parameter values")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON")
    return parser.parse_args(list(argv))


def options_for(args: argparse.Namespace) -> Options:
    return Options(
        clients=args.clients,
        workers=args.workers,
        budget_s=args.budget,
        search=not args.no_search,
        levels=tuple(int(v) for v in args.levels.split(",") if v.strip()),
        rounds=args.rounds,
        seconds=args.seconds,
        stats_wait=args.stats_wait,
        analyze=not args.no_analyze,
        explain=not args.no_explain,
        seed=args.seed,
    )


def main(
    command: str, argv: Sequence[str], say: Say, queries: Sequence[Query] = search.QUERIES
) -> int:
    args = parse_args(command, argv)
    options = options_for(args)
    started, load = datetime.now(UTC), load_average()
    paths = synthea_bundles()[: args.bundles] if args.bundles else synthea_bundles()
    templates = [replicate.template(p) for p in paths]
    count = max(1, round(len(templates) * args.scale))
    kinds = KINDS if args.db == "both" else (args.db,)
    results: list[BigResult] = []
    with tempfile.TemporaryDirectory(prefix="medikus-big-") as folder:
        say(f"writing {count} bundles ({math.ceil(count / len(templates))} copies) to {folder} …")
        spooled = list(replicate.spool(templates, count, Path(folder), options.seed))
        payloads = [Payload(s.path.name, b"", s.template.resources, s.path) for s in spooled]
        facts = {s.path.name: s.template.facts for s in spooled if s.template.facts}
        for kind in kinds:
            results.append(run(kind, payloads, facts, options, say, queries))
    print(big_table(results))
    if note := noise_note([DatabaseResult(r.database, ingest=r.ingest) for r in results]):
        print(note)
    if plans := plans_text(results):
        print(plans)
    if not args.no_json:
        path = args.results / f"{command}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        meta = run_meta(
            args,
            started,
            load,
            options=asdict(options),
            bundles=len(payloads),
            resources=sum(p.resources for p in payloads),
        )
        write_big_json(path, meta, results)
        say(f"figures written to {path}")
    return 1 if any(r.failed for r in results) else 0


def run(
    kind: str,
    payloads: Sequence[Payload],
    facts: dict[str, replicate.Facts],
    options: Options,
    say: Say,
    queries: Sequence[Query] = search.QUERIES,
) -> BigResult:
    """Loads ``payloads`` into a fresh ``kind`` database, then times ``queries`` on it."""
    result = BigResult(kind)
    plan = suite.Plan(options.clients, options.workers, options.budget_s, (), 0, 0)
    with fresh(kind) as database, Server(database.url, options.workers) as server:
        total = sum(p.resources for p in payloads)
        say(f"{kind}: loading {len(payloads)} bundles, {total:,} resources …")
        result.ingest, posted = suite.ingest_figures(
            database, server, payloads, plan, _progress(kind, len(payloads), say)
        )
        if result.ingest.first_error:
            say(f"{kind}: first failure: {result.ingest.first_error}")
        if not options.search:
            return result
        catalogue = Catalogue.build(posted, facts)
        result.patients = len(catalogue.patients)
        if kind == "postgresql" and options.analyze:
            pgstats.analyze(database)
            result.analyzed = True
        result.searches = _searches(database, server, catalogue, queries, options, say)
        if kind == "postgresql" and options.explain:
            _explain(database, catalogue, queries, result.searches, options.seed, say)
    return result


def _progress(kind: str, total: int, say: Say) -> Callable[[Posted, int], None]:
    step = max(1, total // 10)
    start = time.perf_counter()
    loaded = [0]

    def report(posted: Posted, done: int) -> None:
        loaded[0] += posted.payload.resources if posted.status == 200 else 0
        if done % step == 0 and done < total:
            rate = loaded[0] / (time.perf_counter() - start)
            say(f"{kind}: {done}/{total} bundles, {loaded[0]:,} resources, {rate:,.0f} res/s")

    return report


def _searches(
    database: Database,
    server: Server,
    catalogue: Catalogue,
    queries: Sequence[Query],
    options: Options,
    say: Say,
) -> list[QueryResult]:
    pg = database.kind == "postgresql"
    counts = pgstats.snapshot(database, options.stats_wait) if pg else None
    out = []
    for query in queries:
        result = QueryResult(
            query.name, query.shape(catalogue), query.patient_scoped, query.target_ms
        )
        out.append(result)
        try:
            query.draw(catalogue, random.Random(options.seed))
        except NoValues as exc:
            result.no_values = str(exc)
            continue
        for clients in options.levels:
            say(f"{database.kind}: {query.name} with {clients} client(s) …")
            result.levels.append(
                search.measure(
                    server.base,
                    server.auth,
                    query,
                    catalogue,
                    clients,
                    options.rounds * clients,
                    options.seconds,
                    options.seed,
                )
            )
        if counts is not None:
            after = pgstats.snapshot(database, options.stats_wait)
            result.index_use = pgstats.difference(counts, after)
            counts = after
    return out


def _explain(
    database: Database,
    catalogue: Catalogue,
    queries: Sequence[Query],
    results: Sequence[QueryResult],
    seed: int,
    say: Say,
) -> None:
    say(f"{database.kind}: EXPLAIN (ANALYZE, BUFFERS) of each search …")
    rng = random.Random(f"{seed}/explain")
    runnable = [(q, r) for q, r in zip(queries, results, strict=True) if not r.no_values]
    try:
        found = explain.plans(database, [(q.name, *q.draw(catalogue, rng)) for q, _ in runnable])
    except Exception as exc:  # the plans are a diagnostic: never the end of the run
        found = {q.name: f"(explain failed: {type(exc).__name__}: {exc})" for q, _ in runnable}
    for query, result in runnable:
        result.plan = found.get(query.name, "")
