"""Heart Rate Profile: 2A37 heart rate measurement (notify).

Spec: https://www.bluetooth.com/specifications/specs/heart-rate-profile-1-0/
"""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.base import Subscription

HEART_RATE = Subscription(name="heart-rate", primary=uuids.HEART_RATE_MEASUREMENT)
