"""Scenario files and the demo scenario."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from devices.simulator import KINDS, SimulatorError
from devices.simulator.payloads import glucose_sequence
from devices.simulator.scenario import demo_path, load
from tests.devices.simulator.support import STATION_NOW, station_clock


def test_demo_scenario_has_one_device_of_each_kind_with_data() -> None:
    scenario = load(demo_path(), station_clock)
    assert sorted(config.kind for config in scenario.configs) == sorted(KINDS)
    assert len({config.address for config in scenario.configs}) == len(KINDS)
    for setup in scenario.devices:
        assert setup.streams or setup.records, setup.config.kind
    meter = next(setup for setup in scenario.devices if setup.config.kind == "glucose_meter")
    assert [glucose_sequence(record) for record in meter.records] == list(range(1, 21))
    newest = meter.records[-1][3:10]
    moment = STATION_NOW - timedelta(hours=4)
    assert newest == bytes(
        [
            moment.year & 0xFF,
            moment.year >> 8,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
        ]
    )


def test_scenario_fields(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "kind": "thermometer",
                        "address": "aa:bb:cc:dd:ee:ff",
                        "clock_unset": True,
                        "cts_writable": False,
                        "pin": "0042",
                        "pairing_method": "pin",
                        "records": ["020100E807050F0A1E005FB011"],
                    },
                    {
                        "kind": "heart_rate",
                        "address": "AA:BB:CC:DD:EE:01",
                        "clock_offset_seconds": 90,
                    },
                ]
            }
        ),
        encoding="utf-8",
    )
    first, second = load(path, station_clock).devices
    assert first.config.clock_offset is None and first.config.pin == "0042"
    assert first.records == (bytes.fromhex("020100E807050F0A1E005FB011"),)
    assert second.config.clock_offset == timedelta(seconds=90)


@pytest.mark.parametrize(
    "device",
    [
        {"kind": "toaster", "address": "AA:BB:CC:DD:EE:FF"},
        {"kind": "thermometer", "address": "AA:BB"},
        {"kind": "thermometer", "address": "AA:BB:CC:DD:EE:FF", "colour": "red"},
    ],
)
def test_invalid_scenarios_are_refused(tmp_path: Path, device: dict[str, str]) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"devices": [device]}), encoding="utf-8")
    with pytest.raises(SimulatorError):
        load(path, station_clock)
