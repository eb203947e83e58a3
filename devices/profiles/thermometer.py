"""Health Thermometer Profile: 2A1C temperature (indicate) and 2A1E intermediate (notify).

Spec: https://www.bluetooth.com/specifications/specs/health-thermometer-profile-1-0/
"""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.base import Subscription

THERMOMETER = Subscription(
    name="thermometer",
    primary=uuids.TEMPERATURE_MEASUREMENT,
    optional=(uuids.INTERMEDIATE_TEMPERATURE,),
)
