"""Figures of one benchmark run, the table printed at the end and the JSON written next to it.

What is measured is FHIR ingest via transactions and reads (https://hl7.org/fhir/R4/http.html).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.reads import ReadFigures

TARGET = 1500.0  # resources/s on a 2-core machine (the target)


@dataclass(frozen=True)
class IngestFigures:
    database: str
    clients: int
    workers: int
    bundles: int
    bundles_failed: int
    resources: int
    seconds: float
    rate: float
    first10_rate: float
    last10_rate: float
    complete: bool  # False when the time budget ran out before every bundle was sent
    server_cpu_s: float
    worker_cpu_s: list[float]
    db_backend_cpu_s: float | None  # PostgreSQL backends of the server's connections
    client_cpu_s: float
    machine_busy_s: float  # all cores, everyone's processes, during the load
    load_average_before: float
    first_error: str
    workers_restarted: int  # workers that were replaced during the load (killed or crashed)

    def per_resource_ms(self, seconds: float | None) -> float | None:
        if seconds is None or not self.resources:
            return None
        return seconds / self.resources * 1000

    @property
    def others_cpu_s(self) -> float:
        """Busy CPU during the load that neither the server, its backends nor we spent."""
        ours = self.server_cpu_s + (self.db_backend_cpu_s or 0) + self.client_cpu_s
        return max(0.0, self.machine_busy_s - ours)


@dataclass(frozen=True)
class FloorFigures:
    database: str
    resources: int
    seconds: float
    rate: float


@dataclass
class DatabaseResult:
    database: str
    floor: FloorFigures | None = None
    ingest: IngestFigures | None = None
    reads: list[ReadFigures] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.ingest is None or not self.floor.rate:
            return None
        return self.ingest.rate / self.floor.rate


def table(results: list[DatabaseResult]) -> str:
    lines = []
    for result in results:
        lines += _ingest_lines(result)
    for result in results:
        if result.reads:
            levels = " | ".join(_read_level(r) for r in result.reads)
            lines.append(f"read     {result.database:<10}  {levels}")
    return "\n".join(lines)


def noise_note(results: list[DatabaseResult]) -> str:
    """A warning when other processes used a noticeable share of the CPU during the ingest."""
    busy = [r.ingest for r in results if r.ingest is not None and r.ingest.seconds > 0]
    others = [i.others_cpu_s / i.seconds for i in busy]
    if not others or max(others) < 0.2:
        return ""
    return (
        f"NOTE: other processes kept up to {max(others):.1f} cores busy during the ingest; "
        "these figures were taken under load and are noisy (lower than on an idle machine)."
    )


def _ingest_lines(result: DatabaseResult) -> list[str]:
    i, floor = result.ingest, result.floor
    floor_text = "raw floor n/a"
    if floor is not None:
        ratio = f" (ratio {result.ratio:.2f})" if result.ratio is not None else ""
        floor_text = f"raw floor {floor.rate:,.0f} res/s{ratio}"
    if i is None:
        return [f"ingest   {result.database:<10}  (not run)  {floor_text}"]
    partial = "" if i.complete else "  PARTIAL (time budget)"
    failed = f"  {i.bundles_failed} bundles FAILED" if i.bundles_failed else ""
    if i.workers_restarted:
        failed += f"  {i.workers_restarted} workers RESTARTED"
    verdict = "meets" if i.rate >= TARGET else "below"
    lines = [
        f"ingest   {i.database:<10}  {i.resources} res  {i.seconds:.1f} s  {i.rate:,.0f} res/s "
        f"({verdict} target {TARGET:,.0f})  first10% {i.first10_rate:,.0f}  "
        f"last10% {i.last10_rate:,.0f}  {floor_text}{partial}{failed}"
    ]
    workers = "/".join(f"{s:.1f}" for s in i.worker_cpu_s)
    db = i.per_resource_ms(i.db_backend_cpu_s)
    db_text = f"db backends {db:.2f}, " if db is not None else ""
    lines.append(
        f"         {'':<10}  CPU ms/res: server {i.per_resource_ms(i.server_cpu_s):.2f} "
        f"(workers {workers} s), {db_text}client {i.per_resource_ms(i.client_cpu_s):.2f}; "
        f"machine busy {i.machine_busy_s / i.seconds if i.seconds else 0:.2f} cores, "
        f"others {i.others_cpu_s:.1f} s; load avg before {i.load_average_before:.2f}"
    )
    return lines


def _read_level(r: ReadFigures) -> str:
    errors = f" {r.errors} ERRORS" if r.errors else ""
    noun = "client " if r.clients == 1 else "clients"
    cpu = ""
    if r.server_cpu_ms is not None and r.client_cpu_ms is not None:
        db = f"/db {r.db_backend_cpu_ms:.2f}" if r.db_backend_cpu_ms is not None else ""
        cpu = f" (CPU ms/req server {r.server_cpu_ms:.2f}{db}/client {r.client_cpu_ms:.2f})"
    return (
        f"{r.clients:>2} {noun}  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  "
        f"{r.per_second:,.0f} req/s{cpu}{errors}"
    )


def write_json(path: Path, meta: dict[str, Any], results: list[DatabaseResult]) -> None:
    document = {
        "meta": meta,
        "results": [
            {
                "database": r.database,
                "ingest": r.ingest,
                "ingest_derived": _derived(r.ingest),
                "floor": r.floor,
                "ratio_ingest_to_floor": r.ratio,
                "reads": r.reads,
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def _derived(i: IngestFigures | None) -> dict[str, Any] | None:
    if i is None:
        return None
    return {
        "server_cpu_ms_per_resource": i.per_resource_ms(i.server_cpu_s),
        "db_backend_cpu_ms_per_resource": i.per_resource_ms(i.db_backend_cpu_s),
        "client_cpu_ms_per_resource": i.per_resource_ms(i.client_cpu_s),
        "others_cpu_s": i.others_cpu_s,
        "meets_target": i.rate >= TARGET,
    }
