"""Device Information (DIS strings, 2A23, 2A50) and Battery Level (2A19)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import device_information, uuids
from devices.gatt.device_information import PnpId, SystemId
from tests.devices.gatt.wire import assert_parses_or_rejects, assert_truncations_fail


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"OMRON HEALTHCARE", "OMRON HEALTHCARE"),
        (b"BP7000\x00\x00\x00", "BP7000"),
        ("Gerät Ü1".encode(), "Gerät Ü1"),
        (b"", ""),
    ],
)
def test_strings_drop_trailing_nuls(raw: bytes, text: str) -> None:
    assert device_information.parse_string(raw, uuids.MODEL_NUMBER_STRING) == text


def test_string_that_is_not_utf8_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not valid UTF-8") as caught:
        device_information.parse_string(b"\xff\xfe", uuids.SERIAL_NUMBER_STRING)
    assert caught.value.characteristic == uuids.SERIAL_NUMBER_STRING


def test_omron_system_id_in_on_air_order() -> None:
    system_id = device_information.parse_system_id(bytes.fromhex("711000FEFF5F49B0"))
    assert system_id == SystemId(manufacturer_id=0xFFFE001071, oui=0xB0495F)
    assert system_id.fhir_value() == "71-10-00-FE-FF-5F-49-B0"


def test_pnp_id() -> None:
    pnp = device_information.parse_pnp_id(bytes.fromhex("010E02" + "3412" + "0001"))
    assert pnp == PnpId(
        vendor_id_source=1, vendor_id=0x020E, product_id=0x1234, product_version=0x0100
    )


@pytest.mark.parametrize("level", [0, 57, 100])
def test_battery_level(level: int) -> None:
    assert device_information.parse_battery_level(bytes([level])) == level


def test_battery_level_above_100_is_rejected() -> None:
    with pytest.raises(ParseError, match="battery level 101 % above 100"):
        device_information.parse_battery_level(bytes([101]))


@given(st.integers(0, 2**40 - 1), st.integers(0, 2**24 - 1))
def test_generated_system_ids(manufacturer_id: int, oui: int) -> None:
    payload = struct.pack("<IB", manufacturer_id & 0xFFFFFFFF, manufacturer_id >> 32)
    payload += struct.pack("<HB", oui & 0xFFFF, oui >> 16)
    system_id = device_information.parse_system_id(payload)
    assert (system_id.manufacturer_id, system_id.oui) == (manufacturer_id, oui)
    assert system_id.fhir_value() == "-".join(f"{byte:02X}" for byte in payload)
    assert_truncations_fail(device_information.parse_system_id, payload)


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_generated_pnp_ids(source: int, vendor: int, product: int, version: int) -> None:
    payload = struct.pack("<BHHH", source, vendor, product, version)
    assert device_information.parse_pnp_id(payload) == PnpId(source, vendor, product, version)
    assert_truncations_fail(device_information.parse_pnp_id, payload)


@given(st.text())
def test_generated_strings(text: str) -> None:
    text = text.rstrip("\x00")
    padded = text.encode() + b"\x00" * 3
    assert device_information.parse_string(padded, uuids.MANUFACTURER_NAME_STRING) == text


@given(st.binary(max_size=12))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(device_information.parse_system_id, data, uuids.SYSTEM_ID)
    assert_parses_or_rejects(device_information.parse_pnp_id, data, uuids.PNP_ID)
    assert_parses_or_rejects(device_information.parse_battery_level, data, uuids.BATTERY_LEVEL)

    def parse_model(raw: bytes) -> str:
        return device_information.parse_string(raw, uuids.MODEL_NUMBER_STRING)

    assert_parses_or_rejects(parse_model, data, uuids.MODEL_NUMBER_STRING)
