"""SMART App Launch v2 over HTTP: discovery, authorization code + PKCE through the German login
form, refresh rotation, client credentials with signed assertions, revocation, and the access
tokens the resource server refuses (https://hl7.org/fhir/smart-app-launch/, RFC 6749, RFC 7636,
RFC 7009, RFC 7523). Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey

from compliance._http import install_auth
from compliance.auth import AuthServices
from compliance.identity import AuthenticationFailed
from compliance.join_links import JoinRefused
from compliance.principal import Role
from compliance.scopes import Level
from medikus.app import create_app
from medikus.config import Config
from tests.compliance.auth_helpers import (  # noqa: F401 # fixtures
    APP,
    APP_REDIRECT,
    ASSERTION_TYPE,
    BASE,
    FHIR,
    PASSWORD,
    Recorded,
    app_client_fixture,
    auth_fixture,
    authorize_params,
    es384_key,
    exchange,
    form_fields,
    http_fixture,
    keyring_fixture,
    login_for_code,
    make_doctor,
    make_patient,
    open_services,
    pkce_pair,
    post_form,
    recorded_fixture,
    redirect_params,
    rs384_key,
    totp_now,
)
from tests.compliance.clock import ManualClock

pytestmark = pytest.mark.usefixtures("app_client")


def refused(auth: AuthServices, token: str) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        auth.authenticate(f"Bearer {token}", "192.0.2.1")
    assert info.value.error == "invalid_token"
    return info.value


def patient_tokens(http: TestClient, auth: AuthServices) -> dict[str, Any]:
    make_patient(auth)
    code, verifier, _ = login_for_code(http, "erika", None)
    answer = exchange(http, code, verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


# --- discovery -----------------------------------------------------------------------------------


def test_smart_configuration(http: TestClient) -> None:
    config = http.get("/.well-known/smart-configuration").json()
    # SMART 2.0 §2.1: also at the FHIR base, without a token
    assert http.get("/fhir/.well-known/smart-configuration").json() == config
    assert config["code_challenge_methods_supported"] == ["S256"]  # never "plain"
    assert config["authorization_endpoint"] == BASE + "/auth/authorize"
    assert config["token_endpoint"] == BASE + "/auth/token"
    assert config["revocation_endpoint"] == BASE + "/auth/revoke"
    assert config["jwks_uri"] == BASE + "/auth/jwks"
    assert set(config["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        "client_credentials",
    }
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt", "none"]
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"launch-standalone", "permission-v2", "client-confidential-asymmetric"} <= set(
        config["capabilities"]
    )
    assert "sso-openid-connect" not in config["capabilities"]  # not implemented


def test_jwks_holds_public_keys_that_verify_our_tokens(
    http: TestClient, auth: AuthServices
) -> None:
    keys = http.get("/auth/jwks").json()["keys"]
    assert keys and all("d" not in key for key in keys)
    body = patient_tokens(http, auth)
    header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["kid"] in {key["kid"] for key in keys}


# --- authorization code + PKCE -------------------------------------------------------------------


def test_patient_login_end_to_end(http: TestClient, auth: AuthServices) -> None:
    patient = make_patient(auth)
    verifier, challenge = pkce_pair()
    params = authorize_params(challenge)
    page = http.get("/auth/authorize", params=params)
    assert page.status_code == 200
    assert '<html lang="de">' in page.text and '<label for="totp">' in page.text
    assert 'id="totp" name="totp" type="text" inputmode="numeric" autocomplete="off"' in page.text
    assert "form-action 'self' https://app.example" in page.headers["content-security-policy"]
    csrf_cookie = page.headers["set-cookie"]
    assert csrf_cookie.startswith("__Host-medikus-csrf=")
    assert all(flag in csrf_cookie for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"))

    answer = post_form(http, page, username="Erika", password=PASSWORD)
    assert answer.status_code == 303
    result = redirect_params(answer)
    assert answer.headers["location"].startswith(APP_REDIRECT + "?")
    assert result["state"] == params["state"] and result["iss"] == BASE
    session_cookie = answer.headers["set-cookie"]
    assert session_cookie.startswith("__Host-medikus-session=") and "HttpOnly" in session_cookie

    tokens = exchange(http, result["code"], verifier)
    assert tokens.status_code == 200, tokens.text
    assert tokens.headers["cache-control"] == "no-store"
    body = tokens.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 300
    assert body["patient"] == "pat-1" and "refresh_token" in body
    assert set(body["scope"].split()) == {"patient/*.rs", "launch/patient", "online_access"}

    principal = auth.authenticate(f"Bearer {body['access_token']}", "192.0.2.7")
    assert principal.subject == patient.account.id and principal.roles == {Role.PATIENT}
    assert principal.patient == "pat-1" and principal.fhir_user == "Patient/pat-1"
    assert principal.session_id is not None and principal.address == "192.0.2.7"
    assert principal.client_id == APP and principal.scopes.resource[0].level is Level.PATIENT


def test_doctor_needs_totp_and_gets_user_scopes_only(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    doctor = make_doctor(auth)
    code, verifier, _ = login_for_code(
        http,
        "dr.weber",
        totp_now(doctor, clock),
        scope="patient/*.rs user/*.rs system/*.rs launch/patient online_access openid",
    )
    body = exchange(http, code, verifier).json()
    # patient/, system/, launch/patient and openid are not for staff (or not implemented).
    assert set(body["scope"].split()) == {"user/*.rs", "online_access"}
    assert "patient" not in body
    principal = auth.authenticate(f"Bearer {body['access_token']}", None)
    assert principal.roles == {Role.DOCTOR} and principal.organization == "mvz-1"
    assert principal.fhir_user == "Practitioner/p1" and principal.name == "Dr. Anna Weber"


def test_scope_nobody_may_have_is_refused_back_to_the_app(
    http: TestClient, auth: AuthServices
) -> None:
    make_patient(auth)
    _, challenge = pkce_pair()
    page = http.get("/auth/authorize", params=authorize_params(challenge, scope="user/*.rs"))
    answer = post_form(http, page, username="erika", password=PASSWORD)
    assert redirect_params(answer)["error"] == "invalid_scope"
    assert "set-cookie" not in answer.headers  # the session opened by the login was ended


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),  # PKCE is mandatory
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # absent means plain
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"state": None}, "invalid_request"),
        ({"aud": "https://other.example/fhir"}, "invalid_request"),
        ({"aud": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "patient/Observation.xyz"}, "invalid_scope"),
    ],
)
def test_bad_authorization_requests_go_back_with_an_error(
    http: TestClient, overrides: dict[str, str | None], error: str
) -> None:
    _, challenge = pkce_pair()
    params = authorize_params(challenge, **overrides)
    answer = http.get("/auth/authorize", params=params)
    assert answer.status_code == 302
    assert answer.headers["location"].startswith(APP_REDIRECT + "?")
    result = redirect_params(answer)
    assert result["error"] == error and result["iss"] == BASE
    assert result.get("state") == params.get("state")


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uri": "https://app.example/callback/evil"},
        {"redirect_uri": "https://app.example/callback?x=1"},
        {"redirect_uri": "https://APP.example/callback"},
        {"redirect_uri": None},
        {"client_id": "unknown-app"},
        {"client_id": None},
    ],
)
def test_unregistered_redirect_or_client_is_never_redirected_to(
    http: TestClient, overrides: dict[str, str | None]
) -> None:
    _, challenge = pkce_pair()
    answer = http.get("/auth/authorize", params=authorize_params(challenge, **overrides))
    assert answer.status_code == 400 and "location" not in answer.headers
    assert "Rücksprungadresse" in answer.text


def test_repeated_parameter_is_refused(http: TestClient) -> None:
    _, challenge = pkce_pair()
    query = "&".join(f"{k}={v}" for k, v in authorize_params(challenge).items())
    answer = http.get(f"/auth/authorize?{query}&state=second")
    assert answer.status_code == 400


def test_wrong_or_missing_verifier(http: TestClient, auth: AuthServices) -> None:
    make_patient(auth)
    code, verifier, _ = login_for_code(http, "erika", None)
    for wrong in (pkce_pair()[0], None, verifier[:-1]):
        answer = exchange(http, code, wrong)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert exchange(http, code, verifier).status_code == 200  # failed proofs did not burn it


def test_redirect_uri_and_client_must_match_at_the_token_endpoint(
    http: TestClient, auth: AuthServices
) -> None:
    make_patient(auth)
    auth.server.register_client(
        "other-app", name="Other", scopes="patient/*.rs", redirect_uris=("https://o.example/cb",)
    )
    code, verifier, _ = login_for_code(http, "erika", None)
    wrong_uri = exchange(http, code, verifier, redirect_uri="https://app.example/other")
    assert wrong_uri.json()["error"] == "invalid_grant"
    wrong_client = exchange(http, code, verifier, client_id="other-app")
    assert wrong_client.json()["error"] == "invalid_grant"
    no_client = exchange(http, code, verifier, client_id="nobody")
    assert no_client.status_code == 401 and no_client.json()["error"] == "invalid_client"


def test_code_reuse_revokes_what_was_issued_from_it(
    http: TestClient, auth: AuthServices, recorded: Recorded
) -> None:
    make_patient(auth)
    code, verifier, _ = login_for_code(http, "erika", None)
    first = exchange(http, code, verifier).json()
    auth.authenticate(f"Bearer {first['access_token']}", None)  # valid until the replay
    again = exchange(http, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert refused(auth, first["access_token"]).reason == "session-revoked"
    refresh = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": APP,
        },
    )
    assert refresh.json()["error"] == "invalid_grant"
    assert recorded.of("grant-revoked")[0]["reason"] == "code-replayed"


def test_code_expires_after_60_s(http: TestClient, auth: AuthServices, clock: ManualClock) -> None:
    make_patient(auth)
    code, verifier, _ = login_for_code(http, "erika", None)
    clock.advance(61)
    assert exchange(http, code, verifier).json()["error"] == "invalid_grant"


# --- refresh tokens ------------------------------------------------------------------------------


def refresh(http: TestClient, token: str, **extra: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": APP, **extra}
    return http.post("/auth/token", data=data)


def test_refresh_rotates_and_reuse_revokes_the_family(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    first = patient_tokens(http, auth)
    clock.advance(200)
    second = refresh(http, first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"] and second["patient"] == "pat-1"
    auth.authenticate(f"Bearer {second['access_token']}", None)
    third = refresh(http, second["refresh_token"]).json()
    # The rotated token shows up again: someone has a copy. Everything of the grant ends.
    replay = refresh(http, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert refresh(http, third["refresh_token"]).json()["error"] == "invalid_grant"
    refused(auth, third["access_token"])


def test_refresh_may_narrow_but_not_widen_the_scope(http: TestClient, auth: AuthServices) -> None:
    first = patient_tokens(http, auth)
    wider = refresh(http, first["refresh_token"], scope="patient/*.cruds online_access")
    assert wider.json()["error"] == "invalid_scope"
    narrow = refresh(http, first["refresh_token"], scope="patient/*.rs online_access").json()
    assert narrow["scope"] == "patient/*.rs online_access"


def test_no_refresh_token_without_online_access(http: TestClient, auth: AuthServices) -> None:
    make_patient(auth)
    code, verifier, _ = login_for_code(http, "erika", None, scope="patient/*.rs offline_access")
    body = exchange(http, code, verifier).json()
    assert "refresh_token" not in body and body["scope"] == "patient/*.rs"


def test_refresh_token_of_another_client_is_refused(http: TestClient, auth: AuthServices) -> None:
    first = patient_tokens(http, auth)
    auth.server.register_client(
        "other-app", name="Other", scopes="patient/*.rs", redirect_uris=("https://o.example/cb",)
    )
    stolen = refresh(http, first["refresh_token"], client_id="other-app")
    assert stolen.json()["error"] == "invalid_grant"


# --- client credentials (backend services) -------------------------------------------------------


@pytest.fixture
def station(auth: AuthServices) -> Any:
    key = es384_key()
    auth.server.register_client(
        "pilot-station",
        name="Pilotzentrum",
        scopes="system/Observation.cruds system/Device.rs",
        jwks=key.jwks(),
    )
    return key


def client_credentials(
    http: TestClient, assertion: str, scope: str = "system/Observation.cs"
) -> Any:
    return http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


def now_s(clock: ManualClock) -> int:
    return clock.now // 1_000_000


def test_client_credentials_with_es384_assertion(
    http: TestClient, auth: AuthServices, station: Any, clock: ManualClock
) -> None:
    answer = client_credentials(http, station.assertion("pilot-station", now=now_s(clock)))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["scope"] == "system/Observation.cs" and "refresh_token" not in body
    principal = auth.authenticate(f"Bearer {body['access_token']}", None)
    assert principal.is_system and principal.roles == frozenset()
    assert principal.subject == principal.client_id == "pilot-station"
    assert principal.session_id is None and principal.patient is None


def test_client_credentials_with_rs384(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    key = rs384_key()
    auth.server.register_client("rsa-svc", name="RSA", scopes="system/*.rs", jwks=key.jwks())
    answer = client_credentials(
        http, key.assertion("rsa-svc", now=now_s(clock)), "system/Patient.rs"
    )
    assert answer.status_code == 200, answer.text


def test_replayed_assertion_is_refused(
    http: TestClient, station: Any, clock: ManualClock, recorded: Recorded
) -> None:
    assertion = station.assertion("pilot-station", now=now_s(clock))
    assert client_credentials(http, assertion).status_code == 200
    replay = client_credentials(http, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    assert recorded.of("token-refused")[-1]["reason"] == "replayed"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -10}, "expired"),
        ({"exp": 301 + 60}, "lifetime"),  # more than five minutes ahead
        ({"aud": FHIR}, "audience"),
        ({"aud": BASE + "/auth/token/"}, "audience"),
        ({"sub": "someone-else"}, "subject"),
        ({"jti": None}, "claims"),
    ],
)
def test_bad_assertions_are_refused(
    http: TestClient,
    station: Any,
    clock: ManualClock,
    recorded: Recorded,
    claims: dict[str, Any],
    reason: str,
) -> None:
    now = now_s(clock)
    if "exp" in claims:
        claims = {"exp": now + claims["exp"]}
    answer = client_credentials(http, station.assertion("pilot-station", now=now, **claims))
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    assert recorded.of("token-refused")[-1]["reason"] == reason


def test_assertion_signed_by_an_unregistered_key(
    http: TestClient, station: Any, clock: ManualClock
) -> None:
    stranger = es384_key(kid=station.kid)  # same kid, other key
    answer = client_credentials(http, stranger.assertion("pilot-station", now=now_s(clock)))
    assert answer.status_code == 401


def test_scope_beyond_the_registration_is_refused(
    http: TestClient, station: Any, clock: ManualClock
) -> None:
    answer = client_credentials(
        http, station.assertion("pilot-station", now=now_s(clock)), "system/Patient.rs"
    )
    assert answer.json()["error"] == "invalid_scope"
    partly = client_credentials(
        http,
        station.assertion("pilot-station", now=now_s(clock)),
        "system/Patient.rs system/Device.r",
    )
    assert partly.json()["scope"] == "system/Device.r"


def test_public_client_cannot_use_client_credentials(http: TestClient) -> None:
    answer = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs", "client_id": APP},
    )
    assert answer.json()["error"] == "unauthorized_client"


def test_disabled_client_token_is_refused_within_the_cache_time(
    http: TestClient, auth: AuthServices, station: Any, clock: ManualClock
) -> None:
    token = client_credentials(http, station.assertion("pilot-station", now=now_s(clock))).json()
    auth.authenticate(f"Bearer {token['access_token']}", None)
    auth.store.set_client_disabled("pilot-station", True)
    clock.advance(2.5)
    assert refused(auth, token["access_token"]).reason == "client-disabled"


def test_token_endpoint_errors(http: TestClient) -> None:
    assert http.post("/auth/token", data={"grant_type": "password"}).json()["error"] == (
        "unsupported_grant_type"
    )
    as_json = http.post("/auth/token", json={"grant_type": "client_credentials"})
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    big = http.post("/auth/token", data={"grant_type": "x" * 20_000})
    assert big.status_code == 400


# --- access tokens the resource server refuses ---------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        signature,
    )


def test_forged_and_foreign_tokens_are_refused(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    good = patient_tokens(http, auth)["access_token"]
    header, payload, signature = parts(good)
    encoded_header = good.split(".")[0]

    none_header = b64(json.dumps({**header, "alg": "none"}).encode())
    assert refused(auth, f"{none_header}.{good.split('.')[1]}.").reason == "algorithm"

    widened = b64(json.dumps({**payload, "scope": "patient/*.cruds"}).encode())
    assert refused(auth, f"{encoded_header}.{widened}.{signature}").reason == "signature"

    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
    assert refused(auth, f"{encoded_header}.{good.split('.')[1]}.{flipped}").reason == "signature"

    # HS256 "signed" with our public key as the secret (RFC 8725 §2.1 key confusion).
    public = json.dumps(auth.signing.jwks()["keys"][0]).encode()
    hs = jwt.encode({**header, "alg": "HS256"}, payload, OctKey.import_key(public))
    assert refused(auth, hs).reason == "algorithm"

    signing = auth.signing.tokens()
    for other in (
        dataclasses.replace(signing, audience="https://other.example/fhir"),
        dataclasses.replace(signing, issuer="https://other.example"),
    ):
        foreign, _ = other.issue(
            subject=payload["sub"], client_id=APP, scope="patient/*.rs", sid=payload["sid"]
        )
        assert refused(auth, foreign).reason in ("audience", "issuer")

    auth.authenticate(f"Bearer {good}", None)
    clock.advance(301)
    assert refused(auth, good).reason == "expired"


def test_missing_and_malformed_authorization(auth: AuthServices) -> None:
    with pytest.raises(AuthenticationFailed) as missing:
        auth.authenticate(None, None)
    assert missing.value.error is None and missing.value.status == 401
    assert missing.value.www_authenticate() == 'Bearer realm="Medi-KUS"'
    for header in ("Basic dXNlcjpwdw==", "Bearer", "Bearer a b", "Token abc"):
        with pytest.raises(AuthenticationFailed) as bad:
            auth.authenticate(header, None)
        assert bad.value.error == "invalid_request" and bad.value.status == 400
    with pytest.raises(AuthenticationFailed) as garbage:
        auth.authenticate('Bearer not.a"token', None)
    assert 'error="invalid_' in garbage.value.www_authenticate()
    assert refused(auth, "a.b.c").reason == "malformed"


def test_token_for_an_unknown_session_is_refused(auth: AuthServices) -> None:
    doctor = make_doctor(auth)
    token, _ = auth.signing.tokens().issue(
        subject=doctor.account.id, client_id=APP, scope="user/*.rs", sid="made-up"
    )
    assert refused(auth, token).reason == "session-unknown"


# --- logout, password change, revocation ----------------------------------------------------------


def test_logout_with_bearer_ends_the_session_at_once(http: TestClient, auth: AuthServices) -> None:
    body = patient_tokens(http, auth)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.post("/auth/logout", headers=bearer).status_code == 204
    assert refused(auth, body["access_token"]).reason == "session-revoked"
    assert refresh(http, body["refresh_token"]).json()["error"] == "invalid_grant"
    again = http.post("/auth/logout", headers=bearer)
    assert again.status_code == 401 and "invalid_token" in again.headers["www-authenticate"]


def test_logout_in_the_browser_needs_the_csrf_token(http: TestClient, auth: AuthServices) -> None:
    body = patient_tokens(http, auth)  # the login left the session cookie in the client
    page = http.get("/auth/logout")
    assert page.status_code == 200 and "<button" in page.text
    forged = http.post("/auth/logout", data={"csrf_token": "guess"})
    assert forged.status_code == 403
    auth.authenticate(f"Bearer {body['access_token']}", None)
    _, csrf = form_fields(page)
    done = http.post("/auth/logout", data={"csrf_token": csrf})
    assert done.status_code == 200 and "abgemeldet" in done.text
    assert refused(auth, body["access_token"]).reason == "session-revoked"
    assert "nicht angemeldet" in http.get("/auth/logout").text


def test_password_change_ends_every_session(
    http: TestClient, auth: AuthServices, clock: ManualClock, recorded: Recorded
) -> None:
    doctor = make_doctor(auth)
    tokens = []
    for _ in range(2):
        code, verifier, _ = login_for_code(
            http, "dr.weber", totp_now(doctor, clock), scope="user/*.rs online_access"
        )
        tokens.append(exchange(http, code, verifier).json())
        clock.advance(30)  # a TOTP code counts once
    page = http.get("/auth/password")
    assert 'autocomplete="new-password"' in page.text
    new = "Neues-Kennwort-fuer-2026"
    mismatch = post_form(
        http,
        page,
        username="dr.weber",
        password=PASSWORD,
        totp=totp_now(doctor, clock),
        new_password=new,
        new_password_repeat="x",
    )
    assert mismatch.status_code == 400
    weak = post_form(
        http,
        page,
        username="dr.weber",
        password=PASSWORD,
        totp=totp_now(doctor, clock),
        new_password="passwort1234",
        new_password_repeat="passwort1234",
    )
    assert weak.status_code == 400 and "verbreitet" in weak.text
    clock.advance(30)
    changed = post_form(
        http,
        page,
        username="dr.weber",
        password=PASSWORD,
        totp=totp_now(doctor, clock),
        new_password=new,
        new_password_repeat=new,
    )
    assert changed.status_code == 200, changed.text
    for body in tokens:
        assert refused(auth, body["access_token"]).reason == "session-revoked"
        assert refresh(http, body["refresh_token"]).json()["error"] == "invalid_grant"
    assert recorded.of("password-changed")[0]["sessions_ended"] == "2"
    assert all(PASSWORD not in str(d) and new not in str(d) for _, d in recorded.events)
    clock.advance(30)
    login_for_code(http, "dr.weber", totp_now(doctor, clock), scope="user/*.rs", password=new)


def test_revocation_endpoint(http: TestClient, auth: AuthServices) -> None:
    body = patient_tokens(http, auth)
    unknown = http.post("/auth/revoke", data={"token": "nonsense", "client_id": APP})
    assert unknown.status_code == 200  # RFC 7009 §2.2
    answer = http.post("/auth/revoke", data={"token": body["refresh_token"], "client_id": APP})
    assert answer.status_code == 200
    assert refresh(http, body["refresh_token"]).json()["error"] == "invalid_grant"
    assert refused(auth, body["access_token"]).reason == "session-revoked"
    no_client = http.post("/auth/revoke", data={"token": body["refresh_token"]})
    assert no_client.status_code == 401


def test_revoking_an_access_token_ends_its_session(http: TestClient, auth: AuthServices) -> None:
    body = patient_tokens(http, auth)
    answer = http.post("/auth/revoke", data={"token": body["access_token"], "client_id": APP})
    assert answer.status_code == 200
    refused(auth, body["access_token"])


# --- login form: throttling, second factor, CSRF ---------------------------------------------------


def login_attempt(http: TestClient, **fields: str) -> Any:
    _, challenge = pkce_pair()
    page = http.get("/auth/authorize", params=authorize_params(challenge, scope="user/*.rs"))
    return post_form(http, page, **fields)


def test_throttling_after_repeated_failures(
    http: TestClient, auth: AuthServices, clock: ManualClock, recorded: Recorded
) -> None:
    doctor = make_doctor(auth)
    for _ in range(5):  # ACCOUNT_POLICY.free
        failed = login_attempt(http, username="dr.weber", password="falsch-falsch-falsch")
        assert failed.status_code == 401 and "Anmeldung fehlgeschlagen" in failed.text
        assert 'role="alert"' in failed.text
    login_attempt(http, username="dr.weber", password="falsch-falsch-falsch")  # 6th: back-off
    blocked = login_attempt(
        http, username="dr.weber", password=PASSWORD, totp=totp_now(doctor, clock)
    )
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert "Zu viele" in blocked.text
    clock.advance(int(blocked.headers["retry-after"]))
    ok = login_attempt(http, username="dr.weber", password=PASSWORD, totp=totp_now(doctor, clock))
    assert ok.status_code == 303
    reasons = [d["reason"] for d in recorded.of("login-failed")]
    assert reasons.count("password") == 6 and "throttled" in reasons
    assert all(d.get("address") == "testclient" for d in recorded.of("login-failed"))


def test_unknown_user_looks_like_a_wrong_password(http: TestClient, auth: AuthServices) -> None:
    make_doctor(auth)
    unknown = login_attempt(http, username="dr.niemand", password=PASSWORD, totp="123456")
    wrong = login_attempt(http, username="dr.weber", password="falsch-falsch-falsch", totp="1")
    assert unknown.status_code == wrong.status_code == 401
    message = "Anmeldung fehlgeschlagen: Benutzername, Passwort oder Einmalcode ist falsch."
    assert message in unknown.text and message in wrong.text


def test_staff_totp_missing_wrong_replayed(
    http: TestClient, auth: AuthServices, clock: ManualClock, recorded: Recorded
) -> None:
    doctor = make_doctor(auth)
    assert login_attempt(http, username="dr.weber", password=PASSWORD).status_code == 401
    code = totp_now(doctor, clock)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert (
        login_attempt(http, username="dr.weber", password=PASSWORD, totp=wrong).status_code == 401
    )
    assert login_attempt(http, username="dr.weber", password=PASSWORD, totp=code).status_code == 303
    replay = login_attempt(http, username="dr.weber", password=PASSWORD, totp=code)
    assert replay.status_code == 401
    reasons = [d["reason"] for d in recorded.of("login-failed")]
    assert reasons == ["totp-missing", "totp-invalid", "totp-replayed"]


def test_patient_with_enrolled_totp_needs_it(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    _, secret = auth.identity.create_account(
        "max",
        PASSWORD,
        display_name="Max Muster",
        roles=[Role.PATIENT],
        fhir_user="Patient/pat-2",
        totp=True,
    )
    assert secret is not None
    page = http.get("/auth/authorize", params=authorize_params(pkce_pair()[1]))
    assert post_form(http, page, username="max", password=PASSWORD).status_code == 401


def test_forged_form_posts_are_refused(http: TestClient, auth: AuthServices) -> None:
    make_patient(auth)
    _, challenge = pkce_pair()
    page = http.get("/auth/authorize", params=authorize_params(challenge))
    action, csrf = form_fields(page)
    fields = {"username": "erika", "password": PASSWORD}
    assert http.post(action, data=fields).status_code == 403
    assert http.post(action, data={**fields, "csrf_token": csrf[:-1] + "x"}).status_code == 403
    cross = http.post(
        action, data={**fields, "csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    fresh = TestClient(http.app, base_url=BASE, follow_redirects=False)  # no csrf cookie
    assert fresh.post(action, data={**fields, "csrf_token": csrf}).status_code == 403
    same = http.post(action, data={**fields, "csrf_token": csrf}, headers={"Origin": BASE})
    assert same.status_code == 303
    # Referrer-Policy no-referrer makes browsers send "Origin: null" with every form post.
    opaque = http.post(action, data={**fields, "csrf_token": csrf}, headers={"Origin": "null"})
    assert opaque.status_code == 303


def test_cookies_over_plain_http_are_still_secure(auth: AuthServices) -> None:
    app = FastAPI()
    install_auth(app, auth)
    plain = TestClient(app, base_url="http://medikus.example", follow_redirects=False)
    page = plain.get("/auth/authorize", params=authorize_params(pkce_pair()[1]))
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("medikus-csrf=") and "Secure" in cookie and "HttpOnly" in cookie


# --- sessions: idle and absolute time-outs -------------------------------------------------------


def test_idle_timeout(http: TestClient, auth: AuthServices, clock: ManualClock) -> None:
    body = patient_tokens(http, auth)
    clock.advance(15 * 60)
    assert refresh(http, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_activity_keeps_the_session_until_the_absolute_timeout(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    body = patient_tokens(http, auth)
    elapsed = 0
    while elapsed < 12 * 3600 - 300:
        clock.advance(240)
        elapsed += 240
        body = refresh(http, body["refresh_token"]).json()
        auth.authenticate(f"Bearer {body['access_token']}", None)
    clock.advance(12 * 3600 - elapsed)
    assert refused(auth, body["access_token"]).reason == "session-expired"
    assert refresh(http, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_api_use_counts_as_activity(auth: AuthServices, clock: ManualClock) -> None:
    doctor = make_doctor(auth)
    login = auth.identity.login("dr.weber", PASSWORD, totp_now(doctor, clock), None)

    def fresh_token() -> str:  # what the app would get by refreshing every few minutes
        return auth.signing.tokens().issue(
            subject=doctor.account.id, client_id=APP, scope="user/*.rs", sid=login.session.id
        )[0]

    for _ in range(4):  # 4 × 70 s of use
        clock.advance(70)
        auth.authenticate(f"Bearer {fresh_token()}", None)
    clock.advance(14 * 60)
    auth.authenticate(f"Bearer {fresh_token()}", None)  # 14 min after the last use: still live
    clock.advance(15 * 60)
    assert refused(auth, fresh_token()).reason == "session-idle"


# --- several processes, key rotation, join links ------------------------------------------------


def test_other_process_refuses_an_ended_session_within_2_s(
    http: TestClient,
    auth: AuthServices,
    database_url: str,
    keyring: Any,
    clock: ManualClock,
) -> None:
    body = patient_tokens(http, auth)
    other = open_services(database_url, keyring, clock)
    try:
        header = f"Bearer {body['access_token']}"
        other.authenticate(header, None)
        sid = auth.authenticate(header, None).session_id
        assert sid is not None
        auth.identity.logout(sid)
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(header, None)  # this process: at once
        other.authenticate(header, None)  # the other one still has it cached …
        clock.advance(2.1)
        with pytest.raises(AuthenticationFailed):
            other.authenticate(header, None)  # … for at most 2 s
    finally:
        other.close()


def test_signing_key_rotation_keeps_issued_tokens_valid(
    http: TestClient, auth: AuthServices, database_url: str, keyring: Any, clock: ManualClock
) -> None:
    other = open_services(database_url, keyring, clock)  # another worker
    try:
        before = patient_tokens(http, auth)["access_token"]
        old_kid = parts(before)[0]["kid"]
        new = auth.signing.rotate()
        assert {k["kid"] for k in http.get("/auth/jwks").json()["keys"]} == {old_kid, new.kid}
        auth.authenticate(f"Bearer {before}", None)
        clock.advance(30)
        code, verifier, _ = login_for_code(http, "erika", None)
        after = exchange(http, code, verifier).json()["access_token"]
        assert parts(after)[0]["kid"] == new.kid
        clock.advance(1.5)
        other.authenticate(f"Bearer {after}", None)  # reloads on the unknown kid
        other.authenticate(f"Bearer {before}", None)
        with pytest.raises(Exception, match="rotate again"):
            auth.signing.rotate()
    finally:
        other.close()


def test_join_link_yields_a_narrow_single_use_token(auth: AuthServices) -> None:
    issued = auth.join.issue_link("Patient/pat-9", "Appointment/apt-1")
    token, claims = auth.redeem_join_link(issued.token)
    assert claims.scope == "patient/Appointment.r?_id=apt-1" and claims.exp - claims.iat <= 300
    principal = auth.authenticate(f"Bearer {token}", "198.51.100.4")
    assert principal.roles == {Role.PATIENT} and principal.patient == "pat-9"
    assert principal.fhir_user == "Patient/pat-9" and principal.session_id is None
    with pytest.raises(JoinRefused):
        auth.redeem_join_link(issued.token)


def test_join_code_by_phone(auth: AuthServices, recorded: Recorded) -> None:
    issued = auth.join.issue_code("Patient/pat-9", "Appointment/apt-2")
    wrong = "00000000" if issued.code != "00000000" else "11111111"
    with pytest.raises(JoinRefused):
        auth.join.redeem_code(issued.grant.grant_id, wrong)
    token, _ = auth.join.redeem_code(issued.grant.grant_id, issued.code)
    assert auth.authenticate(f"Bearer {token}", None).patient == "pat-9"
    assert [d["reason"] for d in recorded.of("join-refused")] == ["wrong-code"]


def test_disabling_an_account_refuses_its_tokens_at_once(
    http: TestClient, auth: AuthServices
) -> None:
    body = patient_tokens(http, auth)
    auth.identity.set_disabled("erika")
    assert refused(auth, body["access_token"]).reason == "session-revoked"


def test_full_app_mounts_the_auth_server(record: Any, auth: AuthServices) -> None:
    app = create_app(Config(rate_limit=False), record=record, auth=auth)
    with TestClient(app, base_url=BASE) as client:
        config = client.get("/.well-known/smart-configuration")
        assert config.status_code == 200 and config.json()["issuer"] == BASE
        page = client.get("/auth/authorize", params=authorize_params(pkce_pair()[1]))
        # The login page's own CSP wins over the app's default (form-action names the app).
        assert "https://app.example" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert client.get("/auth/jwks").json()["keys"]
