"""devices.profiles.pulse_oximeter: spot-check (2A5E) and continuous (2A5F) measurements."""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles.pulse_oximeter import PULSE_OXIMETER
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, deliver, run

__all__ = ["bus_address"]


def test_spot_checks_and_continuous_values_become_readings_in_order(bus_address: str) -> None:
    script = [
        ("2a5f", bytes.fromhex("0061004B00")),
        ("2a5e", bytes.fromhex("0062004800")),
        ("2a5f", bytes.fromhex("0060004C00")),
        ("2a5e", bytes.fromhex("0362004800E807050F0A1E008000")),
    ]
    device = DeviceConfig("pulse_oximeter", "AA:BB:CC:DD:EE:03", "Oxi")
    outbox = run(deliver(bus_address, device, PULSE_OXIMETER, script))
    assert outbox.payloads() == [payload for _, payload in script]
    assert [r.characteristic for r in outbox.readings] == [
        uuids.PLX_CONTINUOUS_MEASUREMENT,
        uuids.PLX_SPOT_CHECK_MEASUREMENT,
    ] * 2
