"""Weight Measurement (0x2A9D) and Weight Scale Feature (0x2A9E).

Spec: https://www.bluetooth.com/specifications/specs/weight-scale-service-1-0/
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from devices.gatt import uuids
from devices.gatt._reader import Reader, flag
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric, Special

UNSUCCESSFUL = 0xFFFF  # the weight field's "Measurement Unsuccessful" value


@dataclass(frozen=True)
class WeightMeasurement:
    """One weighing; the integer fields become Numerics whose exponent is the wire resolution.

    Weight: u16 × 0.005 kg → mantissa raw × 5, exponent −3 (70 kg = 70000e-3), or u16 × 0.01 lb
    → exponent −2. BMI u16 × 0.1 → exponent −1. Height u16 × 0.001 m → −3, × 0.1 in → −1.
    "Measurement Unsuccessful" (0xFFFF) becomes a NaN weight.
    """

    weight: Numeric
    unit: Literal["kg", "[lb_av]"]
    timestamp: DateTime | None
    user_id: int | None
    bmi: Numeric | None
    height: Numeric | None
    height_unit: Literal["m", "[in_i]"] | None

    @property
    def unsuccessful(self) -> bool:
        return self.weight.special is Special.NAN


def parse(data: bytes) -> WeightMeasurement:
    """2A9D; raises ParseError for a payload the flags do not explain."""
    reader = Reader(data, uuids.WEIGHT_MEASUREMENT)
    flags = reader.u8()
    imperial = flag(flags, 0)
    weight = _weight(reader.u16(), imperial)
    timestamp = reader.date_time() if flag(flags, 1) else None
    user_id = reader.u8() if flag(flags, 2) else None
    bmi = height = None
    if flag(flags, 3):
        bmi = Numeric(reader.u16(), -1)
        height = Numeric(reader.u16(), -1 if imperial else -3)
    reader.finish()
    return WeightMeasurement(
        weight=weight,
        unit="[lb_av]" if imperial else "kg",
        timestamp=timestamp,
        user_id=user_id,
        bmi=bmi,
        height=height,
        height_unit=None if height is None else "[in_i]" if imperial else "m",
    )


def _weight(raw: int, imperial: bool) -> Numeric:
    if raw == UNSUCCESSFUL:
        return Numeric(raw, 0, Special.NAN)
    return Numeric(raw, -2) if imperial else Numeric(raw * 5, -3)


@dataclass(frozen=True)
class WeightScaleFeature:
    """2A9E: what the scale supports; resolutions are codes, 0 = not specified.

    Weight codes 1–7: 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005 kg (1, 0.5, 0.2, 0.1, 0.05, 0.02,
    0.01 lb); height codes 1–3: 0.01, 0.005, 0.001 m (1, 0.5, 0.1 in).
    """

    timestamp: bool
    multiple_users: bool
    bmi: bool
    weight_resolution: int
    height_resolution: int
    raw: int


def parse_feature(data: bytes) -> WeightScaleFeature:
    """2A9E: exactly 4 bytes (u32)."""
    reader = Reader(data, uuids.WEIGHT_SCALE_FEATURE)
    raw = reader.uint(4)
    reader.finish()
    return WeightScaleFeature(
        timestamp=flag(raw, 0),
        multiple_users=flag(raw, 1),
        bmi=flag(raw, 2),
        weight_resolution=raw >> 3 & 0b1111,
        height_resolution=raw >> 7 & 0b111,
        raw=raw,
    )
