"""Date Time (2A08 layout): known, unknown and forbidden field values."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.gatt.date_time import DateTime
from tests.devices.gatt.wire import TS, TS_ISO, Stamp, check_stamp, days_in_month, stamps


def test_reference_timestamp() -> None:
    stamp = DateTime.decode(TS)
    assert (stamp.year, stamp.month, stamp.day) == (2024, 5, 15)
    assert (stamp.hour, stamp.minute, stamp.second) == (10, 30, 0)
    assert stamp.to_datetime() == datetime.fromisoformat(TS_ISO)
    assert bytes(stamp) == TS


@pytest.mark.parametrize(
    "fields",
    [(0, 5, 15, 10, 30, 0), (2024, 0, 15, 10, 30, 0), (2024, 5, 0, 10, 30, 0), (0, 0, 0, 0, 0, 0)],
)
def test_unknown_year_month_or_day_is_kept_without_datetime(
    fields: tuple[int, int, int, int, int, int],
) -> None:
    stamp = DateTime.decode(struct.pack("<HBBBBB", *fields))
    assert (stamp.year, stamp.month, stamp.day, stamp.hour) == fields[:4]
    assert stamp.to_datetime() is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ((2024, 13, 1, 0, 0, 0), "Ungültiger Monat 13 / invalid month 13"),
        ((2024, 5, 32, 0, 0, 0), "Ungültiger Tag 32 / invalid day 32"),
        ((2024, 5, 15, 25, 0, 0), "Ungültige Stunde 25 / invalid hour 25"),
        ((2024, 5, 15, 24, 0, 0), "Ungültige Stunde 24 / invalid hour 24"),
        ((2024, 5, 15, 10, 60, 0), "Ungültige Minute 60 / invalid minute 60"),
        ((2024, 5, 15, 10, 0, 60), "Ungültige Sekunde 60 / invalid second 60"),
        ((1581, 5, 15, 10, 0, 0), "Ungültiges Jahr 1581 / invalid year 1581"),
        ((2023, 2, 29, 0, 0, 0), "day 29 does not exist in month 2"),
        ((0, 2, 30, 0, 0, 0), "day 30 does not exist in month 2"),
        ((2024, 4, 31, 0, 0, 0), "day 31 does not exist in month 4"),
    ],
)
def test_forbidden_values_are_rejected(
    fields: tuple[int, int, int, int, int, int], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        DateTime.decode(struct.pack("<HBBBBB", *fields))


def test_leap_day_is_accepted() -> None:
    stamp = DateTime.decode(struct.pack("<HBBBBB", 2024, 2, 29, 23, 59, 59))
    assert stamp.to_datetime() == datetime(2024, 2, 29, 23, 59, 59)


@pytest.mark.parametrize("size", [0, 6, 8])
def test_needs_seven_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="7 bytes"):
        DateTime.decode(bytes(size))


@given(stamps())
def test_valid_fields_decode_exactly_and_round_trip(stamp: Stamp) -> None:
    decoded = DateTime.decode(stamp.raw)
    check_stamp(decoded, stamp)
    assert bytes(decoded) == stamp.raw


@given(st.binary(min_size=7, max_size=7))
def test_any_seven_bytes_are_a_datetime_or_a_reason(data: bytes) -> None:
    year, month, day, hour, minute, second = struct.unpack("<HBBBBB", data)
    allowed = (
        (year == 0 or 1582 <= year <= 9999)
        and month <= 12
        and hour <= 23
        and minute <= 59
        and second <= 59
        and day <= (days_in_month(year or 2000, month) if month else 31)
    )
    try:
        stamp = DateTime.decode(data)
    except ValueError as exc:
        assert not allowed
        assert " / invalid " in str(exc) or "does not exist" in str(exc)
    else:
        assert allowed
        stamp.to_datetime()  # never raises for an accepted stamp


@given(st.datetimes(datetime(1582, 1, 1), datetime(9999, 12, 31, 23, 59, 59)))
def test_from_datetime_keeps_the_wall_clock(moment: datetime) -> None:
    assert DateTime.from_datetime(moment).to_datetime() == moment.replace(microsecond=0)
