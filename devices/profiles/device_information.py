"""Device Information, Battery and Current Time: who the device is and how wrong its clock is.

Specs: DIS 1.1 (https://www.bluetooth.com/specifications/specs/device-information-service-1-1/),
BAS 1.0, CTS 1.1 (https://www.bluetooth.com/specifications/specs/current-time-service-1-1/).

Clock convention (shared with ``devices.phd.clock``): the device clock is a naive wall clock.
``device_time_offset = station_now − device_now.replace(tzinfo=UTC)``, so a device timestamp
``ts`` corresponds to the real instant ``ts.replace(tzinfo=UTC) + device_time_offset`` —
whatever time zone the device clock was set in. When the device clock is off by more than the
tolerance (or not set) and CTS is writable, the station sets it to its own time in ``zone``;
a refused write is logged, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TypeVar

from devices.errors import AttError, ParseError
from devices.gatt import device_information as dis
from devices.gatt import uuids
from devices.gatt.current_time import AdjustReason, CurrentTime
from devices.profiles.base import GattLink

_log = logging.getLogger(__name__)
T = TypeVar("T")

_STRINGS = {
    "manufacturer": uuids.MANUFACTURER_NAME_STRING,
    "model_number": uuids.MODEL_NUMBER_STRING,
    "serial_number": uuids.SERIAL_NUMBER_STRING,
    "hardware_revision": uuids.HARDWARE_REVISION_STRING,
    "firmware_revision": uuids.FIRMWARE_REVISION_STRING,
    "software_revision": uuids.SOFTWARE_REVISION_STRING,
}


@dataclass(frozen=True)
class DeviceInformation:
    """What the station learnt at connect; absent or unreadable values are None."""

    address: str
    manufacturer: str | None = None
    model_number: str | None = None
    serial_number: str | None = None
    hardware_revision: str | None = None
    firmware_revision: str | None = None
    software_revision: str | None = None
    system_id: dis.SystemId | None = None
    pnp_id: dis.PnpId | None = None
    battery_level: int | None = None
    device_time: datetime | None = None  # the device's naive wall clock (after setting it)
    device_time_offset: timedelta | None = None  # see the module docstring
    device_time_read_at: datetime | None = None  # station time (UTC) when the clock was read
    clock_set: bool = False  # the station wrote the device clock on this connection


@dataclass(frozen=True)
class _Clock:
    device_time: datetime | None = None
    device_time_offset: timedelta | None = None
    device_time_read_at: datetime | None = None
    clock_set: bool = False


async def read_device_information(
    link: GattLink,
    *,
    clock: Callable[[], datetime],
    zone: tzinfo,
    tolerance: timedelta = timedelta(seconds=2),
) -> DeviceInformation:
    """Reads DIS, battery and the device clock (setting it when it is off and writable)."""
    strings = {name: await _read_string(link, uuid) for name, uuid in _STRINGS.items()}
    time = await _device_clock(link, clock, zone, tolerance)
    return DeviceInformation(
        address=link.address,
        **strings,
        system_id=await _read(link, uuids.SYSTEM_ID, dis.parse_system_id),
        pnp_id=await _read(link, uuids.PNP_ID, dis.parse_pnp_id),
        battery_level=await _read(link, uuids.BATTERY_LEVEL, dis.parse_battery_level),
        device_time=time.device_time,
        device_time_offset=time.device_time_offset,
        device_time_read_at=time.device_time_read_at,
        clock_set=time.clock_set,
    )


async def _read(link: GattLink, characteristic: str, parse: Callable[[bytes], T]) -> T | None:
    """An optional value: absent, refused (ATT error) or malformed → None (logged)."""
    if not link.has(characteristic):
        return None
    try:
        return parse(await link.read(characteristic))
    except (AttError, ParseError) as exc:
        _log.warning("%s: %s nicht lesbar / unreadable: %s", link.address, characteristic, exc)
        return None


async def _read_string(link: GattLink, characteristic: str) -> str | None:
    return await _read(link, characteristic, lambda raw: dis.parse_string(raw, characteristic))


async def _device_clock(
    link: GattLink, clock: Callable[[], datetime], zone: tzinfo, tolerance: timedelta
) -> _Clock:
    current = await _read(link, uuids.CURRENT_TIME, CurrentTime.parse)
    if current is None:
        return _Clock()
    device_now, station_now = current.to_datetime(), clock()
    set_ = False
    if _is_off(device_now, station_now, zone, tolerance) and _writable(link):
        set_ = await _set_clock(link, clock, zone)
        if set_:
            current = await _read(link, uuids.CURRENT_TIME, CurrentTime.parse)
            device_now, station_now = (current.to_datetime() if current else None), clock()
    if device_now is None:
        return _Clock(clock_set=set_)
    offset = station_now - device_now.replace(tzinfo=UTC)
    return _Clock(device_now, offset, station_now, set_)


def _is_off(
    device_now: datetime | None, station_now: datetime, zone: tzinfo, tolerance: timedelta
) -> bool:
    if device_now is None:  # the device says its clock is not set
        return True
    wall = station_now.astimezone(zone).replace(tzinfo=None)
    return abs(wall - device_now) > tolerance


def _writable(link: GattLink) -> bool:
    return bool({"write", "write-without-response"} & link.properties(uuids.CURRENT_TIME))


async def _set_clock(link: GattLink, clock: Callable[[], datetime], zone: tzinfo) -> bool:
    wall = clock().astimezone(zone).replace(tzinfo=None)
    value = CurrentTime.from_datetime(wall, AdjustReason.EXTERNAL_REFERENCE)
    try:
        await link.write(uuids.CURRENT_TIME, bytes(value))
    except AttError as exc:  # many devices refuse (e.g. ATT 0x80): keep the measured offset
        _log.warning("%s: Uhr nicht gestellt / clock not set: %s", link.address, exc)
        return False
    _log.info("%s: Uhr gestellt auf / clock set to %s", link.address, wall.isoformat())
    return True
