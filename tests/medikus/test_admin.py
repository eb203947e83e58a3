"""``medikus admin`` (click's CliRunner in process, and a real ``medikus serve`` for the end-to-end
login): keys, organisations, users with TOTP and Practitioner records, SMART clients, disabling,
signing-key rotation and script tokens — on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from compliance.auth import AuthServices
from compliance.identity import AuthenticationFailed
from compliance.keyring import Keyring
from compliance.principal import Role, system_principal
from compliance.totp import code_at
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.auth_setup import open_auth
from medikus.cli import main
from medikus.config import Config
from tests.compliance.auth_helpers import pkce_pair
from tests.compliance.clock import ManualClock
from tests.conftest import ServerProcess

PASSWORD = "Sonnenblume-Wiese-42"
PUBLIC = "https://kusel.medikus.example"


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        "MEDIKUS_DATABASE_URL": database_url,
        "MEDIKUS_KEY_FILE": str(tmp_path / "secret" / "keys.json"),
        "MEDIKUS_PUBLIC_URL": PUBLIC,
        "MEDIKUS_DATA_DIR": str(tmp_path / "data"),
    }


def admin(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["admin", *args], env=env, input=stdin)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def keys(env: dict[str, str]) -> Path:
    ok(admin(env, "init-keys"))
    return Path(env["MEDIKUS_KEY_FILE"])


@pytest.fixture
def services(
    env: dict[str, str], keys: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AuthServices]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    auth = open_auth(Config())
    yield auth
    auth.close()


def fhir(env: dict[str, str], method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    keys = Keyring.from_file(Path(env["MEDIKUS_KEY_FILE"]))
    record = RecordCore.open(env["MEDIKUS_DATABASE_URL"], pool_size=1, keyring=keys)
    path, _, query = path.partition("?")
    try:
        response = record.handle(
            FhirRequest(
                method=method,
                path=path,
                query=parse_qsl(query),
                body=orjson.dumps(body) if body is not None else b"",
                headers={"content-type": "application/fhir+json"},
                principal=system_principal(),
            )
        )
    finally:
        record.close()
    return response.status, orjson.loads(response.body) if response.body else None


def create_doctor(env: dict[str, str], username: str = "dr.weber") -> tuple[str, str, str]:
    """(organization id, TOTP secret, output)."""
    org = ok(admin(env, "create-org", "MVZ Westpfalz", "--type", "mvz")).strip()
    output = ok(
        admin(
            env,
            "create-user",
            username,
            "--role",
            "doctor",
            "--org",
            org,
            "--name",
            "Dr. Anna Weber",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
    )
    match = re.search(r"otpauth://totp/\S+secret=([A-Z2-7]+)", output)
    assert match is not None, output
    return org, match.group(1), output


def test_init_keys_creates_a_private_file_once(env: dict[str, str], keys: Path) -> None:
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    again = admin(env, "init-keys")
    assert again.exit_code != 0 and "exists already" in again.output
    no_keys = dict(env, MEDIKUS_KEY_FILE=str(keys.parent / "missing.json"))
    refused = admin(no_keys, "token", "--scope", "system/*.rs")
    assert refused.exit_code != 0 and "medikus admin init-keys" in refused.output


def test_create_org_writes_a_fhir_organization(env: dict[str, str], keys: Path) -> None:
    org = ok(admin(env, "create-org", "Pflegedienst Kusel", "--type", "nursing")).strip()
    status, resource = fhir(env, "GET", f"Organization/{org}")
    assert status == 200 and resource["name"] == "Pflegedienst Kusel"
    assert resource["type"][0]["coding"][0]["code"] == "nursing"
    assert admin(env, "create-org", "X", "--type", "hospital").exit_code != 0


def test_create_doctor_with_totp_and_practitioner(
    env: dict[str, str], services: AuthServices
) -> None:
    org, secret, output = create_doctor(env)
    account = services.identity.account("dr.weber")
    assert account is not None and account.roles == {Role.DOCTOR} and account.organization == org
    assert account.fhir_user is not None and account.fhir_user in output
    status, practitioner = fhir(env, "GET", account.fhir_user)
    assert status == 200 and practitioner["identifier"][0]["value"] == "dr.weber"
    status, roles = fhir(
        env, "GET", f"PractitionerRole?practitioner={account.fhir_user}&organization={org}"
    )
    assert status == 200 and roles["total"] == 1
    assert roles["entry"][0]["resource"]["code"][0]["coding"][0]["code"] == "doctor"
    login = services.identity.login("dr.weber", PASSWORD, code_at(secret, _now()), "192.0.2.1")
    assert login.account.id == account.id


def _now() -> int:
    return time.time_ns() // 1000


def test_create_user_refusals(env: dict[str, str], services: AuthServices) -> None:
    org = ok(admin(env, "create-org", "MVZ")).strip()
    weak = admin(
        env,
        "create-user",
        "dr.x",
        "--role",
        "doctor",
        "--org",
        org,
        "--name",
        "X",
        "--password-stdin",
        stdin="kurz\n",
    )
    assert weak.exit_code != 0 and "mindestens 12 Zeichen" in weak.output
    _, practitioners = fhir(env, "GET", "Practitioner")
    assert practitioners["total"] == 0  # nothing half-created
    unknown_org = admin(
        env,
        "create-user",
        "dr.y",
        "--role",
        "doctor",
        "--org",
        "nope",
        "--name",
        "Y",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert unknown_org.exit_code != 0 and "Einrichtung nicht gefunden" in unknown_org.output
    no_patient = admin(
        env,
        "create-user",
        "erika",
        "--role",
        "patient",
        "--patient",
        "nope",
        "--name",
        "Erika",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert no_patient.exit_code != 0 and "Patient nicht gefunden" in no_patient.output
    create_doctor(env, "dr.z")
    duplicate = admin(
        env,
        "create-user",
        "DR.Z",
        "--role",
        "coordinator",
        "--org",
        org,
        "--name",
        "Z",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert duplicate.exit_code != 0 and "bereits vergeben" in duplicate.output


def test_create_patient_account(env: dict[str, str], services: AuthServices) -> None:
    status, patient = fhir(
        env, "POST", "Patient", {"resourceType": "Patient", "name": [{"family": "Mustermann"}]}
    )
    assert status == 201
    output = ok(
        admin(
            env,
            "create-user",
            "erika",
            "--role",
            "patient",
            "--patient",
            patient["id"],
            "--name",
            "Erika Mustermann",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
    )
    assert "otpauth://" not in output  # patients enrol TOTP only on request
    account = services.identity.account("erika")
    assert account is not None and account.patient == patient["id"]


def test_password_prompt(env: dict[str, str], services: AuthServices) -> None:
    org = ok(admin(env, "create-org", "MVZ")).strip()
    result = admin(
        env,
        "create-user",
        "koord",
        "--role",
        "coordinator",
        "--org",
        org,
        "--name",
        "Karl Koordinator",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    ok(result)
    assert PASSWORD not in result.output and services.identity.account("koord") is not None


def test_create_clients(env: dict[str, str], tmp_path: Path, services: AuthServices) -> None:
    key = ECKey.import_key(ec.generate_private_key(ec.SECP384R1()))
    jwks = {"keys": [{**key.as_dict(private=False), "kid": "k1", "alg": "ES384"}]}
    (tmp_path / "station.jwks").write_text(json.dumps(jwks))
    ok(
        admin(
            env,
            "create-client",
            "pilot-station",
            "--jwks",
            str(tmp_path / "station.jwks"),
            "--scope",
            "system/Observation.cruds system/Device.rs",
        )
    )
    station = services.store.client("pilot-station")
    assert station is not None and station.kind.value == "confidential-assertion"
    ok(
        admin(
            env,
            "create-client",
            "kusel-app",
            "--redirect-uri",
            "https://app.example/cb",
            "--scope",
            "patient/*.rs launch/patient online_access",
            "--name",
            "Kusel-App",
        )
    )
    app = services.store.client("kusel-app")
    assert app is not None and app.redirect_uris == ("https://app.example/cb",)
    (tmp_path / "private.jwks").write_text(
        json.dumps({"keys": [key.as_dict(private=True) | {"kid": "k2"}]})
    )
    for args in (
        ["other", "--redirect-uri", "http://app.example/cb", "--scope", "patient/*.rs"],
        ["other", "--redirect-uri", "https://a.example/cb#x", "--scope", "patient/*.rs"],
        ["other", "--redirect-uri", "https://a.example/cb", "--scope", "system/*.rs"],
        ["other", "--jwks", str(tmp_path / "private.jwks"), "--scope", "system/*.rs"],
        ["other", "--scope", "patient/*.rs"],
        ["kusel-app", "--redirect-uri", "https://b.example/cb", "--scope", "patient/*.rs"],
        ["medikus-admin", "--redirect-uri", "https://b.example/cb", "--scope", "patient/*.rs"],
    ):
        assert admin(env, "create-client", *args).exit_code != 0, args


def test_printed_token_authenticates(env: dict[str, str], services: AuthServices) -> None:
    token = ok(admin(env, "token", "--scope", "system/*.rs", "--lifetime", "120")).strip()
    principal = services.authenticate(f"Bearer {token}", None)
    assert principal.is_system and principal.client_id == "medikus-admin"
    assert str(principal.scopes) == "system/*.rs"
    payload = json.loads(_b64(token.split(".")[1]))
    assert payload["aud"] == PUBLIC + "/fhir" and payload["exp"] - payload["iat"] == 120
    for bad in (["--scope", "user/*.rs"], ["--scope", "system/*.rs", "--lifetime", "301"]):
        assert admin(env, "token", *bad).exit_code != 0


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_disable_user_ends_its_sessions(env: dict[str, str], services: AuthServices) -> None:
    _, secret, _ = create_doctor(env)
    login = services.identity.login("dr.weber", PASSWORD, code_at(secret, _now()), None)
    token, _ = services.signing.tokens().issue(
        subject=login.account.id, client_id="app", scope="user/*.rs", sid=login.session.id
    )
    services.authenticate(f"Bearer {token}", None)
    ok(admin(env, "disable-user", "dr.weber"))
    services.authenticator.invalidate(login.session.id)  # another process: its cache (≤ 2 s)
    with pytest.raises(AuthenticationFailed):
        services.authenticate(f"Bearer {token}", None)
    assert admin(env, "disable-user", "nobody").exit_code != 0


def test_rotate_keys(env: dict[str, str], services: AuthServices) -> None:
    # Another process's keys reload on an unknown kid at most once a second: its clock is
    # moved past that, so the test does not depend on how fast the commands run.
    clock = ManualClock(int(time.time() * 1_000_000))
    watcher = open_auth(Config(), clock=clock)  # env from the services fixture
    before = ok(admin(env, "token", "--scope", "system/*.rs")).strip()
    first = ok(admin(env, "rotate-keys"))
    second = admin(env, "rotate-keys")
    assert second.exit_code != 0 and "rotate again" in second.output
    ok(admin(env, "rotate-keys", "--force"))
    assert "new signing key" in first
    after = ok(admin(env, "token", "--scope", "system/*.rs")).strip()
    clock.advance(1.5)
    try:
        watcher.authenticate(f"Bearer {after}", None)
        with pytest.raises(AuthenticationFailed):  # forced twice: the first key is gone
            watcher.authenticate(f"Bearer {before}", None)
    finally:
        watcher.close()


# --- end to end against a real server ----------------------------------------------------------


def test_login_against_a_real_server(env: dict[str, str], keys: Path, database_url: str) -> None:
    """Accounts and clients made with the CLI; two uvicorn workers sharing the signing key."""
    _, secret, _ = create_doctor(env)
    redirect = "http://127.0.0.1:9/callback"  # a loopback redirect (RFC 8252), never fetched
    ok(
        admin(
            env,
            "create-client",
            "desk",
            "--redirect-uri",
            redirect,
            "--scope",
            "user/*.rs online_access",
        )
    )
    server = ServerProcess(database_url, workers=2, env=env)
    server.env["MEDIKUS_PUBLIC_URL"] = server.base
    server.start()
    try:
        base = server.base
        verifier, challenge = pkce_pair()
        params = {
            "response_type": "code",
            "client_id": "desk",
            "redirect_uri": redirect,
            "scope": "user/*.rs online_access",
            "state": "s1",
            "aud": base + "/fhir",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/.well-known/smart-configuration").json()["issuer"] == base
            page = client.get("/auth/authorize", params=params)
            assert page.status_code == 200, page.text
            cookie = page.headers["set-cookie"].split(";")[0]  # Secure: httpx keeps it off http
            csrf = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
            assert csrf is not None
            answer = client.post(
                "/auth/authorize",
                params=params,
                headers={"Cookie": cookie},
                data={
                    "csrf_token": csrf.group(1),
                    "username": "dr.weber",
                    "password": PASSWORD,
                    "totp": code_at(secret, _now()),
                },
            )
            assert answer.status_code == 303, answer.text
            code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
            tokens = client.post(
                "/auth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect,
                    "client_id": "desk",
                    "code_verifier": verifier,
                },
            ).json()
            bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
            refreshed = client.post(
                "/auth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                    "client_id": "desk",
                },
            )
            assert refreshed.status_code == 200, refreshed.text
            admin_token = ok(
                admin(dict(env, MEDIKUS_PUBLIC_URL=base), "token", "--scope", "system/*.rs")
            ).strip()
            no_session = client.post(
                "/auth/logout", headers={"Authorization": f"Bearer {admin_token}"}
            )
            assert no_session.status_code == 400  # authenticated, but has no session to end
            assert client.post("/auth/logout", headers=bearer).status_code == 204
            for _ in range(4):  # whichever worker answers
                again = client.post("/auth/logout", headers=bearer)
                assert again.status_code == 401
    finally:
        server.stop()
