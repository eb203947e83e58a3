"""devices.profiles.device_information: DIS, battery, the device clock's offset and setting it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import pytest

from devices.gatt.device_information import SystemId
from devices.link import Link
from devices.profiles.device_information import DeviceInformation, read_device_information
from devices.simulator import DeviceConfig, Simulator
from tests.devices.profiles.support import (
    BERLIN,
    NOW,
    bus_address,
    run,
    simulator,
    station_clock,
    wall_clock,
)

__all__ = ["bus_address"]

CUFF = "AA:BB:CC:DD:EE:01"
BERLIN_SUMMER = timedelta(hours=-2)  # station UTC − device wall clock (CEST) read as UTC


def cuff(clock_offset: timedelta | None = timedelta(0), cts_writable: bool = True) -> DeviceConfig:
    return DeviceConfig(
        "blood_pressure",
        CUFF,
        "Cuff",
        serial="SN-0001",
        clock_offset=clock_offset,
        cts_writable=cts_writable,
    )


def read(
    bus_address: str, device: DeviceConfig, fault: Callable[[Simulator], None] | None = None
) -> tuple[DeviceInformation, str]:
    """Reads the information once; returns it and the device clock afterwards (ISO)."""

    async def scenario() -> tuple[DeviceInformation, str]:
        async with simulator(bus_address, device) as sim, Link(timeout=5) as link:
            if fault is not None:
                fault(sim)
            await link.connect(CUFF)
            info = await read_device_information(link, clock=station_clock, zone=BERLIN)
            return info, str(sim.state(CUFF)["device_time"])

    return run(scenario())


def test_reads_dis_battery_and_a_clock_in_sync(bus_address: str) -> None:
    info, device_time = read(bus_address, cuff())
    assert info.address == CUFF
    assert info.manufacturer == "Medi-KUS Simulator"
    assert info.model_number == "blood-pressure"
    assert info.serial_number == "SN-0001"
    assert (info.hardware_revision, info.firmware_revision, info.software_revision) == (
        "1.0",
        "2.1.0",
        "2.1",
    )
    assert info.system_id == SystemId(manufacturer_id=0xFFFEDDEE01, oui=0xAABBCC)
    assert info.pnp_id is None  # the simulated cuff has no PnP ID
    assert info.battery_level == 87
    assert info.device_time == wall_clock()
    assert info.device_time_offset == BERLIN_SUMMER
    assert info.device_time_read_at == NOW
    assert not info.clock_set
    assert device_time == wall_clock().isoformat()


@pytest.mark.parametrize(
    "clock_offset", [timedelta(minutes=-5), timedelta(seconds=3), timedelta(days=-400), None]
)
def test_a_wrong_or_unset_clock_is_set_when_writable(
    bus_address: str, clock_offset: timedelta | None
) -> None:
    info, device_time = read(bus_address, cuff(clock_offset=clock_offset))
    assert info.clock_set
    assert device_time == wall_clock().isoformat()
    assert info.device_time == wall_clock()
    assert info.device_time_offset == BERLIN_SUMMER


def test_a_clock_within_tolerance_is_left_alone(bus_address: str) -> None:
    info, device_time = read(bus_address, cuff(clock_offset=timedelta(seconds=-2)))
    assert not info.clock_set
    assert device_time == (wall_clock() - timedelta(seconds=2)).isoformat()
    assert info.device_time_offset == BERLIN_SUMMER + timedelta(seconds=2)


def test_a_refused_clock_write_is_logged_and_the_offset_measured(
    bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "devices.profiles.device_information"):
        info, device_time = read(
            bus_address, cuff(clock_offset=timedelta(minutes=5), cts_writable=False)
        )
    assert not info.clock_set
    assert device_time == (wall_clock() + timedelta(minutes=5)).isoformat()
    assert info.device_time_offset == BERLIN_SUMMER - timedelta(minutes=5)
    assert "Uhr nicht gestellt / clock not set" in caplog.text
    assert "0x80" in caplog.text


def test_a_read_only_clock_is_not_written(
    bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    def read_only(sim: Simulator) -> None:
        sim.device(CUFF).peripheral.characteristic("2a2b").flags = ("read", "notify")

    with caplog.at_level(logging.WARNING, "devices.profiles.device_information"):
        info, device_time = read(bus_address, cuff(clock_offset=timedelta(minutes=5)), read_only)
    assert not info.clock_set
    assert device_time == (wall_clock() + timedelta(minutes=5)).isoformat()
    assert info.device_time_offset == BERLIN_SUMMER - timedelta(minutes=5)
    assert "clock not set" not in caplog.text


def test_unreadable_values_are_none_not_fatal(bus_address: str) -> None:
    def refuse(sim: Simulator) -> None:
        sim.fail_next(CUFF, "2a25", 0x0E, "read")
        sim.fail_next(CUFF, "2a2b", 0x0E, "read")

    info, _ = read(bus_address, cuff(clock_offset=timedelta(minutes=5)), refuse)
    assert info.serial_number is None
    assert info.manufacturer == "Medi-KUS Simulator"
    assert info.device_time is None and info.device_time_offset is None
    assert not info.clock_set
