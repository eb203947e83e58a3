"""Ingest: Synthea transaction bundles posted over HTTP by a few threads, timed per bundle.

Each bundle is one FHIR transaction (https://hl7.org/fhir/R4/http.html#transaction) sent with
``Prefer: return=minimal``. Bundles are serialised before the clock starts, so the client's CPU
per request is little more than the socket writes; the response bodies are parsed afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from medikus.loader import read_bundle

_HEADERS = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}


@dataclass(frozen=True)
class Payload:
    """One bundle, serialised: what goes over the wire (read from ``path`` when it is set)."""

    name: str
    body: bytes
    resources: int
    # Large loads keep their bundles on disk rather than in memory (bench/big.py); reading one
    # from the page cache costs far less than its transaction.
    path: Path | None = None

    def content(self) -> bytes:
        return self.body if self.path is None else self.path.read_bytes()


@dataclass(frozen=True)
class Posted:
    """One bundle's outcome; times are seconds since the start of the load."""

    payload: Payload
    started: float
    finished: float
    status: int
    response: bytes


@dataclass(frozen=True)
class Windows:
    """Resources per second over the whole load and its first and last tenth (by resources)."""

    overall: float
    first: float
    last: float


def prepare(paths: Sequence[Path]) -> list[Payload]:
    out = []
    for path in paths:
        bundle = read_bundle(path)
        out.append(Payload(path.name, orjson.dumps(bundle), len(bundle.get("entry") or [])))
    return out


def post_all(
    base: str,
    payloads: Sequence[Payload],
    clients: int,
    budget: float,
    progress: Callable[[Posted, int], None] | None = None,
    auth: httpx.Auth | None = None,
) -> tuple[list[Posted], float]:
    """Posts every payload, ``clients`` at a time; stops taking new ones after ``budget`` seconds.

    Returns the outcomes and the wall time from the first send to the last answer. ``progress``
    is called with each outcome and the number done so far (under a lock, so keep it short).
    """
    queue = list(reversed(payloads))
    lock = threading.Lock()
    stop = threading.Event()
    done: list[Posted] = []
    start = time.perf_counter()

    def next_payload() -> Payload | None:
        with lock:
            if stop.is_set() or not queue or time.perf_counter() - start > budget:
                return None
            return queue.pop()

    def run() -> None:
        # A new connection per bundle: uvicorn gives a connection to one worker for its whole
        # lifetime and keep-alive connections split unevenly between workers (seen: 19 s vs 5 s of
        # CPU). A fresh connection is accepted by whichever worker is idle, which balances the
        # load; its cost (~0.1 ms on loopback) is nothing next to a bundle's ~200 ms.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(
            base_url=base, timeout=httpx.Timeout(120), limits=limits, auth=auth
        ) as client:
            while (payload := next_payload()) is not None:
                sent = time.perf_counter() - start
                status, body = _post(client, payload)
                posted = Posted(payload, sent, time.perf_counter() - start, status, body)
                with lock:
                    done.append(posted)
                    if progress is not None:
                        progress(posted, len(done))

    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="post") as pool:
        futures = [pool.submit(run) for _ in range(clients)]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in finished:
                future.result()
        finally:
            stop.set()
    wall = max((p.finished for p in done), default=0.0)
    return sorted(done, key=lambda p: p.finished), wall


def _post(client: httpx.Client, payload: Payload) -> tuple[int, bytes]:
    """Status and body; a dropped connection is a failed bundle (status 0), not the end of the run."""
    try:
        response = client.post("/fhir", content=payload.content(), headers=_HEADERS)
    except httpx.TransportError as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    return response.status_code, response.content


def windows(posted: Sequence[Posted], wall: float) -> Windows:
    """Rates from completions: a tenth of the resources, counted from one completion to another.

    Both windows start at a completion (not at time 0), so the first one does not include the
    latency of filling the pipeline and the two are comparable.
    """
    ok = [p for p in posted if p.status == 200]
    total = sum(p.payload.resources for p in ok)
    if not ok or wall <= 0:
        return Windows(0.0, 0.0, 0.0)
    tenth = total / 10
    return Windows(total / wall, _first_rate(ok, tenth), _last_rate(ok, tenth))


def _first_rate(ok: Sequence[Posted], tenth: float) -> float:
    """Resources completed after the first completion until at least a tenth more are done."""
    count = 0
    for posted in ok[1:]:
        count += posted.payload.resources
        if count >= tenth:
            return _rate(count, posted.finished - ok[0].finished)
    return _rate(sum(p.payload.resources for p in ok), ok[-1].finished)


def _last_rate(ok: Sequence[Posted], tenth: float) -> float:
    """The last tenth: from the completion just before it to the last completion."""
    count = 0
    for i in range(len(ok) - 1, 0, -1):
        count += ok[i].payload.resources
        if count >= tenth:
            return _rate(count, ok[-1].finished - ok[i - 1].finished)
    return _rate(sum(p.payload.resources for p in ok), ok[-1].finished)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def created_targets(posted: Sequence[Posted]) -> list[str]:
    """``Type/id`` of every resource the transactions created or matched (from the Locations)."""
    targets: list[str] = []
    for p in posted:
        if p.status != 200:
            continue
        bundle: dict[str, Any] = orjson.loads(p.response)
        for entry in bundle.get("entry") or []:
            location = (entry.get("response") or {}).get("location") or ""
            parts = location.split("/_history/")[0].split("/")
            if len(parts) >= 2:
                targets.append(f"{parts[-2]}/{parts[-1]}")
    return targets


def first_error(posted: Sequence[Posted]) -> str:
    for p in posted:
        if p.status != 200:
            return f"{p.payload.name}: HTTP {p.status} {p.response[:300]!r}"
    return ""
