"""``python -m bench compliance``: what authorisation, audit and encryption cost over HTTP.

The same workloads run against two servers on two fresh databases of one kind, side by side:
*without* (a bench-only server: the record core without keys, audit trail or token check,
behind the same app and uvicorn settings; ``python -m bench.compliance serve-plain``) and
*with* (the real ``medikus serve``: bearer tokens, encryption at rest, the chained audit trail).
Workloads: ingest of Synthea transaction bundles (https://hl7.org/fhir/R4/http.html#transaction),
reads (https://hl7.org/fhir/R4/http.html#read) and typical searches
(https://hl7.org/fhir/R4/search.html). Both sides see the same machine load: the ingest
alternates chunks of bundles between them (the order alternating), reads and searches alternate
request by request. Targets (issue 4): ingest at most 20 % slower, at most 2 ms added at p50.

    python -m bench compliance --db both --bundles 20 --reads 500 --searches 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import psycopg

from bench import ingest, replicate, search
from bench.databases import KINDS, Database, backend_pids, fresh
from bench.ingest import Payload, Posted
from bench.reads import Connection, ProtocolError, percentile
from bench.search import Catalogue, Query
from bench.server import Server, cpu_seconds, load_average
from medikus.loader import synthea_bundles

Say = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent
SIDES = ("without", "with")
INGEST_TARGET_PERCENT = 20.0
P50_TARGET_MS = 2.0
# Typical searches of bench/search.py: patient-scoped with _sort, a name (blind-index tokens
# when encrypted), a date range with _include, a reverse chain and a count.
SEARCHES = (
    "obs-patient-code",
    "patient-name",
    "encounter-date-incl",
    "patient-has-cond",
    "obs-code-count",
)
AUDIT_CATCH_UP_S = 300.0


# --- the server without authorisation, audit or encryption (bench only) --------------------------


def plain_app() -> Any:
    """The uvicorn factory of the plain server: ``medikus.app.create_app`` with an injected
    record core that has no keyring and no audit trail, and no identity (no token check)."""
    from fhir_server.context import Settings
    from fhir_server.core import RecordCore
    from medikus import __version__
    from medikus.app import create_app
    from medikus.config import Config

    config = Config()
    record = RecordCore.open(
        config.resolved_database_url(),
        settings=Settings(
            max_body_bytes=config.max_body_bytes, enforce_references=config.enforce_references
        ),
        migrate=False,
        pool_size=config.pool_size,
        version=__version__,
        keyring=None,
        audit=False,
    )
    record.warm_up()
    return create_app(config, record=record)


def serve_plain(argv: Sequence[str]) -> int:
    """``python -m bench.compliance serve-plain --port P --workers N --database-url URL``: uvicorn
    as ``medikus serve`` runs it (migrated once, then the workers), with ``plain_app``."""
    import uvicorn

    from fhir_server.core import RecordCore
    from medikus.http_protocol import FhirHttpToolsProtocol

    parser = argparse.ArgumentParser(prog="python -m bench.compliance serve-plain")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args(list(argv))
    os.environ["MEDIKUS_DATABASE_URL"] = args.database_url
    RecordCore.migrate(args.database_url)
    os.environ["MEDIKUS_MIGRATE"] = "false"
    uvicorn.run(
        "bench.compliance:plain_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        proxy_headers=True,
        http=FhirHttpToolsProtocol,
        server_header=False,
        access_log=False,
    )
    return 0


class PlainServer(Server):
    """The plain server as a process group, started and stopped like ``bench.server.Server``."""

    def _start(self) -> None:
        command = [sys.executable, "-m", "bench.compliance", "serve-plain"]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        command += ["--database-url", self.database_url]
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "MEDIKUS_RATE_LIMIT": "false", "PYTHONPATH": path}
        self.process = subprocess.Popen(command, start_new_session=True, env=env, cwd=ROOT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited during start ({self.process.returncode})")
            if self._ready():
                self._wait_for_workers(deadline)
                return
            time.sleep(0.2)
        raise TimeoutError("the plain server did not become ready")


# --- figures -------------------------------------------------------------------------------------


@dataclass
class Side:
    """One server under test and what was measured against it."""

    name: str
    database: Database
    server: Server
    token: Callable[[], str]
    auth: httpx.Auth | None
    ingest_s: float = 0.0  # wall time of the chunks' posting
    cpu_s: float = 0.0  # server processes (+ PostgreSQL backends), audit catch-up included
    catch_up_s: float = 0.0  # after the chunks: until the audit trail had chained everything
    resources: int = 0
    failed: int = 0
    first_error: str = ""
    posted: list[Posted] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, workload: str, seconds: float, status: int) -> None:
        self.latencies.setdefault(workload, []).append(seconds)
        self.errors[workload] = self.errors.get(workload, 0) + (status != 200)

    def rate(self) -> float:
        return self.resources / self.ingest_s if self.ingest_s > 0 else 0.0

    def rate_chained(self) -> float:
        seconds = self.ingest_s + self.catch_up_s
        return self.resources / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Row:
    """One workload's figure on both sides."""

    workload: str
    without: float
    with_: float
    unit: str  # "res/s" (with a target), "res/s*" (without), "s" or "ms"
    errors: int = 0

    @property
    def difference(self) -> float:
        """% slower for rates and times of the ingest; added ms for latencies."""
        if self.unit.startswith("res/s"):
            return (self.without / self.with_ - 1) * 100 if self.with_ > 0 else float("inf")
        if self.unit == "s":
            return (self.with_ / self.without - 1) * 100 if self.without > 0 else float("inf")
        return self.with_ - self.without


@dataclass(frozen=True)
class Comparison:
    kind: str
    bundles: int
    resources: int
    rows: tuple[Row, ...]
    catch_up_s: float

    @property
    def failed(self) -> bool:
        return any(row.errors for row in self.rows)

    def row(self, workload: str) -> Row:
        return next(row for row in self.rows if row.workload == workload)


@dataclass(frozen=True)
class Options:
    bundles: int = 20
    chunks: int = 4  # ingest chunks, alternating between the servers
    clients: int = 4  # posting threads
    workers: int = 2  # uvicorn workers per server
    reads: int = 500  # paired reads
    searches: int = 100  # paired requests per search
    seed: int = 0


# --- the run -------------------------------------------------------------------------------------


def run(
    kind: str, templates: Sequence[replicate.Template], options: Options, say: Say
) -> Comparison:
    """Both servers on fresh ``kind`` databases: ingest, reads, searches; every database and
    process made here is gone when it returns."""
    payloads = [Payload(t.name, replicate.copy(t, 0, options.seed), t.resources) for t in templates]
    facts = {t.name: t.facts for t in templates if t.facts is not None}
    with ExitStack() as stack:
        sides = [_side(stack, kind, name, options.workers) for name in SIDES]
        say(f"{kind}: ingest of {len(payloads)} bundles into both servers …")
        _ingest(sides, payloads, options, say)
        for side in sides:
            if side.first_error:
                say(f"{kind} {side.name}: first failure: {side.first_error}")
        pairs = _read_pairs(sides)
        say(f"{kind}: {options.reads} paired reads …")
        asyncio.run(_paired(sides, _read_requests(pairs, options), "read"))
        catalogues = [_catalogue(side, facts) for side in sides]
        for query in _queries():
            say(f"{kind}: {options.searches} paired searches {query.name} …")
            requests = _search_requests(query, catalogues, options)
            asyncio.run(_paired(sides, requests, query.name))
        return _comparison(kind, sides, payloads)


def _side(stack: ExitStack, kind: str, name: str, workers: int) -> Side:
    database = stack.enter_context(fresh(kind))
    if name == "with":
        server: Server = stack.enter_context(Server(database.url, workers))
        return Side(name, database, server, server.auth.value, server.auth)
    plain = stack.enter_context(PlainServer(database.url, workers))
    # The plain server reads no token: the header it is sent (for equal requests) costs nothing.
    return Side(name, database, plain, lambda: "none", None)


def _ingest(sides: Sequence[Side], payloads: Sequence[Payload], options: Options, say: Say) -> None:
    """Chunks of bundles to one server, then the other (the order alternating); the audit
    trail of the protected server catches up before the next chunk, its CPU counted."""
    size = max(1, -(-len(payloads) // max(1, options.chunks)))
    chunks = [payloads[i : i + size] for i in range(0, len(payloads), size)]
    for number, chunk in enumerate(chunks):
        for side in sides if number % 2 == 0 else sides[::-1]:
            before = _cpu(side)
            posted, wall = ingest.post_all(
                side.server.base, chunk, options.clients, float("inf"), auth=side.auth
            )
            side.ingest_s += wall
            side.catch_up_s += _audit_catch_up(side)
            side.cpu_s += _cpu(side) - before
            side.posted += posted
            ok = [p for p in posted if p.status == 200]
            side.resources += sum(p.payload.resources for p in ok)
            side.failed += len(posted) - len(ok)
            side.first_error = side.first_error or ingest.first_error(posted)
        say(f"chunk {number + 1}/{len(chunks)} posted to both")


def _cpu(side: Side) -> float:
    pids = side.server.group_pids() + backend_pids(side.database)
    return sum(cpu_seconds(pids).values())


def _audit_catch_up(side: Side) -> float:
    """Seconds until ``audit_pending`` is empty (the chainer has chained every event)."""
    if side.name != "with":
        return 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < AUDIT_CATCH_UP_S:
        if _pending(side.database) == 0:
            break
        time.sleep(0.1)
    return time.perf_counter() - start


def _pending(database: Database) -> int:
    query = "SELECT count(*) FROM audit_pending"
    if database.kind == "postgresql":
        with psycopg.connect(database.psycopg_conninfo(), autocommit=True) as conn:
            row = conn.execute(query).fetchone()
    else:
        assert database.path is not None
        with _sqlite_read(database.path) as conn:
            row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _sqlite_read(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def _read_pairs(sides: Sequence[Side]) -> list[tuple[str, str]]:
    """The same resource on both servers: entry k of bundle b created ``Type/id`` on each."""
    created = [_locations(side.posted) for side in sides]
    pairs = []
    for name, targets in created[0].items():
        other = created[1].get(name, [])
        pairs += [(a, b) for a, b in zip(targets, other, strict=False) if a and b]
    return pairs


def _locations(posted: Sequence[Posted]) -> dict[str, list[str]]:
    out = {}
    for p in posted:
        if p.status == 200:
            out[p.payload.name] = ingest.created_targets([p])
    return out


Request = tuple[str, str]  # the path with query, on each side


def _read_requests(pairs: Sequence[tuple[str, str]], options: Options) -> list[Request]:
    rng = random.Random(f"{options.seed}/reads")
    chosen = [pairs[rng.randrange(len(pairs))] for _ in range(options.reads)] if pairs else []
    return [(f"/fhir/{a}", f"/fhir/{b}") for a, b in chosen]


def _catalogue(side: Side, facts: dict[str, replicate.Facts]) -> Catalogue:
    # Sorted by bundle, so that patient k is the same person on both servers.
    return Catalogue.build(sorted(side.posted, key=lambda p: p.payload.name), facts)


def _queries() -> list[Query]:
    by_name = {q.name: q for q in search.QUERIES}
    return [by_name[name] for name in SEARCHES]


def _search_requests(
    query: Query, catalogues: Sequence[Catalogue], options: Options
) -> list[Request]:
    """The same draws on both sides (same seed, same patients in the same order)."""
    if any(len(c.patients) != len(catalogues[0].patients) for c in catalogues):
        raise RuntimeError("the servers loaded different patients: no paired searches")
    rngs = [random.Random(f"{options.seed}/{query.name}") for _ in catalogues]
    out = []
    for _ in range(options.searches):
        urls = []
        for catalogue, rng in zip(catalogues, rngs, strict=True):
            path, params = query.draw(catalogue, rng)
            urls.append(f"/fhir/{path}?{urlencode(params)}" if params else f"/fhir/{path}")
        out.append((urls[0], urls[1]))
    return out


async def _paired(sides: Sequence[Side], requests: Sequence[Request], workload: str) -> None:
    """One keep-alive connection per server; each request to one side, then the other (the
    order alternating). The first tenth of them (at least 10) is sent once more before, untimed,
    to warm up."""
    connections: list[Connection | None] = [None, None]
    warm = min(len(requests), max(10, len(requests) // 10))
    try:
        for number, pair in enumerate([*requests[:warm], *requests]):
            order = (0, 1) if number % 2 == 0 else (1, 0)
            for index in order:
                seconds, status, connections[index] = await _get(
                    sides[index], connections[index], pair[index]
                )
                if number >= warm:
                    sides[index].record(workload, seconds, status)
    finally:
        for connection in connections:
            if connection is not None:
                connection.close()


async def _get(
    side: Side, connection: Connection | None, path: str
) -> tuple[float, int, Connection | None]:
    url = urlsplit(side.server.base)
    token = side.token()  # outside the clock: renewing costs the client, not the server
    sent = time.perf_counter()
    try:
        connection = connection or await Connection.open(url.hostname or "", url.port or 80)
        status = await connection.get(path, token)
        if not connection.reusable:
            connection.close()
            connection = None
    except (OSError, asyncio.IncompleteReadError, ProtocolError):
        status, connection = 0, None
    return time.perf_counter() - sent, status, connection


def _comparison(kind: str, sides: Sequence[Side], payloads: Sequence[Payload]) -> Comparison:
    without, with_ = sides
    rows = [
        Row("ingest rate", without.rate(), with_.rate(), "res/s", without.failed + with_.failed),
        Row("ingest server CPU", without.cpu_s, with_.cpu_s, "s"),
        # Until the trail has chained the ingest's events too (sustained load: can it keep up?).
        Row("ingest + audit chaining", without.rate(), with_.rate_chained(), "res/s*"),
    ]
    for workload, times in without.latencies.items():
        other = sorted(with_.latencies.get(workload, []))
        errors = without.errors.get(workload, 0) + with_.errors.get(workload, 0)
        ordered = sorted(times)
        for q in (50, 99):
            a, b = percentile(ordered, q) * 1000, percentile(other, q) * 1000
            rows.append(Row(f"{workload} p{q}", a, b, "ms", errors))
    return Comparison(
        kind,
        len(payloads),
        min(without.resources, with_.resources),
        tuple(rows),
        with_.catch_up_s,
    )


# --- the table -----------------------------------------------------------------------------------


def table(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        lines += [
            f"\n{c.kind}: {c.bundles} bundles, {c.resources:,} resources per server; "
            f"audit trail caught up {c.catch_up_s:.1f} s after the chunks (not in the ingest time)",
            f"  {'workload':32s} {'without':>11s} {'with':>11s} {'difference':>13s}  target",
        ]
        for row in c.rows:
            lines.append(_line(row))
    return "\n".join(lines)


def _line(row: Row) -> str:
    if row.unit == "ms":
        diff = f"{row.difference:+.2f} ms"
        target = _verdict(row.difference <= P50_TARGET_MS) if row.workload.endswith("p50") else ""
    else:
        diff = f"{row.difference:+.1f} %"
        targets = {"res/s": _verdict(row.difference <= INGEST_TARGET_PERCENT), "s": "(CPU)"}
        target = targets.get(row.unit, "")
    if row.errors:
        target += f"  {row.errors} ERRORS"
    fmt = "{:11.2f}" if row.unit == "ms" else "{:11.1f}" if row.unit == "s" else "{:11.0f}"
    figures = f"{fmt.format(row.without)} {fmt.format(row.with_)}"
    label = f"{row.workload} ({row.unit.rstrip('*')})"
    return f"  {label:32s} {figures} {diff:>13s}  {target}"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench compliance", description=__doc__.splitlines()[0]
    )
    defaults = Options()
    parser.add_argument("--db", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--bundles", type=int, default=defaults.bundles, help="Synthea bundles")
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help="ingest alternations")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="posting threads")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="per server")
    parser.add_argument("--reads", type=int, default=defaults.reads, help="paired reads")
    parser.add_argument(
        "--searches", type=int, default=defaults.searches, help="paired requests per search"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str], say: Say) -> int:
    args = parse_args(argv)
    options = Options(
        args.bundles, args.chunks, args.clients, args.workers, args.reads, args.searches, args.seed
    )
    say(f"load average {load_average():.2f}; serialising {options.bundles} bundles …")
    templates = [replicate.template(p) for p in synthea_bundles()[: options.bundles]]
    kinds = KINDS if args.db == "both" else (args.db,)
    comparisons = [run(kind, templates, options, say) for kind in kinds]
    print(table(comparisons))
    print(
        f"(both servers ran side by side on this machine, load average now "
        f"{load_average():.2f}: other work on it makes the figures noisy)"
    )
    return 1 if any(c.failed for c in comparisons) else 0


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-plain"]:
        sys.exit(serve_plain(sys.argv[2:]))
    sys.exit(main(sys.argv[1:], _say))
