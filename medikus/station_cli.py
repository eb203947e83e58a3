"""``medikus station …``: the pilot-centre gateway (run, set-up, check-in, review queue)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from devices.assignment import Assignments, PatientLookupError, find_patient
from devices.config import ConfigError, StationConfig, load
from devices.credentials import CredentialsError, create_key_file, load_key_file
from devices.errors import DeviceError
from devices.outbox import Outbox, open_database
from devices.record_client import STATION_SCOPES, RecordClient
from devices.service import run_station
from medikus import __version__

T = TypeVar("T")

_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("station.toml"),
    show_default=True,
    envvar="MEDIKUS_STATION_CONFIG",
    help="Konfigurationsdatei der Station / the station's configuration file",
)


def _config(path: Path) -> StationConfig:
    try:
        return load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _now() -> datetime:
    return datetime.now(UTC)


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(make())
    except (DeviceError, PatientLookupError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("station")
def station() -> None:
    """Pilotzentrum: Bluetooth-Messgeräte in die Akte / pilot centre: BLE devices to the record."""


@station.command("run")
@_CONFIG
@click.option("--simulate", is_flag=True, help="Simulierte Geräte (Demo) / simulated devices")
def run_command(config_path: Path, simulate: bool) -> None:
    """Runs the station until Ctrl+C / SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upload is noise
    config = _config(config_path)
    if simulate:
        from medikus.station_demo import simulated

        with simulated(config) as simulated_config:
            _serve(simulated_config)
    else:
        _serve(config)


def _serve(config: StationConfig) -> None:
    """Until SIGTERM/SIGINT, which end it cleanly (links closed, agent unregistered; stored
    readings are durable either way)."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None  # nosec B101 # inside asyncio.run
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_station(config, version=__version__)

    try:
        asyncio.run(main())
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from exc


@station.command("init")
@_CONFIG
def init_command(config_path: Path) -> None:
    """Creates the station's key and prints how to register it with the record core."""
    config = _config(config_path)
    try:
        key = create_key_file(config.key_file)
    except CredentialsError as exc:
        raise click.ClickException(str(exc)) from exc
    jwks_path = config.key_file.with_suffix(".jwks.json")
    jwks_path.write_text(json.dumps(key.jwks(), indent=2), encoding="utf-8")
    click.echo(f"Schlüssel / key: {config.key_file} (Modus 600)")
    click.echo(f"Öffentlicher Schlüssel / public key: {jwks_path}")
    click.echo("Am Server registrieren / register at the server:")
    click.echo(
        f"  medikus admin create-client {config.client_id} --jwks {jwks_path} "
        f"--scope '{STATION_SCOPES}' --name 'Pilotzentrum {config.station_id}'"
    )


@station.command("check-in")
@_CONFIG
@click.option("--device", default=None, help="Geräteadresse; ohne: an der ganzen Station")
@click.option("--user", "user_id", type=click.IntRange(0, 254), default=None, help="Geräte-Nutzer")
@click.option("--kvnr", default=None, help="Krankenversichertennummer (KVNR)")
@click.option("--family", default=None, help="Nachname / family name")
@click.option("--given", default=None, help="Vorname / given name")
@click.option("--birthdate", type=click.DateTime(["%Y-%m-%d"]), default=None, help="JJJJ-MM-TT")
@click.option("--by", default=None, help="Wer anmeldet / who checks in (audit)")
def check_in_command(
    config_path: Path,
    device: str | None,
    user_id: int | None,
    kvnr: str | None,
    family: str | None,
    given: str | None,
    birthdate: datetime | None,
    by: str | None,
) -> None:
    """Checks a patient in at a device (or the whole station); the patient is looked up in the
    record by KVNR or by name and birth date."""
    config = _config(config_path)
    if device is not None and config.device(device) is None:
        raise click.ClickException(f"Gerät {device} ist nicht konfiguriert / not configured")
    day: date | None = birthdate.date() if birthdate else None

    async def lookup() -> str:
        async with RecordClient(
            config.record_core, config.client_id, load_key_file(config.key_file)
        ) as client:
            return await find_patient(client, kvnr=kvnr, family=family, given=given, birthdate=day)

    patient = _run(lookup)
    with _database(config) as (_, assignments):
        try:
            checked = assignments.check_in(patient, device, user_id, at=_now(), by=by)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    where = checked.device_address or "Station"
    click.echo(f"Angemeldet / checked in: Patient/{patient} an / at {where}")


@station.command("check-out")
@_CONFIG
@click.argument("patient_id")
def check_out_command(config_path: Path, patient_id: str) -> None:
    """Ends the patient's check-ins."""
    with _database(_config(config_path)) as (_, assignments):
        ended = assignments.check_out(patient_id, _now())
    click.echo(f"Abgemeldet / checked out: {ended}")


@station.command("review")
@_CONFIG
@click.option("--assign", nargs=2, default=None, metavar="ITEM PATIENT_ID")
def review_command(config_path: Path, assign: tuple[str, str] | None) -> None:
    """Lists readings waiting for review, or assigns one to a patient (it is then uploaded)."""
    with _database(_config(config_path)) as (outbox, _):
        if assign is not None:
            try:
                outbox.resolve_review(int(assign[0]), assign[1])
            except (ValueError, DeviceError) as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"Zugeordnet / assigned: {assign[0]} → Patient/{assign[1]}")
            return
        items = outbox.review_items()
        for item in items:
            reading = item.reading
            click.echo(
                f"{item.id}\t{reading.received_at.isoformat(timespec='seconds')}\t"
                f"{reading.device_address}\t{reading.raw.hex()}\t{item.review_reason}"
            )
        click.echo(f"{len(items)} zur Prüfung / waiting for review")


@station.command("status")
@_CONFIG
def status_command(config_path: Path) -> None:
    """Queue depth: readings received, ready, in review and uploaded."""
    with _database(_config(config_path)) as (outbox, _):
        stats = outbox.statistics()
    counts: dict[str, Any] = {state.value: n for state, n in stats.counts.items()}
    age = stats.oldest_pending_age(_now())
    counts["oldest_pending_s"] = None if age is None else round(age.total_seconds(), 1)
    click.echo(json.dumps(counts, sort_keys=True))


class _database:
    """The station's database for a short command (the running station may hold it too)."""

    def __init__(self, config: StationConfig) -> None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._db = open_database(config.state_dir / "station.sqlite3")

    def __enter__(self) -> tuple[Outbox, Assignments]:
        return Outbox(self._db, _now), Assignments(self._db)

    def __exit__(self, *exc: object) -> None:
        self._db.close()
