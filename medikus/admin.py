"""``medikus admin``: master keys, organisations, users, SMART clients, signing keys, script tokens.

Runs in process against the database (no server needed): accounts and clients through
compliance.auth, FHIR resources (Organization, Practitioner, PractitionerRole) through the
record core's in-process port as the system itself.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from compliance.accounts import IdentityError
from compliance.auth import AuthServices
from compliance.keyring import KeyringError, generate_key_file
from compliance.passwords import check_password
from compliance.principal import Role, system_principal
from compliance.scopes import ScopeError
from compliance.signing import RotationRefused
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse
from medikus.auth_setup import key_file_path, open_auth
from medikus.auth_setup import keyring as master_keys
from medikus.config import Config

ORGANIZATION_TYPES = ("mvz", "nursing", "prevention", "pilot-centre")
ORGANIZATION_TYPE_SYSTEM = "https://medi-kus.de/fhir/CodeSystem/organization-type"
ACCOUNT_IDENTIFIER_SYSTEM = "https://medi-kus.de/fhir/sid/account"
_ORGANIZATION_DISPLAY = {
    "mvz": "Medizinisches Versorgungszentrum",
    "nursing": "Pflegedienst",
    "prevention": "Präventionsangebot",
    "pilot-centre": "Pilotzentrum",
}
# http://terminology.hl7.org/CodeSystem/practitioner-role
_PRACTITIONER_ROLE = {Role.DOCTOR: ("doctor", "Doctor"), Role.CARE_STAFF: ("nurse", "Nurse")}
_FHIR_JSON = {"content-type": "application/fhir+json"}


@dataclass
class _Context:
    config: Config
    database_url: str


@click.group()
@click.option(
    "--database-url", default=None, help="sqlite:///… or postgresql://… (default: configuration)"
)
@click.pass_context
def admin(ctx: click.Context, database_url: str | None) -> None:
    """Verwaltung: Schlüssel, Einrichtungen, Konten, Anwendungen / administration."""
    config = Config()
    ctx.obj = _Context(config, database_url or config.resolved_database_url())


@admin.command("init-keys")
@click.pass_obj
def init_keys(obj: _Context) -> None:
    """Creates the master key file (mode 600; never overwritten)."""
    path = key_file_path(obj.config)
    if path is None:
        raise click.ClickException(
            "Die Schlüssel kommen aus MEDIKUS_MASTER_KEYS; es wird keine Datei angelegt."
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        generate_key_file(path)
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Schlüsseldatei angelegt / key file created: {path}")
    click.echo(
        "Sichern Sie sie getrennt von den Datenbank-Sicherungen (ohne sie sind die Daten verloren)."
    )


@admin.command("create-org")
@click.argument("name")
@click.option(
    "--type", "kind", type=click.Choice(ORGANIZATION_TYPES), default="mvz", show_default=True
)
@click.pass_obj
def create_org(obj: _Context, name: str, kind: str) -> None:
    """Creates an organisation (FHIR Organization) and prints its id."""
    organization = {
        "resourceType": "Organization",
        "active": True,
        "name": name,
        "type": [
            {
                "coding": [
                    {
                        "system": ORGANIZATION_TYPE_SYSTEM,
                        "code": kind,
                        "display": _ORGANIZATION_DISPLAY[kind],
                    }
                ]
            }
        ],
    }
    with _record(obj) as record:
        response = record("POST", "Organization", organization)
    _expect(response, 201, "Die Einrichtung konnte nicht angelegt werden")
    click.echo(_created_id(response))


@admin.command("create-user")
@click.argument("username")
@click.option(
    "--role", "roles", multiple=True, required=True, type=click.Choice([r.value for r in Role])
)
@click.option("--org", "organization", default=None, help="Organization id (staff)")
@click.option("--name", "display_name", required=True, help="Anzeigename / display name")
@click.option("--patient", default=None, help="Patient id (role patient)")
@click.option("--totp/--no-totp", default=None, help="Second factor for patients (staff: always)")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input")
@click.pass_obj
def create_user(
    obj: _Context,
    username: str,
    roles: tuple[str, ...],
    organization: str | None,
    display_name: str,
    patient: str | None,
    totp: bool | None,
    password_stdin: bool,
) -> None:
    """Creates an account; staff get TOTP (the provisioning URI is printed), doctors and care
    staff also a Practitioner and PractitionerRole in the record."""
    role_set = frozenset(Role(r) for r in roles)
    password = _read_password(password_stdin)
    with _auth(obj) as auth, _record(obj) as record:
        if auth.identity.account(username) is not None:
            raise click.ClickException(f"Der Benutzername „{username}“ ist bereits vergeben.")
        violations = check_password(
            password, personal=(username, display_name, *display_name.split())
        )
        if violations:
            raise click.ClickException(" ".join(v.de for v in violations))
        fhir_user = None
        if Role.PATIENT in role_set:
            if patient is None:
                raise click.ClickException("Für ein Patientenkonto fehlt --patient.")
            _expect(record("GET", f"Patient/{patient}"), 200, "Patient nicht gefunden")
            fhir_user = f"Patient/{patient}"
        elif organization is not None:
            _expect(
                record("GET", f"Organization/{organization}"),
                200,
                "Einrichtung nicht gefunden",
            )
        practitioner_role = next((r for r in _PRACTITIONER_ROLE if r in role_set), None)
        if practitioner_role is not None and organization is not None:
            fhir_user = _create_practitioner(
                record, username, display_name, organization, practitioner_role
            )
        try:
            account, secret = auth.identity.create_account(
                username,
                password,
                display_name=display_name,
                roles=role_set,
                organization=organization,
                fhir_user=fhir_user,
                totp=totp,
            )
        except IdentityError as exc:
            raise click.ClickException(exc.de) from exc
    click.echo(f"Konto angelegt / account created: {account.username} (id {account.id})")
    if fhir_user is not None:
        click.echo(f"fhirUser: {fhir_user}")
    if secret is not None:
        click.echo("TOTP einrichten (als QR-Code in der Authenticator-App scannen):")
        click.echo(auth.identity.totp_uri(account, secret))


@admin.command("create-client")
@click.argument("client_id")
@click.option("--scope", "scopes", required=True, help="Allowed scopes, space-separated")
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public JWKS of a backend service (private_key_jwt)",
)
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI (apps)")
@click.option("--name", default=None, help="Name shown on the login page")
@click.pass_obj
def create_client(
    obj: _Context,
    client_id: str,
    scopes: str,
    jwks_file: Path | None,
    redirect_uris: tuple[str, ...],
    name: str | None,
) -> None:
    """Registers a SMART app (--redirect-uri) or backend service (--jwks)."""
    jwks: dict[str, Any] | None = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{jwks_file}: kein JSON / not JSON: {exc}") from exc
        if not isinstance(jwks, dict):
            raise click.ClickException(f"{jwks_file}: kein JWKS-Objekt / not a JWKS object")
    with _auth(obj) as auth:
        try:
            record = auth.server.register_client(
                client_id,
                name=name or client_id,
                scopes=scopes,
                redirect_uris=redirect_uris,
                jwks=jwks,
            )
        except (ValueError, ScopeError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"Anwendung registriert / client registered: {record.client_id} ({record.kind.value})"
    )
    click.echo(f"Token-Endpunkt: {auth.urls.token}")


@admin.command("disable-user")
@click.argument("username")
@click.pass_obj
def disable_user(obj: _Context, username: str) -> None:
    """Disables an account and ends all its sessions at once."""
    with _auth(obj) as auth:
        try:
            auth.identity.set_disabled(username, True)
        except IdentityError as exc:
            raise click.ClickException(exc.de) from exc
    click.echo(f"Konto gesperrt / account disabled: {username}")


@admin.command("rotate-keys")
@click.option("--force", is_flag=True, help="Rotate even if the previous key may still be in use")
@click.pass_obj
def rotate_keys(obj: _Context, force: bool) -> None:
    """Rotates the token signing key (the previous one still verifies until its tokens expire)."""
    with _auth(obj) as auth:
        try:
            key = auth.signing.rotate(force=force)
        except RotationRefused as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"Neuer Signaturschlüssel / new signing key: {key.kid}")


@admin.command("token")
@click.option("--scope", required=True, help="system/ scopes, e.g. 'system/*.rs'")
@click.option("--lifetime", default=300, show_default=True, type=click.IntRange(1, 300))
@click.pass_obj
def token(obj: _Context, scope: str, lifetime: int) -> None:
    """Prints a short-lived bearer token of the internal admin client (for scripts)."""
    with _auth(obj) as auth:
        try:
            access_token, _ = auth.server.internal_token(scope, lifetime)
        except (ValueError, ScopeError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(access_token)


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def _auth(obj: _Context) -> Iterator[AuthServices]:
    try:
        auth = open_auth(obj.config, database_url=obj.database_url)
    except KeyringError as exc:
        raise click.ClickException(
            f"{exc}\nSchlüssel anlegen mit / create keys with: medikus admin init-keys"
        ) from exc
    try:
        yield auth
    finally:
        auth.close()


class _Fhir:
    """The record core in process, as the system itself."""

    def __init__(self, core: RecordCore, base: str) -> None:
        self.core = core
        self.base = base

    def __call__(
        self, method: str, path: str, resource: dict[str, Any] | None = None
    ) -> FhirResponse:
        fields: dict[str, Any] = {"method": method, "path": path, "base": self.base}
        if resource is not None:
            fields["body"] = orjson.dumps(resource)
            fields["headers"] = dict(_FHIR_JSON)
        # Requests in process run as the system (the field exists once access control is wired).
        if "principal" in {f.name for f in dataclasses.fields(FhirRequest)}:
            fields["principal"] = system_principal()
        return self.core.handle(FhirRequest(**fields))


@contextmanager
def _record(obj: _Context) -> Iterator[_Fhir]:
    try:
        keys = master_keys(obj.config)
    except KeyringError as exc:
        raise click.ClickException(
            f"{exc}\nSchlüssel anlegen mit / create keys with: medikus admin init-keys"
        ) from exc
    core = RecordCore.open(obj.database_url, pool_size=1, keyring=keys)
    try:
        yield _Fhir(core, obj.config.public_url.rstrip("/") + "/fhir")
    finally:
        core.close()


def _expect(response: FhirResponse, status: int, message: str) -> None:
    if response.status != status:
        detail = _diagnostics(response.body)
        raise click.ClickException(f"{message} (HTTP {response.status}): {detail}")


def _diagnostics(body: bytes) -> str:
    try:
        outcome = orjson.loads(body)
        return "; ".join(str(i.get("diagnostics", "")) for i in outcome.get("issue", []))
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _created_id(response: FhirResponse) -> str:
    resource = response.resource or orjson.loads(response.body)
    return str(resource["id"])


def _create_practitioner(
    record: _Fhir, username: str, display_name: str, organization: str, role: Role
) -> str:
    code, display = _PRACTITIONER_ROLE[role]
    identifier = {"system": ACCOUNT_IDENTIFIER_SYSTEM, "value": username}
    practitioner_url = f"urn:uuid:{uuid.uuid4()}"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": practitioner_url,
                "resource": {
                    "resourceType": "Practitioner",
                    "active": True,
                    "identifier": [identifier],
                    "name": [{"text": display_name}],
                },
                "request": {"method": "POST", "url": "Practitioner"},
            },
            {
                "resource": {
                    "resourceType": "PractitionerRole",
                    "active": True,
                    "practitioner": {"reference": practitioner_url},
                    "organization": {"reference": f"Organization/{organization}"},
                    "code": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/practitioner-role",
                                    "code": code,
                                    "display": display,
                                }
                            ]
                        }
                    ],
                },
                "request": {"method": "POST", "url": "PractitionerRole"},
            },
        ],
    }
    response = record("POST", "", transaction)
    _expect(response, 200, "Practitioner konnte nicht angelegt werden")
    entries = orjson.loads(response.body).get("entry", [])
    location = str(entries[0]["response"]["location"])  # [base/]Practitioner/<id>/_history/1
    return "Practitioner/" + location.rsplit("Practitioner/", 1)[1].split("/")[0]


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException(
                "Kein Passwort auf der Standardeingabe / no password on stdin."
            )
        return password
    value: str = click.prompt(
        "Passwort", hide_input=True, confirmation_prompt="Passwort wiederholen"
    )
    return value
