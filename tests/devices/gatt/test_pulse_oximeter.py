"""Pulse oximeter (2A5E, 2A5F, 2A60): reference vectors and generated measurements."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import pulse_oximeter, uuids
from devices.gatt.pulse_oximeter import (
    DeviceSensorStatus,
    MeasurementStatus,
    PlxContinuous,
    PlxSpotCheck,
    PlxSupportedFeatures,
)
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

_SPOT_NONE = {
    "timestamp": None,
    "measurement_status": None,
    "device_sensor_status": None,
    "pulse_amplitude_index": None,
    "clock_not_set": False,
}
# Measurement status bits from the PLXS table: name → bit.
_STATUS_BITS = {
    "ongoing": 5,
    "validated": 7,
    "from_storage": 9,
    "test_data": 11,
    "unavailable": 13,
    "questionable": 14,
    "invalid": 15,
}


def test_spot_check_vectors() -> None:
    plain_reading = pulse_oximeter.parse_spot_check(bytes.fromhex("0062004800"))
    assert plain(plain_reading) == _SPOT_NONE | {"spo2": "98", "pulse_rate": "72"}
    assert not any(getattr(plain_reading, name) for name in _STATUS_BITS)

    validated = pulse_oximeter.parse(bytes.fromhex("0362004800" + TS.hex() + "8000"))
    assert plain(validated) == _SPOT_NONE | {
        "spo2": "98",
        "pulse_rate": "72",
        "timestamp": TS_ISO,
        "measurement_status": 0x0080,
    }
    assert validated.validated
    assert not (validated.questionable or validated.invalid or validated.from_storage)


def test_continuous_vector() -> None:
    reading = pulse_oximeter.parse_continuous(bytes.fromhex("0061004B00"))
    assert plain(reading) == {
        "spo2": "97",
        "pulse_rate": "75",
        "fast": None,
        "slow": None,
        "measurement_status": None,
        "device_sensor_status": None,
        "pulse_amplitude_index": None,
    }


def test_clock_not_set_flag() -> None:
    assert pulse_oximeter.parse_spot_check(bytes.fromhex("1062004800")).clock_not_set


def test_features() -> None:
    features = pulse_oximeter.parse_features(bytes.fromhex("0300" + "8000" + "080000"))
    assert features.supported == (
        PlxSupportedFeatures.MEASUREMENT_STATUS | PlxSupportedFeatures.DEVICE_SENSOR_STATUS
    )
    assert features.measurement_status_support == MeasurementStatus.VALIDATED
    assert features.device_sensor_status_support == DeviceSensorStatus.INADEQUATE_SIGNAL
    bare = pulse_oximeter.parse_features(bytes.fromhex("4000"))
    assert bare.supported == PlxSupportedFeatures.PULSE_AMPLITUDE_INDEX
    assert bare.measurement_status_support is None
    assert bare.device_sensor_status_support is None
    with pytest.raises(ParseError):
        pulse_oximeter.parse_features(bytes.fromhex("0100"))


def _check_optional(actual: Any, expected: Num | None) -> None:
    if expected is None:
        assert actual is None
    else:
        check_numeric(actual, expected)


def _check_status(reading: PlxSpotCheck | PlxContinuous, status: int | None) -> None:
    assert reading.measurement_status == status
    for name, bit in _STATUS_BITS.items():
        assert getattr(reading, name) == bool((status or 0) >> bit & 1)


@given(
    sfloats(),
    sfloats(),
    st.none() | stamps(),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFFFF),
    st.none() | sfloats(),
    st.booleans(),
    st.integers(0, 7),
)
def test_generated_spot_checks_decode_exactly(
    spo2: Num,
    pulse: Num,
    stamp: Stamp | None,
    status: int | None,
    sensor: int | None,
    pai: Num | None,
    clock_not_set: bool,
    reserved: int,
) -> None:
    present = (stamp, status, sensor, pai)
    flags = flag_bits(*(field is not None for field in present), clock_not_set) | reserved << 5
    payload = bytes([flags]) + spo2.raw + pulse.raw + (stamp.raw if stamp else b"")
    payload += struct.pack("<H", status) if status is not None else b""
    payload += sensor.to_bytes(3, "little") if sensor is not None else b""
    payload += pai.raw if pai else b""
    reading = pulse_oximeter.parse_spot_check(payload)
    check_numeric(reading.spo2, spo2)
    check_numeric(reading.pulse_rate, pulse)
    if stamp is None:
        assert reading.timestamp is None
    else:
        check_stamp(reading.timestamp, stamp)
    _check_status(reading, status)
    assert reading.device_sensor_status == sensor
    _check_optional(reading.pulse_amplitude_index, pai)
    assert reading.clock_not_set is clock_not_set
    assert_truncations_fail(pulse_oximeter.parse_spot_check, payload)


@given(
    st.lists(sfloats(), min_size=6, max_size=6),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFFFF),
    st.none() | sfloats(),
    st.integers(0, 7),
)
def test_generated_continuous_readings_decode_exactly(
    numbers: list[Num],
    fast: bool,
    slow: bool,
    status: int | None,
    sensor: int | None,
    pai: Num | None,
    reserved: int,
) -> None:
    flags = flag_bits(fast, slow, status is not None, sensor is not None, pai is not None)
    flags |= reserved << 5
    payload = bytes([flags]) + numbers[0].raw + numbers[1].raw
    payload += numbers[2].raw + numbers[3].raw if fast else b""
    payload += numbers[4].raw + numbers[5].raw if slow else b""
    payload += struct.pack("<H", status) if status is not None else b""
    payload += sensor.to_bytes(3, "little") if sensor is not None else b""
    payload += pai.raw if pai else b""
    reading = pulse_oximeter.parse_continuous(payload)
    check_numeric(reading.spo2, numbers[0])
    check_numeric(reading.pulse_rate, numbers[1])
    for pair, present, first in ((reading.fast, fast, 2), (reading.slow, slow, 4)):
        if present:
            assert pair is not None
            check_numeric(pair[0], numbers[first])
            check_numeric(pair[1], numbers[first + 1])
        else:
            assert pair is None
    _check_status(reading, status)
    assert reading.device_sensor_status == sensor
    _check_optional(reading.pulse_amplitude_index, pai)
    assert_truncations_fail(pulse_oximeter.parse_continuous, payload)


@given(st.binary(max_size=32))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(
        pulse_oximeter.parse_spot_check, data, uuids.PLX_SPOT_CHECK_MEASUREMENT
    )
    assert_parses_or_rejects(
        pulse_oximeter.parse_continuous, data, uuids.PLX_CONTINUOUS_MEASUREMENT
    )
    assert_parses_or_rejects(pulse_oximeter.parse_features, data, uuids.PLX_FEATURES)
