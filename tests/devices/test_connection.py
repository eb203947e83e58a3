"""devices.connection: one device kept connected through the simulated BlueZ — reconnect after
out-of-range, back-off, pairing with the agent, glucose resume, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from devices.connection import Backoff, ConnectionState, DeviceConnection
from devices.gatt import uuids
from devices.link import Link
from devices.pairing_agent import PairingAgent
from devices.profiles import profiles_for
from devices.profiles.device_information import DeviceInformation
from devices.reading import Reading
from devices.simulator import DeviceConfig
from devices.simulator.payloads import glucose_measurement
from tests.devices.profiles.support import (
    BERLIN,
    MemoryOutbox,
    bus_address,
    run,
    settle,
    simulator,
    station_clock,
    wall_clock,
)

__all__ = ["bus_address"]

CUFF = "AA:BB:CC:DD:EE:01"
METER = "AA:BB:CC:DD:EE:05"
MEASUREMENT = bytes.fromhex("007D0052006000")
S = ConnectionState


class Harness:
    """Records what the station would see: states, delays asked for, device information."""

    def __init__(self) -> None:
        self.states: list[ConnectionState] = []
        self.delays: list[float] = []
        self.information: list[DeviceInformation] = []

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.05)  # time is injected: the real wait is short

    def observe(self, address: str, state: ConnectionState) -> None:
        self.states.append(state)

    async def on_information(self, info: DeviceInformation) -> None:
        self.information.append(info)

    def connection(
        self, address: str, kind: str, sink: Callable[[Reading], Awaitable[None]], **options: Any
    ) -> DeviceConnection:
        cursor = sink if isinstance(sink, MemoryOutbox) else MemoryOutbox()
        arguments: dict[str, Any] = {
            "profiles": profiles_for(kind, cursor),
            "sink": sink,
            "clock": station_clock,
            "device_zone": BERLIN,
            "link_factory": lambda: Link(clock=station_clock, timeout=1.5),
            "sleep": self.sleep,
            "backoff": Backoff(initial=1, maximum=8),
            "observer": self.observe,
            "on_information": self.on_information,
        }
        return DeviceConnection(address, **(arguments | options))


def test_reconnects_after_out_of_range_with_back_off(bus_address: str) -> None:
    outbox, harness = MemoryOutbox(), Harness()

    async def scenario() -> None:
        device = DeviceConfig("blood_pressure", CUFF, "Cuff", clock_offset=timedelta(minutes=7))
        async with simulator(bus_address, device) as sim:
            connection = harness.connection(CUFF, "blood-pressure", outbox)
            task = asyncio.create_task(connection.run())
            await settle(lambda: connection.state is S.CONNECTED)
            sim.notify(CUFF, "2a35", MEASUREMENT)
            await settle(lambda: len(outbox.readings) == 1)
            sim.set_in_range(CUFF, False)
            await settle(lambda: len(harness.delays) >= 3, timeout=15)
            assert harness.states[-1] in {S.WAITING, S.CONNECTING} and connection.last_error
            sim.set_in_range(CUFF, True)
            await settle(lambda: connection.state is S.CONNECTED, timeout=15)
            sim.notify(CUFF, "2a35", MEASUREMENT[:-1] + b"\x01")
            await settle(lambda: len(outbox.readings) == 2)
            await connection.stop()
            await asyncio.wait_for(task, 5)
            assert not sim.state(CUFF)["connected"]

    run(scenario())
    # the link was lost after a good session (1 s), then each failed attempt doubles it
    assert harness.delays[:3] == [1, 2, 4]
    assert harness.states[:4] == [S.CONNECTING, S.DOWNLOADING, S.CONNECTED, S.WAITING]
    assert harness.states[-3:] == [S.DOWNLOADING, S.CONNECTED, S.STOPPED]
    assert S.CONNECTING in harness.states[4:-3]
    assert all(a is not b for a, b in zip(harness.states, harness.states[1:], strict=False))
    first, *_, last = harness.information
    assert first.clock_set and first.device_time == wall_clock()
    assert not last.clock_set  # set once, right since
    assert [r.device_time_offset for r in outbox.readings] == [timedelta(hours=-2)] * 2


def test_pairs_with_pin_downloads_and_resumes_glucose(bus_address: str) -> None:
    outbox, harness = MemoryOutbox(), Harness()
    start = wall_clock() - timedelta(days=30)

    def records(first: int, last: int) -> list[bytes]:
        return [
            glucose_measurement(s, start + timedelta(hours=s), 90) for s in range(first, last + 1)
        ]

    async def scenario() -> None:
        meter = DeviceConfig("glucose_meter", METER, "Meter", pin="246810")
        async with simulator(bus_address, meter) as sim, PairingAgent({METER: "246810"}):
            sim.add_records(METER, records(1, 40))
            sim.disconnect_after(METER, 25)  # the first download breaks off
            connection = harness.connection(METER, "glucose", outbox, pair=True)
            task = asyncio.create_task(connection.run())
            await settle(lambda: outbox.sequences() == list(range(1, 41)), timeout=15)
            await settle(lambda: connection.state is S.CONNECTED)
            assert sim.state(METER)["paired"]
            sim.add_records(METER, records(41, 45))
            sim.disconnect(METER)  # the meter goes to sleep; next time only the new records
            await settle(lambda: len(outbox.sequences()) == 45, timeout=15)
            await connection.stop()
            await asyncio.wait_for(task, 5)

    run(scenario())
    assert outbox.sequences() == list(range(1, 46))
    assert harness.states.count(S.DOWNLOADING) == 3


def test_a_failing_sink_ends_the_session_and_the_device_is_reconnected(bus_address: str) -> None:
    outbox, harness = MemoryOutbox(), Harness()
    failures = [RuntimeError("outbox voll / outbox full")]

    async def flaky(reading: Reading) -> None:
        if failures:
            raise failures.pop()
        await outbox(reading)

    async def scenario() -> None:
        async with simulator(bus_address, DeviceConfig("blood_pressure", CUFF, "Cuff")) as sim:
            connection = harness.connection(CUFF, "blood-pressure", flaky)
            task = asyncio.create_task(connection.run())
            await settle(lambda: connection.state is S.CONNECTED)
            sim.notify(CUFF, "2a35", MEASUREMENT)
            await settle(lambda: connection.last_error is not None)
            assert "outbox full" in str(connection.last_error)
            await settle(lambda: connection.state is S.CONNECTED and sim.state(CUFF)["connected"])
            sim.notify(CUFF, "2a35", MEASUREMENT)
            await settle(lambda: len(outbox.readings) == 1)
            await connection.stop()
            await asyncio.wait_for(task, 5)

    run(scenario())
    assert outbox.payloads(uuids.BLOOD_PRESSURE_MEASUREMENT) == [MEASUREMENT]


def test_stop_ends_a_back_off_wait_at_once(bus_address: str) -> None:
    harness = Harness()

    async def forever(delay: float) -> None:
        harness.delays.append(delay)
        await asyncio.Event().wait()

    async def scenario() -> None:
        async with simulator(bus_address, DeviceConfig("thermometer", CUFF, "Thermo")) as sim:
            sim.set_in_range(CUFF, False)
            connection = harness.connection(CUFF, "thermometer", MemoryOutbox(), sleep=forever)
            task = asyncio.create_task(connection.run())
            await settle(lambda: connection.state is S.WAITING)
            await connection.stop()
            await asyncio.wait_for(task, 1)

    run(scenario())
    assert harness.states == [S.CONNECTING, S.WAITING, S.STOPPED]
    assert harness.delays == [1]


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=5)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_a_device_that_lost_its_bond_is_paired_again(bus_address: str) -> None:
    outbox, harness = MemoryOutbox(), Harness()
    record = glucose_measurement(1, wall_clock(), 101)

    async def scenario() -> None:
        meter = DeviceConfig("glucose_meter", METER, "Meter", pin="246810")
        async with simulator(bus_address, meter) as sim, PairingAgent({METER: "246810"}):
            connection = harness.connection(METER, "glucose", outbox, pair=True)
            task = asyncio.create_task(connection.run())
            await settle(lambda: connection.state is S.CONNECTED)
            sim.forget_bond(METER)  # the meter was reset; BlueZ still holds the old keys
            sim.add_records(METER, [record])
            sim.disconnect(METER)
            await settle(lambda: outbox.payloads() == [record], timeout=15)
            assert sim.state(METER)["paired"]
            await connection.stop()
            await asyncio.wait_for(task, 5)

    run(scenario())
    assert harness.states.count(S.DOWNLOADING) == 3  # ok, refused (0x05: bond dropped), ok


def test_stop_ends_a_long_connect_attempt(bus_address: str) -> None:
    harness = Harness()

    async def scenario() -> None:
        async with simulator(bus_address, DeviceConfig("thermometer", CUFF, "Thermo")) as sim:
            sim.set_in_range(CUFF, False)
            connection = harness.connection(
                CUFF, "thermometer", MemoryOutbox(), link_factory=lambda: Link(timeout=30)
            )
            task = asyncio.create_task(connection.run())
            await settle(lambda: connection.state is S.CONNECTING)
            await asyncio.sleep(0.3)  # bleak is scanning for the absent device
            await connection.stop()
            await asyncio.wait_for(task, 2)

    run(scenario())
    assert harness.states == [S.CONNECTING, S.STOPPED]
