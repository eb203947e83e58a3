"""Glucose Measurement (0x2A18), Glucose Measurement Context (0x2A34), Glucose Feature (0x2A51).

Spec: https://www.bluetooth.com/wp-content/uploads/Files/Specification/HTML/GLS_v1.0.1/out/en/index-en.html
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from devices.gatt import uuids
from devices.gatt._reader import Reader, flag
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric

# Unit conversions done on the exponent so no digit is lost: 1 kg/L = 10^5 mg/dL,
# 1 mol/L = 10^3 mmol/L, 1 kg = 10^3 g = 10^6 mg, 1 L = 10^3 mL.
_MG_PER_DL_DECADES = 5
_MMOL_PER_L_DECADES = 3

GlucoseUnit = Literal["mg/dL", "mmol/L"]
MedicationUnit = Literal["mg", "mL"]


class SampleType(enum.IntEnum):
    """Low nibble of the type/location byte (0 and 11–15 reserved)."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class SampleLocation(enum.IntEnum):
    """High nibble of the type/location byte (0 and 5–14 reserved)."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    NOT_AVAILABLE = 15


class SensorStatus(enum.IntFlag):
    """Sensor Status Annunciation (u16) bits; bits 12–15 are reserved."""

    BATTERY_LOW = 1 << 0
    SENSOR_MALFUNCTION = 1 << 1
    SAMPLE_SIZE_INSUFFICIENT = 1 << 2
    STRIP_INSERTION_ERROR = 1 << 3
    STRIP_TYPE_INCORRECT = 1 << 4
    RESULT_TOO_HIGH = 1 << 5
    RESULT_TOO_LOW = 1 << 6
    TEMPERATURE_TOO_HIGH = 1 << 7
    TEMPERATURE_TOO_LOW = 1 << 8
    READ_INTERRUPTED = 1 << 9
    GENERAL_DEVICE_FAULT = 1 << 10
    TIME_FAULT = 1 << 11


@dataclass(frozen=True)
class GlucoseMeasurement:
    """One stored record; ``concentration`` is already in mg/dL or mmol/L (exponent shifted)."""

    sequence: int
    base_time: DateTime
    time_offset_minutes: int | None
    concentration: Numeric | None
    unit: GlucoseUnit | None
    sample_type: int | None
    sample_location: int | None
    sensor_status: int | None
    context_follows: bool

    @property
    def timestamp(self) -> datetime | None:
        """Base time plus offset, device-local; None when the base time is unknown."""
        base = self.base_time.to_datetime()
        if base is None:
            return None
        try:
            return base + timedelta(minutes=self.time_offset_minutes or 0)
        except OverflowError:  # a base time in the last ~23 days of year 9999
            return None

    @property
    def sensor_flags(self) -> SensorStatus:
        return SensorStatus(self.sensor_status or 0)


def parse(data: bytes) -> GlucoseMeasurement:
    """2A18; raises ParseError for a payload the flags do not explain."""
    reader = Reader(data, uuids.GLUCOSE_MEASUREMENT)
    flags = reader.u8()
    sequence, base_time = reader.u16(), reader.date_time()
    offset = reader.s16() if flag(flags, 0) else None
    unit: GlucoseUnit | None = None
    concentration = sample_type = sample_location = None
    if flag(flags, 1):
        molar = flag(flags, 2)
        unit = "mmol/L" if molar else "mg/dL"
        concentration = reader.sfloat().scaled(_MMOL_PER_L_DECADES if molar else _MG_PER_DL_DECADES)
        type_location = reader.u8()
        sample_type, sample_location = type_location & 0x0F, type_location >> 4
    sensor_status = reader.u16() if flag(flags, 3) else None
    reader.finish()
    return GlucoseMeasurement(
        sequence=sequence,
        base_time=base_time,
        time_offset_minutes=offset,
        concentration=concentration,
        unit=unit,
        sample_type=sample_type,
        sample_location=sample_location,
        sensor_status=sensor_status,
        context_follows=flag(flags, 4),
    )


class Meal(enum.IntEnum):
    PREPRANDIAL = 1
    POSTPRANDIAL = 2
    FASTING = 3
    CASUAL = 4
    BEDTIME = 5


@dataclass(frozen=True)
class GlucoseContext:
    """2A34, joined to its GlucoseMeasurement by ``sequence``.

    Carbohydrates are converted kg → g, medication kg → mg or L → mL (exponent shift);
    ``hba1c`` is in %. Codes (carbohydrate, meal, tester, health, medication) stay raw ints.
    """

    sequence: int
    extended_flags: int | None
    carbohydrate_id: int | None
    carbohydrate_grams: Numeric | None
    meal: int | None
    tester: int | None
    health: int | None
    exercise_seconds: int | None
    exercise_intensity: int | None
    medication_id: int | None
    medication: Numeric | None
    medication_unit: MedicationUnit | None
    hba1c: Numeric | None


def parse_context(data: bytes) -> GlucoseContext:
    """2A34; raises ParseError for a payload the flags do not explain."""
    reader = Reader(data, uuids.GLUCOSE_MEASUREMENT_CONTEXT)
    flags = reader.u8()
    sequence = reader.u16()
    extended_flags = reader.u8() if flag(flags, 7) else None
    carbohydrate_id = carbohydrate = None
    if flag(flags, 0):
        carbohydrate_id, carbohydrate = reader.u8(), reader.sfloat().scaled(3)
    meal = reader.u8() if flag(flags, 1) else None
    tester = health = None
    if flag(flags, 2):
        tester_health = reader.u8()
        tester, health = tester_health & 0x0F, tester_health >> 4
    exercise_seconds = exercise_intensity = None
    if flag(flags, 3):
        exercise_seconds, exercise_intensity = reader.u16(), reader.u8()
    medication_unit: MedicationUnit | None = None
    medication_id = medication = None
    if flag(flags, 4):
        liters = flag(flags, 5)
        medication_id, medication = reader.u8(), reader.sfloat().scaled(3 if liters else 6)
        medication_unit = "mL" if liters else "mg"
    hba1c = reader.sfloat() if flag(flags, 6) else None
    reader.finish()
    return GlucoseContext(
        sequence=sequence,
        extended_flags=extended_flags,
        carbohydrate_id=carbohydrate_id,
        carbohydrate_grams=carbohydrate,
        meal=meal,
        tester=tester,
        health=health,
        exercise_seconds=exercise_seconds,
        exercise_intensity=exercise_intensity,
        medication_id=medication_id,
        medication=medication,
        medication_unit=medication_unit,
        hba1c=hba1c,
    )


class GlucoseFeature(enum.IntFlag):
    """2A51 Glucose Feature (u16) bits; bits 11–15 are reserved."""

    LOW_BATTERY_DETECTION = 1 << 0
    SENSOR_MALFUNCTION_DETECTION = 1 << 1
    SENSOR_SAMPLE_SIZE = 1 << 2
    STRIP_INSERTION_ERROR_DETECTION = 1 << 3
    STRIP_TYPE_ERROR_DETECTION = 1 << 4
    RESULT_HIGH_LOW_DETECTION = 1 << 5
    TEMPERATURE_HIGH_LOW_DETECTION = 1 << 6
    READ_INTERRUPT_DETECTION = 1 << 7
    GENERAL_DEVICE_FAULT = 1 << 8
    TIME_FAULT = 1 << 9
    MULTIPLE_BONDS = 1 << 10


def parse_feature(data: bytes) -> GlucoseFeature:
    """2A51: exactly 2 bytes; reserved bits are kept."""
    reader = Reader(data, uuids.GLUCOSE_FEATURE)
    feature = GlucoseFeature(reader.u16())
    reader.finish()
    return feature
