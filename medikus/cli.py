"""The ``medikus`` command line: serve, demo, load."""

from __future__ import annotations

import os
import subprocess  # nosec B404 # runs only our own server (demo)
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import httpx
from tqdm import tqdm

from compliance.keyring import KeyringError
from medikus.admin import admin as admin_group
from medikus.audit_cli import audit as audit_group
from medikus.auth_setup import SystemTokens, ensure_demo_keys, open_auth
from medikus.auth_setup import keyring as master_keys
from medikus.backup import backup, restore
from medikus.config import Config
from medikus.keys_cli import activate_master_key, rewrap, rotate_master_key
from medikus.rights_cli import register as register_rights
from medikus.station_cli import station as station_group
from medikus.station_demo import prepare_demo_station


@click.group()
def main() -> None:
    """Medi-KUS – Telemedizin und Versorgungsnetz im Landkreis Kusel."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--database-url",
    default=None,
    help="sqlite:///… or postgresql://… (default: SQLite in the data directory)",
)
def serve(host: str, port: int, workers: int, database_url: str | None) -> None:
    """Runs the server (FHIR API at /fhir)."""
    import uvicorn

    from fhir_server.core import RecordCore
    from medikus.http_protocol import FhirHttpToolsProtocol

    if database_url:
        os.environ["MEDIKUS_DATABASE_URL"] = database_url
    url = Config().resolved_database_url()
    os.environ["MEDIKUS_DATABASE_URL"] = url
    try:  # H2: the record is encrypted at rest: no master keys, no start
        master_keys(Config())
    except KeyringError as exc:
        raise click.ClickException(
            f"{exc}\nSchlüssel anlegen mit / create keys with: medikus admin init-keys"
        ) from exc
    try:
        RecordCore.migrate(url)  # once, before the workers start
    except Exception as exc:
        raise click.ClickException(
            f"Die Datenbank ist nicht erreichbar / database unreachable: {exc}"
        ) from exc
    os.environ["MEDIKUS_MIGRATE"] = "false"
    uvicorn.run(
        "medikus.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        proxy_headers=True,
        http=FhirHttpToolsProtocol,
        server_header=False,
        access_log=False,  # request lines carry PHI in FHIR search query strings
    )


@main.command("load")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8000/fhir", show_default=True)
@click.option("--workers", default=4, show_default=True, type=int)
@click.option(
    "--token",
    envvar="MEDIKUS_TOKEN",
    help="Bearer token (e.g. from `medikus admin token --scope 'system/*.cu'`); default: one "
    "minted from this machine's key file for the configured server.",
)
def load_command(files: tuple[Path, ...], url: str, workers: int, token: str | None) -> None:
    """Loads transaction bundles (default: the Synthea demo patients)."""
    _load(url, list(files) or None, workers, (lambda: token) if token else _system_tokens())


def _system_tokens() -> Callable[[], str]:
    """Tokens of this machine's own admin client for the configured server."""
    return SystemTokens(lambda: open_auth(Config())).value


def _load(
    url: str, files: list[Path] | None, workers: int, token: Callable[[], str] | None
) -> None:
    from medikus.loader import load, synthea_bundles

    paths = files or synthea_bundles()
    failed = 0
    with tqdm(total=len(paths), unit="Bündel", desc="Lade Patientendaten") as bar:
        try:
            for result in load(url, paths, workers=workers, token=token):
                if result.status != 200:
                    failed += 1
                    tqdm.write(f"{result.path.name}: HTTP {result.status} {result.detail}")
                bar.update()
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"Server {url} nicht erreichbar / not reachable: {exc}"
            ) from exc
    if failed:
        raise click.ClickException(f"{failed} von {len(paths)} Bündeln wurden abgelehnt.")


@main.command()
@click.option("--port", default=8000, show_default=True, type=int)
def demo(port: int) -> None:
    """Starts the whole system on embedded SQLite with demo data."""
    base = f"http://127.0.0.1:{port}"
    os.environ.setdefault("MEDIKUS_PUBLIC_URL", base)  # the tokens' issuer and audience
    config = Config()
    url = config.resolved_database_url()
    key_file, created = ensure_demo_keys(config)  # identity and tokens need master keys
    if created:
        click.echo(f"Schlüsseldatei angelegt / key file created: {key_file}")
    server = subprocess.Popen(  # nosec B603 # fixed argv: this interpreter running `medikus serve`
        [
            sys.executable,
            "-m",
            "medikus",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--database-url",
            url,
        ],
    )
    station: subprocess.Popen[bytes] | None = None
    try:
        _wait_ready(base, server)
        tokens = _system_tokens()
        if _patient_count(base, tokens()) == 0:
            _load(f"{base}/fhir", None, 4, tokens)
        station_config = prepare_demo_station(config, base, tokens())
        station = subprocess.Popen(  # nosec B603 # fixed argv: our own station, simulated devices
            [
                *(sys.executable, "-m", "medikus", "station", "run", "--simulate"),
                *("--config", str(station_config)),
            ],
        )
        click.echo(f"""
Medi-KUS läuft / is running (Datenbank: {url})
  FHIR-Schnittstelle:  {base}/fhir
  Capability:          {base}/fhir/metadata
  Patienten:           {base}/fhir/Patient
  API-Dokumentation:   {base}/docs
  Anmeldung (SMART):   {base}/.well-known/smart-configuration
  Pilotzentrum:        simulierte Messgeräte senden an / simulated devices stream to the
                       first demo patient (medikus station status --config {station_config})
Jede FHIR-Anfrage braucht ein Token / every FHIR request needs a bearer token, e.g.:
  MEDIKUS_KEY_FILE={key_file or "…"} .venv/bin/medikus admin token --scope 'system/*.rs'
Beenden mit Strg+C.""")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if station is not None:
            station.terminate()
            station.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(
                "Der Server konnte nicht starten / the server failed to start."
            )
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise click.ClickException(
        "Der Server wurde nicht rechtzeitig bereit / server not ready in time."
    )


def _patient_count(base: str, token: str) -> int:
    response = httpx.get(
        f"{base}/fhir/Patient",
        params={"_count": "0"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json().get("total", 0))


# Command groups defined in their own modules: audit trail, administration (keys,
# organisations, accounts, SMART clients, tokens, master-key rotation), encrypted backups, and
# the rights of patients (retention, exports).
main.add_command(audit_group)
main.add_command(admin_group)
main.add_command(backup)
main.add_command(restore)
for _command in (rotate_master_key, activate_master_key, rewrap):
    admin_group.add_command(_command)
register_rights(main)
main.add_command(station_group)
