"""The package surface: __all__ and the characteristic → parser table."""

from __future__ import annotations

import pytest

import devices.gatt
from devices.errors import ParseError
from devices.gatt import MEASUREMENT_PARSERS, uuids


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(devices.gatt).items()
        if not name.startswith("_") and not isinstance(value, type(devices.gatt))
    } - {"annotations", "Callable", "Mapping", "MappingProxyType"}
    assert set(devices.gatt.__all__) == public


@pytest.mark.parametrize(
    ("characteristic", "hex_", "type_name"),
    [
        (uuids.BLOOD_PRESSURE_MEASUREMENT, "007D0052006000", "BloodPressureMeasurement"),
        (uuids.INTERMEDIATE_CUFF_PRESSURE, "006400FF07FF07", "BloodPressureMeasurement"),
        (uuids.TEMPERATURE_MEASUREMENT, "006E0100FF", "TemperatureMeasurement"),
        (uuids.INTERMEDIATE_TEMPERATURE, "006E0100FF", "TemperatureMeasurement"),
        (uuids.PLX_SPOT_CHECK_MEASUREMENT, "0062004800", "PlxSpotCheck"),
        (uuids.PLX_CONTINUOUS_MEASUREMENT, "0061004B00", "PlxContinuous"),
        (uuids.WEIGHT_MEASUREMENT, "00B036", "WeightMeasurement"),
        (uuids.GLUCOSE_MEASUREMENT, "020100E807050F0A1E005FB011", "GlucoseMeasurement"),
        (uuids.GLUCOSE_MEASUREMENT_CONTEXT, "02020002", "GlucoseContext"),
        (uuids.HEART_RATE_MEASUREMENT, "0048", "HeartRateMeasurement"),
    ],
)
def test_parser_table(characteristic: str, hex_: str, type_name: str) -> None:
    parse = MEASUREMENT_PARSERS[characteristic]
    assert type(parse(bytes.fromhex(hex_))).__name__ == type_name
    with pytest.raises(ParseError) as caught:
        parse(b"")
    assert caught.value.characteristic == characteristic


def test_parser_table_covers_only_measurements() -> None:
    assert len(MEASUREMENT_PARSERS) == 10
    assert uuids.RECORD_ACCESS_CONTROL_POINT not in MEASUREMENT_PARSERS
