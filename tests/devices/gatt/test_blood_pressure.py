"""Blood pressure (2A35, 2A36, 2A49): reference vectors and generated measurements."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import blood_pressure, uuids
from devices.gatt.blood_pressure import BloodPressureFeature
from tests.devices.gatt.wire import (
    TS,
    TS_ISO,
    Num,
    Stamp,
    assert_parses_or_rejects,
    assert_truncations_fail,
    check_numeric,
    check_stamp,
    flag_bits,
    plain,
    sfloats,
    stamps,
)


def _status(**changes: Any) -> dict[str, Any]:
    status = {
        "body_movement": False,
        "cuff_too_loose": False,
        "irregular_pulse": False,
        "pulse_rate_range": "in-range",
        "improper_position": False,
        "raw": 0,
    }
    return status | changes


def _expected(**fields: Any) -> dict[str, Any]:
    measurement = {
        "unit": "mmHg",
        "timestamp": None,
        "pulse_rate": None,
        "user_id": None,
        "status": None,
        "intermediate": False,
    }
    return measurement | fields


@pytest.mark.parametrize(
    ("hex_", "expected"),
    [
        (
            "1E780050005D00" + TS.hex() + "4800010000",
            _expected(
                systolic="120",
                diastolic="80",
                mean_arterial="93",
                timestamp=TS_ISO,
                pulse_rate="72",
                user_id=1,
                status=_status(),
            ),
        ),
        ("007D0052006000", _expected(systolic="125", diastolic="82", mean_arterial="96")),
        (
            "01A0F06BF07DF0",
            _expected(unit="kPa", systolic="16.0", diastolic="10.7", mean_arterial="12.5"),
        ),
        (
            "168C005A006C00" + TS.hex() + "58000400",
            _expected(
                systolic="140",
                diastolic="90",
                mean_arterial="108",
                timestamp=TS_ISO,
                pulse_rate="88",
                status=_status(irregular_pulse=True, raw=4),
            ),
        ),
        (
            # Real device reporting "Err" after movement: everything NaN (an app showed 2047).
            "16FF07FF07FF07E80706170E230AFF070000",
            _expected(
                systolic="NaN",
                diastolic="NaN",
                mean_arterial="NaN",
                timestamp="2024-06-23T14:35:10",
                pulse_rate="NaN",
                status=_status(),
            ),
        ),
    ],
)
def test_reference_vectors(hex_: str, expected: dict[str, Any]) -> None:
    assert plain(blood_pressure.parse(bytes.fromhex(hex_))) == expected


def test_intermediate_cuff_pressure() -> None:
    cuff = blood_pressure.parse_intermediate(bytes.fromhex("006400FF07FF07"))
    assert plain(cuff) == _expected(
        systolic="100", diastolic="NaN", mean_arterial="NaN", intermediate=True
    )


def test_truncated_reason_names_sizes_in_german_and_english() -> None:
    with pytest.raises(ParseError) as caught:
        blood_pressure.parse(bytes.fromhex("1E78005000"))
    assert caught.value.reason == (
        "Messwert zu kurz: 5 Bytes, erwartet mindestens 7 / truncated: 5 bytes, need at least 7"
    )
    assert caught.value.characteristic == uuids.BLOOD_PRESSURE_MEASUREMENT
    assert caught.value.raw == bytes.fromhex("1E78005000")


def test_bytes_the_flags_do_not_explain_are_rejected() -> None:
    with pytest.raises(ParseError, match="trailing bytes: 8 bytes, flags explain only 7"):
        blood_pressure.parse(bytes.fromhex("007D005200600000"))


def test_invalid_timestamp_is_a_parse_error() -> None:
    month_13 = "E8070D0F0A1E00"
    with pytest.raises(ParseError, match="invalid month 13"):
        blood_pressure.parse(bytes.fromhex("027D0052006000" + month_13))


@pytest.mark.parametrize(
    ("bits", "range_"), [(0, "in-range"), (1, "above"), (2, "below"), (3, "reserved")]
)
def test_pulse_rate_range(bits: int, range_: str) -> None:
    payload = bytes.fromhex("107D0052006000") + struct.pack("<H", bits << 3 | 1 << 5 | 0b11)
    status = blood_pressure.parse(payload).status
    assert status is not None
    assert status.pulse_rate_range == range_
    assert status.improper_position and status.body_movement and status.cuff_too_loose
    assert not status.irregular_pulse


def test_feature() -> None:
    feature = blood_pressure.parse_feature(bytes.fromhex("2100"))
    assert feature == BloodPressureFeature.BODY_MOVEMENT_DETECTION | (
        BloodPressureFeature.MULTIPLE_BONDS
    )
    with pytest.raises(ParseError):
        blood_pressure.parse_feature(bytes.fromhex("21"))


@st.composite
def measurements(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    kpa = draw(st.booleans())
    pressures = [draw(sfloats()) for _ in range(3)]
    stamp = draw(st.none() | stamps())
    pulse = draw(st.none() | sfloats())
    user = draw(st.none() | st.integers(0, 255))
    status = draw(st.none() | st.integers(0, 0xFFFF))
    reserved_flags = draw(st.integers(0, 7)) << 5  # must be ignored
    flags = flag_bits(kpa, stamp is not None, pulse is not None, user is not None)
    flags |= (status is not None) << 4 | reserved_flags
    payload = bytes([flags]) + b"".join(number.raw for number in pressures)
    payload += stamp.raw if stamp else b""
    payload += pulse.raw if pulse else b""
    payload += struct.pack("<B", user) if user is not None else b""
    payload += struct.pack("<H", status) if status is not None else b""
    fields = {
        "kpa": kpa,
        "pressures": pressures,
        "stamp": stamp,
        "pulse": pulse,
        "user": user,
        "status": status,
    }
    return payload, fields


@given(measurements(), st.booleans())
def test_generated_measurements_decode_exactly(
    case: tuple[bytes, dict[str, Any]], intermediate: bool
) -> None:
    payload, fields = case
    parse = blood_pressure.parse_intermediate if intermediate else blood_pressure.parse
    measurement = parse(payload)
    assert measurement.intermediate is intermediate
    assert measurement.unit == ("kPa" if fields["kpa"] else "mmHg")
    systolic, diastolic, mean_arterial = fields["pressures"]
    check_numeric(measurement.systolic, systolic)
    check_numeric(measurement.diastolic, diastolic)
    check_numeric(measurement.mean_arterial, mean_arterial)
    stamp: Stamp | None = fields["stamp"]
    if stamp is None:
        assert measurement.timestamp is None
    else:
        check_stamp(measurement.timestamp, stamp)
    pulse: Num | None = fields["pulse"]
    if pulse is None:
        assert measurement.pulse_rate is None
    else:
        check_numeric(measurement.pulse_rate, pulse)
    assert measurement.user_id == fields["user"]
    _check_status(measurement.status, fields["status"])
    assert_truncations_fail(parse, payload)


def _check_status(status: blood_pressure.BloodPressureStatus | None, raw: int | None) -> None:
    if raw is None:
        assert status is None
        return
    assert status is not None
    ranges = {0: "in-range", 1: "above", 2: "below", 3: "reserved"}
    assert (status.body_movement, status.cuff_too_loose, status.irregular_pulse) == (
        bool(raw & 1),
        bool(raw & 2),
        bool(raw & 4),
    )
    assert status.pulse_rate_range == ranges[(raw >> 3) & 3]
    assert status.improper_position == bool(raw & 0x20)
    assert status.raw == raw


@given(st.binary(max_size=32))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(blood_pressure.parse, data, uuids.BLOOD_PRESSURE_MEASUREMENT)
    assert_parses_or_rejects(
        blood_pressure.parse_intermediate, data, uuids.INTERMEDIATE_CUFF_PRESSURE
    )
    assert_parses_or_rejects(blood_pressure.parse_feature, data, uuids.BLOOD_PRESSURE_FEATURE)
