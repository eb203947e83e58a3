"""End to end: unmodified bleak ↔ simulated BlueZ ↔ station ↔ a real ``medikus serve``.

Every reading reaches the record exactly once: per device type as correct PHD Observations,
after the network to the record core was cut, after the station was killed (SIGKILL) in the
middle of an upload, for a glucose meter with 500 stored records (later syncs fetch only the
new ones), and when a meter disconnects in the middle of its download.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.config import StationConfig
from devices.outbox import Outbox, State, open_database
from devices.service import open_station
from devices.simulator import DeviceConfig, Simulator, private_bus
from devices.station import LiveReading
from devices.station import Station as StationProcess
from medikus import __version__
from tests.devices.station_support import (
    check_in,
    coded,
    eventually,
    glucose_records,
    glucose_sequences,
    notify_when_subscribed,
    observations,
    run,
    station_config,
    wall_clock,
)
from tests.devices.test_record_client import Station, create_patient, station_fixture

__all__ = ["station_fixture"]  # the shared server (module scope, both databases)

TS = "E807050F0A1E00"  # 2024-05-15T10:30:00 (device clock)
CUFF = DeviceConfig("blood_pressure", "C0:FF:EE:10:00:01", name="Cuff")
THERMOMETER = DeviceConfig("thermometer", "C0:FF:EE:10:00:02", name="Thermo")
OXIMETER = DeviceConfig("pulse_oximeter", "C0:FF:EE:10:00:03", name="Oxi")
SCALE = DeviceConfig("weight_scale", "C0:FF:EE:10:00:04", name="Scale")
BELT = DeviceConfig("heart_rate", "C0:FF:EE:10:00:06", name="Belt")
METER = DeviceConfig("glucose_meter", "C0:FF:EE:10:00:05", name="Meter", pin="123456")


def quantity(observation: dict[str, Any]) -> tuple[Decimal, str]:
    value = observation["valueQuantity"]
    return Decimal(str(value["value"])), value["code"]


def component(observation: dict[str, Any], code: str) -> Decimal:
    for part in observation["component"]:
        if any(c["code"] == code for c in part["code"]["coding"]):
            return Decimal(str(part["valueQuantity"]["value"]))
    raise AssertionError(f"no component {code}")


async def serve(config: StationConfig, devices: list[DeviceConfig], body: Any) -> Any:
    """Runs simulator + station around ``body(sim)``; the station stops afterwards."""
    async with (
        Simulator(
            devices, bus_address=os.environ["DBUS_SYSTEM_BUS_ADDRESS"], clock=wall_clock
        ) as sim,
        open_station(config, version=__version__) as station,
    ):
        running = asyncio.create_task(station.run())
        try:
            return await body(sim, station)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


@pytest.fixture(autouse=True)
def bus_address(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private bus with nothing on it yet; bleak (and the station processes) use it."""
    with private_bus() as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address


def test_every_device_type_arrives_as_phd_observations(station: Station, tmp_path: Path) -> None:
    server = station.server
    patient = create_patient(server, "Becker")
    devices = [CUFF, THERMOMETER, OXIMETER, SCALE, BELT, METER]
    config = station_config(server, station.key, tmp_path, devices)
    check_in(config, patient)  # at the whole station

    live: list[LiveReading] = []

    async def body(sim: Simulator, station: StationProcess) -> None:
        watching = station.live.subscribe()  # as the consultation's data channel does
        sim.add_records(METER.address, glucose_records(3))
        script = [
            (CUFF, "2a35", f"1E780050005D00{TS}4800010000"),
            (THERMOMETER, "2a1c", "006E0100FF"),
            (OXIMETER, "2a5e", "0062004800"),
            (SCALE, "2a9d", "00B036"),
            (BELT, "2a37", "0048"),
        ]
        for device, characteristic, payload in script:
            await notify_when_subscribed(
                sim, device.address, characteristic, bytes.fromhex(payload)
            )
        await eventually(lambda: len(coded(observations(server, patient), "147842")) == 1)
        await eventually(lambda: len(glucose_sequences(observations(server, patient))) == 3)
        # A truncated payload is kept for review with its raw bytes, never dropped or guessed.
        assert sim.notify(CUFF.address, "2a35", bytes.fromhex("1E7800"))
        await eventually(lambda: _states(config)[State.REVIEW] == 1)
        while watching.backlog:
            live.append(await anext(watching))

    run(serve(config, devices, body))
    # Whoever watches got every reading as it arrived, with its Observations and patient.
    assert {r.device_address for r in live} == {d.address for d in devices}
    assert all(r.patient_id == patient and r.observations for r in live[:-1])
    assert live[-1].raw == bytes.fromhex("1E7800") and "nicht lesbar" in (
        live[-1].review_reason or ""
    )
    found = observations(server, patient)
    (panel,) = coded(found, "150020")
    assert [component(panel, c) for c in ("150021", "150022", "150023")] == [120, 80, 93]
    assert panel["component"][0]["valueQuantity"]["code"] == "mm[Hg]"
    assert {c["code"] for c in panel["code"]["coding"]} >= {"150020", "85354-9"}
    (cuff_pulse,) = coded(found, "149546")
    assert quantity(cuff_pulse) == (Decimal(72), "/min")
    (temperature,) = coded(found, "150364")
    assert quantity(temperature) == (Decimal("36.6"), "Cel")
    (spo2,) = coded(found, "150456")
    assert quantity(spo2) == (Decimal(98), "%")
    (weight,) = coded(found, "188736")
    assert quantity(weight) == (Decimal(70), "kg")
    (heart_rate,) = coded(found, "147842")
    assert quantity(heart_rate) == (Decimal(72), "/min")
    assert glucose_sequences(found) == [1, 2, 3]
    for observation in found:
        assert observation["subject"]["reference"] == f"Patient/{patient}"
        assert "phd" in str(observation["category"])
    # Each Observation names its device (PhdDevice with the BTMAC) and the station (PhgDevice).
    with httpx.Client(auth=server.auth, timeout=30) as http:
        device = http.get(f"{server.base}/fhir/{weight['device']['reference']}").json()
    btmac = {"system": "http://hl7.org/fhir/sid/eui-48/bluetooth", "value": "C0-FF-EE-10-00-04"}
    assert any(btmac.items() <= i.items() for i in device["identifier"])
    # The identifiers (PHD IG de-dup keys) are unique: nothing was stored twice.
    assert not [k for k, n in Counter(o["identifier"][0]["value"] for o in found).items() if n > 1]


def test_network_cut_then_every_reading_arrives_once(station: Station, tmp_path: Path) -> None:
    server = station.server
    patient = create_patient(server, "Netzausfall")
    config = station_config(server, station.key, tmp_path, [BELT])
    check_in(config, patient)
    beats = [bytes([0, 60 + i]) for i in range(30)]

    async def body(sim: Simulator, station: StationProcess) -> None:
        await notify_when_subscribed(sim, BELT.address, "2a37", beats[0])
        await eventually(lambda: len(observations(server, patient)) == 1)
        await asyncio.to_thread(server.stop)  # the rural network drops
        try:
            for beat in beats[1:]:
                assert sim.notify(BELT.address, "2a37", beat)
                await asyncio.sleep(0.05)
            await eventually(lambda: _states(config)[State.READY] >= 1, timeout=20)
        finally:
            await asyncio.to_thread(server.start)
        await eventually(lambda: len(observations(server, patient)) >= len(beats))

    run(serve(config, [BELT], body))
    values = sorted(int(quantity(o)[0]) for o in observations(server, patient))
    assert values == [60 + i for i in range(30)]  # all arrived, none twice
    assert _states(config)[State.UPLOADED] == 30


def test_sigkill_mid_upload_then_restart_exactly_once(station: Station, tmp_path: Path) -> None:
    server = station.server
    patient = create_patient(server, "Absturz")
    config = station_config(server, station.key, tmp_path, [METER])
    check_in(config, patient)
    config_file = tmp_path / "station.toml"
    config_file.write_text(
        f'station_id = "{config.station_id}"\nrecord_core = "{config.record_core}"\n'
        f'key_file = "{config.key_file}"\nstate_dir = "{config.state_dir}"\n'
        f"batch_size = 20\n"
        f'[[devices]]\naddress = "{METER.address}"\nkind = "glucose"\npin = "123456"\n'
    )
    command = [sys.executable, "-m", "medikus", "station", "run", "--config", str(config_file)]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=os.environ.copy(), start_new_session=True)

    async def body(sim: Simulator) -> None:
        sim.add_records(METER.address, glucose_records(300))
        process = start()
        try:
            # Killed while the download and the uploads are under way.
            await eventually(lambda: len(observations(server, patient)) > 0, every=0.05)
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            assert len(glucose_sequences(observations(server, patient))) < 300
            process = start()
            await eventually(
                lambda: len(glucose_sequences(observations(server, patient))) >= 300, timeout=120
            )
        finally:
            # (waiting in a thread: the simulator in this loop answers the station's goodbyes)
            os.killpg(process.pid, signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)

    async def simulated() -> None:
        async with Simulator(
            [METER], bus_address=os.environ["DBUS_SYSTEM_BUS_ADDRESS"], clock=wall_clock
        ) as sim:
            await body(sim)

    run(simulated())
    assert glucose_sequences(observations(server, patient)) == list(range(1, 301))


def test_glucose_meter_with_500_records_later_syncs_fetch_only_new(
    station: Station, tmp_path: Path
) -> None:
    server = station.server
    patient = create_patient(server, "Zucker")
    config = station_config(server, station.key, tmp_path, [METER])
    check_in(config, patient, METER.address)

    async def body(sim: Simulator, station: StationProcess) -> None:
        sim.add_records(METER.address, glucose_records(500))
        await eventually(lambda: len(glucose_sequences(observations(server, patient))) == 500)
        # The meter is used again: five new records, then it reconnects (meters disconnect
        # after a sync); the station asks only for records after the last one it stored.
        sim.add_records(METER.address, glucose_records(5, first=501))
        sim.disconnect(METER.address)
        await eventually(lambda: len(glucose_sequences(observations(server, patient))) == 505)

    run(serve(config, [METER], body))
    assert glucose_sequences(observations(server, patient)) == list(range(1, 506))
    # Downloaded once: the outbox holds each record once (a repeated record would be refused
    # by its unique key, but the cursor means the meter never sent one again).
    assert _states(config)[State.UPLOADED] == 505


def test_meter_disconnecting_mid_download_resumes_without_loss(
    station: Station, tmp_path: Path
) -> None:
    server = station.server
    patient = create_patient(server, "Abbruch")
    config = station_config(server, station.key, tmp_path, [METER])
    check_in(config, patient, METER.address)

    async def body(sim: Simulator, station: StationProcess) -> None:
        sim.add_records(METER.address, glucose_records(200))
        sim.disconnect_after(METER.address, 70)  # the link drops after 70 more notifications
        await eventually(lambda: len(glucose_sequences(observations(server, patient))) == 200)

    run(serve(config, [METER], body))
    assert glucose_sequences(observations(server, patient)) == list(range(1, 201))
    assert _states(config)[State.UPLOADED] == 200


def _states(config: StationConfig) -> Counter[State]:
    database = open_database(config.state_dir / "station.sqlite3")
    try:
        return Counter(Outbox(database, wall_clock).statistics().counts)
    finally:
        database.close()
