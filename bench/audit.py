"""``python -m bench.audit``: what the audit trail costs (in process, per database).

- request path: p50/p99 of a read (https://hl7.org/fhir/R4/http.html#read) through the router
  with and without the audit hook, interleaved, the background writer running; and the hook
  alone around an interaction that does nothing (what every request pays: classify, queue);
- background: building, sealing and inserting one read event (per event, in batches);
- writes: p50 of a create with and without its in-transaction change event;
- ingest: Synthea transaction bundles with and without the audit trail (writer and chainer
  running on their threads, as in ``medikus serve``), and how long the chainer then needs to
  catch up;
- chainer: events per second moved from ``audit_pending`` into the chain and stored as
  AuditEvent resources (index rows included); verification: records per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import orjson

from bench.databases import KINDS, fresh
from compliance.keyring import Keyring
from compliance.principal import system_principal
from fhir_server._sqlstore import SqlAuditLog, SqlStore
from fhir_server.audit import AuditSystem
from fhir_server.audit_verify import verify_trail
from fhir_server.context import Context
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.router import dispatch
from medikus.loader import read_bundle, synthea_bundles

HEADERS = {"content-type": "application/fhir+json", "x-request-id": "bench"}
PRINCIPAL = system_principal("system/*.cruds", "bench-client")


def _request(method: str, path: str, body: object = None) -> FhirRequest:
    content = orjson.dumps(body) if body is not None else b""
    return FhirRequest(method, path, [], HEADERS, content, "http://bench/fhir", principal=PRINCIPAL)


def _ms(samples: list[float], q: float = 0.5) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1e3


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _cpu(call: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``call`` (CPU of the whole process: run it alone)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def _open(url: str, keyring: Keyring) -> tuple[RecordCore, AuditSystem]:
    core = RecordCore.open(url, keyring=keyring)
    store = core.ctx.store
    assert isinstance(store, SqlStore)
    return core, AuditSystem.build(core.ctx, SqlAuditLog(store), keyring)


def _created(ctx: Context, body: Mapping[str, object]) -> str:
    response = dispatch(_request("POST", str(body["resourceType"]), body), ctx)
    assert response.status == 201, response.body
    return str(orjson.loads(response.body)["id"])


def request_path(kind: str, reads: int, chain_events: int) -> None:
    keyring = Keyring({1: os.urandom(32)}, 1)
    with fresh(kind) as database:
        core, system = _open(database.url, keyring)
        plain, audited = replace(core.ctx, audit=None), system.ctx
        try:
            system.trail.start()
            pid = _created(plain, {"resourceType": "Patient", "name": [{"family": "Bench"}]})
            obs = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{pid}"},
            }
            read = _request("GET", f"Observation/{_created(plain, obs)}")
            for _ in range(200):  # warm caches and plans
                dispatch(read, plain)
                dispatch(read, audited)
            off, on = [], []
            for _ in range(reads):
                off.append(_timed(lambda: dispatch(read, plain)))
                on.append(_timed(lambda: dispatch(read, audited)))
            system.trail.flush()
            print(
                f"[{kind}] read p50 {_ms(off):.3f} → {_ms(on):.3f} ms "
                f"(+{_ms(on) - _ms(off):.3f}), p99 {_ms(off, 0.99):.3f} → {_ms(on, 0.99):.3f} ms"
            )
            noop = FhirResponse(200, b"{}")
            hook = [_timed(lambda: system.trail.audited(read, lambda: noop)) for _ in range(reads)]
            system.trail.flush()
            print(f"[{kind}] the hook alone p50 {statistics.median(hook) * 1e6:.1f} µs")

            system.trail.close()  # the background work, measured inline
            for _ in range(reads):
                system.trail.audited(read, lambda: dispatch(read, plain))
            took, cpu = _cpu(system.trail.flush)
            print(
                f"[{kind}] background build+seal+insert per read event: "
                f"{took / reads * 1e6:.0f} µs wall, {cpu / reads * 1e6:.0f} µs CPU"
            )

            create = _request("POST", "Observation", obs)
            c_off, c_on = [], []
            for _ in range(300):
                c_off.append(_timed(lambda: dispatch(create, plain)))
                c_on.append(_timed(lambda: dispatch(create, audited)))
            print(f"[{kind}] create p50 {_ms(c_off):.3f} → {_ms(c_on):.3f} ms")

            system.chainer.run_until_idle()
            for _ in range(chain_events // 500):
                for _ in range(500):
                    system.trail.audited(read, lambda: dispatch(read, plain))
                system.trail.flush()
            took, cpu = _cpu(system.chainer.run_until_idle)
            print(
                f"[{kind}] chainer {chain_events / took:.0f} events/s wall, "
                f"{cpu / chain_events * 1e6:.0f} µs CPU per event ({chain_events} events)"
            )

            store, log = core.ctx.store, system.trail.log
            total = log.head().index
            took = _timed(lambda: verify_trail(store, log, system.trail.keys))
            print(f"[{kind}] verify {total / took:.0f} records/s ({total} records)")
        finally:
            system.stop()
            core.close()


def ingest(kind: str, bundles: list[Path], rounds: int) -> None:
    """Plain and audited runs alternate (after an untimed warm-up); medians are reported."""
    keyring = Keyring({1: os.urandom(32)}, 1)
    bodies = [orjson.dumps(read_bundle(path)) for path in bundles]
    entries = sum(len(orjson.loads(b).get("entry", ())) for b in bodies)
    _ingest_once(kind, keyring, bodies, audited=False)  # validation models, caches
    runs: dict[bool, list[tuple[float, float, int, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for audited in (False, True):
            runs[audited].append(_ingest_once(kind, keyring, bodies, audited=audited))
    (wall_off, cpu_off, _, _), (wall_on, cpu_on, behind, catch_up) = (
        tuple(statistics.median(v) for v in zip(*runs[a], strict=True)) for a in (False, True)
    )
    print(
        f"[{kind}] ingest of {len(bodies)} bundles ({entries} entries), median of {rounds}: "
        f"{wall_off:.2f} s → {wall_on:.2f} s wall ({wall_on / wall_off - 1:+.0%}), "
        f"{cpu_off:.2f} s → {cpu_on:.2f} s CPU ({cpu_on / cpu_off - 1:+.0%}); "
        f"{behind:.0f} pending rows left at the end, chained {catch_up:.1f} s later"
    )


def _ingest_once(
    kind: str, keyring: Keyring, bodies: list[bytes], *, audited: bool
) -> tuple[float, float, int, float]:
    """(wall, CPU) seconds of the ingest, pending rows at its end, seconds to chain them."""
    with fresh(kind) as database:
        core, system = _open(database.url, keyring)
        ctx = system.ctx if audited else replace(core.ctx, audit=None)
        if audited:
            system.start()  # the writer of read events and the chainer, as in `medikus serve`
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            for body in bodies:
                request = FhirRequest(
                    "POST", "", [], HEADERS, body, "http://bench/fhir", principal=PRINCIPAL
                )
                response = dispatch(request, ctx)
                assert response.status == 200, response.body[:300]
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            behind = len(system.trail.log.pending(1_000_000)) if audited else 0
            catch_up = _timed(system.stop) if audited else 0.0  # chains the rest, signs
            return wall, cpu, behind, catch_up
        finally:
            system.stop()
            core.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--db", choices=[*KINDS, "both"], default="both")
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--chain-events", type=int, default=5000)
    parser.add_argument("--bundles", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="ingest runs per variant")
    args = parser.parse_args()
    for kind in KINDS if args.db == "both" else (args.db,):
        request_path(kind, args.reads, args.chain_events)
        ingest(kind, synthea_bundles()[: args.bundles], args.rounds)


if __name__ == "__main__":
    main()
