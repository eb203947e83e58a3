"""The ``medikus`` command line: serve, demo, load."""

from __future__ import annotations

import os
import subprocess  # nosec B404 # runs only our own server (demo)
import sys
import time
from pathlib import Path

import click
import httpx
from tqdm import tqdm

from medikus.config import Config


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
def load_command(files: tuple[Path, ...], url: str, workers: int) -> None:
    """Loads transaction bundles (default: the Synthea demo patients)."""
    _load(url, list(files) or None, workers)


def _load(url: str, files: list[Path] | None, workers: int) -> None:
    from medikus.loader import load, synthea_bundles

    paths = files or synthea_bundles()
    failed = 0
    with tqdm(total=len(paths), unit="Bündel", desc="Lade Patientendaten") as bar:
        try:
            for result in load(url, paths, workers=workers):
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
    config = Config()
    url = config.resolved_database_url()
    base = f"http://127.0.0.1:{port}"
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
    try:
        _wait_ready(base, server)
        if _patient_count(base) == 0:
            _load(f"{base}/fhir", None, workers=4)
        click.echo(f"""
Medi-KUS läuft / is running (Datenbank: {url})
  FHIR-Schnittstelle:  {base}/fhir
  Capability:          {base}/fhir/metadata
  Patienten:           {base}/fhir/Patient
  API-Dokumentation:   {base}/docs
Beenden mit Strg+C.""")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
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


def _patient_count(base: str) -> int:
    response = httpx.get(f"{base}/fhir/Patient", params={"_count": "0"}, timeout=30)
    response.raise_for_status()
    return int(response.json().get("total", 0))
