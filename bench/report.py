"""Figures of one benchmark run, the table printed at the end and the JSON written next to it.

What is measured is FHIR ingest via transactions and reads (https://hl7.org/fhir/R4/http.html).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess  # nosec B404 # git rev-parse for the record, fixed arguments
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.reads import ReadFigures
from bench.search import LevelFigures, QueryResult
from bench.server import load_average

TARGET = 1500.0  # resources/s on a 2-core machine (the target)
# The last tenth of a load may be this much slower than the first before it counts as decay.
DECAY_TOLERANCE = 0.8


def run_meta(
    args: argparse.Namespace, started: datetime, load: float, **fields: Any
) -> dict[str, Any]:
    """What a results file records about its run: when, which commit, the machine and its load,
    the arguments, plus ``fields``."""
    commit = subprocess.run(  # nosec B603 B607 # fixed arguments
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "load_average_at_end": load_average(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **fields,
    }


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
    floor_text = ""
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
    if not i.resources:  # nothing loaded: no CPU per resource to show
        return lines
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


@dataclass
class BigResult:
    """One database of ``python -m bench big``/``search``: the replicated load, then the searches."""

    database: str
    ingest: IngestFigures | None = None
    patients: int = 0
    analyzed: bool = False  # ANALYZE ran between the load and the searches (PostgreSQL)
    searches: list[QueryResult] = field(default_factory=list)

    @property
    def decay(self) -> float | None:
        """Rate of the last tenth of the load over that of the first (1.0: no decay)."""
        i = self.ingest
        return i.last10_rate / i.first10_rate if i is not None and i.first10_rate else None

    @property
    def failed(self) -> bool:
        i = self.ingest
        if i is None or i.bundles_failed or not i.complete:
            return True
        return any(q.errors or q.no_values for q in self.searches)


def big_table(results: list[BigResult]) -> str:
    lines = []
    for result in results:
        lines += _ingest_lines(DatabaseResult(result.database, ingest=result.ingest))
        if result.decay is not None:
            verdict = "no decay" if result.decay >= DECAY_TOLERANCE else "DECAY"
            lines.append(
                f"         {'':<10}  last10%/first10% {result.decay:.2f} ({verdict}; "
                f"tolerance {DECAY_TOLERANCE})"
            )
    for result in results:
        lines += _search_lines(result)
    return "\n".join(line.rstrip() for line in lines)


def _search_lines(result: BigResult) -> list[str]:
    if not result.searches:
        return []
    analyzed = ", ANALYZE after the load" if result.analyzed else ""
    lines = [
        f"search   {result.database:<10}  {result.patients} patients{analyzed}; "
        "p50/p99 ms per client level; the target is the 1-client p99"
    ]
    for q in result.searches:
        levels = "  ".join(_search_level(level) for level in q.levels)
        verdict = "meets" if q.meets_target else "MISSES"
        matches = next((lv.matches for lv in q.levels if lv.matches is not None), None)
        shown = f"matches {matches:,.0f}" if matches is not None else "matches -"
        lines.append(f"  {q.name:<20} <={q.target_ms:>4.0f} ms  {levels}  {shown}  {verdict}")
        lines.append(f"      {q.shape}")
        if q.no_values:
            lines.append(f"      NOT RUN: {q.no_values}")
        for level in q.levels:
            if level.errors:
                lines.append(
                    f"      FAILED {level.errors}/{level.requests} with {level.clients} "
                    f"client(s): {level.first_error}"
                )
        if q.index_use is not None:
            lines.append(f"      pg {q.index_use.text()}")
    return lines


def _search_level(level: LevelFigures) -> str:
    return (
        f"{level.clients:>2}c {level.p50_ms:7.2f}/{level.p99_ms:7.2f} ({level.per_second:,.0f}/s)"
    )


def plans_text(results: list[BigResult], width: int = 200, height: int = 60) -> str:
    """The plans, cut to ``height`` lines of ``width`` characters (an id list can run to
    kilobytes); the JSON has them whole."""
    lines: list[str] = []
    for r in results:
        for q in r.searches:
            plan = q.plan.splitlines()
            if not plan:
                continue
            lines.append(f"--- plan {r.database} {q.name}: {q.shape}")
            lines += [
                line if len(line) <= width else line[: width - 1] + "…" for line in plan[:height]
            ]
            if len(plan) > height:
                lines.append(f"    … {len(plan) - height} more lines in the JSON")
    return "\n".join(lines)


def write_big_json(path: Path, meta: dict[str, Any], results: list[BigResult]) -> None:
    document = {
        "meta": meta,
        "results": [
            {
                "database": r.database,
                "ingest": r.ingest,
                "ingest_derived": _derived(r.ingest),
                "decay_last10_over_first10": r.decay,
                "patients": r.patients,
                "analyzed": r.analyzed,
                "searches": [
                    {
                        "name": q.name,
                        "search": q.shape,
                        "patient_scoped": q.patient_scoped,
                        "target_p99_ms": q.target_ms,
                        "meets_target": q.meets_target,
                        "no_values": q.no_values,
                        "levels": q.levels,
                        "index_use": q.index_use,
                        "plan": q.plan,
                    }
                    for q in r.searches
                ],
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
