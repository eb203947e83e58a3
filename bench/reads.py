"""Read latency: GET [base]/Type/id of random existing resources by N concurrent clients.

The read interaction is https://hl7.org/fhir/R4/http.html#read. Each client is an asyncio task
with one keep-alive HTTP/1.1 connection, all on one thread. The requests are written by hand
(RFC 9112: a GET without body, a response framed by Content-Length) because on a 2-core machine
the client shares the CPU with the server: httpx costs about 0.8 ms (sync) to 1.6–3 ms (async)
of CPU per request, more than the read itself, where this costs about 0.1 ms.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ReadFigures:
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    per_second: float
    # Filled in by the caller, which sees the processes: CPU per request of each party.
    server_cpu_ms: float | None = None
    db_backend_cpu_ms: float | None = None
    client_cpu_ms: float | None = None


class ProtocolError(Exception):
    """The server's answer is not an HTTP/1.1 response this client can frame."""


def warm_up(
    base: str, targets: Sequence[str], clients: int, token: Callable[[], str], seed: int = 0
) -> None:
    """Untimed: opens the connections and warms both workers' caches and statement plans."""
    asyncio.run(_run(base, targets, clients, max(4 * clients, 50), 10, random.Random(seed), token))


def measure(
    base: str,
    targets: Sequence[str],
    clients: int,
    max_requests: int,
    max_seconds: float,
    token: Callable[[], str],
    seed: int = 1,
) -> ReadFigures:
    latencies, errors, seconds = asyncio.run(
        _run(base, targets, clients, max_requests, max_seconds, random.Random(seed), token)
    )
    ordered = sorted(latencies)
    return ReadFigures(
        clients=clients,
        requests=len(ordered),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        per_second=len(ordered) / seconds if seconds > 0 else 0.0,
    )


async def _run(
    base: str,
    targets: Sequence[str],
    clients: int,
    max_requests: int,
    max_seconds: float,
    rng: random.Random,
    token: Callable[[], str],
) -> tuple[list[float], int, float]:
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    latencies: list[float] = []
    errors = 0
    remaining = max_requests
    start = time.perf_counter()
    deadline = start + max_seconds

    async def one_client() -> None:
        nonlocal remaining, errors
        connection: Connection | None = None
        try:
            # Single-threaded event loop: the shared counters need no lock.
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                target = rng.choice(targets)
                sent = time.perf_counter()
                try:
                    connection = connection or await Connection.open(host, port)
                    status = await connection.get(f"/fhir/{target}", token())
                    if not connection.reusable:
                        connection.close()
                        connection = None
                except (OSError, asyncio.IncompleteReadError, ProtocolError):
                    status, connection = 0, None
                latencies.append(time.perf_counter() - sent)
                errors += status != 200
        finally:
            if connection is not None:
                connection.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - start


class Connection:
    """One keep-alive HTTP/1.1 connection doing GETs one after the other."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def get(self, path: str, token: str) -> int:
        """The response status; the body is read (and dropped) so the connection can be reused."""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: application/fhir+json\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0]!r}")
        headers = dict(_header(line) for line in lines[1:] if line)
        if not headers.get(b"content-length", b"").isdigit():
            raise ProtocolError("no Content-Length (chunked responses are not expected here)")
        await self.reader.readexactly(int(headers[b"content-length"]))
        self.reusable = headers.get(b"connection", b"").lower() != b"close"
        return int(parts[1])

    def close(self) -> None:
        self.writer.close()


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip().lower(), value.strip()


def percentile(ordered: Sequence[float], percent: int) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[rank - 1]
