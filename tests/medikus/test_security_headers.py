"""HTTP hardening (issue 4; BSI TR-03161 Part 2 O.Arch_9, OWASP ASVS 5.0 V3.4 and 14.2.1).

Every response of the app — FHIR interactions, errors, 500s, health — carries the security
headers; HSTS only over HTTPS; X-Request-Id is echoed or generated; the subscriptions' websocket
still works; and no PHI from a query string reaches the logs. In process through the TestClient,
and over a real socket through uvicorn with access logging switched on. Faults are injected by
replacing the dispatcher or dropping an index table of the real database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from fhir_server.core import RecordCore
from medikus.app import create_app
from medikus.http_protocol import FhirHttpToolsProtocol
from medikus.security_headers import DOCS_POLICY, HSTS, Message, Scope, SecurityHeaders
from tests.conftest import free_port

FHIR_JSON = {"Content-Type": "application/fhir+json"}
NAME = "Mustermann"
PATIENT = {"resourceType": "Patient", "name": [{"family": NAME, "given": ["Erika"]}]}


def directives(policy: str) -> dict[str, list[str]]:
    parts = (d.split() for d in policy.split(";") if d.strip())
    return {p[0]: p[1:] for p in parts}


def assert_secured(response: httpx.Response, *, https: bool = False) -> None:
    headers = response.headers
    csp = directives(headers["content-security-policy"])
    for name in ("default-src", "script-src", "style-src"):
        assert csp[name] == ["'self'"], name
    assert csp["connect-src"][0] == "'self'"
    assert csp["frame-ancestors"] == csp["object-src"] == csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["permissions-policy"] == (
        "camera=(self), microphone=(self), geolocation=(), payment=()"
    )
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-resource-policy"] == "same-origin"
    assert headers["x-frame-options"] == "DENY"
    assert headers.get_list("cache-control") == ["no-store"]
    assert len(headers.get_list("x-request-id")) == 1
    assert headers.get("strict-transport-security") == (HSTS.decode() if https else None)


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the server side logged, tracebacks included (not the test's HTTP client)."""
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(
        formatter.format(r)
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore", "websockets"))
    )


# --- headers on every response -------------------------------------------------------------


def test_fhir_health_and_error_responses_carry_the_headers(client: TestClient) -> None:
    created = client.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON)
    assert created.status_code == 201
    id = created.json()["id"]
    responses = {
        "create": (created, 201),
        "read": (client.get(f"/fhir/Patient/{id}"), 200),
        "vread": (client.get(f"/fhir/Patient/{id}/_history/1"), 200),
        "search": (client.get("/fhir/Patient", params={"name": NAME}), 200),
        "POST _search": (client.post("/fhir/Patient/_search", data={"name": NAME}), 200),
        "metadata": (client.get("/fhir/metadata"), 200),
        "not found": (client.get("/fhir/Patient/no-such-patient"), 404),
        "invalid search": (client.get("/fhir/Patient", params={"birthdate": NAME}), 400),
        "no such URL": (client.get("/fhir/Patient/1/_history/1/a/b"), 404),
        "method not allowed": (client.put("/fhir/metadata", json={}), 405),
        "healthz": (client.get("/healthz"), 200),
        "readyz": (client.get("/readyz"), 200),
        "outside the app": (client.get("/no/such/page"), 404),
        "openapi": (client.get("/openapi.json"), 200),
    }
    for interaction, (response, status) in responses.items():
        assert response.status_code == status, interaction
        assert_secured(response)
    search = responses["search"][0].json()
    assert [e["resource"]["id"] for e in search["entry"]] == [id]


def test_an_internal_error_still_carries_the_headers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fault(*_args: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("fhir_server._http.dispatch", fault)
    # The error middleware answers and then re-raises for the server's log; not for the test.
    raw = TestClient(client.app, base_url="http://testserver", raise_server_exceptions=False)
    response = raw.get("/fhir/Patient", headers={"X-Request-Id": "trace-500"})
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome"
    assert_secured(response)
    assert response.headers["x-request-id"] == "trace-500"


@pytest.mark.parametrize(
    ("url", "forwarded", "https"),
    [
        ("http://testserver/healthz", None, False),
        ("http://testserver/fhir/metadata", "http", False),
        ("http://testserver/fhir/metadata", "https", True),
        ("http://testserver/fhir/metadata", "HTTPS", True),
        ("http://testserver/healthz", "https, http", True),  # client-facing hop first
        ("http://testserver/healthz", "http, https", False),
        ("https://testserver/fhir/metadata", None, True),
    ],
)
def test_hsts_only_over_https(
    client: TestClient, url: str, forwarded: str | None, https: bool
) -> None:
    headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
    response = client.get(url, headers=headers)
    assert response.status_code == 200
    assert_secured(response, https=https)


@pytest.mark.parametrize(
    ("host", "forwarded", "connect_src"),
    [
        ("testserver", None, ["'self'", "ws://testserver", "wss://testserver"]),
        ("testserver", "https", ["'self'", "wss://testserver"]),
        ("Medikus.Example:8443", "https", ["'self'", "wss://medikus.example:8443"]),
        ("[::1]:8000", None, ["'self'", "ws://[::1]:8000", "wss://[::1]:8000"]),
        # A forged Host must not add sources or directives to the policy.
        ("evil.example; script-src *", None, ["'self'"]),
        ("evil.example *", None, ["'self'"]),
    ],
)
def test_csp_allows_the_signalling_websocket_of_the_own_host_only(
    client: TestClient, host: str, forwarded: str | None, connect_src: list[str]
) -> None:
    headers = {"Host": host, **({"X-Forwarded-Proto": forwarded} if forwarded else {})}
    response = client.get("/healthz", headers=headers)
    csp = directives(response.headers["content-security-policy"])
    assert csp["connect-src"] == connect_src
    assert csp["script-src"] == ["'self'"]
    assert "*" not in response.headers["content-security-policy"]


def test_api_documentation_gets_its_own_policy(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-security-policy"] == DOCS_POLICY.decode()
    assert "https://cdn.jsdelivr.net" in docs.text  # what the policy lets in
    assert directives(DOCS_POLICY.decode())["frame-ancestors"] == ["'none'"]
    assert docs.headers["x-content-type-options"] == "nosniff"
    # ReDoc is off: its page would need fonts and inline styles from elsewhere.
    assert client.get("/redoc").status_code == 404


# --- X-Request-Id ----------------------------------------------------------------------------


def test_a_well_formed_request_id_is_echoed(client: TestClient) -> None:
    for request_id in ("3f1c-77", "trace.42:span@edge-1", "a" * 128):
        response = client.get("/fhir/metadata", headers={"X-Request-Id": request_id})
        assert response.headers["x-request-id"] == request_id


def test_a_missing_or_malformed_request_id_is_replaced_by_a_uuid(client: TestClient) -> None:
    seen = set()
    for headers in ({}, {"X-Request-Id": ""}, {"X-Request-Id": "a b"}, {"X-Request-Id": "a" * 129}):
        response = client.get("/healthz", headers=headers)
        generated = response.headers["x-request-id"]
        assert str(uuid.UUID(generated)) == generated
        seen.add(generated)
    assert len(seen) == 4


# --- the middleware on its own (pure ASGI) ---------------------------------------------------


def call(
    path: str, headers: list[tuple[bytes, bytes]], app_headers: list[tuple[bytes, bytes]]
) -> tuple[Scope, Message]:
    """Runs the middleware around an app that answers with ``app_headers``; returns the scope the
    app saw and the response start message the server got."""
    seen: list[Scope] = []
    sent: list[Message] = []

    async def app(scope: Scope, _receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": app_headers})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "scheme": "http", "path": path, "headers": headers}
    asyncio.run(SecurityHeaders(app)(scope, receive, send))
    assert sent[1]["type"] == "http.response.body"
    return seen[0], sent[0]


def test_fhir_responses_are_never_cacheable_others_keep_their_choice() -> None:
    cached = [(b"cache-control", b"public, max-age=31536000, immutable")]
    _, fhir = call("/fhir/Patient", [], cached)
    assert [v for n, v in fhir["headers"] if n == b"cache-control"] == [b"no-store"]
    _, asset = call("/assets/index-3f1c.js", [], cached)
    assert [v for n, v in asset["headers"] if n == b"cache-control"] == [cached[0][1]]
    _, plain = call("/fhirish", [], [])  # not under /fhir: the default applies
    assert [v for n, v in plain["headers"] if n == b"cache-control"] == [b"no-store"]


def test_a_policy_the_app_sets_itself_wins_but_never_allows_framing() -> None:
    own = [(b"content-security-policy", b"default-src 'none';"), (b"x-request-id", b"forged")]
    _, start = call("/", [(b"x-request-id", b"req-1")], own)
    headers = start["headers"]
    assert [v for n, v in headers if n == b"content-security-policy"] == [
        b"default-src 'none'; frame-ancestors 'none'"
    ]
    assert [v for n, v in headers if n == b"x-request-id"] == [b"req-1"]
    assert (b"x-frame-options", b"DENY") in headers
    # A policy that names its framing itself keeps it.
    own = [(b"Content-Security-Policy", b"default-src 'none'; Frame-Ancestors 'self'")]
    _, start = call("/", [], own)
    assert [v for n, v in start["headers"] if n.lower() == b"content-security-policy"] == [
        own[0][1]
    ]


@pytest.mark.parametrize("https", [False, True])
def test_cookies_get_httponly_samesite_and_over_https_secure(https: bool) -> None:
    cookies = [
        (b"set-cookie", b"plain=1; Path=/"),
        (b"set-cookie", b"__Host-session=abc; path=/; secure; httponly; samesite=strict"),
        (b"Set-Cookie", b"pref=de; Max-Age=60; SameSite=None; Secure"),
    ]
    proto = [(b"x-forwarded-proto", b"https" if https else b"http")]
    _, start = call("/auth/authorize", proto, cookies)
    sent = [v for n, v in start["headers"] if n.lower() == b"set-cookie"]
    secure = b"; Secure" if https else b""
    assert sent == [
        b"plain=1; Path=/; HttpOnly; SameSite=Lax" + secure,
        cookies[1][1],  # the login pages' own, stricter attributes stay as they are
        b"pref=de; Max-Age=60; SameSite=None; Secure; HttpOnly",
    ]


def test_the_app_sees_the_effective_request_id() -> None:
    incoming = [(b"host", b"testserver"), (b"x-request-id", b"not valid!")]
    scope, start = call("/fhir/Patient", incoming, [])
    ids = [v for n, v in scope["headers"] if n == b"x-request-id"]
    assert len(ids) == 1
    assert ids == [v for n, v in start["headers"] if n == b"x-request-id"]
    assert (b"host", b"testserver") in scope["headers"]
    scope, _ = call("/fhir/Patient", [(b"x-request-id", b"req-7")], [])
    assert scope["headers"] == [(b"x-request-id", b"req-7")]


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_websocket_and_lifespan_scopes_pass_through_untouched(kind: str) -> None:
    seen: list[tuple[Scope, Any, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {}

    async def send(_message: Message) -> None:
        pass

    scope: Scope = {"type": kind, "path": "/fhir/ws", "headers": []}
    asyncio.run(SecurityHeaders(app)(scope, receive, send))
    assert seen == [(scope, receive, send)]


# --- websocket ---------------------------------------------------------------------------------


def websocket_subscription(http: httpx.Client) -> str:
    """A Subscription with the websocket channel (the TestClient is an httpx client too)."""
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": "Observation?code=http://loinc.org|29463-7",
        "channel": {"type": "websocket"},
    }
    response = http.post("/fhir/Subscription", json=subscription, headers=FHIR_JSON)
    assert response.status_code == 201
    return str(response.json()["id"])


def test_the_subscription_websocket_still_works(client: TestClient) -> None:
    id = websocket_subscription(client)
    with client.websocket_connect("/fhir/ws") as socket:
        socket.send_text("bind no-such-subscription")
        assert socket.receive_text().startswith("error no-such-subscription")
        socket.send_text(f"bind {id}")
        assert socket.receive_text() == f"bound {id}"


# --- no PHI in logs ----------------------------------------------------------------------------


def test_failing_requests_log_no_query(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    assert client.get("/fhir/Patient", params={"birthdate": NAME}).status_code == 400
    strict = {"Prefer": "handling=strict"}
    assert client.get("/fhir/Patient", params={"nom": NAME}, headers=strict).status_code == 400
    assert client.get("/fhir/Patient", params={"name": NAME}).status_code == 200

    def fault(*_args: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("fhir_server._http.dispatch", fault)
    raw = TestClient(client.app, base_url="http://testserver", raise_server_exceptions=False)
    assert raw.get("/fhir/Patient", params={"family": NAME}).status_code == 500
    log = server_log(caplog)
    assert "unexpected error on GET /fhir/Patient" in log  # the 500 is logged, by path only
    assert "injected fault" in log
    assert NAME.lower() not in log.lower()


def test_database_errors_log_no_search_values(
    client: TestClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A real database fault: the string index disappears under the running server.
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            db.execute("DROP TABLE ix_string")
    else:
        with psycopg.connect(database_url, autocommit=True) as db:
            db.execute("DROP TABLE ix_string CASCADE")
    raw = TestClient(client.app, base_url="http://testserver", raise_server_exceptions=False)
    response = raw.get("/fhir/Patient", params={"name": NAME})
    assert response.status_code in (500, 503)
    assert_secured(response)
    log = server_log(caplog)
    assert "ix_string" in log  # the fault is logged ...
    assert NAME.lower() not in log.lower()  # ... without the searched name


# --- over a real socket: uvicorn with access logging on ---------------------------------------


@contextmanager
def uvicorn_server(record: RecordCore) -> Iterator[str]:
    """The app behind uvicorn as ``medikus serve`` runs it, but at log level info (access log
    and websocket handshakes logged) and with the log records left to pytest."""
    config = uvicorn.Config(
        create_app(record=record),
        host="127.0.0.1",
        port=free_port(),
        log_level="info",
        log_config=None,
        proxy_headers=True,
        http=FhirHttpToolsProtocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_over_uvicorn_headers_hsts_websocket_and_no_query_in_the_log(
    record: RecordCore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with uvicorn_server(record) as address, httpx.Client(base_url=f"http://{address}") as http:
        created = http.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON)
        assert created.status_code == 201
        assert_secured(created)
        # Behind the TLS proxy (trusted: 127.0.0.1) uvicorn sees https, and so does the app.
        search = http.get(
            "/fhir/Patient", params={"name": NAME}, headers={"X-Forwarded-Proto": "https"}
        )
        assert search.status_code == 200
        assert search.json()["entry"][0]["resource"]["id"] == created.json()["id"]
        assert_secured(search, https=True)
        assert search.json()["link"][0]["url"].startswith("https://")
        invalid = http.get("/fhir/Patient", params={"birthdate": NAME})
        assert invalid.status_code == 400
        assert_secured(invalid)

        id = websocket_subscription(http)
        with connect(f"ws://{address}/fhir/ws?patient={NAME}") as socket:
            socket.send(f"bind {id}")
            assert socket.recv(timeout=10) == f"bound {id}"
    log = server_log(caplog)
    assert "/fhir/Patient?[redacted]" in log  # the access log is on and names the path ...
    assert "/fhir/ws?[redacted]" in log  # ... and the websocket handshake
    assert NAME.lower() not in log.lower()  # ... but never the query
