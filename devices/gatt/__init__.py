"""Pure GATT wire formats of the station's health devices: bytes in, frozen dataclass out.

Spec: https://www.bluetooth.com/specifications/gss/
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from devices.gatt import (
    blood_pressure,
    glucose,
    heart_rate,
    pulse_oximeter,
    thermometer,
    uuids,
    weight_scale,
)
from devices.gatt.current_time import CurrentTime
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric, Special

Measurement = (
    blood_pressure.BloodPressureMeasurement
    | thermometer.TemperatureMeasurement
    | pulse_oximeter.PlxSpotCheck
    | pulse_oximeter.PlxContinuous
    | weight_scale.WeightMeasurement
    | glucose.GlucoseMeasurement
    | glucose.GlucoseContext
    | heart_rate.HeartRateMeasurement
)

# Characteristic UUID → parser of the notifications/indications it sends (ParseError on bad data).
MEASUREMENT_PARSERS: Mapping[str, Callable[[bytes], Measurement]] = MappingProxyType(
    {
        uuids.BLOOD_PRESSURE_MEASUREMENT: blood_pressure.parse,
        uuids.INTERMEDIATE_CUFF_PRESSURE: blood_pressure.parse_intermediate,
        uuids.TEMPERATURE_MEASUREMENT: thermometer.parse,
        uuids.INTERMEDIATE_TEMPERATURE: thermometer.parse_intermediate,
        uuids.PLX_SPOT_CHECK_MEASUREMENT: pulse_oximeter.parse_spot_check,
        uuids.PLX_CONTINUOUS_MEASUREMENT: pulse_oximeter.parse_continuous,
        uuids.WEIGHT_MEASUREMENT: weight_scale.parse,
        uuids.GLUCOSE_MEASUREMENT: glucose.parse,
        uuids.GLUCOSE_MEASUREMENT_CONTEXT: glucose.parse_context,
        uuids.HEART_RATE_MEASUREMENT: heart_rate.parse,
    }
)

__all__ = [
    "MEASUREMENT_PARSERS",
    "CurrentTime",
    "DateTime",
    "Measurement",
    "Numeric",
    "Special",
]
