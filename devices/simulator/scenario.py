"""Scenario files: which simulated devices exist, what they store and what they stream (JSON, see demo_scenario.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from devices.simulator.devices import DeviceConfig
from devices.simulator.errors import SimulatorError
from devices.simulator.model import Clock
from devices.simulator.payloads import glucose_measurement
from devices.simulator.simulator import Simulator

_CONFIG_KEYS = {
    "kind",
    "address",
    "name",
    "pin",
    "pairing_method",
    "cts_writable",
    "racp",
    "rssi",
    "battery_level",
    "manufacturer",
    "model",
    "serial",
    "hardware_revision",
    "firmware_revision",
    "software_revision",
}


@dataclass(frozen=True)
class Stream:
    characteristic: str
    payloads: tuple[bytes, ...]
    interval: float = 1.0


@dataclass(frozen=True)
class DeviceSetup:
    config: DeviceConfig
    records: tuple[bytes, ...] = ()
    streams: tuple[Stream, ...] = ()


@dataclass(frozen=True)
class Scenario:
    devices: tuple[DeviceSetup, ...]
    adapter_address: str = "00:1A:7D:DA:71:13"
    configs: tuple[DeviceConfig, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", tuple(setup.config for setup in self.devices))


def demo_path() -> Path:
    return Path(str(resources.files("devices.simulator") / "demo_scenario.json"))


def load(path: Path, station_clock: Clock) -> Scenario:
    """Read a scenario file; generated records are dated relative to ``station_clock``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        setups = tuple(_device(item, station_clock) for item in data["devices"])
        return Scenario(setups, data.get("adapter_address", "00:1A:7D:DA:71:13"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SimulatorError(f"Szenario {path} ungültig / invalid scenario: {exc}") from exc


def _device(item: dict[str, Any], station_clock: Clock) -> DeviceSetup:
    unknown = (
        set(item) - _CONFIG_KEYS - {"clock_offset_seconds", "clock_unset", "records", "streams"}
    )
    if unknown:
        raise SimulatorError(f"unbekannte Felder / unknown fields: {sorted(unknown)}")
    offset = (
        None if item.get("clock_unset") else timedelta(seconds=item.get("clock_offset_seconds", 0))
    )
    config = DeviceConfig(
        **{key: value for key, value in item.items() if key in _CONFIG_KEYS},
        clock_offset=offset,
    )
    streams = tuple(
        Stream(
            stream["characteristic"],
            tuple(bytes.fromhex(payload) for payload in stream["payloads"]),
            float(stream.get("interval", 1.0)),
        )
        for stream in item.get("streams", [])
    )
    return DeviceSetup(config, _records(item.get("records"), station_clock), streams)


def _records(spec: list[str] | dict[str, Any] | None, station_clock: Clock) -> tuple[bytes, ...]:
    """Raw hex records, or a generator: count, interval_minutes, mg_dl values cycled, [start]."""
    if spec is None:
        return ()
    if isinstance(spec, list):
        return tuple(bytes.fromhex(record) for record in spec)
    count = int(spec["count"])
    step = timedelta(minutes=spec.get("interval_minutes", 240))
    values = [int(value) for value in spec.get("mg_dl", [95, 110, 132, 101, 88, 145])]
    start = (
        datetime.fromisoformat(spec["start"])
        if "start" in spec
        else (station_clock() - step * count).replace(microsecond=0)
    )
    first = int(spec.get("first_sequence", 1))
    return tuple(
        glucose_measurement(first + index, start + step * index, values[index % len(values)])
        for index in range(count)
    )


def apply(simulator: Simulator, scenario: Scenario) -> None:
    """Store the records and start the streams of a running simulator."""
    for setup in scenario.devices:
        address = setup.config.address
        if setup.records:
            simulator.add_records(address, setup.records)
        for stream in setup.streams:
            simulator.start_stream(address, stream.characteristic, stream.payloads, stream.interval)
