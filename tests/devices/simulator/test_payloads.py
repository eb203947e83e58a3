"""The simulator's encoders against the reference test vectors."""

from __future__ import annotations

from datetime import datetime

import pytest

from devices.simulator import SimulatorError
from devices.simulator.payloads import (
    current_time,
    glucose_measurement,
    glucose_sequence,
    parse_current_time,
    sfloat,
    uuid,
)

TS = datetime(2024, 5, 15, 10, 30)


@pytest.mark.parametrize(
    ("mantissa", "exponent", "wire"),
    [
        (120, 0, "7800"),
        (366, -1, "6EF1"),
        (95, -5, "5FB0"),
        (53, -4, "35C0"),
        (-1234, 0, "2E0B"),
        (160, -1, "A0F0"),
    ],
)
def test_sfloat_vectors(mantissa: int, exponent: int, wire: str) -> None:
    assert sfloat(mantissa, exponent) == bytes.fromhex(wire)


def test_sfloat_out_of_range_is_refused() -> None:
    with pytest.raises(SimulatorError):
        sfloat(2048, 0)


def test_glucose_record_vector_and_sequence() -> None:
    record = glucose_measurement(1, TS, 95)
    assert record == bytes.fromhex("020100E807050F0A1E005FB011")
    assert glucose_sequence(glucose_measurement(513, TS, 95, context_follows=True)) == 513


def test_current_time_round_trip() -> None:
    assert current_time(TS, adjust_reason=1) == bytes.fromhex("E807050F0A1E00030001")
    assert parse_current_time(bytes.fromhex("EA07060C143008000001")) == datetime(
        2026, 6, 12, 20, 48, 8
    )
    with pytest.raises(SimulatorError):
        parse_current_time(bytes.fromhex("E8070D0F0A1E00030001"))  # month 13


@pytest.mark.parametrize(
    "value", ["2a35", "0x2A35", 0x2A35, "00002a35", "00002A35-0000-1000-8000-00805F9B34FB"]
)
def test_uuid_forms(value: str | int) -> None:
    assert uuid(value) == "00002a35-0000-1000-8000-00805f9b34fb"


def test_uuid_rejects_garbage() -> None:
    with pytest.raises(SimulatorError):
        uuid("heart-rate")
