"""Pulse Oximeter Profile: 2A5E spot-check (indicate) and 2A5F continuous (notify).

Spec: https://www.bluetooth.com/specifications/specs/pulse-oximeter-profile-1-0-1/
"""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.base import Subscription

# A device may offer only the continuous measurement: either one makes the profile apply.
SPOT_CHECK = Subscription(
    name="pulse-oximeter-spot-check", primary=uuids.PLX_SPOT_CHECK_MEASUREMENT
)
CONTINUOUS = Subscription(
    name="pulse-oximeter-continuous", primary=uuids.PLX_CONTINUOUS_MEASUREMENT
)
PULSE_OXIMETER = (SPOT_CHECK, CONTINUOUS)
