"""Weight scale (2A9D, 2A9E): reference vectors and generated measurements."""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import uuids, weight_scale
from devices.gatt.ieee11073 import Numeric
from tests.devices.gatt.wire import (
    TS,
    TS_ISO,
    Stamp,
    assert_parses_or_rejects,
    assert_truncations_fail,
    check_stamp,
    flag_bits,
    plain,
    stamps,
)

_NONE = {"timestamp": None, "user_id": None, "bmi": None, "height": None, "height_unit": None}


@pytest.mark.parametrize(
    ("hex_", "expected"),
    [
        ("00B036", _NONE | {"weight": "70.000", "unit": "kg"}),
        (
            "0EB036" + TS.hex() + "01EF00AE06",
            {
                "weight": "70.000",
                "unit": "kg",
                "timestamp": TS_ISO,
                "user_id": 1,
                "bmi": "23.9",
                "height": "1.710",
                "height_unit": "m",
            },
        ),
        ("01483C", _NONE | {"weight": "154.32", "unit": "[lb_av]"}),
    ],
)
def test_reference_vectors(hex_: str, expected: dict[str, Any]) -> None:
    measured = weight_scale.parse(bytes.fromhex(hex_))
    assert plain(measured) == expected
    assert not measured.unsuccessful


def test_seventy_kilograms_keeps_the_half_gram_resolution() -> None:
    weight = weight_scale.parse(bytes.fromhex("00B036")).weight
    assert (weight.mantissa, weight.exponent) == (70000, -3)
    assert weight.value == Decimal("70.0")


def test_measurement_unsuccessful_is_nan() -> None:
    measured = weight_scale.parse(bytes.fromhex("00FFFF"))
    assert measured.unsuccessful
    assert measured.weight.value is None
    assert str(measured.weight) == "NaN"


def test_feature() -> None:
    # timestamp + multiple users + BMI, weight resolution 7 (0.005 kg), height resolution 3.
    raw = 0b111 | 7 << 3 | 3 << 7
    feature = weight_scale.parse_feature(struct.pack("<I", raw))
    assert (feature.timestamp, feature.multiple_users, feature.bmi) == (True, True, True)
    assert (feature.weight_resolution, feature.height_resolution, feature.raw) == (7, 3, raw)
    with pytest.raises(ParseError):
        weight_scale.parse_feature(bytes(3))


def _expected_weight(raw: int, imperial: bool) -> tuple[Decimal, int]:
    step, exponent = (Decimal("0.01"), -2) if imperial else (Decimal("0.005"), -3)
    return raw * step, exponent


def _check_fixed(actual: Numeric | None, value: Decimal, exponent: int) -> None:
    assert actual is not None
    assert actual.special is None
    assert actual.value == value
    assert actual.exponent == exponent


@given(
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.none() | stamps(),
    st.none() | st.integers(0, 255),
    st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.integers(0, 15),
)
def test_generated_measurements_decode_exactly(
    imperial: bool,
    weight: int,
    stamp: Stamp | None,
    user: int | None,
    bmi_height: tuple[int, int] | None,
    reserved: int,
) -> None:
    flags = flag_bits(imperial, stamp is not None, user is not None, bmi_height is not None)
    payload = bytes([flags | reserved << 4]) + struct.pack("<H", weight)
    payload += stamp.raw if stamp else b""
    payload += bytes([user]) if user is not None else b""
    payload += struct.pack("<HH", *bmi_height) if bmi_height else b""
    measured = weight_scale.parse(payload)
    assert measured.unit == ("[lb_av]" if imperial else "kg")
    if weight == 0xFFFF:
        assert measured.unsuccessful and measured.weight.value is None
    else:
        _check_fixed(measured.weight, *_expected_weight(weight, imperial))
    if stamp is None:
        assert measured.timestamp is None
    else:
        check_stamp(measured.timestamp, stamp)
    assert measured.user_id == user
    if bmi_height is None:
        assert (measured.bmi, measured.height, measured.height_unit) == (None, None, None)
    else:
        bmi, height = bmi_height
        _check_fixed(measured.bmi, bmi * Decimal("0.1"), -1)
        if imperial:
            _check_fixed(measured.height, height * Decimal("0.1"), -1)
        else:
            _check_fixed(measured.height, height * Decimal("0.001"), -3)
        assert measured.height_unit == ("[in_i]" if imperial else "m")
    assert_truncations_fail(weight_scale.parse, payload)


@given(st.binary(max_size=24))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(weight_scale.parse, data, uuids.WEIGHT_MEASUREMENT)
    assert_parses_or_rejects(weight_scale.parse_feature, data, uuids.WEIGHT_SCALE_FEATURE)
