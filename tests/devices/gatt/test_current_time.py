"""Current Time (2A2B): reference vectors, forbidden values and the bytes written to a device."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import uuids
from devices.gatt.current_time import AdjustReason, CurrentTime
from devices.gatt.date_time import DateTime
from tests.devices.gatt.wire import (
    Stamp,
    assert_parses_or_rejects,
    assert_truncations_fail,
    check_stamp,
    stamps,
)


def test_wednesday_manual_adjust() -> None:
    current = CurrentTime.parse(bytes.fromhex("E807050F0A1E00030001"))
    assert current.date_time == DateTime(2024, 5, 15, 10, 30, 0)
    assert current.day_of_week == 3
    assert current.fractions256 == 0
    assert current.adjust_reason == AdjustReason.MANUAL
    assert current.to_datetime() == datetime(2024, 5, 15, 10, 30)


def test_real_omron_with_unknown_weekday() -> None:
    current = CurrentTime.parse(bytes.fromhex("EA07060C143008000001"))
    assert current.to_datetime() == datetime(2026, 6, 12, 20, 48, 8)
    assert current.day_of_week == 0
    assert current.fractions256 == 0
    assert current.adjust_reason == AdjustReason.MANUAL


def test_fractions_are_sub_second() -> None:
    current = CurrentTime.parse(bytes.fromhex("E807050F0A1E00038006"))
    assert current.to_datetime() == datetime(2024, 5, 15, 10, 30, 0, 500_000)
    assert current.adjust_reason == AdjustReason.TIME_ZONE | AdjustReason.EXTERNAL_REFERENCE


def test_unknown_date_has_no_datetime() -> None:
    assert CurrentTime.parse(bytes(10)).to_datetime() is None


@pytest.mark.parametrize(
    ("hex_", "reason"),
    [
        ("E8070D0F0A1E00030001", "invalid month 13"),
        ("E807050F191E00030001", "invalid hour 25"),
        ("E807050F0A1E00080001", "invalid day of week 8"),
    ],
)
def test_forbidden_values_are_parse_errors(hex_: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason) as caught:
        CurrentTime.parse(bytes.fromhex(hex_))
    assert caught.value.characteristic == uuids.CURRENT_TIME
    assert caught.value.raw == bytes.fromhex(hex_)


def test_from_datetime_is_what_a_device_is_set_to() -> None:
    written = CurrentTime.from_datetime(datetime(2024, 5, 15, 10, 30, 0, 500_000))
    assert bytes(written).hex().upper() == "E807050F0A1E00038001"


@given(stamps(), st.integers(0, 7), st.integers(0, 255), st.integers(0, 255))
def test_fields_decode_exactly_round_trip_and_truncate(
    stamp: Stamp, weekday: int, fractions: int, reason: int
) -> None:
    payload = stamp.raw + struct.pack("<BBB", weekday, fractions, reason)
    current = CurrentTime.parse(payload)
    check_stamp(current.date_time, stamp)
    assert (current.day_of_week, current.fractions256, int(current.adjust_reason)) == (
        weekday,
        fractions,
        reason,
    )
    assert bytes(current) == payload
    assert CurrentTime.parse(bytes(current)) == current
    assert_truncations_fail(CurrentTime.parse, payload)


@given(st.datetimes(datetime(1582, 1, 1), datetime(9999, 12, 31, 23, 59, 59)))
def test_from_datetime_round_trips_within_a_256th(moment: datetime) -> None:
    current = CurrentTime.parse(bytes(CurrentTime.from_datetime(moment)))
    assert current.day_of_week == moment.isoweekday()
    decoded = current.to_datetime()
    assert decoded is not None
    assert 0 <= (moment - decoded).total_seconds() < 1 / 256


@given(st.binary(max_size=14))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(CurrentTime.parse, data, uuids.CURRENT_TIME)
