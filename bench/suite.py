"""One database's benchmark: raw insert floor, ingest over HTTP, then read latency.

Ingest is FHIR transactions (https://hl7.org/fhir/R4/http.html#transaction) against a real
``medikus serve`` process group; every database and process made here is gone when it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bench import floor, ingest, reads
from bench.databases import Database, backend_pids, fresh
from bench.report import DatabaseResult, FloorFigures, IngestFigures
from bench.server import Server, cpu_seconds, load_average, machine_busy_seconds

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    clients: int
    workers: int
    ingest_budget_s: float
    read_levels: tuple[int, ...]
    read_requests: int
    read_seconds: float


def run(
    kind: str,
    payloads: Sequence[ingest.Payload],
    rows: Sequence[Sequence[floor.Row]],
    plan: Plan,
    say: Say,
) -> DatabaseResult:
    result = DatabaseResult(kind)
    with fresh(kind) as database:
        say(f"{kind}: raw insert floor …")
        seconds = floor.insert(database, rows)
        count = sum(len(b) for b in rows)
        result.floor = FloorFigures(kind, count, seconds, count / seconds if seconds else 0.0)
    with fresh(kind) as database, Server(database.url, plan.workers) as server:
        say(f"{kind}: ingest of {len(payloads)} bundles, {plan.clients} clients …")
        result.ingest, posted = ingest_figures(database, server, payloads, plan)
        targets = ingest.created_targets(posted)
        if result.ingest.first_error:
            say(f"{kind}: first failure: {result.ingest.first_error}")
        for clients in plan.read_levels if targets else ():
            say(f"{kind}: reads with {clients} clients …")
            result.reads.append(_reads(database, server, targets, clients, plan))
    return result


@dataclass(frozen=True)
class _Snapshot:
    server: dict[int, float]
    backends: dict[int, float]
    client: float
    busy: float

    @classmethod
    def take(cls, database: Database, server: Server) -> _Snapshot:
        return cls(
            server=cpu_seconds(server.group_pids()),
            backends=cpu_seconds(backend_pids(database)),
            client=time.process_time(),
            busy=machine_busy_seconds(),
        )


def _reads(
    database: Database, server: Server, targets: Sequence[str], clients: int, plan: Plan
) -> reads.ReadFigures:
    reads.warm_up(server.base, targets, clients, server.auth.value)
    before = _Snapshot.take(database, server)
    figures = reads.measure(
        server.base, targets, clients, plan.read_requests, plan.read_seconds, server.auth.value
    )
    after = _Snapshot.take(database, server)
    n = figures.requests or 1
    backends = sum(_spent(before.backends, after.backends).values())
    return replace(
        figures,
        server_cpu_ms=sum(_spent(before.server, after.server).values()) / n * 1000,
        db_backend_cpu_ms=backends / n * 1000 if database.kind == "postgresql" else None,
        client_cpu_ms=(after.client - before.client) / n * 1000,
    )


def _spent(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    # Processes that appeared meanwhile (new backends) count from zero.
    return {pid: seconds - before.get(pid, 0.0) for pid, seconds in after.items()}


def ingest_figures(
    database: Database,
    server: Server,
    payloads: Sequence[ingest.Payload],
    plan: Plan,
    progress: Callable[[ingest.Posted, int], None] | None = None,
) -> tuple[IngestFigures, list[ingest.Posted]]:
    """Posts ``payloads`` to ``server`` and measures it; also returns each bundle's outcome."""
    load_before = load_average()
    workers = server.worker_pids()
    before = _Snapshot.take(database, server)
    posted, wall = ingest.post_all(
        server.base, payloads, plan.clients, plan.ingest_budget_s, progress, server.auth
    )
    after = _Snapshot.take(database, server)
    restarted = sorted(set(workers) - set(server.worker_pids()))
    windows = ingest.windows(posted, wall)
    server_spent = _spent(before.server, after.server)
    ok = [p for p in posted if p.status == 200]
    figures = IngestFigures(
        database=database.kind,
        clients=plan.clients,
        workers=plan.workers,
        bundles=len(posted),
        bundles_failed=len(posted) - len(ok),
        resources=sum(p.payload.resources for p in ok),
        seconds=wall,
        rate=windows.overall,
        first10_rate=windows.first,
        last10_rate=windows.last,
        complete=len(posted) == len(payloads),
        server_cpu_s=sum(server_spent.values()),
        worker_cpu_s=sorted((server_spent.get(pid, 0.0) for pid in workers), reverse=True),
        db_backend_cpu_s=(
            sum(_spent(before.backends, after.backends).values())
            if database.kind == "postgresql"
            else None
        ),
        client_cpu_s=after.client - before.client,
        machine_busy_s=after.busy - before.busy,
        load_average_before=load_before,
        first_error=ingest.first_error(posted),
        workers_restarted=len(restarted),
    )
    return figures, posted
