"""16-bit assigned numbers as full UUIDs."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.gatt import uuids


def test_blood_pressure_measurement() -> None:
    assert uuids.BLOOD_PRESSURE_MEASUREMENT == "00002a35-0000-1000-8000-00805f9b34fb"


@given(st.integers(0, 0xFFFF))
def test_uuid16_is_the_bluetooth_base_uuid(number: int) -> None:
    full = uuids.uuid16(number)
    assert uuid.UUID(full).int == number << 96 | 0x00001000_8000_00805F9B34FB
    assert full == full.lower()


@pytest.mark.parametrize("number", [-1, 0x10000])
def test_uuid16_rejects_other_numbers(number: int) -> None:
    with pytest.raises(ValueError, match="16-bit"):
        uuids.uuid16(number)
