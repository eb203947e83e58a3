"""Records of calls: an Encounter (class VR) per call through the whole app, the transitions of
video/calls.py, and exactly one report per transition with two hubs sharing one Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from compliance.auth import AuthServices
from compliance.keyring import Keyring
from compliance.principal import system_principal
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.video_setup import VIDEO_CALL
from tests.video.test_hub import Client, allowed, authenticate
from tests.video.video_support import Consultation, doctor_token, join_token, video_world
from video.calls import Call, Finished, Started, track
from video.hub import Hub
from video.redis_bus import RedisBus
from video.rooms import Participant, Role, Room

REDIS = "redis://127.0.0.1:6379/0"
T0 = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)


def _fhir(record: RecordCore, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = record.handle(FhirRequest(method, path, principal=system_principal(), **kwargs))
    assert response.status < 300, response.body
    found: dict[str, Any] = response.resource or orjson.loads(response.body)
    return found


def _encounters(record: RecordCore, appointment: str) -> list[dict[str, Any]]:
    query = [("appointment", f"Appointment/{appointment}")]
    bundle = _fhir(record, "GET", "Encounter", query=query)
    return [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture
def world(
    database_url: str, record: RecordCore, keyring: Keyring
) -> Iterator[tuple[TestClient, AuthServices, Consultation]]:
    with video_world(database_url, record, keyring) as world:
        yield world


def test_a_call_is_an_encounter_finished_at_its_end(
    world: tuple[TestClient, AuthServices, Consultation], record: RecordCore
) -> None:
    http, auth, c = world
    with http.websocket_connect("/video/ws") as doc:
        doc.send_json(
            {
                "type": "hello",
                "room": c.appointment,
                "token": doctor_token(auth, "dr.w", c.practitioner),
            }
        )
        assert doc.receive_json()["state"] == "in-call"
        assert _encounters(record, c.appointment) == []  # the host alone: no call yet
        with http.websocket_connect("/video/ws") as pat:
            token = join_token(auth, c.patient, c.appointment)
            pat.send_json({"type": "hello", "room": c.appointment, "token": token, "name": "Erika"})
            me = pat.receive_json()["you"]
            assert doc.receive_json()["type"] == "waiting"
            doc.send_json({"type": "admit", "participant": me["id"]})
            assert pat.receive_json()["type"] == "admitted"
            assert doc.receive_json()["type"] == "joined"

            [running] = _encounters(record, c.appointment)
            assert running["status"] == "in-progress"
            assert running["class"]["code"] == "VR"
            assert running["subject"] == {"reference": f"Patient/{c.patient}"}
            assert running["appointment"] == [{"reference": f"Appointment/{c.appointment}"}]
            assert running["identifier"] == [{"system": VIDEO_CALL, "value": f"{c.appointment}/1"}]
            individuals = [p["individual"] for p in running["participant"]]
            assert {"reference": f"Practitioner/{c.practitioner}"} in individuals
            assert {"display": "Erika"} in individuals
            assert {"display": "Dr. Anna Weber"} in individuals
            assert "end" not in running["period"]

            doc.send_json({"type": "end"})
            assert pat.receive_json() == {"type": "ended"}
            assert doc.receive_json() == {"type": "ended"}

    [done] = _encounters(record, c.appointment)
    assert done["id"] == running["id"]
    assert done["status"] == "finished"
    start = datetime.fromisoformat(done["period"]["start"])
    end = datetime.fromisoformat(done["period"]["end"])
    assert start <= end
    minutes = round((end - start).total_seconds() / 60, 2)
    assert done["length"] == {
        "value": minutes,
        "unit": "min",
        "system": "http://unitsofmeasure.org",
        "code": "min",
    }
    assert _fhir(record, "GET", f"Appointment/{c.appointment}")["status"] == "fulfilled"


def _room(*in_call: Participant, waiting: tuple[Participant, ...] = ()) -> Room:
    room = Room("a1")
    for p in (*in_call, *waiting):
        room.join(p)
    for p in in_call:
        if p.role is not Role.HOST:
            room.waiting.remove(p.id)
            room.in_call.append(p.id)
    return room


DOC = Participant("p-doc", "Dr. W", Role.HOST)
PAT = Participant("p-pat", "Erika", Role.GUEST)
STN = Participant("p-stn", "Station", Role.STATION)


def test_calls_start_with_the_second_participant_and_end_with_the_last() -> None:
    room = _room(DOC, waiting=(PAT, STN))
    assert track(room, T0) == []  # the host alone
    room.admit(DOC.id, PAT.id)
    assert track(room, T0) == [Started(Call("a1", 1, (DOC, PAT), T0))]
    room.admit(DOC.id, STN.id)
    assert track(room, T0 + timedelta(minutes=1)) == []
    room.leave(DOC.id)
    room.leave(PAT.id)
    assert track(room, T0 + timedelta(minutes=2)) == []  # the station is still in the call
    room.leave(STN.id)
    later = T0 + timedelta(minutes=3)
    [finished] = track(room, later)
    assert finished == Finished(Call("a1", 1, (DOC, PAT, STN), T0, later))
    assert finished.call.minutes == 3.0
    # A re-join starts the next call; the host's end finishes it.
    room.join(DOC)
    room.join(PAT)
    room.admit(DOC.id, PAT.id)
    assert track(room, later) == [Started(Call("a1", 2, (DOC, PAT), later))]
    room.end(DOC.id)
    assert track(room, later) == [Finished(Call("a1", 2, (DOC, PAT), later, later))]
    assert Room.from_json(room.to_json()) == room


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def started(self, call: Call) -> None:
        self.events.append(("started", call.room, call.number))

    def finished(self, call: Call) -> None:
        self.events.append(("finished", call.room, call.number))

    def closed(self, room: str, calls: int, at: datetime) -> None:
        self.events.append(("closed", room, calls))


def test_two_hubs_on_one_redis_report_each_transition_once() -> None:
    async def main() -> list[tuple[str, str, int]]:
        prefix = f"test:{secrets.token_hex(4)}:"
        recorders = [Recorder(), Recorder()]
        hubs = [Hub(RedisBus(REDIS, prefix), recorder=r, now=lambda: T0) for r in recorders]
        tasks: list[asyncio.Task[None]] = []

        async def connect(hub: Hub, token: str) -> Client:
            client = Client()
            tasks.append(asyncio.create_task(hub.serve(client, authenticate, allowed)))
            client.say(type="hello", room="a1", token=token)
            return client

        async def call() -> tuple[Client, Client]:
            doc = await connect(hubs[0], "doc")
            await doc.next()
            pat = await connect(hubs[1], "pat")
            guest = (await pat.next())["you"]
            assert (await doc.next())["type"] == "waiting"
            doc.say(type="admit", participant=guest["id"])
            assert (await pat.next())["type"] == "admitted"
            assert (await doc.next())["type"] == "joined"
            return doc, pat

        try:
            # Both leave at once (each on its own process): one of them finishes call 1.
            doc, pat = await call()
            doc.say(type="leave")
            pat.say(type="leave")
            for client in (doc, pat):
                while (await client.next())["type"] != "<closed>":
                    pass
            await asyncio.gather(*tasks)
            # Call 2, ended by the host: both connections leave after the end.
            doc, pat = await call()
            doc.say(type="end")
            for client in (doc, pat):
                assert await client.next() == {"type": "ended"}
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            for task in tasks:
                task.cancel()
            for hub in hubs:
                await hub.bus.close()
        return sorted(recorders[0].events + recorders[1].events)

    assert asyncio.run(main()) == [
        ("closed", "a1", 2),
        ("finished", "a1", 1),
        ("finished", "a1", 2),
        ("started", "a1", 1),
        ("started", "a1", 2),
    ]
