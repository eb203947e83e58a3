"""devices.profiles.heart_rate: heart rate measurements (2A37)."""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.heart_rate import HEART_RATE
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, deliver, run

__all__ = ["bus_address"]


def test_heart_rates_become_readings_in_order(bus_address: str) -> None:
    payloads = ["0048", "164855034003", "194800E8030004"] * 10
    script = [("2a37", bytes.fromhex(p)) for p in payloads]
    device = DeviceConfig("heart_rate", "AA:BB:CC:DD:EE:08", "Belt")
    outbox = run(deliver(bus_address, device, [HEART_RATE], script))
    assert outbox.payloads(uuids.HEART_RATE_MEASUREMENT) == [payload for _, payload in script]
