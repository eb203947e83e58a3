"""``python -m bench.protection``: what encryption at rest costs, measured with and without it.

The same Synthea transaction bundles (https://hl7.org/fhir/R4/http.html#transaction) are
ingested in process through ``RecordCore.handle`` (one thread, no HTTP: the record core's own
work) into two fresh databases: one without keys (payloads and index values in plain
text, the record core as it was before encryption at rest), one with a keyring (AES-GCM payloads,
blind-index tokens, fhir_server/encryption.py and protection.py), side by side: each bundle
goes to one database, then the other, the order alternating, so both see the same machine load.
Then the same reads and searches (https://hl7.org/fhir/R4/search.html) run against both;
their p50 shows the time encryption adds per request. Over HTTP the slowdown in percent is
smaller: the added time is the same, the work around it larger.

    python -m bench.protection --db both --bundles 40 --reads 300
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.databases import KINDS, fresh
from compliance.keyring import Keyring
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse
from medikus.loader import read_bundle, synthea_bundles

MODES = ("plain", "encrypted")
_HEADERS = {"content-type": "application/fhir+json", "prefer": "return=minimal"}
Query = tuple[str, list[tuple[str, str]]]


@dataclass
class Tally:
    """Wall and CPU seconds of one mode, summed over requests or collected per request."""

    wall: float = 0.0
    cpu: float = 0.0
    resources: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.protection", description=__doc__)
    parser.add_argument("--db", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--bundles", type=int, default=40, help="Synthea bundles per ingest")
    parser.add_argument("--reads", type=int, default=300, help="requests per read/search")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bodies = [orjson.dumps(read_bundle(p)) for p in synthea_bundles()[: args.bundles]]
    keyring = Keyring({1: os.urandom(32)}, 1)
    kinds = KINDS if args.db == "both" else (args.db,)
    for kind in kinds:
        _say(f"{kind}: {len(bodies)} bundles into two fresh databases, alternating …")
        print(_table(kind, _paired(kind, keyring, bodies, args.reads)))
    return 0


def _paired(kind: str, keyring: Keyring, bodies: list[bytes], reads: int) -> dict[str, Tally]:
    """Both modes side by side, each request to one then the other (the order alternating):
    on a busy machine both see the same load, so the difference is encryption's."""
    with fresh(kind) as first, fresh(kind) as second:
        cores = {
            "plain": RecordCore.open(first.url, pool_size=2),
            "encrypted": RecordCore.open(second.url, keyring=keyring, pool_size=2),
        }
        try:
            tallies = {mode: Tally() for mode in MODES}
            for core in cores.values():
                core.warm_up()
            gc.collect()
            for i, body in enumerate(bodies):
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    wall, cpu, response = _timed(cores[mode], "POST", "", [], body)
                    if response.status != 200:
                        raise RuntimeError(f"ingest: {response.status} {response.body[:300]!r}")
                    tallies[mode].wall += wall
                    tallies[mode].cpu += cpu
                    tallies[mode].resources += len(orjson.loads(response.body)["entry"])
            queries = {mode: _queries(core, reads) for mode, core in cores.items()}
            for name in queries["plain"]:
                for k in range(reads):
                    for mode in MODES if k % 2 == 0 else MODES[::-1]:
                        path, params = queries[mode][name][k]
                        wall, _, response = _timed(cores[mode], "GET", path, params, b"")
                        if response.status != 200:
                            raise RuntimeError(f"{path}: {response.status} {response.body[:300]!r}")
                        tallies[mode].latencies.setdefault(name, []).append(wall)
            return tallies
        finally:
            for core in cores.values():
                core.close()


def _timed(
    core: RecordCore, method: str, path: str, params: list[tuple[str, str]], body: bytes
) -> tuple[float, float, FhirResponse]:
    headers = _HEADERS if body else {}
    request = FhirRequest(method, path, query=params, headers=headers, body=body)
    wall, cpu = time.perf_counter(), time.process_time()
    response = core.handle(request)
    return time.perf_counter() - wall, time.process_time() - cpu, response


def _queries(core: RecordCore, count: int) -> dict[str, list[Query]]:
    """The same requests in both databases: patients in the order of their identifiers (equal
    in both), the same random choices (ids differ per database, the choice does not)."""
    patients = sorted(_all(core, "Patient", [("_elements", "name,identifier")]), key=_identifier)
    observations = _all(core, "Observation", [("_elements", "subject,code,effective")])
    observations.sort(key=lambda o: orjson.dumps({**o, "id": "", "subject": None}))
    rng = random.Random(7)

    def draw(make: Callable[[dict[str, Any]], Query], pool: list[dict[str, Any]]) -> list[Query]:
        return [make(pool[rng.randrange(len(pool))]) for _ in range(count)]

    return {
        "read Patient": draw(lambda p: (f"Patient/{p['id']}", []), patients),
        "read Observation": draw(lambda o: (f"Observation/{o['id']}", []), observations),
        "Patient?name=<3 letters>": draw(
            lambda p: ("Patient", [("name", p["name"][0]["family"][:3])]), patients
        ),
        "Patient?identifier=s|v": draw(
            lambda p: ("Patient", [("identifier", _identifier(p))]), patients
        ),
        "Observation?subject&_count=50": draw(
            lambda p: ("Observation", [("subject", f"Patient/{p['id']}"), ("_count", "50")]),
            patients,
        ),
        "Observation?_content=<word>&_count=10": draw(
            lambda _: ("Observation", [("_content", rng.choice(_WORDS)), ("_count", "10")]),
            patients,
        ),
    }


_WORDS = ("glucose", "weight", "pressure", "hemoglobin", "creatinine", "pain")


def _identifier(patient: dict[str, Any]) -> str:
    first = patient["identifier"][0]
    return f"{first.get('system', '')}|{first['value']}"


def _all(core: RecordCore, type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    response = core.handle(FhirRequest("GET", type, query=[("_count", "1000"), *params]))
    entries = orjson.loads(response.body).get("entry", [])
    return [e["resource"] for e in entries]


def _table(kind: str, tallies: dict[str, Tally]) -> str:
    plain, encrypted = tallies["plain"], tallies["encrypted"]
    wall = (encrypted.wall / plain.wall - 1) * 100
    cpu = (encrypted.cpu / plain.cpu - 1) * 100
    lines = [
        f"\n{kind}: {plain.resources} resources ingested in each mode (bundles alternating)",
        f"  ingest, wall   plain {plain.resources / plain.wall:7.0f} res/s   encrypted "
        f"{encrypted.resources / encrypted.wall:7.0f} res/s   slowdown {wall:+.1f} %",
        f"  ingest, CPU    plain {plain.resources / plain.cpu:7.0f} res/s   encrypted "
        f"{encrypted.resources / encrypted.cpu:7.0f} res/s   slowdown {cpu:+.1f} % "
        "(this process: record core, and SQLite itself)",
        f"  {'p50 per request (wall)':38s} {'plain':>9s} {'encrypted':>10s} {'added':>9s}",
    ]
    for name, times in plain.latencies.items():
        a = statistics.median(times) * 1000
        b = statistics.median(encrypted.latencies[name]) * 1000
        lines.append(f"  {name:38s} {a:7.2f}ms {b:8.2f}ms {b - a:+7.2f}ms")
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
