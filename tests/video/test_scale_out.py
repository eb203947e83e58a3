"""Two ``medikus serve`` processes behind one Redis: a doctor connected to one and a patient
connected to the other meet in the same room (waiting → admit → signalling → end)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from compliance.auth import AuthServices
from compliance.keyring import Keyring
from tests.compliance.auth_helpers import FAST_HASHER
from tests.conftest import ServerProcess
from tests.video.video_support import Consultation, doctor_token, join_token, seed_consultation

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def two_servers(database_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    first = ServerProcess(database_url, env={"MEDIKUS_REDIS_URL": REDIS}).start()
    try:
        # Same public URL: a token is valid on every worker behind the proxy.
        second = ServerProcess(
            database_url, env={"MEDIKUS_REDIS_URL": REDIS, "MEDIKUS_PUBLIC_URL": first.base}
        ).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def hello(ws: ClientConnection, room: str, token: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "hello", "room": room, "token": token}))
    return receive(ws)


def receive(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=15))
    return frame


def test_participants_on_different_processes_meet(
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str, keyring: Keyring
) -> None:
    first, second = two_servers

    def create(resource: dict[str, Any]) -> str:
        answer = httpx.post(
            f"{first.base}/fhir/{resource['resourceType']}",
            json=resource,
            auth=first.auth,
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    c: Consultation = seed_consultation(create)
    with closing(AuthServices.open(database_url, keyring, first.base, hasher=FAST_HASHER)) as auth:
        doctor = doctor_token(auth, f"dr.{secrets.token_hex(3)}", c.practitioner)
        patient = join_token(auth, c.patient, c.appointment)

    ws_one = first.base.replace("http", "ws") + "/video/ws"
    ws_two = second.base.replace("http", "ws") + "/video/ws"
    with connect(ws_one) as doc, connect(ws_two) as pat:
        host = hello(doc, c.appointment, doctor)["you"]
        assert host["role"] == "host"
        waiting = hello(pat, c.appointment, patient)
        assert waiting["state"] == "waiting"
        me = waiting["you"]
        assert receive(doc) == {"type": "waiting", "participant": me}  # across processes
        doc.send(json.dumps({"type": "admit", "participant": me["id"]}))
        assert receive(pat)["type"] == "admitted"
        assert receive(doc) == {"type": "joined", "participant": me}
        pat.send(json.dumps({"type": "offer", "to": host["id"], "sdp": "v=0"}))
        relayed = receive(doc)
        assert (relayed["type"], relayed["from"], relayed["sdp"]) == ("offer", me["id"], "v=0")
        doc.send(json.dumps({"type": "answer", "to": me["id"], "sdp": "v=0 answer"}))
        assert receive(pat)["from"] == host["id"]
        doc.send(json.dumps({"type": "end"}))
        assert receive(pat) == {"type": "ended"}
        assert receive(doc) == {"type": "ended"}
    # The room stays ended for every process.
    with connect(ws_two) as late:
        refused = hello(late, c.appointment, doctor)
        assert (refused["type"], refused["code"]) == ("error", "room-ended")
