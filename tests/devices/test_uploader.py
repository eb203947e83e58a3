"""The uploader against a real record core: exactly once through lost answers, network cuts and a
stopped server; refusals bisected to the one bad reading."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from devices.outbox import Database, Outbox, State, open_database
from devices.phd.identifiers import full_url
from devices.reading import Reading
from devices.record_client import RecordClient
from devices.uploader import Uploader, build_bundle
from tests.devices.test_record_client import (
    FaultTransport,
    Station,
    client_for,
    create_patient,
    observation,
    station_fixture,
)

__all__ = ["station_fixture"]  # the shared server (module scope, both databases)

BTMAC = "http://hl7.org/fhir/sid/eui-48/bluetooth"
STATION_SID = "http://medikus.example/fhir/sid/station"
CONTINUA = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"
GATEWAY = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
PRESSURE = "00002a35-0000-1000-8000-00805f9b34fb"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def phd(mac: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [
            {"system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680", "value": "FE-ED-" + mac},
            {
                "type": {"coding": [{"system": CONTINUA, "code": "BTMAC"}]},
                "system": BTMAC,
                "value": mac,
            },
        ],
        "type": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "65573"}]},
    }


def phg() -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [{"system": STATION_SID, "value": "pilotzentrum-kusel"}],
        "type": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "531981"}]},
    }


def phd_observation(patient: str, value: str, **extra: Any) -> dict[str, Any]:
    """As the PHD IG: the de-dup identifier has a value and no system."""
    return observation(patient, value, **extra) | {"identifier": [{"value": value}]}


def payload(patient: str, value: str, mac: str = "00-E5-DE-AD-77-C3") -> dict[str, Any]:
    """A reading's payload: a temperature Observation derived from its Coincident-Timestamp
    Observation (referred to by its fullUrl), both referring to the devices by placeholder."""
    refs: dict[str, Any] = {
        "device": {"reference": "urn:medikus:phd"},
        "extension": [{"url": GATEWAY, "valueReference": {"reference": "urn:medikus:phg"}}],
    }
    coincident = phd_observation(patient, value + "-time", **refs) | {
        "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "67975"}]},
        "valueDateTime": "2026-03-02T09:30:00Z",
    }
    del coincident["valueQuantity"]
    measured = phd_observation(
        patient, value, derivedFrom=[{"reference": full_url(value + "-time")}]
    )
    return {
        "devices": {"phd": phd(mac), "phg": phg()},
        "observations": [measured | refs, coincident],
    }


@pytest.fixture(name="database")
def database_fixture(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "station.sqlite3")
    yield database
    database.close()


@pytest.fixture(name="outbox")
def outbox_fixture(database: Database) -> Outbox:
    return Outbox(database, lambda: datetime.now(UTC))


def enqueue(outbox: Outbox, patient: str, value: str, minute: int = 0, **kw: Any) -> int:
    reading = Reading("00:E5:DE:AD:77:C3", PRESSURE, b"\x00", T0 + timedelta(minutes=minute))
    item_id = outbox.append(reading)
    assert item_id is not None
    outbox.mark_ready(item_id, patient, kw.get("body") or payload(patient, value))
    return item_id


async def count(client: RecordClient, resource_type: str, identifier: str) -> int:
    return len(await client.search(resource_type, {"identifier": identifier}))


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def state_of(outbox: Outbox, item_id: int) -> State | None:
    item = outbox.get(item_id)
    return None if item is None else item.state


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the bundle -------------------------------------------------------------------------------


def test_bundle_of_conditional_creates_with_placeholders_resolved() -> None:
    numbers = iter(range(100))
    bundle = build_bundle(
        [
            payload("p1", "a"),
            payload("p1", "b"),
            payload("p1", "a"),  # the same reading sent twice by the device: once in the bundle
            payload("p2", "c", mac="00-E5-DE-AD-77-C4"),
        ],
        new_urn=lambda: f"urn:uuid:{next(numbers)}",
    )
    entries = bundle["entry"]
    devices = [e for e in entries if e["resource"]["resourceType"] == "Device"]
    observations = [e for e in entries if e["resource"]["resourceType"] == "Observation"]
    # two PHDs (by BTMAC, not by the first identifier) and the station, each once
    assert [dict(parse_qsl(e["request"]["ifNoneExist"])) for e in devices] == [
        {"identifier": f"{BTMAC}|00-E5-DE-AD-77-C3"},
        {"identifier": f"{STATION_SID}|pilotzentrum-kusel"},
        {"identifier": f"{BTMAC}|00-E5-DE-AD-77-C4"},
    ]
    values = [o["resource"]["identifier"][0]["value"] for o in observations]
    assert values == ["a", "a-time", "b", "b-time", "c", "c-time"]
    assert all(e["request"]["method"] == "POST" for e in entries)
    assert dict(parse_qsl(observations[0]["request"]["ifNoneExist"])) == {"identifier": "a"}
    assert observations[1]["fullUrl"] == full_url("a-time")
    urn = {e["resource"]["identifier"][-1]["value"]: e["fullUrl"] for e in entries}
    first, time_of_first = observations[0]["resource"], observations[1]["resource"]
    assert first["device"]["reference"] == urn["00-E5-DE-AD-77-C3"]
    assert first["extension"][0]["valueReference"]["reference"] == urn["pilotzentrum-kusel"]
    assert first["derivedFrom"] == [{"reference": observations[1]["fullUrl"]}]
    assert time_of_first["device"]["reference"] == urn["00-E5-DE-AD-77-C3"]
    assert observations[4]["resource"]["device"]["reference"] == urn["00-E5-DE-AD-77-C4"]
    assert len({e["fullUrl"] for e in entries}) == len(entries)


def test_identifier_criteria_keep_a_system_and_escape_separators() -> None:
    with_system = observation("p", "v|1,2")  # system OBSERVATION_SID
    bundle = build_bundle([{"devices": {}, "observations": [with_system]}])
    (entry,) = bundle["entry"]
    criteria = dict(parse_qsl(entry["request"]["ifNoneExist"]))
    assert criteria == {"identifier": f"{with_system['identifier'][0]['system']}|v\\|1\\,2"}
    assert entry["fullUrl"] == full_url("v|1,2")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"observations": "x"}, "'observations'"),
        ({"devices": {}, "observations": [{"resourceType": "Observation"}]}, "de-dup"),
        (
            {
                "devices": {},
                "observations": [observation("p", "v", device={"reference": "urn:medikus:phd"})],
            },
            "unknown placeholder",
        ),
        ({"devices": {"phd": {"resourceType": "Device"}}, "observations": []}, "identifier"),
    ],
)
def test_malformed_payloads_are_named(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build_bundle([body])


# --- against the record core ------------------------------------------------------------------


def test_lost_answers_and_resending_create_nothing_twice(
    station: Station, outbox: Outbox, tmp_path: Path
) -> None:
    patient = create_patient(station.server)
    values = [unique("idem") for _ in range(3)]
    ids = [enqueue(outbox, patient, v, minute=n) for n, v in enumerate(values)]

    async def scenario() -> None:
        transport = FaultTransport()
        async with client_for(station.server, station.key, transport) as client:
            transport.lost_answers = 2  # the record core commits, the station never hears of it
            uploader = Uploader(outbox, client, sleep=no_sleep)
            assert await uploader.drain() == 3
            assert transport.transactions() == 3  # the same batch, three times
            assert [state_of(outbox, i) for i in ids] == [State.UPLOADED] * 3

            # a crash before mark_uploaded: a fresh outbox sends the same payloads again
            again = Outbox(open_database(tmp_path / "again.sqlite3"), lambda: datetime.now(UTC))
            for n, value in enumerate(values):
                enqueue(again, patient, value, minute=n)
            assert await Uploader(again, client, sleep=no_sleep).drain() == 3

            for value in values:
                assert await count(client, "Observation", value) == 1
                assert await count(client, "Observation", f"{value}-time") == 1
            assert await count(client, "Device", f"{BTMAC}|00-E5-DE-AD-77-C3") == 1
            assert await count(client, "Device", f"{STATION_SID}|pilotzentrum-kusel") == 1
            (stored,) = await client.search("Observation", {"identifier": values[0]})
            (device,) = await client.search("Device", {"identifier": f"{BTMAC}|00-E5-DE-AD-77-C3"})
            assert stored["device"]["reference"] == f"Device/{device['id']}"
            assert stored["derivedFrom"][0]["reference"].startswith("Observation/")

    asyncio.run(scenario())


def test_back_off_is_exponential_capped_and_jittered(station: Station, outbox: Outbox) -> None:
    patient = create_patient(station.server)
    item = enqueue(outbox, patient, unique("backoff"))
    delays: list[float] = []

    async def scenario() -> None:
        transport = FaultTransport()
        transport.down = True

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            transport.down = len(delays) < 9
            await asyncio.sleep(0)

        async with client_for(station.server, station.key, transport) as client:
            jitter = iter([1.0] * 8 + [0.0])
            uploader = Uploader(
                outbox, client, sleep=sleep, jitter=lambda: next(jitter), max_backoff_s=60
            )
            assert await uploader.drain() == 1

    asyncio.run(scenario())
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 30]
    stored = outbox.get(item)
    assert stored is not None and stored.state is State.UPLOADED and stored.attempts == 9


def test_refusals_are_bisected_to_the_bad_readings(station: Station, outbox: Outbox) -> None:
    patient = create_patient(station.server)
    values = [unique("bisect") for _ in range(8)]
    broken = payload(patient, values[2])
    broken["observations"][0]["valueQuantity"] = {"value": "warm"}
    ghost = payload("no-such-patient", values[5])
    bodies: dict[int, dict[str, Any]] = {2: broken, 5: ghost}
    ids = [enqueue(outbox, patient, v, n, body=bodies.get(n)) for n, v in enumerate(values)]
    nonsense = outbox.append(Reading("00:E5:DE:AD:77:C3", PRESSURE, b"\x01", T0))
    assert nonsense is not None
    outbox.mark_ready(nonsense, patient, {"devices": {}, "observations": [{"oops": 1}]})

    async def scenario() -> None:
        transport = FaultTransport()
        async with client_for(station.server, station.key, transport) as client:
            assert await Uploader(outbox, client, sleep=no_sleep).drain() == 6
            assert transport.transactions() > 2
            for n, value in enumerate(values):
                expected = 0 if n in bodies else 1
                assert await count(client, "Observation", value) == expected

    asyncio.run(scenario())
    review = {item.id: item.review_reason or "" for item in outbox.review_items()}
    assert sorted(review) == sorted([ids[2], ids[5], nonsense])
    assert "record core refused" in review[ids[2]] and "valueQuantity" in review[ids[2]]
    assert "no-such-patient" in review[ids[5]]
    assert "payload invalid" in review[nonsense]
    assert outbox.statistics().counts[State.UPLOADED] == 6


def wait_for(condition: Callable[[], bool], timeout_s: float) -> Awaitable[None]:
    async def poll() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    return poll()


def test_readings_arriving_while_the_record_core_is_away_all_arrive_once(
    station: Station, outbox: Outbox
) -> None:
    """The network fails first, then the record core itself is stopped and started again;
    readings keep coming all the time."""
    patient = create_patient(station.server)
    values: list[str] = []

    def arrive(uploader: Uploader, n: int) -> None:
        values.append(unique(f"cut{n}"))
        enqueue(outbox, patient, values[-1], minute=n)
        uploader.wake()

    def uploaded() -> int:
        return outbox.statistics().counts[State.UPLOADED]

    async def scenario() -> None:
        transport = FaultTransport()
        async with client_for(station.server, station.key, transport) as client:
            uploader = Uploader(outbox, client, first_backoff_s=0.05, max_backoff_s=0.3)
            running = asyncio.create_task(uploader.run())
            arrive(uploader, 0)
            await wait_for(lambda: uploaded() == 1, 10)

            transport.down = True
            for n in range(1, 6):
                arrive(uploader, n)
                await asyncio.sleep(0.1)
            assert uploaded() == 1 and uploader.failures > 0
            transport.down = False
            await wait_for(lambda: uploaded() == 6, 20)
            assert uploader.failures == 0 and uploader.last_error is None

            await asyncio.to_thread(station.server.stop)
            for n in range(6, 12):
                arrive(uploader, n)
                await asyncio.sleep(0.1)
            assert uploaded() == 6 and "unreachable" in (uploader.last_error or "")
            restart = asyncio.create_task(asyncio.to_thread(station.server.start))
            for n in range(12, 15):  # still arriving while the server comes up
                arrive(uploader, n)
                await asyncio.sleep(0.1)
            await restart
            await wait_for(lambda: uploaded() == 15, 30)
            running.cancel()
            for value in values:
                assert await count(client, "Observation", value) == 1
            mine = await client.search("Observation", {"subject": f"Patient/{patient}"})
            assert len(mine) == 2 * 15

    try:
        asyncio.run(scenario())
    finally:
        if station.server.process is None or station.server.process.poll() is not None:
            station.server.start()  # the other tests of this module share the server


def test_wake_sends_at_once_and_batches_are_bounded(station: Station, outbox: Outbox) -> None:
    patient = create_patient(station.server)

    async def scenario() -> None:
        transport = FaultTransport()
        async with client_for(station.server, station.key, transport) as client:
            for n in range(7):
                enqueue(outbox, patient, unique("batch"), minute=n)
            uploader = Uploader(outbox, client, batch_size=3)
            running = asyncio.create_task(uploader.run())
            await wait_for(lambda: outbox.statistics().counts[State.UPLOADED] == 7, 20)
            assert transport.transactions() == 3  # 3 + 3 + 1
            await asyncio.wait_for(uploader.idle.wait(), 10)  # the drain has ended

            item = enqueue(outbox, patient, unique("late"))
            await asyncio.sleep(0.3)  # not woken: the uploader does not poll
            assert state_of(outbox, item) is State.READY and transport.transactions() == 3
            started = time.monotonic()
            uploader.wake()
            await wait_for(lambda: outbox.statistics().counts[State.UPLOADED] == 8, 10)
            assert time.monotonic() - started < 2
            running.cancel()

    asyncio.run(scenario())


def test_transport_faults_never_mark_anything_uploaded(station: Station, outbox: Outbox) -> None:
    patient = create_patient(station.server)
    item = enqueue(outbox, patient, unique("fault"))

    async def scenario() -> None:
        transport = FaultTransport()
        transport.faults = [lambda r: httpx.Response(503)] * 3
        attempts: list[float] = []

        async def sleep(seconds: float) -> None:
            attempts.append(seconds)
            stored = outbox.get(item)
            assert stored is not None and stored.state is State.READY
            await asyncio.sleep(0)

        async with client_for(station.server, station.key, transport) as client:
            assert await Uploader(outbox, client, sleep=sleep).drain() == 1
        assert len(attempts) == 3

    asyncio.run(scenario())
    stored = outbox.get(item)
    assert stored is not None and (stored.state, stored.attempts) == (State.UPLOADED, 3)
