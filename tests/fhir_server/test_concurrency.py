"""Concurrent writers on a two-worker server lose no update (https://hl7.org/fhir/R4/http.html#concurrency).

Two clients that update the same version with ``If-Match`` at the same moment: exactly one wins
(200), the other gets 412 and writes nothing — for plain updates and for transactions carrying
``ifMatch`` entries. Writers without ``If-Match`` are serialised: every update becomes its own
version. Real ``medikus serve`` processes with 2 workers, real SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess, _pg_schema_url

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ROUNDS = 20
TX_ROUNDS = 10
WRITERS, UPDATES_EACH = 8, 10
T = TypeVar("T")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per database for the module (the tests write to different resources)."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('race') / 'race.sqlite3'}"
        else:
            schema = contextmanager(_pg_schema_url)(request.getfixturevalue("pg_dsn"))
            url = stack.enter_context(schema)
        process = ServerProcess(url, workers=2).start()
        stack.callback(process.stop)
        yield process


def clients(server: ServerProcess, n: int) -> list[httpx.Client]:
    """One client (own connection pool) per writer thread."""
    return [
        httpx.Client(base_url=f"{server.base}/fhir", timeout=60, auth=server.auth) for _ in range(n)
    ]


def at_once(tasks: list[Callable[[], T]]) -> list[T]:
    """Runs the tasks in threads released together by a barrier; re-raises their errors."""
    barrier = threading.Barrier(len(tasks), timeout=30)

    def run(task: Callable[[], T]) -> T:
        barrier.wait()
        return task()

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(run, task) for task in tasks]
        return [f.result() for f in futures]


def patient(id: str, marker: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id, "name": [{"text": marker}]}


def put(client: httpx.Client, resource: dict[str, Any], if_match: str | None = None) -> int:
    headers = dict(FHIR_JSON)
    if if_match is not None:
        headers["If-Match"] = if_match
    url = f"{resource['resourceType']}/{resource['id']}"
    return client.put(url, content=orjson.dumps(resource), headers=headers).status_code


def history_markers(client: httpx.Client, path: str) -> dict[int, str]:
    """versionId -> the marker (name text) of every version of one Patient."""
    bundle = client.get(f"{path}/_history", params={"_count": "1000"}).json()
    assert not [link for link in bundle["link"] if link["relation"] == "next"]
    return {
        int(e["resource"]["meta"]["versionId"]): e["resource"]["name"][0]["text"]
        for e in bundle["entry"]
    }


def total(client: httpx.Client, rtype: str, identifier: str) -> int:
    response = client.get(rtype, params={"identifier": identifier, "_count": "0"})
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def test_if_match_race_has_one_winner(server: ServerProcess) -> None:
    one, two = clients(server, 2)
    with one, two:
        assert put(one, patient("race", "v1")) == 201
        winners: dict[int, str] = {}  # version -> marker of the update that made it
        for round in range(ROUNDS):
            version = round + 1
            markers = [f"r{round}-c{c}" for c in (0, 1)]
            statuses = at_once(
                [
                    partial(put, c, patient("race", m), f'W/"{version}"')
                    for c, m in zip((one, two), markers, strict=True)
                ]
            )
            assert sorted(statuses) == [200, 412], (round, statuses)
            winners[version + 1] = markers[statuses.index(200)]
        current = one.get("Patient/race")
        assert current.headers["etag"] == f'W/"{ROUNDS + 1}"'
        assert history_markers(one, "Patient/race") == {1: "v1", **winners}


def transaction_with_if_match(round: int, client_no: int, version: int) -> dict[str, Any]:
    """Updates the shared Patient and creates two resources marked with (round, client)."""
    marker = f"r{round}-c{client_no}"
    identifier = [{"system": "urn:race", "value": marker}]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "race"},
        "identifier": identifier,
        "subject": {"reference": "Patient/shared"},
    }
    entries = [
        {
            "resource": {"resourceType": "Patient", "identifier": identifier},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
        {
            "resource": patient("shared", marker),
            "request": {"method": "PUT", "url": "Patient/shared", "ifMatch": f'W/"{version}"'},
        },
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post_bundle(client: httpx.Client, bundle: dict[str, Any]) -> int:
    return client.post("", content=orjson.dumps(bundle), headers=FHIR_JSON).status_code


def test_if_match_race_between_transactions(server: ServerProcess) -> None:
    one, two = clients(server, 2)
    with one, two:
        assert put(one, patient("shared", "v1")) == 201
        winners: dict[int, str] = {}
        for round in range(TX_ROUNDS):
            version = round + 1
            bundles = [transaction_with_if_match(round, c, version) for c in (0, 1)]
            statuses = at_once(
                [partial(post_bundle, c, b) for c, b in zip((one, two), bundles, strict=True)]
            )
            assert sorted(statuses) == [200, 412], (round, statuses)
            winner = statuses.index(200)
            winners[version + 1] = f"r{round}-c{winner}"
            for c in (0, 1):
                expected = 1 if c == winner else 0  # the loser wrote none of its entries
                for rtype in ("Patient", "Observation"):
                    assert total(one, rtype, f"urn:race|r{round}-c{c}") == expected
        assert history_markers(one, "Patient/shared") == {1: "v1", **winners}


def updates(client: httpx.Client, writer: int) -> list[int]:
    """UPDATES_EACH unconditional updates of Patient/busy, each with its own marker."""
    return [put(client, patient("busy", f"w{writer}-u{u}")) for u in range(UPDATES_EACH)]


def test_updates_without_if_match_are_serialised(server: ServerProcess) -> None:
    writers = clients(server, WRITERS)
    try:
        assert put(writers[0], patient("busy", "v1")) == 201

        statuses = at_once([partial(updates, c, w) for w, c in enumerate(writers)])
        assert {s for each in statuses for s in each} == {200}
        markers = history_markers(writers[0], "Patient/busy")
        updates_made = WRITERS * UPDATES_EACH
        assert sorted(markers) == list(range(1, updates_made + 2))
        expected = {f"w{w}-u{u}" for w in range(WRITERS) for u in range(UPDATES_EACH)}
        assert sorted(markers.values()) == sorted({"v1", *expected})
        # Each writer's own updates appear in the order it sent them.
        for w in range(WRITERS):
            mine = [m for _, m in sorted(markers.items()) if m.startswith(f"w{w}-")]
            assert mine == [f"w{w}-u{u}" for u in range(UPDATES_EACH)]
    finally:
        for client in writers:
            client.close()
