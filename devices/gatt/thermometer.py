"""Temperature Measurement (0x2A1C), Intermediate Temperature (0x2A1E), Temperature Type (0x2A1D).

Spec: https://www.bluetooth.com/specifications/specs/health-thermometer-service-1-0/
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from devices.gatt import uuids
from devices.gatt._reader import Reader, flag
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric


class TemperatureType(enum.IntEnum):
    """Where the temperature was taken (2A1D values; 0 and 10–255 are reserved)."""

    ARMPIT = 1
    BODY = 2
    EAR = 3
    FINGER = 4
    GASTROINTESTINAL_TRACT = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9


@dataclass(frozen=True)
class TemperatureMeasurement:
    """One reading; ``temperature_type`` is the raw code (see TemperatureType) or None."""

    value: Numeric
    unit: Literal["Cel", "[degF]"]
    timestamp: DateTime | None
    temperature_type: int | None
    intermediate: bool = False


def parse(data: bytes) -> TemperatureMeasurement:
    """2A1C; raises ParseError for a payload the flags do not explain."""
    return _parse(data, uuids.TEMPERATURE_MEASUREMENT, intermediate=False)


def parse_intermediate(data: bytes) -> TemperatureMeasurement:
    """2A1E Intermediate Temperature: same layout, marked ``intermediate``."""
    return _parse(data, uuids.INTERMEDIATE_TEMPERATURE, intermediate=True)


def _parse(data: bytes, characteristic: str, *, intermediate: bool) -> TemperatureMeasurement:
    reader = Reader(data, characteristic)
    flags = reader.u8()
    measurement = TemperatureMeasurement(
        value=reader.float32(),
        unit="[degF]" if flag(flags, 0) else "Cel",
        timestamp=reader.date_time() if flag(flags, 1) else None,
        temperature_type=reader.u8() if flag(flags, 2) else None,
        intermediate=intermediate,
    )
    reader.finish()
    return measurement


def parse_temperature_type(data: bytes) -> int:
    """2A1D: exactly 1 byte, the raw code (reserved codes are kept, not guessed)."""
    reader = Reader(data, uuids.TEMPERATURE_TYPE)
    code = reader.u8()
    reader.finish()
    return code
