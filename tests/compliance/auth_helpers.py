"""Shared set-up of the identity and OAuth tests: auth services on a real database, a browser
that follows the login form over HTTP, PKCE pairs and signed client assertions."""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from compliance._http import install_auth
from compliance.accounts import Account
from compliance.auth import AuthServices
from compliance.keyring import Keyring
from compliance.passwords import HashParameters, PasswordHasher
from compliance.principal import Role
from compliance.totp import code_at
from tests.compliance.clock import ManualClock

BASE = "https://medikus.example"
FHIR = BASE + "/fhir"
TOKEN_URL = BASE + "/auth/token"
PASSWORD = "Sonnenblume-Wiese-42"
APP = "kusel-app"
APP_REDIRECT = "https://app.example/callback"
APP_SCOPES = "patient/*.rs user/*.rs user/Observation.cruds launch/patient online_access"
# The cheapest argon2id parameters the policy allows: the tests log in often.
FAST_HASHER = PasswordHasher(HashParameters(time_cost=1, memory_kib=46 * 1024))
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Recorded:
    """The security events the services reported."""

    events: list[tuple[str, dict[str, str]]]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def of(self, kind: str) -> list[dict[str, str]]:
        return [details for k, details in self.events if k == kind]


@pytest.fixture(name="keyring")
def keyring_fixture() -> Keyring:
    return Keyring({1: os.urandom(32)}, 1)


@pytest.fixture(name="recorded")
def recorded_fixture() -> Recorded:
    return Recorded([])


def open_services(
    database_url: str, keyring: Keyring, clock: ManualClock, recorded: Recorded | None = None
) -> AuthServices:
    sink = None if recorded is None else (lambda k, d: recorded.events.append((k, dict(d))))
    return AuthServices.open(
        database_url, keyring, BASE, clock=clock, on_event=sink, hasher=FAST_HASHER
    )


@pytest.fixture(name="auth")
def auth_fixture(
    database_url: str, keyring: Keyring, clock: ManualClock, recorded: Recorded
) -> Iterator[AuthServices]:
    services = open_services(database_url, keyring, clock, recorded)
    yield services
    services.close()


@pytest.fixture(name="http")
def http_fixture(auth: AuthServices) -> Iterator[TestClient]:
    app = FastAPI()
    install_auth(app, auth)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield client


@pytest.fixture(name="app_client")
def app_client_fixture(auth: AuthServices) -> str:
    auth.server.register_client(
        APP, name="Kusel-App", scopes=APP_SCOPES, redirect_uris=(APP_REDIRECT,)
    )
    return APP


@dataclass
class Person:
    account: Account
    username: str
    totp_secret: str | None


def make_doctor(auth: AuthServices, username: str = "dr.weber", org: str = "mvz-1") -> Person:
    account, secret = auth.identity.create_account(
        username,
        PASSWORD,
        display_name="Dr. Anna Weber",
        roles=[Role.DOCTOR],
        organization=org,
        fhir_user="Practitioner/p1",
    )
    return Person(account, username, secret)


def make_patient(auth: AuthServices, username: str = "erika", patient: str = "pat-1") -> Person:
    account, secret = auth.identity.create_account(
        username,
        PASSWORD,
        display_name="Erika Mustermann",
        roles=[Role.PATIENT],
        fhir_user=f"Patient/{patient}",
    )
    return Person(account, username, secret)


def totp_now(person: Person, clock: ManualClock) -> str:
    assert person.totp_secret is not None
    return code_at(person.totp_secret, clock.now)


# --- PKCE and the browser flow ------------------------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_params(challenge: str | None, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": APP,
        "redirect_uri": APP_REDIRECT,
        "scope": "patient/*.rs launch/patient online_access",
        "state": "st-" + secrets.token_hex(4),
        "aud": FHIR,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


_ACTION = re.compile(r'<form method="post" action="([^"]*)"')
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def form_fields(page: httpx.Response) -> tuple[str, str]:
    """The login form's action and CSRF token."""
    action, csrf = _ACTION.search(page.text), _CSRF.search(page.text)
    assert action is not None and csrf is not None, page.text
    return html.unescape(action.group(1)), csrf.group(1)


def post_form(http: TestClient, page: httpx.Response, **fields: str) -> httpx.Response:
    action, csrf = form_fields(page)
    response: httpx.Response = http.post(action, data={"csrf_token": csrf, **fields})
    return response


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    query = parse_qs(urlsplit(location).query)
    return {k: v[0] for k, v in query.items()}


def login_for_code(
    http: TestClient,
    username: str,
    totp: str | None,
    *,
    scope: str = "patient/*.rs launch/patient online_access",
    password: str = PASSWORD,
) -> tuple[str, str, dict[str, str]]:
    """Runs GET authorize → login form → POST; returns (code, verifier, redirect params)."""
    verifier, challenge = pkce_pair()
    params = authorize_params(challenge, scope=scope)
    page = http.get("/auth/authorize", params=params)
    assert page.status_code == 200, page.text
    fields = {"username": username, "password": password}
    if totp is not None:
        fields["totp"] = totp
    answer = post_form(http, page, **fields)
    result = redirect_params(answer)
    assert result.get("state") == params["state"], result
    return result["code"], verifier, result


def exchange(http: TestClient, code: str, verifier: str | None, **extra: str) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": APP_REDIRECT,
        "client_id": APP,
        **extra,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    response: httpx.Response = http.post("/auth/token", data=data)
    return response


# --- backend services --------------------------------------------------------------------------


@dataclass
class BackendKey:
    key: ECKey | RSAKey
    kid: str
    alg: str

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def assertion(self, client_id: str, **overrides: Any) -> str:
        now = overrides.pop("now")
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_URL,
            "exp": now + 240,
            "jti": secrets.token_urlsafe(12),
            **overrides,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])


def es384_key(kid: str = "station-1") -> BackendKey:
    private = ec.generate_private_key(ec.SECP384R1())
    return BackendKey(ECKey.import_key(private), kid, "ES384")


def rs384_key(kid: str = "station-rsa") -> BackendKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return BackendKey(RSAKey.import_key(private), kid, "RS384")
