"""devices.link against the simulated BlueZ, with unmodified bleak underneath."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from devices.errors import AttError, LinkError
from devices.gatt import uuids
from devices.link import Link, NotifyCallback, scan
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, run, settle, simulator, station_clock

__all__ = ["bus_address"]  # the fixture, imported for pytest

BP = "AA:BB:CC:DD:EE:01"
GLUCOSE = "AA:BB:CC:DD:EE:05"
CUFF = bytes.fromhex("1E780050005D00E807050F0A1E004800010000")
INTERMEDIATE = bytes.fromhex("006400FF07FF07")


def devices() -> list[DeviceConfig]:
    return [
        DeviceConfig("blood_pressure", BP, "Cuff", serial="SN-0001"),
        DeviceConfig("glucose_meter", GLUCOSE, "Meter"),
    ]


def test_scan_reports_address_name_services_and_rssi(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()):
            everything = {a.address: a for a in await scan(0.6)}
            only_glucose = await scan(0.6, [uuids.GLUCOSE_SERVICE])
        assert set(everything) == {BP, GLUCOSE}
        cuff = everything[BP]
        assert cuff.name == "Cuff"
        assert cuff.service_uuids == (uuids.BLOOD_PRESSURE_SERVICE,)
        assert cuff.rssi is not None and -70 < cuff.rssi < -50
        assert [a.address for a in only_glucose] == [GLUCOSE]

    run(scenario())


def test_connect_by_advertisement_read_and_characteristic_lookup(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()):
            (cuff,) = [a for a in await scan(0.6) if a.address == BP]
            async with Link(clock=station_clock, timeout=5) as link:
                await link.connect(cuff)
                assert link.address == BP and link.is_connected
                assert await link.read(uuids.SERIAL_NUMBER_STRING) == b"SN-0001"
                assert link.has(uuids.BLOOD_PRESSURE_MEASUREMENT)
                assert not link.has(uuids.GLUCOSE_MEASUREMENT)
                assert link.properties(uuids.BLOOD_PRESSURE_MEASUREMENT) == {"indicate"}
                assert uuids.DEVICE_INFORMATION_SERVICE in link.service_uuids()
            assert not link.is_connected

    run(scenario())


def test_notifications_arrive_in_order_across_characteristics(bus_address: str) -> None:
    received: list[tuple[str, bytes, datetime]] = []

    def collector(characteristic: str, delay: float) -> NotifyCallback:
        async def collect(data: bytes, at: datetime) -> None:
            await asyncio.sleep(delay)  # a slow subscriber must not reorder anything
            received.append((characteristic, data, at))

        return collect

    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim, Link(clock=station_clock) as link:
            await link.connect(BP)
            await link.start_notify(uuids.BLOOD_PRESSURE_MEASUREMENT, collector("bpm", 0.02))
            await link.start_notify(uuids.INTERMEDIATE_CUFF_PRESSURE, collector("icp", 0.0))
            for step in range(5):
                sim.notify(BP, "2a36", INTERMEDIATE + bytes([step]))
                sim.notify(BP, "2a35", CUFF + bytes([step]))
            await settle(lambda: len(received) == 10)

    run(scenario())
    expected = [
        (name, payload + bytes([step]))
        for step in range(5)
        for name, payload in (("icp", INTERMEDIATE), ("bpm", CUFF))
    ]
    assert [(name, data) for name, data, _ in received] == expected
    assert {at for _, _, at in received} == {station_clock()}


def test_att_error_is_mapped_with_its_code(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim, Link() as link:
            await link.connect(BP)
            sim.fail_next(BP, "2a25", 0x0E, "read")
            with pytest.raises(AttError) as caught:
                await link.read(uuids.SERIAL_NUMBER_STRING)
            assert caught.value.code == 0x0E
            assert "0x0E" in str(caught.value)
            with pytest.raises(AttError) as refused:  # BlueZ's NotPermitted: write not permitted
                await link.write(uuids.SERIAL_NUMBER_STRING, b"x")
            assert refused.value.code == 0x03
            assert await link.read(uuids.SERIAL_NUMBER_STRING) == b"SN-0001"  # link still fine

    run(scenario())


def test_absent_device_and_lost_link_are_link_errors(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim:
            sim.set_in_range(BP, False)
            with pytest.raises(LinkError, match=r"Reichweite|not found"):
                async with Link(timeout=1) as link:
                    await link.connect(BP)
            sim.set_in_range(BP, True)
            async with Link(timeout=5) as link:
                await link.connect(BP)
                sim.disconnect(BP)
                await asyncio.wait_for(link.wait_disconnected(), 5)
                assert not link.is_connected
                with pytest.raises(LinkError):
                    await link.read(uuids.SERIAL_NUMBER_STRING)
                with pytest.raises(LinkError, match="getrennt / disconnected"):
                    await link.wait_for(asyncio.Event().wait(), timeout=5)

    run(scenario())


def test_a_failing_subscriber_ends_the_link_and_is_reported(bus_address: str) -> None:
    class OutboxFull(Exception):
        pass

    async def refuse(data: bytes, at: datetime) -> None:
        raise OutboxFull

    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim, Link() as link:
            await link.connect(BP)
            await link.start_notify(uuids.BLOOD_PRESSURE_MEASUREMENT, refuse)
            sim.notify(BP, "2a35", CUFF)
            with pytest.raises(OutboxFull):
                await asyncio.wait_for(link.wait_disconnected(), 5)
            await settle(lambda: not sim.state(BP)["connected"])

    run(scenario())
