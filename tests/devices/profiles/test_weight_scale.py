"""devices.profiles.weight_scale: weight measurements (2A9D)."""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.weight_scale import WEIGHT_SCALE
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, deliver, run

__all__ = ["bus_address"]


def test_weights_become_readings_in_order(bus_address: str) -> None:
    payloads = ["00B036", "0EB036E807050F0A1E0001EF00AE06", "01483C"]
    script = [("2a9d", bytes.fromhex(p)) for p in payloads]
    device = DeviceConfig("weight_scale", "AA:BB:CC:DD:EE:04", "Scale")
    outbox = run(deliver(bus_address, device, [WEIGHT_SCALE], script))
    assert outbox.payloads(uuids.WEIGHT_MEASUREMENT) == [payload for _, payload in script]
