"""Security events of identity and authorisation (logins, logouts, client registrations, …) land
in the tamper-evident audit trail as DICOM/IHE ATNA AuditEvents, on SQLite and PostgreSQL.

The whole app runs in process (create_app: the record core with its audit trail and the
authorization server on one database, connected as in production); logins go through the real
login form. The events are read back as the chainer stored them and searched through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from compliance import balp
from compliance.auth import AuthServices
from compliance.keyring import Keyring
from fhir_server.audit_verify import verify_trail
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.app import create_app
from medikus.config import Config
from tests.compliance.auth_helpers import (
    APP,
    APP_REDIRECT,
    APP_SCOPES,
    BASE,
    FAST_HASHER,
    Person,
    authorize_params,
    exchange,
    login_for_code,
    make_doctor,
    pkce_pair,
    post_form,
    totp_now,
)
from tests.compliance.clock import ManualClock
from tests.conftest import Clock
from tests.fhir_server.audit_support import BASE as SERVER_ID
from tests.fhir_server.audit_support import Audited, open_audited

DCM = "http://dicom.nema.org/resources/ontology/DCM"
KIND = balp.SECURITY_EVENT_KIND
SCOPE = "user/*.rs online_access"


@dataclass
class World:
    """The app with an audited record core and the auth services, and the auth services' clock
    (TOTP codes follow it)."""

    audited: Audited
    auth: AuthServices
    http: TestClient
    auth_clock: ManualClock

    def events(self) -> list[dict[str, Any]]:
        return [e for e in self.audited.events() if e["type"]["code"] in ("110113", "110114")]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if kind_of(e) == kind]

    def search(self, *params: tuple[str, str]) -> list[dict[str, Any]]:
        request = FhirRequest("GET", "AuditEvent", [*params, ("_count", "100")])
        response = self.audited.core.handle(request)
        assert response.status == 200, response.body
        return [e["resource"] for e in orjson.loads(response.body).get("entry", [])]


@pytest.fixture
def world(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[World]:
    audited = open_audited(database_url, clock, keyring)
    # The record core as the app factory sees it: with its audit system.
    core = RecordCore(audited.system.ctx, audited.core.subscriptions, audited.system)
    auth_clock = ManualClock()
    auth = AuthServices.open(database_url, keyring, BASE, clock=auth_clock, hasher=FAST_HASHER)
    app = create_app(Config(rate_limit=False), record=core, auth=auth)
    # Not entered as a context manager: no lifespan, so no writer or chainer threads race the
    # test's own flush and chaining (Audited.chain).
    http = TestClient(app, base_url=BASE, follow_redirects=False)
    try:
        yield World(audited, auth, http, auth_clock)
    finally:
        http.close()
        auth.close()
        audited.system.stop()
        audited.core.close()


def kind_of(event: dict[str, Any]) -> str | None:
    return next((s["code"] for s in event["subtype"] if s["system"] == KIND), None)


def dicom(event: dict[str, Any]) -> tuple[str, str, str]:
    """(type, first subtype, outcome)."""
    subtype = event["subtype"][0]
    assert event["type"]["system"] == DCM
    return event["type"]["code"], subtype["code"], event["outcome"]


def agents(event: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [a for a in event["agent"] if a["type"]["coding"][0]["code"] == code]


def user(event: dict[str, Any]) -> dict[str, Any]:
    (found,) = agents(event, "IRCP")
    return found


def details(event: dict[str, Any]) -> dict[str, str]:
    (reported,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "13"]
    return {d["type"]: d["valueString"] for d in reported.get("detail", ())}


def log_in(world: World, doctor: Person) -> dict[str, Any]:
    code, verifier, _ = login_for_code(
        world.http, doctor.username, totp_now(doctor, world.auth_clock), scope=SCOPE
    )
    answer = exchange(world.http, code, verifier)
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def test_logins_logouts_and_client_registrations_are_chained_audit_events(
    world: World,
) -> None:
    world.auth.server.register_client(
        APP, name="Kusel-App", scopes=APP_SCOPES, redirect_uris=(APP_REDIRECT,)
    )
    doctor = make_doctor(world.auth)
    page = world.http.get("/auth/authorize", params=authorize_params(pkce_pair()[1], scope=SCOPE))
    failed = post_form(world.http, page, username="dr.weber", password="falsch-falsch-falsch")
    assert failed.status_code == 401
    tokens = log_in(world, doctor)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert world.http.post("/auth/logout", headers=bearer).status_code == 204

    (registered,) = world.of_kind("client-registered")
    assert dicom(registered) == ("110113", "110129", "0")  # Security Alert: configuration
    (client,) = agents(registered, "110150")
    assert client["who"]["identifier"]["value"] == APP and client["requestor"] is False

    (refused,) = world.of_kind("login-failed")
    assert dicom(refused) == ("110114", "110122", "4")  # User Authentication: Login, failed
    assert refused["outcomeDesc"] == "password"
    # The name as typed did not authenticate: kept, but not as an indexed identifier or name.
    assert user(refused)["who"] == {"display": "dr.weber"} and "name" not in user(refused)
    assert user(refused)["requestor"] is True
    assert user(refused)["network"] == {"address": "testclient", "type": "1"}

    (login,) = world.of_kind("login-succeeded")
    assert dicom(login) == ("110114", "110122", "0")
    assert user(login)["who"] == {"identifier": {"value": doctor.account.id}}
    assert user(login)["name"] == "dr.weber" and user(login)["requestor"] is True
    assert agents(login, "110150")[0]["who"]["identifier"]["value"] == APP
    assert "password" not in str(login).lower()  # no secret, not even its name

    (issued,) = world.of_kind("token-issued")
    assert dicom(issued) == ("110114", "ITI-71", "0")  # BALP/IUA Get Access Token
    assert details(issued)["session"] == details(login)["session"]

    (logout,) = world.of_kind("logout")
    assert dicom(logout) == ("110114", "110123", "0")
    assert details(logout)["session"] == details(login)["session"]  # whose session ended
    assert logout["source"]["observer"]["identifier"]["value"] == SERVER_ID

    # Searchable like every AuditEvent, and the chain over them verifies.
    assert world.search(("subtype", "login-failed")) == [refused]
    by_account = world.search(("agent:identifier", doctor.account.id), ("subtype", "110122"))
    assert by_account == [login]
    assert world.search(("type", f"{DCM}|110113"), ("outcome", "0")) == [
        e for e in world.events() if e["type"]["code"] == "110113"
    ]
    audited = world.audited
    assert verify_trail(audited.store, audited.log, audited.system.trail.keys).ok


def test_without_an_audit_trail_the_events_are_only_logged(
    record: RecordCore, keyring: Keyring, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = AuthServices.open(database_url, keyring, BASE, clock=ManualClock(), hasher=FAST_HASHER)
    try:
        create_app(Config(rate_limit=False), record=record, auth=auth)
        with caplog.at_level("INFO", logger="medikus.security"):
            auth.server.register_client(
                APP, name="Kusel-App", scopes=APP_SCOPES, redirect_uris=(APP_REDIRECT,)
            )
        assert [r.getMessage().split()[0] for r in caplog.records] == ["client-registered"]
    finally:
        auth.close()


# --- how each kind is recorded ---------------------------------------------------------------

SERVER = balp.Server(SERVER_ID, SERVER_ID)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def build(kind: str, **reported: str) -> dict[str, Any]:
    return balp.security(kind, reported, server=SERVER, recorded=NOW)


def test_a_throttled_login_is_a_failed_authentication() -> None:
    event = build("login-failed", username="x", address="192.0.2.1", reason="throttled")
    assert dicom(event) == ("110114", "110122", "4") and event["outcomeDesc"] == "throttled"
    assert user(event)["network"] == {"address": "192.0.2.1", "type": "2"}


def test_a_redeemed_join_link_names_the_patient() -> None:
    event = build("join-redeemed", grant="g-1", subject="Patient/p-7", jti="j-1")
    assert dicom(event) == ("110114", "110122", "0")
    assert user(event)["who"] == {"reference": "Patient/p-7"}
    patient = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
    assert [e["what"] for e in patient] == [{"reference": "Patient/p-7"}]
    token = [e for e in event["entity"] if e["type"]["code"] == "UserOauthAgent"]
    assert [e["what"] for e in token] == [
        {"identifier": {"value": "urn:ietf:params:oauth:jti:j-1"}}
    ]


def test_a_backend_token_names_the_client_only() -> None:
    event = build("token-issued", client="station-7", subject="station-7", scope="system/*.rs")
    assert agents(event, "IRCP") == []
    (client,) = agents(event, "110150")
    assert client["who"]["identifier"]["value"] == "station-7" and client["requestor"] is True


def test_changes_of_accounts_and_replays_are_security_alerts() -> None:
    created = build("account-created", account="a-1", username="dr.weber", roles="doctor")
    assert dicom(created) == ("110113", "110137", "0")
    assert user(created)["requestor"] is False  # the account was acted on, by an administrator
    replay = build("grant-revoked", reason="refresh-replay", grant="f-1", session="s-1")
    assert dicom(replay) == ("110113", "110132", "8") and replay["outcomeDesc"] == "refresh-replay"


def test_a_kind_not_known_yet_is_still_recorded() -> None:
    event = build("signing-key-rotation-failed", kid="k-2")
    assert (event["type"]["code"], event["outcome"]) == ("110113", "4")
    assert event["subtype"] == [{"system": KIND, "code": "signing-key-rotation-failed"}]
    assert details(event) == {"kid": "k-2"}
