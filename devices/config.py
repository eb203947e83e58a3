"""The station's configuration file (TOML), validated at start with clear errors.

```toml
station_id = "pilotzentrum-kusel"          # identifies the PhgDevice (gateway) in the record
record_core = "https://medikus.example/fhir"
client_id = "pilot-station"                 # SMART backend client registered with `medikus admin`
key_file = "/var/lib/medikus-station/station.jwk"   # private key, mode 600
state_dir = "/var/lib/medikus-station"       # durable outbox and check-ins

[[devices]]
address = "A0:B1:C2:D3:E4:01"
kind = "blood-pressure"
name = "Blutdruck Raum 1"
pin = "123456"                              # only for devices that pair with a PIN
```
Only listed devices are connected: a pilot centre must never read a neighbour's device.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from devices.errors import DeviceError

DeviceKind = Literal[
    "blood-pressure", "thermometer", "pulse-oximeter", "weight-scale", "glucose", "heart-rate"
]
_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")


class ConfigError(DeviceError):
    """The station's configuration file is missing or invalid."""


class DeviceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    kind: DeviceKind
    name: str = ""
    pin: str | None = Field(default=None, pattern=r"^\d{4,6}$")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip().upper()
        if not _ADDRESS.match(value):
            raise ValueError("Bluetooth-Adresse wie AA:BB:CC:DD:EE:FF / address like AA:BB:…")
        return value


class StationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    station_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    record_core: str = Field(pattern=r"^https?://")
    client_id: str = "pilot-station"
    key_file: Path
    state_dir: Path
    devices: tuple[DeviceConfig, ...] = ()
    time_zone: str = "Europe/Berlin"  # the devices' wall clocks (CTS) are local time
    batch_size: int = Field(default=100, ge=1, le=500)
    max_backoff_s: float = Field(default=60.0, gt=0)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unbekannte Zeitzone / unknown time zone {value!r}") from exc
        return value

    @field_validator("devices")
    @classmethod
    def _unique(cls, devices: tuple[DeviceConfig, ...]) -> tuple[DeviceConfig, ...]:
        addresses = [device.address for device in devices]
        if len(set(addresses)) != len(addresses):
            raise ValueError("Gerät doppelt eingetragen / device listed twice")
        return devices

    def device(self, address: str) -> DeviceConfig | None:
        return next((d for d in self.devices if d.address == address.upper()), None)


def load(path: Path) -> StationConfig:
    """Reads and validates ``path``; every problem is named with its place in the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: nicht lesbar / not readable: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: kein gültiges TOML / not valid TOML: {exc}") from exc
    for key in ("key_file", "state_dir"):  # relative to the file, not to the working directory
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(path.parent / data[key])
    try:
        return StationConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
