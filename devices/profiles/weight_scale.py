"""Weight Scale Profile: 2A9D weight measurement (indicate).

Spec: https://www.bluetooth.com/specifications/specs/weight-scale-profile-1-0/
"""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.base import Subscription

WEIGHT_SCALE = Subscription(name="weight-scale", primary=uuids.WEIGHT_MEASUREMENT)
