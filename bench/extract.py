"""Benchmark of write-time search index extraction on Synthea R4 bundles.

Usage: ``python bench/extract.py [BUNDLE_DIR] [--repeat N]``

Loads every ``*.json.gz`` transaction Bundle in ``BUNDLE_DIR`` (default: the
project's ``medikus/demo_data/synthea-r4``, else ``/work/shared/data/synthea-r4``),
then times :meth:`fhir_server.search.Indexer.extract` over all
``entry[].resource`` (JSON parsing excluded) and prints resources/s and
microseconds per resource (best of N passes, by CPU and by wall-clock time),
overall and per resource type.
Extraction of search values: https://hl7.org/fhir/R4/search.html#ptypes
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from fhir_server.search import Indexer

ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_DIRS = (
    ROOT / "medikus" / "demo_data" / "synthea-r4",
    Path("/work/shared/data/synthea-r4"),
)


def load_resources(directory: Path) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json.gz")):
        bundle = orjson.loads(gzip.decompress(path.read_bytes()))
        resources.extend(e["resource"] for e in bundle.get("entry", ()))
    return resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    directory = args.directory or next(d for d in _DEFAULT_DIRS if d.is_dir())
    resources = load_resources(directory)

    started = time.perf_counter()
    indexer = Indexer()
    print(f"Indexer(): {(time.perf_counter() - started) * 1e3:.0f} ms")
    rows = sum(len(indexer.extract(r).all()) for r in resources)  # warm caches

    timings = [_time_all(indexer, resources) for _ in range(args.repeat)]
    n = len(resources)
    print(f"{n} resources from {directory}, {rows} rows ({rows / n:.1f}/resource)")
    for label, best in (("CPU", min(t[0] for t in timings)), ("wall", min(t[1] for t in timings))):
        print(
            f"best of {args.repeat} ({label} time): {n / best:,.0f} resources/s, "
            f"{best / n * 1e6:.1f} µs/resource"
        )
    _per_type(indexer, resources)


def _time_all(indexer: Indexer, resources: list[dict[str, Any]]) -> tuple[float, float]:
    """(CPU, wall) seconds for one pass; CPU time is robust to a busy machine."""
    extract = indexer.extract
    cpu, wall = time.process_time(), time.perf_counter()
    for resource in resources:
        extract(resource)
    return time.process_time() - cpu, time.perf_counter() - wall


def _per_type(indexer: Indexer, resources: list[dict[str, Any]]) -> None:
    spent: defaultdict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    for resource in resources:
        started = time.process_time()
        indexer.extract(resource)
        spent[resource["resourceType"]] += time.process_time() - started
        count[resource["resourceType"]] += 1
    for name, n in count.most_common():
        print(f"  {name:<22} {n:>6}  {spent[name] / n * 1e6:7.1f} µs")


if __name__ == "__main__":
    main()
