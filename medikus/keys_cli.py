"""``medikus admin rotate-master-key`` / ``activate-master-key`` / ``rewrap``: rotation of the
master keys of encryption at rest without downtime (fhir_server/encryption.py).

The procedure: ``rotate-master-key`` adds version N+1 to the key file and makes it current (with
``--stage`` it is only added: restart every process so all know it, then
``activate-master-key N+1``); restart the processes; ``rewrap`` moves payloads and search tokens
to version N+1 in small transactions while the server runs; when it reports a version no longer
in use, that version can be removed from the key file (keep a copy as long as backups made under
it are kept: they need it).
"""

from __future__ import annotations

from pathlib import Path

import click

from compliance.keyring import Keyring, KeyringError, activate_key_version, rotate_key_file
from medikus.auth_setup import key_file_path
from medikus.auth_setup import keyring as master_keys
from medikus.config import Config

__all__ = ["activate_master_key", "rewrap", "rotate_master_key"]


def _key_file(config: Config) -> Path:
    path = key_file_path(config)
    if path is None:
        raise click.ClickException(
            "Die Schlüssel kommen aus MEDIKUS_MASTER_KEYS: dort eine Version hinzufügen / "
            "the keys come from MEDIKUS_MASTER_KEYS: add a version there"
        )
    return path


@click.command("rotate-master-key")
@click.option("--stage", is_flag=True, help="Add the version without making it current yet.")
def rotate_master_key(stage: bool) -> None:
    """Adds a new master key version to the key file (current unless --stage)."""
    path = _key_file(Config())
    try:
        rotated = rotate_key_file(path, activate=not stage)
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from exc
    new = max(rotated.versions)
    click.echo(f"Neue Hauptschlüsselversion / new master key version: {new} ({path})")
    if stage:
        click.echo(
            f"Alle Prozesse neu starten, dann / restart every process, then: "
            f"medikus admin activate-master-key {new}"
        )
    else:
        click.echo(
            "Alle Prozesse neu starten, dann / restart every process, then: medikus admin rewrap"
        )


@click.command("activate-master-key")
@click.argument("version", type=click.IntRange(1))
def activate_master_key(version: int) -> None:
    """Makes a staged master key version current."""
    path = _key_file(Config())
    try:
        activate_key_version(path, version)
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Version {version} ist aktuell / is current. Prozesse neu starten, dann: rewrap")


@click.command("rewrap")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--database-url", default=None, help="default: MEDIKUS_DATABASE_URL")
def rewrap(batch: int, database_url: str | None) -> None:
    """Re-encrypts data under older master key versions (the server keeps running)."""
    from fhir_server.core import RecordCore

    config = Config()
    try:
        keys: Keyring = master_keys(config)
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from exc
    # The `medikus admin --database-url` of the group, if given there.
    url = database_url or getattr(click.get_current_context().obj, "database_url", None)
    core = RecordCore.open(url or config.resolved_database_url(), keyring=keys, pool_size=2)
    try:
        changed = core.rewrap(batch)
        in_use = core.key_versions_in_use()
    finally:
        core.close()
    click.echo(
        f"{changed} Zeilen auf Version {keys.current_version} gebracht / rows moved to key "
        f"version {keys.current_version}; in Gebrauch / in use: {sorted(in_use) or '-'}"
    )
    retired = sorted(set(keys.versions) - in_use - {keys.current_version})
    if retired:
        click.echo(
            f"Nicht mehr benutzt / no longer used: {retired} (aus der Schlüsseldatei entfernbar, "
            "solange keine Sicherung sie braucht / removable while no backup needs them)"
        )
