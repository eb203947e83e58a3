"""devices.profiles.blood_pressure: indications (2A35) and intermediate cuff pressure (2A36)."""

from __future__ import annotations

from devices.gatt import uuids
from devices.profiles import HEART_RATE
from devices.profiles.blood_pressure import BLOOD_PRESSURE
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, deliver, run

__all__ = ["bus_address"]

CUFF = "AA:BB:CC:DD:EE:01"
TS = "E807050F0A1E00"
MEASUREMENTS = [f"1E780050005D00{TS}4800010000", "007D0052006000", f"168C005A006C00{TS}58000400"]


def test_measurements_and_cuff_pressure_become_readings_in_order(bus_address: str) -> None:
    script = [
        ("2a36", bytes.fromhex("006400FF07FF07")),
        ("2a36", bytes.fromhex("00A000FF07FF07")),
        *[("2a35", bytes.fromhex(m)) for m in MEASUREMENTS],
        ("2a35", bytes.fromhex(MEASUREMENTS[0])),  # the same value again is a new reading
    ]
    device = DeviceConfig("blood_pressure", CUFF, "Cuff")
    # the heart-rate profile does not apply to a cuff and must not subscribe
    outbox = run(deliver(bus_address, device, [BLOOD_PRESSURE, HEART_RATE], script))
    assert outbox.payloads() == [payload for _, payload in script]
    assert [r.characteristic for r in outbox.readings] == [uuids.INTERMEDIATE_CUFF_PRESSURE] * 2 + [
        uuids.BLOOD_PRESSURE_MEASUREMENT
    ] * 4
