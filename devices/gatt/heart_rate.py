"""Heart Rate Measurement (0x2A37) and Body Sensor Location (0x2A38).

Spec: https://www.bluetooth.com/specifications/specs/heart-rate-service-1-0/
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from devices.gatt import uuids
from devices.gatt._reader import Reader, flag

SensorContact = Literal["unsupported", "not-detected", "detected"]
_RR_UNIT = Decimal(1) / Decimal(1024)  # exactly 0.0009765625 s


class BodySensorLocation(enum.IntEnum):
    """2A38 values (7–255 reserved)."""

    OTHER = 0
    CHEST = 1
    WRIST = 2
    FINGER = 3
    HAND = 4
    EAR_LOBE = 5
    FOOT = 6


@dataclass(frozen=True)
class HeartRateMeasurement:
    """One notification; RR intervals in seconds, exact (n/1024), oldest first."""

    heart_rate: int
    sensor_contact: SensorContact
    energy_expended_kj: int | None
    rr_intervals: tuple[Decimal, ...]


def parse(data: bytes) -> HeartRateMeasurement:
    """2A37; RR intervals repeat to the end, so an odd leftover byte is a ParseError."""
    reader = Reader(data, uuids.HEART_RATE_MEASUREMENT)
    flags = reader.u8()
    heart_rate = reader.u16() if flag(flags, 0) else reader.u8()
    energy = reader.u16() if flag(flags, 3) else None
    intervals: list[Decimal] = []
    if flag(flags, 4):
        # Present means at least one interval; then as many as fit.
        intervals.append(reader.u16() * _RR_UNIT)
        while reader.remaining() >= 2:
            intervals.append(reader.u16() * _RR_UNIT)
    reader.finish()
    return HeartRateMeasurement(
        heart_rate=heart_rate,
        sensor_contact=_contact(flags >> 1 & 0b11),
        energy_expended_kj=energy,
        rr_intervals=tuple(intervals),
    )


def _contact(bits: int) -> SensorContact:
    # Bit 2 = contact detection supported, bit 1 = contact detected.
    if bits == 0b11:
        return "detected"
    return "not-detected" if bits == 0b10 else "unsupported"


def parse_body_sensor_location(data: bytes) -> int:
    """2A38: exactly 1 byte, the raw code (see BodySensorLocation)."""
    reader = Reader(data, uuids.BODY_SENSOR_LOCATION)
    code = reader.u8()
    reader.finish()
    return code
