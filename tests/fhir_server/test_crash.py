"""A server killed mid-stream keeps every transaction whole (https://hl7.org/fhir/R4/http.html#transaction).

Several clients send transactions of 20–50 Observations, each marked with an identifier unique to
its transaction, to a two-worker ``medikus serve``; after a few responses the whole process group
gets SIGKILL. Restarted on the same database, every transaction is either fully there or not at
all, and every transaction that was answered 200 is fully there. SQLite and PostgreSQL, ~20 s each.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}
CLIENTS = 4
MAX_PER_CLIENT = 40  # bounds the stream should the kill never come
SYSTEM = "urn:tx"


def size_of(n: int) -> int:
    return 20 + (n * 7) % 31  # 20..50 entries


def transaction(n: int) -> bytes:
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"entry {i} of transaction {n}"},
                "identifier": [{"system": SYSTEM, "value": str(n)}],
                "subject": {"reference": "Patient/crash"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(size_of(n))
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


@dataclass
class Stream:
    """What the clients sent and which transactions the server answered with 200."""

    sent: set[int] = field(default_factory=set)
    answered: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)  # non-200 answers before the kill
    lock: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    next_n: int = 0

    def take(self) -> int:
        with self.lock:
            self.next_n += 1
            self.sent.add(self.next_n)
            return self.next_n

    def answer(self, n: int, response: httpx.Response) -> None:
        with self.lock:
            if response.status_code == 200:
                self.answered.add(n)
            else:
                self.failed[n] = f"{response.status_code} {response.text[:300]}"
            self.lock.notify_all()

    def wait_for(self, answers: int, timeout: float) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: len(self.answered) >= answers, timeout)


def send(server: ServerProcess, stream: Stream) -> None:
    """Sends transactions until the server dies (connection errors end the client)."""
    with httpx.Client(base_url=server.base, timeout=30, auth=server.auth) as client:
        for _ in range(MAX_PER_CLIENT):
            if stream.stop.is_set():
                return
            n = stream.take()
            try:
                response = client.post("/fhir", content=transaction(n), headers=FHIR_JSON)
            except httpx.TransportError:
                return  # killed: the outcome of n is unknown
            stream.answer(n, response)


@pytest.fixture
def restartable(database_url: str) -> Iterator[list[ServerProcess]]:
    """The servers a test starts on its database; all are stopped at the end."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()


def start(servers: list[ServerProcess], database_url: str) -> ServerProcess:
    server = ServerProcess(database_url, workers=2).start()
    servers.append(server)
    return server


def count(client: httpx.Client, **params: str) -> int:
    response = client.get("/fhir/Observation", params={**params, "_count": "0"})
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def seed(server: ServerProcess) -> None:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "crash"}
    response = httpx.put(
        f"{server.base}/fhir/Patient/crash",
        content=orjson.dumps(patient),
        headers=FHIR_JSON,
        auth=server.auth,
    )
    assert response.status_code == 201, response.text


def test_kill_leaves_no_partial_transaction(
    database_url: str, restartable: list[ServerProcess]
) -> None:
    server = start(restartable, database_url)
    seed(server)
    stream = Stream()
    kill_after = random.randint(4, 12)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        senders = [pool.submit(send, server, stream) for _ in range(CLIENTS)]
        assert stream.wait_for(kill_after, timeout=40), stream.failed
        server.kill()
        stream.stop.set()
        for sender in senders:
            sender.result()
    assert stream.failed == {}
    unanswered = stream.sent - stream.answered
    assert unanswered, "no transaction was in flight at the kill"

    restarted = start(restartable, database_url)
    with httpx.Client(base_url=restarted.base, timeout=30, auth=restarted.auth) as client:
        found = {n: count(client, identifier=f"{SYSTEM}|{n}") for n in sorted(stream.sent)}
        stored = count(client)
    partial = {n: c for n, c in found.items() if c not in (0, size_of(n))}
    assert partial == {}, f"partial transactions (killed after {kill_after} answers)"
    lost = [n for n in stream.answered if found[n] != size_of(n)]
    assert lost == []
    # Counted without the search index too: no Observation exists outside a whole transaction.
    assert stored == sum(found.values())
