"""Health thermometer (2A1C, 2A1E, 2A1D): reference vectors and generated measurements."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import thermometer, uuids
from devices.gatt.thermometer import TemperatureType
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
    floats,
    plain,
    stamps,
)

_NONE = {"timestamp": None, "temperature_type": None, "intermediate": False}


@pytest.mark.parametrize(
    ("hex_", "expected"),
    [
        ("006E0100FF", _NONE | {"value": "36.6", "unit": "Cel"}),
        (
            "066E0100FF" + TS.hex() + "06",
            _NONE | {"value": "36.6", "unit": "Cel", "timestamp": TS_ISO, "temperature_type": 6},
        ),
        ("01DA0300FF", _NONE | {"value": "98.6", "unit": "[degF]"}),
    ],
)
def test_reference_vectors(hex_: str, expected: dict[str, Any]) -> None:
    assert plain(thermometer.parse(bytes.fromhex(hex_))) == expected


def test_mouth_is_type_six() -> None:
    measured = thermometer.parse(bytes.fromhex("066E0100FF" + TS.hex() + "06"))
    assert measured.temperature_type == TemperatureType.MOUTH


def test_intermediate_temperature() -> None:
    measured = thermometer.parse_intermediate(bytes.fromhex("006E0100FF"))
    assert measured.intermediate
    with pytest.raises(ParseError) as caught:
        thermometer.parse_intermediate(bytes.fromhex("006E0100"))
    assert caught.value.characteristic == uuids.INTERMEDIATE_TEMPERATURE


def test_temperature_type() -> None:
    assert thermometer.parse_temperature_type(b"\x03") == TemperatureType.EAR
    for wrong in (b"", b"\x03\x00"):
        with pytest.raises(ParseError):
            thermometer.parse_temperature_type(wrong)


@given(
    st.booleans(),
    floats(),
    st.none() | stamps(),
    st.none() | st.integers(0, 255),
    st.integers(0, 31),
    st.booleans(),
)
def test_generated_measurements_decode_exactly(
    fahrenheit: bool,
    value: Num,
    stamp: Stamp | None,
    kind: int | None,
    reserved: int,
    intermediate: bool,
) -> None:
    flags = flag_bits(fahrenheit, stamp is not None, kind is not None) | reserved << 3
    payload = bytes([flags]) + value.raw + (stamp.raw if stamp else b"")
    payload += bytes([kind]) if kind is not None else b""
    parse = thermometer.parse_intermediate if intermediate else thermometer.parse
    measured = parse(payload)
    check_numeric(measured.value, value)
    assert measured.unit == ("[degF]" if fahrenheit else "Cel")
    if stamp is None:
        assert measured.timestamp is None
    else:
        check_stamp(measured.timestamp, stamp)
    assert measured.temperature_type == kind
    assert measured.intermediate is intermediate
    assert_truncations_fail(parse, payload)


@given(st.binary(max_size=24))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(thermometer.parse, data, uuids.TEMPERATURE_MEASUREMENT)
    assert_parses_or_rejects(thermometer.parse_intermediate, data, uuids.INTERMEDIATE_TEMPERATURE)
    assert_parses_or_rejects(thermometer.parse_temperature_type, data, uuids.TEMPERATURE_TYPE)
