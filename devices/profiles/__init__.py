"""GATT profile procedures per service (https://www.bluetooth.com/specifications/specs/)."""

from __future__ import annotations

from devices.profiles.base import (
    GattLink,
    GlucoseCursor,
    Profile,
    ReadingSink,
    Session,
    Subscription,
)
from devices.profiles.blood_pressure import BLOOD_PRESSURE
from devices.profiles.device_information import DeviceInformation, read_device_information
from devices.profiles.glucose import Glucose
from devices.profiles.heart_rate import HEART_RATE
from devices.profiles.pulse_oximeter import PULSE_OXIMETER
from devices.profiles.thermometer import THERMOMETER
from devices.profiles.weight_scale import WEIGHT_SCALE

__all__ = [
    "BLOOD_PRESSURE",
    "HEART_RATE",
    "PULSE_OXIMETER",
    "THERMOMETER",
    "WEIGHT_SCALE",
    "DeviceInformation",
    "GattLink",
    "Glucose",
    "GlucoseCursor",
    "Profile",
    "ReadingSink",
    "Session",
    "Subscription",
    "profiles_for",
    "read_device_information",
]


def profiles_for(kind: str, cursor: GlucoseCursor) -> tuple[Profile, ...]:
    """The profiles for a configured device kind (``devices.config.DeviceKind``)."""
    table: dict[str, tuple[Profile, ...]] = {
        "blood-pressure": (BLOOD_PRESSURE,),
        "thermometer": (THERMOMETER,),
        "pulse-oximeter": PULSE_OXIMETER,
        "weight-scale": (WEIGHT_SCALE,),
        "glucose": (Glucose(cursor),),
        "heart-rate": (HEART_RATE,),
    }
    try:
        return table[kind]
    except KeyError:
        raise ValueError(f"unbekannte Geräteart / unknown device kind: {kind}") from None
