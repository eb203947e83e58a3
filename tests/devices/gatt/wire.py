"""Test-side encoders written from the GATT layouts (struct.pack), independent of devices.gatt.

Spec: https://www.bluetooth.com/specifications/gss/
"""

from __future__ import annotations

import calendar
import dataclasses
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric

TS = bytes.fromhex("E807050F0A1E00")  # 2024-05-15T10:30:00
TS_ISO = "2024-05-15T10:30:00"

# From the reference table (MSB-first there): exponent 0 bit patterns with a meaning.
SFLOAT_SPECIALS = {
    0x07FF: "not-a-number",
    0x0800: "nres",
    0x07FE: "positive-infinity",
    0x0802: "negative-infinity",
    0x0801: "reserved",
}
FLOAT_SPECIALS = {
    0x007FFFFF: "not-a-number",
    0x00800000: "nres",
    0x007FFFFE: "positive-infinity",
    0x00800002: "negative-infinity",
    0x00800001: "reserved",
}


@dataclass(frozen=True)
class Num:
    """A generated number: its wire bytes and what it must decode to."""

    raw: bytes
    mantissa: int
    exponent: int
    special: str | None


def sfloat_bytes(mantissa: int, exponent: int) -> bytes:
    return struct.pack("<H", (exponent & 0xF) << 12 | mantissa & 0xFFF)


def float_bytes(mantissa: int, exponent: int) -> bytes:
    return struct.pack("<I", (exponent & 0xFF) << 24 | mantissa & 0xFFFFFF)


@st.composite
def sfloats(draw: st.DrawFn, specials: bool = True) -> Num:
    if specials and draw(st.integers(0, 7)) == 0:
        pattern = draw(st.sampled_from(sorted(SFLOAT_SPECIALS)))
        return Num(struct.pack("<H", pattern), 0, 0, SFLOAT_SPECIALS[pattern])
    exponent = draw(st.integers(-8, 7))
    mantissa = draw(st.integers(-2048, 2047))
    if exponent == 0 and (mantissa & 0xFFF) in SFLOAT_SPECIALS:
        mantissa = 0
    return Num(sfloat_bytes(mantissa, exponent), mantissa, exponent, None)


@st.composite
def floats(draw: st.DrawFn) -> Num:
    if draw(st.integers(0, 7)) == 0:
        pattern = draw(st.sampled_from(sorted(FLOAT_SPECIALS)))
        return Num(struct.pack("<I", pattern), 0, 0, FLOAT_SPECIALS[pattern])
    exponent = draw(st.integers(-128, 127))
    mantissa = draw(st.integers(-(2**23), 2**23 - 1))
    if exponent == 0 and (mantissa & 0xFFFFFF) in FLOAT_SPECIALS:
        mantissa = 0
    return Num(float_bytes(mantissa, exponent), mantissa, exponent, None)


def check_numeric(actual: Numeric | None, expected: Num, decades: int = 0) -> None:
    """``actual`` is ``expected`` in a unit 10^decades smaller, every digit kept."""
    assert actual is not None
    if expected.special is not None:
        assert actual.special is not None and actual.special.value == expected.special
        assert actual.value is None
        return
    assert actual.special is None
    assert (actual.mantissa, actual.exponent) == (expected.mantissa, expected.exponent + decades)
    assert actual.value == Decimal(expected.mantissa) * Decimal(10) ** (expected.exponent + decades)


@dataclass(frozen=True)
class Stamp:
    raw: bytes
    fields: tuple[int, int, int, int, int, int]

    @property
    def moment(self) -> datetime | None:
        year, month, day = self.fields[:3]
        return datetime(*self.fields) if year and month and day else None


@st.composite
def stamps(draw: st.DrawFn) -> Stamp:
    """Valid Date Time fields; year, month or day sometimes 0 ("unknown")."""
    moment = draw(st.datetimes(datetime(1582, 1, 1), datetime(9999, 12, 31, 23, 59, 59)))
    year, month, day = moment.year, moment.month, moment.day
    unknown = draw(st.sampled_from(["", "", "", "year", "month", "day", "all"]))
    year = 0 if unknown in ("year", "all") else year
    month = 0 if unknown in ("month", "all") else month
    day = 0 if unknown in ("day", "all") else day
    fields = (year, month, day, moment.hour, moment.minute, moment.second)
    return Stamp(struct.pack("<HBBBBB", *fields), fields)


def check_stamp(actual: DateTime | None, expected: Stamp) -> None:
    assert actual is not None
    fields = (actual.year, actual.month, actual.day, actual.hour, actual.minute, actual.second)
    assert fields == expected.fields
    assert actual.to_datetime() == expected.moment


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def assert_truncations_fail(parse: Callable[[bytes], object], payload: bytes) -> None:
    """Every proper prefix of ``payload`` is a ParseError; one extra byte is too."""
    for cut in range(1, len(payload) + 1):
        with pytest.raises(ParseError):
            parse(payload[:-cut])
    with pytest.raises(ParseError):
        parse(payload + b"\x00")


def assert_parses_or_rejects(
    parse: Callable[[bytes], object], data: bytes, characteristic: str
) -> None:
    """Any bytes: a result, or a ParseError naming the characteristic and keeping the bytes."""
    try:
        parse(data)
    except ParseError as exc:
        assert exc.characteristic == characteristic
        assert exc.raw == data
        assert " / " in exc.reason


def plain(value: Any) -> Any:
    """A parsed value as plain data: Numerics and Decimals as their exact strings."""
    if isinstance(value, Numeric):
        return str(value)
    if isinstance(value, DateTime):
        moment = value.to_datetime()
        return moment.isoformat() if moment else dataclasses.astuple(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    return value


def flag_bits(*present: bool) -> int:
    """Flags byte with bit i set when ``present[i]``."""
    return sum(1 << bit for bit, on in enumerate(present) if on)
