"""Characteristic payloads the simulated devices send (https://www.bluetooth.com/specifications/gss/).

An independent little-endian encoder, deliberately not ``devices.gatt``: the simulator checks
the parsers instead of sharing their mistakes.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime

from devices.simulator.errors import SimulatorError

_BASE_UUID = "-0000-1000-8000-00805f9b34fb"
_FULL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def uuid(value: str | int) -> str:
    """A 16-bit assigned number ("2a35", "0x2A35", 0x2A35) or full UUID as the full lower-case UUID."""
    if isinstance(value, int):
        return f"0000{value:04x}{_BASE_UUID}"
    text = value.strip().lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{4}", text):
        return f"0000{text}{_BASE_UUID}"
    if re.fullmatch(r"[0-9a-f]{8}", text):
        return f"{text}{_BASE_UUID}"
    if _FULL_UUID.match(text):
        return text
    raise SimulatorError(f"keine UUID: {value!r} / not a UUID: {value!r}")


def sfloat(mantissa: int, exponent: int) -> bytes:
    """IEEE-11073 16-bit SFLOAT: 4-bit exponent, 12-bit mantissa (both two's complement)."""
    if not -2048 <= mantissa <= 2047 or not -8 <= exponent <= 7:
        raise SimulatorError(f"SFLOAT außerhalb des Bereichs / out of range: {mantissa}e{exponent}")
    return struct.pack("<H", ((exponent & 0xF) << 12) | (mantissa & 0xFFF))


def date_time(moment: datetime | None) -> bytes:
    """Date Time (0x2A08): year u16, month, day, hours, minutes, seconds; None = unknown (zeros)."""
    if moment is None:
        return bytes(7)
    return struct.pack(
        "<HBBBBB",
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    )


def current_time(moment: datetime, adjust_reason: int = 0) -> bytes:
    """Current Time (0x2A2B): Day Date Time, fractions256, adjust reason."""
    fractions = moment.microsecond * 256 // 1_000_000
    return date_time(moment) + bytes([moment.isoweekday(), fractions, adjust_reason])


def parse_current_time(data: bytes) -> datetime:
    """The wall-clock time a client writes to 0x2A2B (raises on a malformed value)."""
    if len(data) != 10:
        raise SimulatorError(f"Current Time hat 10 Bytes / must be 10 bytes: {data.hex()}")
    year, month, day, hour, minute, second = struct.unpack_from("<HBBBBB", data)
    try:
        return datetime(year, month, day, hour, minute, second, data[8] * 1_000_000 // 256)
    except ValueError as exc:
        raise SimulatorError(f"ungültige Zeit / invalid time: {data.hex()}") from exc


def glucose_measurement(
    sequence: int,
    base_time: datetime,
    mg_dl: int,
    *,
    sample_type: int = 1,
    sample_location: int = 1,
    context_follows: bool = False,
) -> bytes:
    """Glucose Measurement (0x2A18) in kg/L (mg/dL × 10⁻⁵) with type and location."""
    flags = 0x02 | (0x10 if context_follows else 0)
    return (
        bytes([flags])
        + struct.pack("<H", sequence)
        + date_time(base_time)
        + sfloat(mg_dl, -5)
        + bytes([(sample_location << 4) | sample_type])
    )


def glucose_sequence(record: bytes) -> int:
    """The sequence number of a stored 0x2A18 or 0x2A34 record (bytes 1–2)."""
    if len(record) < 3:
        raise SimulatorError(f"Datensatz zu kurz / record too short: {record.hex()}")
    return int.from_bytes(record[1:3], "little")
