"""Heart rate (2A37, 2A38): reference vectors and generated notifications."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import heart_rate, uuids
from devices.gatt.heart_rate import BodySensorLocation
from tests.devices.gatt.wire import assert_parses_or_rejects


def test_u8_heart_rate_only() -> None:
    measured = heart_rate.parse(bytes.fromhex("0048"))
    assert measured.heart_rate == 72
    assert measured.sensor_contact == "unsupported"
    assert measured.energy_expended_kj is None
    assert measured.rr_intervals == ()


def test_contact_and_two_rr_intervals() -> None:
    measured = heart_rate.parse(bytes.fromhex("164855034003"))
    assert measured.heart_rate == 72
    assert measured.sensor_contact == "detected"
    assert measured.energy_expended_kj is None
    # 853/1024 s and 832/1024 s, exact (the reference rounds the first to 0.833 s).
    assert measured.rr_intervals == (Decimal("0.8330078125"), Decimal("0.8125"))


def test_u16_energy_and_one_rr_interval() -> None:
    measured = heart_rate.parse(bytes.fromhex("194800E8030004"))
    assert measured.heart_rate == 72
    assert measured.sensor_contact == "unsupported"
    assert measured.energy_expended_kj == 1000
    assert measured.rr_intervals == (Decimal("1.0"),)


@pytest.mark.parametrize(
    ("flags", "contact"),
    [(0b000, "unsupported"), (0b010, "unsupported"), (0b100, "not-detected"), (0b110, "detected")],
)
def test_sensor_contact(flags: int, contact: str) -> None:
    assert heart_rate.parse(bytes([flags, 60])).sensor_contact == contact


def test_odd_leftover_byte_is_rejected() -> None:
    with pytest.raises(ParseError, match="flags explain only 6"):
        heart_rate.parse(bytes.fromhex("16485503400300"))


def test_rr_flag_without_an_interval_is_rejected() -> None:
    with pytest.raises(ParseError, match="need at least 4"):
        heart_rate.parse(bytes.fromhex("1048"))


def test_body_sensor_location() -> None:
    assert heart_rate.parse_body_sensor_location(b"\x01") == BodySensorLocation.CHEST
    with pytest.raises(ParseError):
        heart_rate.parse_body_sensor_location(b"")


@given(
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.integers(0, 3),
    st.none() | st.integers(0, 0xFFFF),
    st.lists(st.integers(0, 0xFFFF), max_size=9),
    st.integers(0, 7),
)
def test_generated_notifications_decode_exactly(
    wide: bool,
    rate: int,
    contact: int,
    energy: int | None,
    intervals: list[int],
    reserved: int,
) -> None:
    rate = rate if wide else rate & 0xFF
    flags = int(wide) | contact << 1 | (energy is not None) << 3 | bool(intervals) << 4
    header = bytes([flags | reserved << 5]) + struct.pack("<H" if wide else "<B", rate)
    header += struct.pack("<H", energy) if energy is not None else b""
    payload = header + b"".join(struct.pack("<H", interval) for interval in intervals)
    measured = heart_rate.parse(payload)
    assert measured.heart_rate == rate
    assert measured.sensor_contact == {2: "not-detected", 3: "detected"}.get(contact, "unsupported")
    assert measured.energy_expended_kj == energy
    assert measured.rr_intervals == tuple(Decimal(n) / 1024 for n in intervals)
    # A shorter payload is still valid when it drops whole RR intervals and keeps one.
    for cut in range(1, len(payload) + 1):
        shorter = payload[:-cut]
        kept = len(intervals) - cut // 2
        if cut % 2 == 0 and kept >= 1:
            expected = tuple(Decimal(n) / 1024 for n in intervals[:kept])
            assert heart_rate.parse(shorter).rr_intervals == expected
        else:
            with pytest.raises(ParseError):
                heart_rate.parse(shorter)


@given(st.binary(max_size=24))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(heart_rate.parse, data, uuids.HEART_RATE_MEASUREMENT)
    assert_parses_or_rejects(
        heart_rate.parse_body_sensor_location, data, uuids.BODY_SENSOR_LOCATION
    )
