"""``medikus station run --simulate``: the station against a simulated BlueZ (demo, trials).

A private dbus-daemon and the simulator (``python -m devices.simulator``) run as child
processes; the station talks to them through unmodified bleak, exactly as to a real adapter.
The configured devices are replaced by the scenario's (demo: one device of each kind).
"""

from __future__ import annotations

import json
import os
import subprocess  # nosec B404 # runs only our own simulator
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from devices.assignment import Assignments
from devices.config import DeviceConfig, StationConfig, load
from devices.credentials import create_key_file, load_key_file
from devices.outbox import open_database
from devices.record_client import STATION_SCOPES
from devices.simulator import private_bus
from devices.simulator.scenario import demo_path
from medikus.auth_setup import open_auth
from medikus.config import Config

# The simulator's device kinds → the station configuration's.
KINDS = {
    "blood_pressure": "blood-pressure",
    "thermometer": "thermometer",
    "pulse_oximeter": "pulse-oximeter",
    "weight_scale": "weight-scale",
    "glucose_meter": "glucose",
    "heart_rate": "heart-rate",
}


def scenario_devices(scenario: Path) -> tuple[DeviceConfig, ...]:
    data = json.loads(scenario.read_text(encoding="utf-8"))
    return tuple(
        DeviceConfig(
            address=item["address"],
            kind=KINDS[item["kind"]],  # type: ignore[arg-type]
            name=item.get("name", ""),
            pin=item.get("pin"),
        )
        for item in data["devices"]
    )


@contextmanager
def simulated(config: StationConfig, scenario: Path | None = None) -> Iterator[StationConfig]:
    """Starts bus and simulator, points bleak at them, yields the config with their devices."""
    scenario = scenario or demo_path()
    with private_bus() as address:
        previous = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address  # bleak reads it when it connects
        simulator = subprocess.Popen(  # nosec B603 # fixed argv of our own module
            [
                *(sys.executable, "-m", "devices.simulator"),
                *("--bus-address", address, "--scenario", str(scenario)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert simulator.stdout is not None  # nosec B101 # Popen with stdout=PIPE
            ready = simulator.stdout.readline()
            if not ready:
                raise RuntimeError("Simulator startete nicht / simulator did not start")
            yield config.model_copy(update={"devices": scenario_devices(scenario)})
        finally:
            simulator.terminate()
            simulator.wait(10)
            if previous is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous


DEMO_CLIENT = "pilot-station-demo"


def prepare_demo_station(config: Config, base: str, token: str) -> Path:
    """The demo's station: key, SMART backend registration, configuration, and the first demo
    patient checked in at the whole station (so the simulated readings have an owner)."""
    directory = config.data_dir.resolve() / "station"
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "station.jwk"
    key = load_key_file(key_file) if key_file.exists() else create_key_file(key_file)
    auth = open_auth(config)
    try:
        if auth.store.client(DEMO_CLIENT) is None:
            auth.server.register_client(
                DEMO_CLIENT, name="Pilotzentrum (Demo)", scopes=STATION_SCOPES, jwks=key.jwks()
            )
    finally:
        auth.close()
    config_file = directory / "station.toml"
    config_file.write_text(
        'station_id = "pilotzentrum-kusel-demo"\n'
        f'record_core = "{base}/fhir"\n'
        f'client_id = "{DEMO_CLIENT}"\n'
        'key_file = "station.jwk"\nstate_dir = "state"\n',
        encoding="utf-8",
    )
    station = load(config_file)
    database = open_database(station.state_dir / "station.sqlite3")
    try:
        assignments = Assignments(database)
        if not assignments.active(datetime.now(UTC)):
            assignments.check_in(_first_patient(base, token), None, at=datetime.now(UTC), by="demo")
    finally:
        database.close()
    return config_file


def _first_patient(base: str, token: str) -> str:
    response = httpx.get(
        f"{base}/fhir/Patient",
        params={"_count": "1", "_sort": "_id"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["entry"][0]["resource"]["id"])
