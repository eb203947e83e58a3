"""``python -m bench``: ingest, raw insert floor and read latency on PostgreSQL and SQLite.

``python -m bench big [--scale 10] [--db postgresql|sqlite|both]``: the bundles replicated about
250,000 resources' worth, load rate and its decay, then search latency; ``python -m bench search``:
the same at scale 1. ``python -m bench big --help`` lists their flags (bench/big.py).
``python -m bench compliance``: authorisation, audit and encryption, with and without
(bench/compliance.py). ``python -m bench station``: one pilot-centre station's latency and
throughput, BLE simulated (bench/station.py). ``python -m bench video``: admit to first video
frame in Chromium, signalling capacity of the websocket hub (bench/video.py).

Transactions: https://hl7.org/fhir/R4/http.html#transaction — reads: https://hl7.org/fhir/R4/http.html#read
Prints a table and writes the figures to ``bench/results/<timestamp>.json``. Every server process,
schema and temporary file is removed at the end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import big, compliance, floor, ingest, station, suite, video
from bench.databases import KINDS
from bench.report import DatabaseResult, noise_note, run_meta, table, write_json
from bench.server import load_average
from medikus.loader import synthea_bundles

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_BUNDLES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog="Other benchmarks: python -m bench big|search --help (replicated load, searches).",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_BUNDLES} bundles, short reads"
    )
    parser.add_argument("--db", choices=(*KINDS, "both"), default="both")
    parser.add_argument(
        "--clients",
        type=int,
        choices=range(1, 9),
        default=4,
        metavar="1-8",
        help="concurrent posting threads (default 4)",
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--bundles", type=int, help="post only the first N bundles")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    return parser.parse_args(argv)


def plan_for(args: argparse.Namespace) -> suite.Plan:
    return suite.Plan(
        clients=args.clients,
        workers=args.workers,
        # Bounds the whole run: at most this long per database for the ingest …
        ingest_budget_s=60 if args.quick else 180,
        read_levels=(1, 16),
        # … and per read level whichever comes first of requests and seconds.
        read_requests=500 if args.quick else 2000,
        read_seconds=5 if args.quick else 20,
    )


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through every ``finally``: servers stop, schemas and files go.
    sys.exit(128 + signal.SIGTERM)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _sigterm)
    if argv and argv[0] in big.COMMANDS:
        return big.main(argv[0], argv[1:], _say)
    if argv and argv[0] == "compliance":
        return compliance.main(argv[1:], _say)
    if argv and argv[0] == "station":
        return station.main(argv[1:], _say)
    if argv and argv[0] == "video":
        return video.main(argv[1:], _say)
    args = parse_args(argv)
    started = datetime.now(UTC)
    load = load_average()
    paths = synthea_bundles()
    count = QUICK_BUNDLES if args.quick and args.bundles is None else args.bundles
    paths = paths[:count] if count else paths
    _say(f"serialising {len(paths)} bundles (load average {load:.2f}) …")
    payloads = ingest.prepare(paths)
    rows = floor.rows(payloads)
    resources = sum(p.resources for p in payloads)
    plan = plan_for(args)
    kinds = KINDS if args.db == "both" else (args.db,)
    results: list[DatabaseResult] = []
    for kind in kinds:
        results.append(suite.run(kind, payloads, rows, plan, _say))
    print(table(results))
    if note := noise_note(results):
        print(note)
    if not args.no_json:
        path = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        write_json(
            path, run_meta(args, started, load, bundles=len(payloads), resources=resources), results
        )
        _say(f"figures written to {path}")
    return 1 if any(_failed(r) for r in results) else 0


def _failed(result: DatabaseResult) -> bool:
    i = result.ingest
    return i is None or i.bundles_failed > 0 or any(r.errors for r in result.reads)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _say("interrupted; everything was cleaned up")
        sys.exit(130)
