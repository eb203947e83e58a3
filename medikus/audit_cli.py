"""``medikus audit``: verify the tamper-evident audit trail, export what anchors it outside, list
the emergency accesses for the privacy officer.

``verify`` exits 0 when the chain is intact, 1 when it names the first bad record (index and kind:
modified, deleted, reordered, inserted, truncated, bad-signature), 2 when it cannot verify
(database or key file unusable).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from compliance.audit_chain import ed25519_key_id
from compliance.keyring import Keyring, KeyringError
from medikus.auth_setup import keyring_from
from medikus.config import Config

if TYPE_CHECKING:
    from fhir_server.store import AuditLog, Store

_KEY_FILE = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Schlüsseldatei / key file (default: as `medikus serve`: $MEDIKUS_KEY_FILE, "
    "$MEDIKUS_MASTER_KEYS or the data directory's key file)",
)
_DATABASE_URL = click.option(
    "--database-url",
    default=None,
    help="sqlite:///… or postgresql://… (default: as `medikus serve`)",
)


class CannotVerify(click.ClickException):
    exit_code = 2


@click.group("audit")
def audit() -> None:
    """Audit-Protokoll prüfen und verankern / verify and anchor the audit trail."""


@audit.command("verify")
@_DATABASE_URL
@_KEY_FILE
@click.option(
    "--anchors",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Signierte Köpfe außerhalb der Datenbank (JSON-Zeilen von `export-heads`)",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Exportierter öffentlicher Schlüssel (PEM) statt der aus der Schlüsseldatei abgeleiteten",
)
def verify_command(
    database_url: str | None,
    key_file: Path | None,
    anchors: Path | None,
    public_keys: tuple[Path, ...],
) -> None:
    """Prüft die Hash-Kette / verifies the hash chain and its signed heads."""
    from fhir_server.audit_keys import AuditKeys
    from fhir_server.audit_verify import read_anchors, verify_trail

    keyring = _keyring(key_file)
    keys = AuditKeys(keyring)
    try:
        outside = read_anchors(anchors) if anchors is not None else []
    except (OSError, ValueError) as exc:
        raise CannotVerify(f"Anker unlesbar / anchors unreadable: {exc}") from exc
    pinned = {ed25519_key_id(k): k for k in map(_public_key, public_keys)} or None
    store, log = _open(database_url, keyring)
    try:
        report = verify_trail(store, log, keys, anchors=outside, public_keys=pinned)
    except Exception as exc:  # the database, not the chain: report, do not pretend
        raise CannotVerify(f"Prüfung nicht möglich / cannot verify: {exc}") from exc
    finally:
        store.close()
    result = report.result
    heads = f"{result.heads_checked} signierte Köpfe / signed heads"
    if result.ok:
        click.echo(
            f"OK: {result.head.index} Einträge geprüft / records verified, {heads} "
            f"({report.stored_heads} in der Datenbank, {report.anchors} Anker)"
        )
        return
    click.echo(
        f"MANIPULIERT / TAMPERED: Eintrag / record {result.index}: {result.problem} – "
        f"{result.detail}. Einträge 1–{result.head.index} sind unversehrt / are intact.",
        err=True,
    )
    sys.exit(1)


@audit.command("export-public-key")
@_KEY_FILE
@click.option("--format", "form", type=click.Choice(["pem", "jwk"]), default="pem")
def export_public_key(key_file: Path | None, form: str) -> None:
    """Gibt den öffentlichen Schlüssel der Kopf-Signaturen aus / prints the head-signing public
    key (keep it with the anchored heads, outside the database)."""
    from fhir_server.audit_keys import AuditKeys, public_key_jwk, public_key_pem

    key = AuditKeys(_keyring(key_file)).signer().public_key()
    if form == "jwk":
        click.echo(json.dumps(public_key_jwk(key)))
    else:
        click.echo(public_key_pem(key), nl=False)


@audit.command("export-heads")
@_DATABASE_URL
@_KEY_FILE
def export_heads(database_url: str | None, key_file: Path | None) -> None:
    """Gibt die signierten Köpfe als JSON-Zeilen aus / prints the signed heads as JSON lines
    (append them to write-once storage: they reveal a rewritten or truncated chain)."""
    store, log = _open(database_url, _keyring(key_file))
    try:
        for head in log.signed_heads():
            click.echo(json.dumps(head.to_json()))
    finally:
        store.close()


@audit.command("btg-report")
@_DATABASE_URL
@_KEY_FILE
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Nur Zugriffe ab diesem Tag / only accesses from this day on (YYYY-MM-DD)",
)
def btg_report(database_url: str | None, key_file: Path | None, since: datetime | None) -> None:
    """Notfallzugriffe für den Datenschutz / emergency (break-the-glass) accesses for the
    privacy officer: one line per event, oldest first (time, who, patient, what, reason)."""
    from fhir_server.core import RecordCore
    from fhir_server.request import FhirRequest

    url = database_url or Config().resolved_database_url()
    try:
        core = RecordCore.open(url, keyring=_keyring(key_file), migrate=False, pool_size=2)
    except Exception as exc:
        raise CannotVerify(f"Datenbank / database {url}: {exc}") from exc
    query = [("_security", f"{_ACT_REASON}|BTG"), ("_sort", "date"), ("_count", "500")]
    if since is not None:
        query.append(("date", f"ge{since:%Y-%m-%d}"))
    try:
        while query:
            response = core.handle(FhirRequest("GET", "AuditEvent", query))
            if response.status != 200:
                raise CannotVerify(f"Suche fehlgeschlagen / search failed: {response.body!r}")
            bundle = json.loads(response.body)
            for entry in bundle.get("entry", ()):
                click.echo("\t".join(_btg_line(entry["resource"])))
            query = _next_page(bundle)
    finally:
        core.close()


_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _btg_line(event: dict[str, Any]) -> list[str]:
    users = [a for a in event.get("agent", ()) if a.get("requestor")]
    who = users[0] if users else {}
    identifier = who.get("who", {}).get("identifier", {}).get("value", "?")
    patients = [
        e["what"]["reference"]
        for e in event.get("entity", ())
        if e.get("role", {}).get("code") == "1"
    ]
    reasons = [p.get("text", "") for p in event.get("purposeOfEvent", ())]
    return [
        event.get("recorded", "?"),
        f"{who.get('name', identifier)} ({identifier})",
        ",".join(patients) or "-",
        event.get("subtype", [{}])[0].get("code", "?"),
        "; ".join(r for r in reasons if r) or "-",
    ]


def _next_page(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    for link in bundle.get("link", ()):
        if link.get("relation") == "next":
            return parse_qsl(urlsplit(link["url"]).query, keep_blank_values=True)
    return []


def _keyring(key_file: Path | None) -> Keyring:
    try:
        return keyring_from(key_file)
    except KeyringError as exc:
        raise CannotVerify(f"Schlüssel / keys: {exc}") from exc


def _public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CannotVerify(f"{path}: kein öffentlicher Schlüssel / not a public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CannotVerify(f"{path}: kein Ed25519-Schlüssel / not an Ed25519 key")
    return key


def _open(database_url: str | None, keyring: Keyring) -> tuple[Store, AuditLog]:
    from fhir_server.audit_verify import open_trail

    url = database_url or Config().resolved_database_url()
    try:
        return open_trail(url, keyring)
    except Exception as exc:
        raise CannotVerify(f"Datenbank / database {url}: {exc}") from exc
