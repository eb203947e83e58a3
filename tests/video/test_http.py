"""/video/ws through the whole app: real tokens, an Appointment in the record core."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from compliance.auth import AuthServices
from compliance.keyring import Keyring
from fhir_server.core import RecordCore
from tests.video.video_support import (
    Consultation,
    doctor_token,
    join_token,
    video_world,
)


@pytest.fixture
def world(
    database_url: str, record: RecordCore, keyring: Keyring
) -> Iterator[tuple[TestClient, AuthServices, Consultation]]:
    with video_world(database_url, record, keyring) as world:
        yield world


def _hello(ws: WebSocketTestSession, room: str, token: str, **extra: str) -> dict[str, Any]:
    ws.send_text(orjson.dumps({"type": "hello", "room": room, "token": token, **extra}).decode())
    frame: dict[str, Any] = ws.receive_json()
    return frame


def test_doctor_admits_patient_of_the_join_link(
    world: tuple[TestClient, AuthServices, Consultation],
) -> None:
    http, auth, c = world
    doctor = doctor_token(auth, "dr.weber", c.practitioner)
    with http.websocket_connect("/video/ws") as doc:
        welcome = _hello(doc, c.appointment, doctor)
        assert welcome["you"]["role"] == "host"
        assert welcome["you"]["name"] == "Dr. Anna Weber"
        with http.websocket_connect("/video/ws") as pat:
            waiting = _hello(
                pat, c.appointment, join_token(auth, c.patient, c.appointment), name="Erika"
            )
            assert waiting["state"] == "waiting"
            me = waiting["you"]
            assert doc.receive_json() == {"type": "waiting", "participant": me}
            doc.send_json({"type": "admit", "participant": me["id"]})
            assert pat.receive_json()["type"] == "admitted"
            assert doc.receive_json() == {"type": "joined", "participant": me}
            pat.send_json({"type": "offer", "to": welcome["you"]["id"], "sdp": "v=0"})
            assert doc.receive_json()["from"] == me["id"]
            doc.send_json({"type": "end"})
            assert pat.receive_json() == {"type": "ended"}
            assert doc.receive_json() == {"type": "ended"}


def test_wrong_tokens_and_rooms_are_refused(
    world: tuple[TestClient, AuthServices, Consultation],
) -> None:
    http, auth, c = world
    other = doctor_token(auth, "dr.fremd", "not-in-this-appointment")
    link_for_other = join_token(auth, c.patient, "some-other-appointment")
    for room, token, code in (
        (c.appointment, "forged.token.x", "unauthorized"),
        (c.appointment, other, "forbidden"),
        (c.appointment, link_for_other, "forbidden"),
        ("no-such-appointment", other, "forbidden"),
    ):
        with http.websocket_connect("/video/ws") as ws:
            assert _hello(ws, room, token)["code"] == code
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008
