"""A whole station for end-to-end tests: simulated BlueZ on a private bus, unmodified bleak, the
station's real outbox/processor/uploader, and a real ``medikus serve`` with the station
registered as a SMART backend service."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from bleak.backends.bluezdbus import manager

from devices.assignment import Assignments
from devices.config import DeviceConfig as StationDevice
from devices.config import StationConfig
from devices.credentials import StationKey
from devices.outbox import open_database
from devices.simulator import DeviceConfig
from devices.simulator.payloads import glucose_measurement
from tests.conftest import ServerProcess

T = TypeVar("T")
BERLIN = ZoneInfo("Europe/Berlin")
MDC = "urn:iso:std:iso:11073:10101"
GLUCOSE_CODES = ("160184", "160188", "160368")


def wall_clock() -> datetime:
    """The devices' clocks run on Berlin wall time, as the station's zone says."""
    return datetime.now(BERLIN).replace(tzinfo=None)


def write_key(key: StationKey, path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key.to_json())
    return path


def station_config(
    server: ServerProcess, key: StationKey, directory: Path, devices: Sequence[DeviceConfig]
) -> StationConfig:
    kinds = {
        "blood_pressure": "blood-pressure",
        "thermometer": "thermometer",
        "pulse_oximeter": "pulse-oximeter",
        "weight_scale": "weight-scale",
        "glucose_meter": "glucose",
        "heart_rate": "heart-rate",
    }
    return StationConfig(
        station_id=f"test-{directory.name}",
        record_core=f"{server.base}/fhir",
        key_file=write_key(key, directory / "station.jwk"),
        state_dir=directory / "state",
        devices=tuple(
            StationDevice(address=d.address, kind=kinds[d.kind], pin=d.pin)  # type: ignore[arg-type]
            for d in devices
        ),
        max_backoff_s=1.0,
    )


def check_in(config: StationConfig, patient: str, device: str | None = None) -> None:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(config.state_dir / "station.sqlite3")
    try:
        at = datetime.now(UTC) - timedelta(days=60)  # covers stored records of the past weeks
        Assignments(database).check_in(patient, device, at=at)
    finally:
        database.close()


def glucose_records(count: int, first: int = 1, *, end: datetime | None = None) -> list[bytes]:
    """``count`` stored records, 5 min apart, ending now (device wall clock)."""
    end = end or wall_clock().replace(microsecond=0)
    start = end - timedelta(minutes=5 * (count + first))
    return [
        glucose_measurement(first + i, start + timedelta(minutes=5 * (first + i)), 90 + i % 50)
        for i in range(count)
    ]


def observations(server: ServerProcess, patient: str, **params: str) -> list[dict[str, Any]]:
    """Every Observation of ``patient`` (all pages)."""
    found: list[dict[str, Any]] = []
    url: str | None = f"{server.base}/fhir/Observation"
    query: dict[str, str] | None = {"subject": f"Patient/{patient}", "_count": "500", **params}
    with httpx.Client(auth=server.auth, timeout=60) as http:
        while url:
            bundle = http.get(url, params=query).json()
            found += [e["resource"] for e in bundle.get("entry", [])]
            url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
            query = None
    return found


def coded(found: list[dict[str, Any]], *codes: str) -> list[dict[str, Any]]:
    return [
        o
        for o in found
        if any(c["system"] == MDC and c["code"] in codes for c in o["code"]["coding"])
    ]


def glucose_sequences(found: list[dict[str, Any]]) -> list[int]:
    """The record sequence numbers in the de-dup identifiers of glucose Observations."""
    return sorted(
        int(o["identifier"][0]["value"].rsplit("-", 1)[1]) for o in coded(found, *GLUCOSE_CODES)
    )


async def eventually(
    condition: Callable[[], bool], timeout: float = 60, every: float = 0.3
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(every)


async def notify_when_subscribed(
    sim: Any, address: str, characteristic: str, payload: bytes, timeout: float = 30
) -> None:
    """Sends once the station has subscribed (the simulator drops unheard notifications)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not sim.notify(address, characteristic, payload):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{address} {characteristic}: never subscribed")
        await asyncio.sleep(0.1)


def birth() -> date:
    return date(1941, 3, 2)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 240) -> T:
    """A fresh loop per scenario; bleak's BlueZ manager bus of that loop is closed at the end
    (bleak would close it only when the next loop asks for one: a ResourceWarning)."""
    return asyncio.run(_closing_bleak(coroutine, timeout))


async def _closing_bleak(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    try:
        return await asyncio.wait_for(coroutine, timeout)
    finally:
        instance = manager._global_instances.pop(asyncio.get_running_loop(), None)
        bus = instance._bus if instance is not None else None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
