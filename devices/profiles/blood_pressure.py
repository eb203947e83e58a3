"""Blood Pressure Profile: 2A35 measurement (indicate) and 2A36 intermediate cuff pressure (notify).

Spec: https://www.bluetooth.com/specifications/specs/blood-pressure-profile-1-1-1/
"""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.base import Subscription

BLOOD_PRESSURE = Subscription(
    name="blood-pressure",
    primary=uuids.BLOOD_PRESSURE_MEASUREMENT,
    optional=(uuids.INTERMEDIATE_CUFF_PRESSURE,),
)
