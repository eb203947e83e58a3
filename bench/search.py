"""Search latency: eight typical FHIR searches with fresh parameter values, by 1 and N clients.

Searches: https://hl7.org/fhir/R4/search.html (chains, ``_has``, ``_include``, ``_summary``);
operations: https://hl7.org/fhir/R4/observation-operation-lastn.html and
https://hl7.org/fhir/R4/patient-operation-everything.html. Every request draws new values from the
loaded data, so no two requests need be alike. A search that fails is counted and its first answer
(status and OperationOutcome text) is kept: the run goes on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from bench.ingest import Posted
from bench.pgstats import IndexUse
from bench.reads import percentile
from bench.replicate import Facts

Params = list[tuple[str, str]]
HEART_RATE = "http://loinc.org|8867-4"
PATIENT_TARGET_MS = 20.0
OTHER_TARGET_MS = 100.0
_SAMPLED = 20  # answers per level whose matches are counted (parsing costs client CPU)


class NoValues(Exception):
    """The loaded data has nothing to draw this search's parameter values from."""


@dataclass(frozen=True)
class Patient:
    id: str  # the server's id
    facts: Facts


@dataclass(frozen=True)
class Catalogue:
    """The loaded patients (server ids) and what their bundles contained."""

    patients: tuple[Patient, ...]
    heart_code: str  # the code of the first search (see ``build``)

    @classmethod
    def build(cls, posted: Sequence[Posted], facts: dict[str, Facts]) -> Catalogue:
        """From the transaction responses (same order as the entries) of the bundles that loaded.

        ``facts`` maps a payload name to its bundle's facts.
        """
        patients = []
        for p in posted:
            known = facts.get(p.payload.name)
            if p.status != 200 or known is None:
                continue
            entries = orjson.loads(p.response).get("entry") or []
            if known.patient_entry < len(entries):
                location = (entries[known.patient_entry].get("response") or {}).get("location")
                if isinstance(location, str) and location:
                    patients.append(Patient(_id_of(location), known))
        return cls(tuple(patients), _heart_code(patients))

    def pick(self, rng: random.Random, has: Callable[[Facts], Any] = bool) -> Patient:
        candidates = [p for p in self.patients if has(p.facts)]
        if not candidates:
            raise NoValues("no loaded patient has the data this search needs")
        return rng.choice(candidates)


def _id_of(location: str) -> str:
    return location.split("/_history/")[0].rstrip("/").rsplit("/", 1)[-1]


def _heart_code(patients: Sequence[Patient]) -> str:
    """LOINC 8867-4 (heart rate) when the data has it; else its most frequent vital sign.

    The Synthea sample in demo_data records no heart rate: an always-empty search would not
    exercise the sort, so the most frequent vital sign stands in (the report shows which).
    """
    counts = Counter(c for p in patients for c in p.facts.vital_sign_codes)
    if HEART_RATE in counts or not counts:
        return HEART_RATE
    return counts.most_common(1)[0][0]


@dataclass(frozen=True)
class Query:
    name: str
    shape: Callable[[Catalogue], str]  # the search as shown in the report; … for drawn values
    patient_scoped: bool
    draw: Callable[[Catalogue, random.Random], tuple[str, Params]]  # path below /fhir, params

    @property
    def target_ms(self) -> float:
        return PATIENT_TARGET_MS if self.patient_scoped else OTHER_TARGET_MS


def _obs_by_patient_code(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    patient = c.pick(rng, lambda f: c.heart_code in f.vital_sign_codes)
    params = [("patient", patient.id), ("code", c.heart_code), ("_sort", "-date")]
    return "Observation", [*params, ("_count", "20")]


def _obs_by_patient_code_shape(c: Catalogue) -> str:
    shape = f"Observation?patient=…&code={c.heart_code}&_sort=-date&_count=20"
    if c.heart_code != HEART_RATE:
        shape += f"  ({HEART_RATE} is not in the data: its most frequent vital sign instead)"
    return shape


def _patient_name(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    return "Patient", [("name", rng.choice(c.pick(rng, lambda f: f.names).facts.names))]


def _encounter_date(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    dates = c.pick(rng, lambda f: f.encounter_dates).facts.encounter_dates
    return "Encounter", [("date", f"ge{rng.choice(dates)}"), ("_include", "Encounter:subject")]


def _obs_chained_name(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    name = rng.choice(c.pick(rng, lambda f: f.names).facts.names)
    return "Observation", [("subject:Patient.name", name)]


def _patient_has_condition(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    codes = c.pick(rng, lambda f: f.condition_codes).facts.condition_codes
    return "Patient", [("_has:Condition:subject:code", rng.choice(codes))]


def _obs_code_count(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    codes = c.pick(rng, lambda f: f.observation_codes).facts.observation_codes
    return "Observation", [("code", rng.choice(codes)), ("_summary", "count")]


def _lastn(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    patient = c.pick(rng, lambda f: f.vital_sign_codes)
    return "Observation/$lastn", [("patient", patient.id), ("category", "vital-signs")]


def _everything(c: Catalogue, rng: random.Random) -> tuple[str, Params]:
    return f"Patient/{c.pick(rng).id}/$everything", []


QUERIES: tuple[Query, ...] = (
    Query(
        "obs-patient-code",
        _obs_by_patient_code_shape,
        True,
        _obs_by_patient_code,
    ),
    Query("patient-name", lambda c: "Patient?name=…", False, _patient_name),
    Query(
        "encounter-date-incl",
        lambda c: "Encounter?date=ge…&_include=Encounter:subject",
        False,
        _encounter_date,
    ),
    Query(
        "obs-chain-name", lambda c: "Observation?subject:Patient.name=…", False, _obs_chained_name
    ),
    Query(
        "patient-has-cond",
        lambda c: "Patient?_has:Condition:subject:code=…",
        False,
        _patient_has_condition,
    ),
    Query("obs-code-count", lambda c: "Observation?code=…&_summary=count", False, _obs_code_count),
    Query(
        "obs-lastn",
        lambda c: "Observation/$lastn?patient=…&category=vital-signs",
        True,
        _lastn,
    ),
    Query("patient-everything", lambda c: "Patient/…/$everything", True, _everything),
)


@dataclass(frozen=True)
class LevelFigures:
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    per_second: float
    matches: float | None  # mean Bundle.total (else entries) of up to 20 successful answers
    first_error: str  # "HTTP 400: <OperationOutcome text>" of the first failure, else ""


@dataclass
class QueryResult:
    name: str
    shape: str
    patient_scoped: bool
    target_ms: float
    levels: list[LevelFigures] = field(default_factory=list)
    no_values: str = ""  # why no request was sent (nothing to draw values from)
    index_use: IndexUse | None = None  # scans during this search's runs, on PostgreSQL
    plan: str = ""  # EXPLAIN (ANALYZE, BUFFERS) of the slowest statement, on PostgreSQL

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    @property
    def meets_target(self) -> bool:
        single = [level for level in self.levels if level.clients == 1]
        return (
            not self.no_values
            and self.errors == 0
            and bool(single)
            and single[0].p99_ms <= self.target_ms
        )


def measure(
    base: str,
    auth: httpx.Auth,
    query: Query,
    catalogue: Catalogue,
    clients: int,
    requests: int,
    seconds: float,
    seed: int,
) -> LevelFigures:
    """``requests`` searches (fewer if ``seconds`` run out) by ``clients`` concurrent clients."""
    rng = random.Random(f"{seed}/{query.name}/{clients}")
    tally = _Tally()
    wall = asyncio.run(
        _session(base, auth, query, catalogue, clients, requests, seconds, rng, tally)
    )
    ordered = sorted(tally.latencies)
    return LevelFigures(
        clients=clients,
        requests=len(ordered),
        errors=tally.errors,
        seconds=wall,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        per_second=len(ordered) / wall if wall > 0 else 0.0,
        matches=sum(tally.matches) / len(tally.matches) if tally.matches else None,
        first_error=tally.first_error,
    )


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    matches: list[int] = field(default_factory=list)

    def record(self, seconds: float, status: int, body: bytes) -> None:
        self.latencies.append(seconds)
        if status != 200:
            self.errors += 1
            self.first_error = self.first_error or f"HTTP {status}: {outcome_text(body)}"
        elif len(self.matches) < _SAMPLED:
            self.matches.append(_matches(body))


async def _session(
    base: str,
    auth: httpx.Auth,
    query: Query,
    catalogue: Catalogue,
    clients: int,
    requests: int,
    seconds: float,
    rng: random.Random,
    tally: _Tally,
) -> float:
    """Warms up untimed, then times; returns the timed part's wall time."""
    # One keep-alive connection per client, as a client application holds. The clients are made
    # before the clock starts: each builds an SSL context (~20 ms of CPU, blocking the loop).
    pool = [
        httpx.AsyncClient(base_url=f"{base}/fhir", timeout=120, auth=auth) for _ in range(clients)
    ]
    try:
        # Opens every connection and warms the workers' caches and statement plans.
        await _run(
            pool, query, catalogue, max(2 * clients, min(10, requests)), seconds, rng, _Tally()
        )
        return await _run(pool, query, catalogue, requests, seconds, rng, tally)
    finally:
        await asyncio.gather(*(client.aclose() for client in pool))


async def _run(
    pool: Sequence[httpx.AsyncClient],
    query: Query,
    catalogue: Catalogue,
    requests: int,
    seconds: float,
    rng: random.Random,
    tally: _Tally,
) -> float:
    remaining = requests
    start = time.perf_counter()
    deadline = start + seconds

    async def one_client(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        # Single-threaded event loop: the shared counters need no lock.
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            path, params = query.draw(catalogue, rng)
            sent = time.perf_counter()
            status, body = await _get(client, path, params)
            tally.record(time.perf_counter() - sent, status, body)

    await asyncio.gather(*(one_client(client) for client in pool))
    return time.perf_counter() - start


async def _get(client: httpx.AsyncClient, path: str, params: Params) -> tuple[int, bytes]:
    """Status and body; a dropped connection is a failed search (status 0), not the end of the run."""
    try:
        url = f"{path}?{urlencode(params)}" if params else path
        response = await client.get(url, headers={"Accept": "application/fhir+json"})
    except httpx.HTTPError as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    return response.status_code, response.content


def outcome_text(body: bytes) -> str:
    """The issues of an OperationOutcome (diagnostics, else details), else the body's start."""
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return body[:300].decode("utf-8", "replace")
    texts = [
        str(
            issue.get("diagnostics")
            or (issue.get("details") or {}).get("text")
            or issue.get("code")
        )
        for issue in outcome.get("issue") or []
        if isinstance(issue, dict)
    ]
    return "; ".join(texts)[:300]


def _matches(body: bytes) -> int:
    bundle = orjson.loads(body)
    if isinstance(bundle, dict) and isinstance(bundle.get("total"), int):
        return int(bundle["total"])
    return len(bundle.get("entry") or []) if isinstance(bundle, dict) else 0
