"""Shared by the BLE tests: a private bus with the simulated BlueZ, clocks, an in-memory outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from devices.gatt import uuids
from devices.link import Link
from devices.profiles.base import Profile, Session
from devices.reading import Reading
from devices.simulator import DeviceConfig, Simulator, private_bus

T = TypeVar("T")
NOW = datetime(2024, 5, 15, 8, 30, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def station_clock() -> datetime:
    return NOW


def wall_clock() -> datetime:
    """The simulator's notion of "now": the station time as a Berlin wall clock (naive)."""
    return NOW.astimezone(BERLIN).replace(tzinfo=None)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """A fresh event loop per scenario (bleak keeps one BlueZ manager per loop)."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@pytest.fixture
def bus_address(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with private_bus() as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address


def simulator(bus_address: str, *devices: DeviceConfig) -> Simulator:
    return Simulator(devices, bus_address=bus_address, clock=wall_clock)


class MemoryOutbox:
    """The station's outbox in memory: a ReadingSink and the GlucoseCursor it advances.

    ``delay`` stands in for a durable write; ``overlaps`` counts sink calls that started while
    another was still running (must stay 0: readings are stored one after the other).
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.readings: list[Reading] = []
        self.delay = delay
        self.overlaps = 0
        self._busy = False
        self._last: dict[str, int] = {}

    async def __call__(self, reading: Reading) -> None:
        self.overlaps += self._busy
        self._busy = True
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.readings.append(reading)
            if reading.characteristic == uuids.GLUCOSE_MEASUREMENT and reading.sequence is not None:
                self._last[reading.device_address] = reading.sequence
        finally:
            self._busy = False

    def last_sequence(self, address: str) -> int | None:
        return self._last.get(address)

    def payloads(self, characteristic: str | None = None) -> list[bytes]:
        return [r.raw for r in self.readings if characteristic in (None, r.characteristic)]

    def sequences(self) -> list[int | None]:
        return [r.sequence for r in self.readings if r.characteristic == uuids.GLUCOSE_MEASUREMENT]


async def settle(condition: Any, timeout: float = 5.0) -> None:
    """Waits until ``condition()`` is true (notifications travel over the bus)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def deliver(
    bus_address: str,
    device: DeviceConfig,
    profiles: Sequence[Profile],
    script: Sequence[tuple[str, bytes]],
) -> MemoryOutbox:
    """Connects to ``device``, starts the applicable ``profiles``, plays ``script`` (characteristic
    as the simulator names it, payload) and returns what reached the outbox."""
    outbox = MemoryOutbox()
    offset = timedelta(hours=-2)
    async with simulator(bus_address, device) as sim, Link(clock=station_clock) as link:
        await link.connect(device.address)
        session = Session(link=link, sink=outbox, device_time_offset=offset)
        for profile in profiles:
            if profile.applies(link):
                await profile.start(session)
        for characteristic, payload in script:
            assert sim.notify(device.address, characteristic, payload), characteristic
        await settle(lambda: len(outbox.readings) == len(script))
    for reading in outbox.readings:
        assert reading.device_address == device.address
        assert reading.received_at == NOW
        assert reading.device_time_offset == offset
        assert reading.sequence is None
    return outbox
