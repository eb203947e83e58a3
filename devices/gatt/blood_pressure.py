"""Blood Pressure Measurement (0x2A35), Intermediate Cuff Pressure (0x2A36), BP Feature (0x2A49).

Spec: https://www.bluetooth.com/specifications/specs/blood-pressure-service-1-1-1/
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from devices.gatt import uuids
from devices.gatt._reader import Reader, flag
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric

PulseRateRange = Literal["in-range", "above", "below", "reserved"]
_PULSE_RATE_RANGES: tuple[PulseRateRange, ...] = ("in-range", "above", "below", "reserved")


@dataclass(frozen=True)
class BloodPressureStatus:
    """The Measurement Status field; ``raw`` keeps the 16 bits (bits 6–15 are reserved)."""

    body_movement: bool
    cuff_too_loose: bool
    irregular_pulse: bool
    pulse_rate_range: PulseRateRange
    improper_position: bool
    raw: int

    @classmethod
    def decode(cls, raw: int) -> BloodPressureStatus:
        return cls(
            body_movement=flag(raw, 0),
            cuff_too_loose=flag(raw, 1),
            irregular_pulse=flag(raw, 2),
            pulse_rate_range=_PULSE_RATE_RANGES[raw >> 3 & 0b11],
            improper_position=flag(raw, 5),
            raw=raw,
        )


@dataclass(frozen=True)
class BloodPressureMeasurement:
    """One reading; for 2A36 ``systolic`` is the current cuff pressure and ``intermediate`` True.

    ``user_id`` is None when absent; 255 means "unknown user" and is kept as 255.
    """

    unit: Literal["mmHg", "kPa"]
    systolic: Numeric
    diastolic: Numeric
    mean_arterial: Numeric
    timestamp: DateTime | None
    pulse_rate: Numeric | None
    user_id: int | None
    status: BloodPressureStatus | None
    intermediate: bool = False


def parse(data: bytes) -> BloodPressureMeasurement:
    """2A35; raises ParseError for a payload the flags do not explain."""
    return _parse(data, uuids.BLOOD_PRESSURE_MEASUREMENT, intermediate=False)


def parse_intermediate(data: bytes) -> BloodPressureMeasurement:
    """2A36 Intermediate Cuff Pressure: same layout, marked ``intermediate``."""
    return _parse(data, uuids.INTERMEDIATE_CUFF_PRESSURE, intermediate=True)


def _parse(data: bytes, characteristic: str, *, intermediate: bool) -> BloodPressureMeasurement:
    reader = Reader(data, characteristic)
    flags = reader.u8()
    systolic, diastolic, mean_arterial = reader.sfloat(), reader.sfloat(), reader.sfloat()
    measurement = BloodPressureMeasurement(
        unit="kPa" if flag(flags, 0) else "mmHg",
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial=mean_arterial,
        timestamp=reader.date_time() if flag(flags, 1) else None,
        pulse_rate=reader.sfloat() if flag(flags, 2) else None,
        user_id=reader.u8() if flag(flags, 3) else None,
        status=BloodPressureStatus.decode(reader.u16()) if flag(flags, 4) else None,
        intermediate=intermediate,
    )
    reader.finish()
    return measurement


class BloodPressureFeature(enum.IntFlag):
    """2A49 Blood Pressure Feature bits 0–5; later spec versions' bits are kept unnamed."""

    BODY_MOVEMENT_DETECTION = 1 << 0
    CUFF_FIT_DETECTION = 1 << 1
    IRREGULAR_PULSE_DETECTION = 1 << 2
    PULSE_RATE_RANGE_DETECTION = 1 << 3
    MEASUREMENT_POSITION_DETECTION = 1 << 4
    MULTIPLE_BONDS = 1 << 5


def parse_feature(data: bytes) -> BloodPressureFeature:
    """2A49: exactly 2 bytes; reserved bits are kept."""
    reader = Reader(data, uuids.BLOOD_PRESSURE_FEATURE)
    feature = BloodPressureFeature(reader.u16())
    reader.finish()
    return feature
