"""``medikus retention``, ``medikus export-patient``, ``medikus research-export``: §630f BGB and GDPR rights.

- ``retention run [--dry-run]`` expunges the records whose 10-year period has ended (legal holds
  honoured); ``retention hold add|remove|list`` manages legal holds; ``retention runs`` lists
  the last runs.
- ``export-patient PATIENT OUT.json``: the patient's whole record as a FHIR Bundle (Art. 15/20).
- ``research-export --study ID --types Observation,Condition OUT.ndjson``: pseudonymised
  extract (pseudonyms per study, no free text, shifted dates).

Each opens the database with the master keys (content is encrypted at rest) and records what it
does in the audit trail (chained by the running server). Exit codes: 0 done, 1 refused or
failed (message on stderr).
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compliance.keyring import Keyring, KeyringError
from compliance.principal import Principal, system_principal
from medikus.auth_setup import keyring_from
from medikus.config import Config

if TYPE_CHECKING:
    from compliance._sqlstore import AuthStore
    from fhir_server._sqlstore import SqlStore
    from fhir_server.context import Context
    from fhir_server.request import FhirResponse
    from fhir_server.retention import RetentionJob

__all__ = ["register"]

_DATABASE_URL = click.option(
    "--database-url",
    default=None,
    help="sqlite:///… or postgresql://… (default: as `medikus serve`)",
)
_KEY_FILE = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MEDIKUS_KEY_FILE",
    help="Schlüsseldatei / key file (default: $MEDIKUS_KEY_FILE, else as `medikus serve`)",
)


def register(main: click.Group) -> None:
    """Adds the commands to the ``medikus`` group (the hook in medikus/cli.py)."""
    main.add_command(retention)
    main.add_command(export_patient_command)
    main.add_command(research_export_command)


# --- opening the record core --------------------------------------------------------------------


def _keyring(key_file: Path | None) -> Keyring:
    try:
        return keyring_from(key_file)
    except KeyringError as exc:
        raise click.ClickException(f"Schlüssel / keys: {exc}") from exc


def _operator() -> Principal:
    """The person at the console, as the audit trail's agent."""
    user = getpass.getuser()
    return Principal(
        subject=f"cli:{user}",
        client_id="medikus-cli",
        scopes=system_principal().scopes,
        name=user,
    )


@contextmanager
def _context(database_url: str | None, keyring: Keyring) -> Iterator[Context]:
    """The record core's context with its audit trail; queued audit events are written on exit."""
    from fhir_server.core import RecordCore

    url = database_url or Config().resolved_database_url()
    try:
        core = RecordCore.open(url, keyring=keyring, audit=True)
    except Exception as exc:
        raise click.ClickException(f"Datenbank nicht nutzbar / database unusable: {exc}") from exc
    try:
        yield core.ctx
    finally:
        core.close()  # writes the queued audit events


def _sql_store(ctx: Context) -> SqlStore:
    from fhir_server._sqlstore import SqlStore

    if not isinstance(ctx.store, SqlStore):
        raise click.ClickException("Nur mit der SQL-Datenbank / needs the SQL store.")
    return ctx.store


def _job(ctx: Context, on_expunged: Sequence[Callable[[str], object]] = ()) -> RetentionJob:
    from fhir_server._sqlstore import SqlRetentionStore
    from fhir_server.retention import RetentionJob

    return RetentionJob(
        ctx, SqlRetentionStore(_sql_store(ctx)), principal=_operator(), on_expunged=on_expunged
    )


@contextmanager
def _identity(url: str) -> Iterator[AuthStore]:
    """The identity store on the same database: an expunged patient's accounts and links go too."""
    from compliance._sqlstore import AuthStore

    store = AuthStore.open(url, clock_s=lambda: int(time.time()))
    try:
        yield store
    finally:
        store.close()


# --- retention ----------------------------------------------------------------------------------


@click.group("retention")
def retention() -> None:
    """Aufbewahrung (§630f BGB) und Löschung / retention and erasure."""


@retention.command("run")
@_DATABASE_URL
@_KEY_FILE
@click.option("--dry-run", is_flag=True, help="Nur auflisten / only list what is due")
@click.option("--limit", type=click.IntRange(1), default=None, help="Höchstens N Patienten")
def run_command(
    database_url: str | None, key_file: Path | None, dry_run: bool, limit: int | None
) -> None:
    """Löscht Akten nach Ablauf der Frist / expunges the records whose period has ended."""
    url = database_url or Config().resolved_database_url()
    with _context(url, _keyring(key_file)) as ctx, _identity(url) as identity:
        job = _job(ctx, on_expunged=() if dry_run else (identity.forget_patient,))
        report = job.run(dry_run=dry_run, limit=limit)
    verb = "würde gelöscht / would be expunged" if dry_run else "gelöscht / expunged"
    for result in report.results:
        patient = result.assessment.patient
        types = ", ".join(f"{t} {n}" for t, n in sorted(result.resources.items()))
        if result.skipped:
            click.echo(f"Patient/{patient}: übersprungen / skipped: {result.skipped}")
            continue
        timing = "" if dry_run else f" in {result.seconds * 1000:.0f} ms"
        click.echo(f"Patient/{patient}: {verb}{timing} ({types})")
        for rtype, id in result.kept:
            click.echo(f"  behalten, gehört auch anderen / kept, shared: {rtype}/{id}")
        for note in result.notes:
            click.echo(f"  Nacharbeit fehlgeschlagen / follow-up failed: {note}", err=True)
    for held in report.held:
        click.echo(f"Patient/{held.patient}: fällig, aber gesperrt / due but under a legal hold")
    done = len(report.expunged)
    click.echo(
        f"{report.patients} Patienten geprüft / checked, {len(report.results)} fällig / due, "
        f"{done} gelöscht / expunged, {len(report.held)} gesperrt / held, "
        f"{report.ongoing} in Behandlung / ongoing."
    )
    for rtype, id, target_type, target_id in report.dangling:
        click.echo(
            f"Hinweis / note: {rtype}/{id} verweist auf / refers to {target_type}/{target_id}, "
            "das nicht mehr existiert / which no longer exists",
            err=True,
        )
    if any(r.skipped or r.notes for r in report.results):
        sys.exit(1)


@retention.command("runs")
@_DATABASE_URL
@_KEY_FILE
@click.option("--limit", type=click.IntRange(1), default=10, show_default=True)
def runs_command(database_url: str | None, key_file: Path | None, limit: int) -> None:
    """Die letzten Läufe / the latest runs."""
    from fhir_server._time import from_micros

    with _context(database_url, _keyring(key_file)) as ctx:
        runs = _job(ctx).store.runs(limit)
    for run in runs:
        when = from_micros(run.started).astimezone(UTC).isoformat(timespec="seconds")
        kind = "Probelauf / dry run" if run.dry_run else "Lauf / run"
        click.echo(
            f"{when} {kind} von / by {run.run_by}: {run.patients} geprüft, {run.due} fällig, "
            f"{run.expunged} gelöscht, {run.held} gesperrt, {run.skipped} übersprungen"
        )


@retention.group("hold")
def hold() -> None:
    """Löschsperren / legal holds."""


@hold.command("add")
@click.argument("patient")
@click.option("--reason", required=True, help="Grund (Aktenzeichen, Frist) / reason")
@click.option("--by", default=None, help="Wer sperrt / placed by (default: the OS user)")
@_DATABASE_URL
@_KEY_FILE
def hold_add(
    patient: str, reason: str, by: str | None, database_url: str | None, key_file: Path | None
) -> None:
    """Sperrt die Löschung einer Akte / stops the expunge of a patient's record."""
    from fhir_server.retention import UnknownPatient

    with _context(database_url, _keyring(key_file)) as ctx:
        try:
            record = _job(ctx).place_hold(patient, reason, by or getpass.getuser())
        except (UnknownPatient, ValueError) as exc:
            raise click.ClickException(f"Keine Sperre / no hold: {exc}") from exc
    click.echo(f"Sperre {record.id} für / hold for Patient/{patient} gesetzt / placed.")


@hold.command("remove")
@click.argument("patient")
@click.option("--reason", required=True, help="Grund der Aufhebung / why it is released")
@click.option("--by", default=None, help="Wer aufhebt / released by (default: the OS user)")
@_DATABASE_URL
@_KEY_FILE
def hold_remove(
    patient: str, reason: str, by: str | None, database_url: str | None, key_file: Path | None
) -> None:
    """Hebt die Sperren einer Akte auf / releases a patient's holds (they stay listed)."""
    with _context(database_url, _keyring(key_file)) as ctx:
        released = _job(ctx).release_holds(patient, reason, by or getpass.getuser())
    if not released:
        raise click.ClickException(f"Patient/{patient} hat keine Sperre / has no active hold.")
    click.echo(f"{len(released)} Sperre(n) aufgehoben / hold(s) released: Patient/{patient}.")


@hold.command("list")
@click.argument("patient", required=False)
@click.option("--all", "everything", is_flag=True, help="Auch aufgehobene / released ones too")
@_DATABASE_URL
@_KEY_FILE
def hold_list(
    patient: str | None, everything: bool, database_url: str | None, key_file: Path | None
) -> None:
    """Listet Sperren / lists legal holds."""
    from fhir_server._time import from_micros

    with _context(database_url, _keyring(key_file)) as ctx:
        records = _job(ctx).holds(patient, released=everything)
    for record in records:
        placed = from_micros(record.placed_at).isoformat(timespec="seconds")
        line = (
            f"{record.id}\tPatient/{record.patient}\t{placed}\t{record.placed_by}\t{record.reason}"
        )
        if record.released_at is not None:
            released = from_micros(record.released_at).isoformat(timespec="seconds")
            line += (
                f"\taufgehoben / released {released} {record.released_by}: {record.release_reason}"
            )
        click.echo(line)


# --- exports ------------------------------------------------------------------------------------


def _audited(
    ctx: Context,
    path: str,
    work: Callable[[], FhirResponse],
    query: list[tuple[str, str]] | None = None,
) -> None:
    """Runs ``work`` as a FHIR operation on the audit trail (one event per patient named in
    the answer or the path)."""
    from fhir_server.request import FhirRequest

    if ctx.audit is None:
        work()
        return
    request = FhirRequest("GET", path, query or [], principal=_operator())
    ctx.audit.audited(request, work)


def _touched(patients: list[str]) -> FhirResponse:
    """An answer naming the patients whose data left (the audit trail reads them from it)."""
    from fhir_server.request import FhirResponse

    entries = [{"resource": {"resourceType": "Patient", "id": p}} for p in patients]
    return FhirResponse.json(
        200, {"resourceType": "Bundle", "type": "collection", "entry": entries}
    )


@click.command("export-patient")
@click.argument("patient")
@click.argument("out", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option("--no-history", is_flag=True, help="Ohne frühere Versionen / current versions only")
@_DATABASE_URL
@_KEY_FILE
def export_patient_command(
    patient: str, out: Path, no_history: bool, database_url: str | None, key_file: Path | None
) -> None:
    """Die ganze Akte als FHIR-Bundle / the whole record as a FHIR Bundle (GDPR Art. 15/20)."""
    from fhir_server.errors import FhirError
    from fhir_server.export import write_patient_export
    from fhir_server.request import FhirResponse

    base = Config().public_url.rstrip("/") + "/fhir"
    counts: dict[str, int] = {}
    refused: list[FhirError] = []
    with _context(database_url, _keyring(key_file)) as ctx:

        def work() -> FhirResponse:
            try:
                with _private_file(out) as file:
                    counts.update(
                        write_patient_export(ctx, patient, file, base=base, history=not no_history)
                    )
            except FhirError as error:  # recorded as the failed export it is
                refused.append(error)
                return FhirResponse.error(error)
            return _touched([patient])

        _audited(ctx, f"Patient/{patient}/$record-export", work)
    if refused:
        out.unlink(missing_ok=True)
        raise click.ClickException(f"Kein Export / no export: {refused[0].diagnostics}")
    click.echo(
        f"{out}: {counts['current']} Ressourcen / resources, {counts['referenced']} verwiesene / "
        f"referenced, {counts['history']} frühere Versionen / earlier versions."
    )


@click.command("research-export")
@click.argument("out", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option("--study", required=True, help="Studien-ID: eigene Pseudonyme / own pseudonyms")
@click.option("--types", required=True, help="z. B. / e.g. Patient,Observation,Condition")
@click.option(
    "--cohort",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Patienten-IDs, eine je Zeile (die Einwilligenden) / patient ids, one per line",
)
@click.option("--key-version", type=click.IntRange(1), default=None, help="Schlüsselversion")
@_DATABASE_URL
@_KEY_FILE
def research_export_command(
    out: Path,
    study: str,
    types: str,
    cohort: Path | None,
    key_version: int | None,
    database_url: str | None,
    key_file: Path | None,
) -> None:
    """Pseudonymisierter Forschungsexport (NDJSON) / pseudonymised research extract."""
    from fhir_server.export import research_export

    wanted = [t.strip() for t in types.split(",") if t.strip()]
    patients = _cohort(cohort) if cohort is not None else None
    keyring = _keyring(key_file)
    counts: dict[str, Any] = {}
    with _context(database_url, keyring) as ctx:

        def work() -> FhirResponse:
            exported: list[str] = []
            with _private_file(out) as file:
                counts.update(
                    research_export(
                        ctx,
                        study,
                        wanted,
                        file,
                        keyring=keyring,
                        key_version=key_version,
                        cohort=patients,
                        exported=exported,
                    )
                )
            return _touched(exported)

        query = [("study", study), ("_type", ",".join(wanted))]
        try:
            _audited(ctx, "Patient/$research-export", work, query)
        except ValueError as exc:
            out.unlink(missing_ok=True)
            raise click.ClickException(str(exc)) from exc
    version = key_version or keyring.current_version
    lines = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()) if t != "patients")
    click.echo(
        f"{out}: {counts['patients']} Patienten / patients ({lines}); Schlüsselversion / key "
        f"version {version} (für weitere Exporte dieser Studie / pin it with --key-version)."
    )


def _cohort(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines()]
    return [i for i in ids if i and not i.startswith("#")]


@contextmanager
def _private_file(path: Path) -> Iterator[Any]:
    """``path`` opened for writing, readable by the owner only (health data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        yield file
