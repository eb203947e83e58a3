"""PLX Spot-check (0x2A5E) and Continuous (0x2A5F) Measurements, PLX Features (0x2A60).

Spec: https://www.bluetooth.com/specifications/specs/pulse-oximeter-service-1-0-1/
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from devices.gatt import uuids
from devices.gatt._reader import Reader, flag
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric


class MeasurementStatus(enum.IntFlag):
    """Measurement Status (u16) bits; bits 0–4 are reserved."""

    ONGOING = 1 << 5
    EARLY_ESTIMATE = 1 << 6
    VALIDATED = 1 << 7
    FULLY_QUALIFIED = 1 << 8
    FROM_STORAGE = 1 << 9
    DEMONSTRATION = 1 << 10
    TEST_DATA = 1 << 11
    CALIBRATION_ONGOING = 1 << 12
    UNAVAILABLE = 1 << 13
    QUESTIONABLE = 1 << 14
    INVALID = 1 << 15


class DeviceSensorStatus(enum.IntFlag):
    """Device and Sensor Status (u24) bits; bits 16–23 are reserved."""

    EXTENDED_DISPLAY_UPDATE_ONGOING = 1 << 0
    EQUIPMENT_MALFUNCTION = 1 << 1
    SIGNAL_PROCESSING_IRREGULARITY = 1 << 2
    INADEQUATE_SIGNAL = 1 << 3
    POOR_SIGNAL = 1 << 4
    LOW_PERFUSION = 1 << 5
    ERRATIC_SIGNAL = 1 << 6
    NONPULSATILE_SIGNAL = 1 << 7
    QUESTIONABLE_PULSE = 1 << 8
    SIGNAL_ANALYSIS_ONGOING = 1 << 9
    SENSOR_INTERFERENCE = 1 << 10
    SENSOR_UNCONNECTED = 1 << 11
    UNKNOWN_SENSOR = 1 << 12
    SENSOR_DISPLACED = 1 << 13
    SENSOR_MALFUNCTION = 1 << 14
    SENSOR_DISCONNECTED = 1 << 15


class _StatusHelpers:
    """Named views of ``measurement_status``; all False when the field is absent."""

    measurement_status: int | None

    def _has(self, bit: MeasurementStatus) -> bool:
        return bool((self.measurement_status or 0) & bit)

    @property
    def ongoing(self) -> bool:
        return self._has(MeasurementStatus.ONGOING)

    @property
    def validated(self) -> bool:
        return self._has(MeasurementStatus.VALIDATED)

    @property
    def from_storage(self) -> bool:
        return self._has(MeasurementStatus.FROM_STORAGE)

    @property
    def test_data(self) -> bool:
        return self._has(MeasurementStatus.TEST_DATA)

    @property
    def unavailable(self) -> bool:
        return self._has(MeasurementStatus.UNAVAILABLE)

    @property
    def questionable(self) -> bool:
        return self._has(MeasurementStatus.QUESTIONABLE)

    @property
    def invalid(self) -> bool:
        return self._has(MeasurementStatus.INVALID)


@dataclass(frozen=True)
class PlxSpotCheck(_StatusHelpers):
    """One spot-check reading: SpO2 in %, pulse rate in /min."""

    spo2: Numeric
    pulse_rate: Numeric
    timestamp: DateTime | None
    measurement_status: int | None
    device_sensor_status: int | None
    pulse_amplitude_index: Numeric | None
    clock_not_set: bool


@dataclass(frozen=True)
class PlxContinuous(_StatusHelpers):
    """One continuous reading; ``fast``/``slow`` are (SpO2, pulse rate) pairs if sent."""

    spo2: Numeric
    pulse_rate: Numeric
    fast: tuple[Numeric, Numeric] | None
    slow: tuple[Numeric, Numeric] | None
    measurement_status: int | None
    device_sensor_status: int | None
    pulse_amplitude_index: Numeric | None


def parse_spot_check(data: bytes) -> PlxSpotCheck:
    """2A5E; raises ParseError for a payload the flags do not explain."""
    reader = Reader(data, uuids.PLX_SPOT_CHECK_MEASUREMENT)
    flags = reader.u8()
    measurement = PlxSpotCheck(
        spo2=reader.sfloat(),
        pulse_rate=reader.sfloat(),
        timestamp=reader.date_time() if flag(flags, 0) else None,
        measurement_status=reader.u16() if flag(flags, 1) else None,
        device_sensor_status=reader.uint(3) if flag(flags, 2) else None,
        pulse_amplitude_index=reader.sfloat() if flag(flags, 3) else None,
        clock_not_set=flag(flags, 4),
    )
    reader.finish()
    return measurement


def parse_continuous(data: bytes) -> PlxContinuous:
    """2A5F; raises ParseError for a payload the flags do not explain."""
    reader = Reader(data, uuids.PLX_CONTINUOUS_MEASUREMENT)
    flags = reader.u8()
    measurement = PlxContinuous(
        spo2=reader.sfloat(),
        pulse_rate=reader.sfloat(),
        fast=(reader.sfloat(), reader.sfloat()) if flag(flags, 0) else None,
        slow=(reader.sfloat(), reader.sfloat()) if flag(flags, 1) else None,
        measurement_status=reader.u16() if flag(flags, 2) else None,
        device_sensor_status=reader.uint(3) if flag(flags, 3) else None,
        pulse_amplitude_index=reader.sfloat() if flag(flags, 4) else None,
    )
    reader.finish()
    return measurement


def parse(data: bytes) -> PlxSpotCheck:
    """The module's default parser is the spot check (2A5E), the one PLX download uses."""
    return parse_spot_check(data)


class PlxSupportedFeatures(enum.IntFlag):
    """2A60 Supported Features (u16) bits."""

    MEASUREMENT_STATUS = 1 << 0
    DEVICE_SENSOR_STATUS = 1 << 1
    SPOT_CHECK_STORAGE = 1 << 2
    SPOT_CHECK_TIMESTAMP = 1 << 3
    FAST_METRIC = 1 << 4
    SLOW_METRIC = 1 << 5
    PULSE_AMPLITUDE_INDEX = 1 << 6
    MULTIPLE_BONDS = 1 << 7


@dataclass(frozen=True)
class PlxFeatures:
    """2A60: supported features plus which status bits the device can report."""

    supported: PlxSupportedFeatures
    measurement_status_support: MeasurementStatus | None
    device_sensor_status_support: DeviceSensorStatus | None


def parse_features(data: bytes) -> PlxFeatures:
    """2A60: the two support fields are present when bits 0 / 1 say so."""
    reader = Reader(data, uuids.PLX_FEATURES)
    supported = PlxSupportedFeatures(reader.u16())
    features = PlxFeatures(
        supported=supported,
        measurement_status_support=(
            MeasurementStatus(reader.u16()) if flag(supported, 0) else None
        ),
        device_sensor_status_support=(
            DeviceSensorStatus(reader.uint(3)) if flag(supported, 1) else None
        ),
    )
    reader.finish()
    return features
