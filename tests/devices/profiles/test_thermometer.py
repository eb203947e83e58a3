"""devices.profiles.thermometer: temperature (2A1C) and intermediate temperature (2A1E)."""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.thermometer import THERMOMETER
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, deliver, run

__all__ = ["bus_address"]


def test_temperatures_become_readings_in_order(bus_address: str) -> None:
    script = [
        ("2a1e", bytes.fromhex("006A0100FF")),
        ("2a1c", bytes.fromhex("006E0100FF")),
        ("2a1c", bytes.fromhex("066E0100FFE807050F0A1E0006")),
        ("2a1c", bytes.fromhex("01DA0300FF")),
    ]
    device = DeviceConfig("thermometer", "AA:BB:CC:DD:EE:02", "Thermo")
    outbox = run(deliver(bus_address, device, [THERMOMETER], script))
    assert outbox.payloads() == [payload for _, payload in script]
    assert outbox.payloads(uuids.INTERMEDIATE_TEMPERATURE) == [script[0][1]]
