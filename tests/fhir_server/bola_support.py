"""The world of the BOLA matrix (test_bola_http.py): the whole app with its real authorization
server on one database, two MVZs, a pilot centre, patients A and B with data of every main type,
and the callers' real tokens (https://owasp.org/API-Security/editions/2023/en/0xa1-broken-object-level-authorization/).

Tokens come from the real endpoints: the login form (password, TOTP for staff) → authorization
code + PKCE for users, client credentials with an ES384 assertion for the backend service. The
expired token was issued through the same flow 400 s before the others (the authorization server
runs on a manual clock); the wrong-audience token is signed by the server's own signing key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import psycopg
from fastapi.testclient import TestClient

from compliance.auth import AuthServices
from compliance.keyring import Keyring
from compliance.principal import Role
from compliance.totp import code_at
from fhir_server._sqlstore import SqlAuditLog, SqlStore
from fhir_server.context import Settings
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.store import HistoryQuery
from medikus.app import create_app
from medikus.config import Config
from tests.compliance.auth_helpers import (
    APP,
    APP_REDIRECT,
    ASSERTION_TYPE,
    BASE,
    FAST_HASHER,
    PASSWORD,
    es384_key,
    exchange,
    login_for_code,
)
from tests.compliance.clock import ManualClock
from tests.conftest import Clock

FHIR_BASE = BASE + "/fhir"
IDENTIFIER_SYSTEM = "https://medikus.example/sid/kvnr"
PATIENT_SCOPE = "patient/*.cruds launch/patient"
STAFF_SCOPE = "user/*.cruds"
BACKEND = "station-narrow"
BACKEND_SCOPE = "system/Observation.rs?category=laboratory"
# The main resource types of the matrix (the patient's record and its audit trail).
TYPES = (
    "Patient",
    "Observation",
    "Condition",
    "MedicationRequest",
    "Encounter",
    "DocumentReference",
    "Consent",
    "AuditEvent",
)
# The reference parameters of A's resources that point at B's resources (see _bridges).
BRIDGES = {
    "Observation": "derived-from",
    "Condition": "evidence-detail",
    "Encounter": "part-of",
    "DocumentReference": "relatesto",
}
_CURSOR = re.compile(rb"_cursor=([A-Za-z0-9_%-]+)")


@dataclass(frozen=True)
class Req:
    """One HTTP request to the FHIR API (path relative to /fhir)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def raw(self) -> bytes:
        """Everything the caller sends that may carry a marker (compared decoded)."""
        parts = [self.path, *(f"{k}={v}" for k, v in self.query), *(v for _, v in self.headers)]
        return "\n".join(parts).encode() + b"\n" + self.body


@dataclass(frozen=True)
class Marker:
    """What identifies one of B's resources: its id and texts found nowhere else."""

    id: str
    secrets: tuple[str, ...]


@dataclass
class Ledger:
    """Refusals answered during the matrix, to be found in the audit trail afterwards."""

    by_request_id: dict[str, str] = field(default_factory=dict)  # request id -> cell
    anonymous: list[tuple[str, str]] = field(default_factory=list)  # (path, cell), 401s
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (agent, ref, cell)


@dataclass
class World:
    database: str
    http: TestClient
    record: RecordCore
    auth: AuthServices
    auth_clock: ManualClock
    b: dict[str, str]  # B's ids by type, plus "identifier"
    a: dict[str, str]  # A's ids by type (and A's laboratory Observation, "lab")
    markers: dict[str, Marker]  # B's resources by type
    headers: dict[str, dict[str, str]]  # the Authorization header of each actor
    subjects: dict[str, str]  # the account id or client id of each actor (audit agent)
    ledger: Ledger = field(default_factory=Ledger)
    sent: dict[str, set[bytes]] = field(default_factory=dict)  # markers each actor sent
    _serial: int = 0

    def request_id(self) -> str:
        self._serial += 1
        return f"bola-{self.database}-{self._serial}"

    def send(self, actor: str, req: Req, request_id: str | None = None) -> httpx.Response:
        headers = {**self.headers[actor], **dict(req.headers)}
        headers["x-request-id"] = request_id or self.request_id()
        response: httpx.Response = self.http.request(
            req.method,
            "/fhir/" + req.path if req.path else "/fhir",
            params=list(req.query),
            content=req.body or None,
            headers=headers,
        )
        return response

    def system(self, method: str, path: str, body: Any = None) -> FhirResponse:
        """The record core in process, as the system itself (set-up and checks)."""
        request = FhirRequest(
            method=method,
            path=path,
            headers={"content-type": "application/fhir+json"},
            body=orjson.dumps(body) if body is not None else b"",
            base=FHIR_BASE,
        )
        return self.record.handle(request)

    def current(self, rtype: str, id: str) -> dict[str, Any]:
        response = self.system("GET", f"{rtype}/{id}")
        assert response.status == 200, response.body
        resource: dict[str, Any] = orjson.loads(response.body)
        return resource

    def version(self, rtype: str, id: str) -> str:
        return str(self.current(rtype, id)["meta"]["versionId"])

    def audit_events(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Every AuditEvent in the trail once everything queued so far is chained (the app's
        own writer and chainer run in the background)."""
        audit = self.record.audit
        assert audit is not None
        audit.trail.flush()
        log = audit.trail.log
        assert isinstance(log, SqlAuditLog)
        deadline = time.monotonic() + timeout
        while log.pending(1):
            assert time.monotonic() < deadline, "the audit chainer did not catch up"
            time.sleep(0.1)
        store = self.record.ctx.store
        assert isinstance(store, SqlStore)
        versions = store.history(HistoryQuery(type="AuditEvent", count=1_000_000))
        return [orjson.loads(v.content) for v in versions if v.content]


# --- leaks ----------------------------------------------------------------------------------------


def cursors(body: bytes) -> list[Any]:
    """The payloads of the page cursors in a response's links (URL-safe base64 JSON)."""
    out = []
    for match in _CURSOR.finditer(body):
        raw = match.group(1).replace(b"%3D", b"").decode()
        try:
            out.append(orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))))
        except ValueError:
            continue
    return out


def exposed(body: bytes) -> bytes:
    """The response as a reader could decode it: the raw bytes plus its page cursors (which
    carry the sort values and ids of the rows a page ended with)."""
    return b"\n".join([body, *(orjson.dumps(c) for c in cursors(body))])


# --- the world ------------------------------------------------------------------------------------


def pg_schema(dsn: str) -> Iterator[str]:
    schema = f"t_bola_{secrets.token_hex(5)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{dsn}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def open_world(database: str, url: str, keyring: Keyring) -> Iterator[World]:
    # The subscription test's rest-hook receiver listens on 127.0.0.1.
    settings = Settings(allow_private_endpoints=True)
    record = RecordCore.open(url, clock=Clock(), keyring=keyring, audit=True, settings=settings)
    auth_clock = ManualClock()
    auth = AuthServices.open(url, keyring, BASE, clock=auth_clock, hasher=FAST_HASHER)
    app = create_app(Config(rate_limit=False), record=record, auth=auth)
    with TestClient(app, base_url=BASE, follow_redirects=False) as http:
        world = World(database, http, record, auth, auth_clock, {}, {}, {}, {}, {})
        _seed(world)
        _sign_in(world)
        _audit_target(world)
        yield world


def _create(world: World, resource: dict[str, Any]) -> str:
    response = world.system("POST", resource["resourceType"], resource)
    assert response.status == 201, response.body
    return str(orjson.loads(response.body)["id"])


def _ref(rtype: str, id: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{id}"}


def _seed(world: World) -> None:
    """MVZ A manages patient A; B's general practitioner is Dr. Rel of MVZ A (a personal
    relation: her colleague Dr. A has none); MVZ B has no patients; the pilot centre is in A's
    care team. A's resources refer to some of B's (bridges for _include)."""
    orgs = {
        name: _create(world, {"resourceType": "Organization", "name": name})
        for name in ("MVZ A", "MVZ B", "Pilotzentrum")
    }
    world.a["org"], world.a["orgB"], world.a["pilot"] = orgs.values()
    for key, family in (("drA", "Albrecht"), ("drRel", "Relling"), ("drB", "Brandt")):
        world.a[key] = _create(
            world, {"resourceType": "Practitioner", "name": [{"family": family}]}
        )
    tag = secrets.token_hex(4)
    identifier = f"B{tag}K"
    world.b["identifier"] = identifier
    world.b["Patient"] = _create(
        world,
        {
            "resourceType": "Patient",
            "active": True,
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}],
            "name": [{"family": f"Bergfeld{tag}", "given": ["Berta"]}],
            "generalPractitioner": [_ref("Practitioner", world.a["drRel"])],
        },
    )
    world.a["Patient"] = _create(
        world,
        {
            "resourceType": "Patient",
            "active": True,
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": f"A{tag}K"}],
            "name": [{"family": "Adler", "given": ["Anton"]}],
            "managingOrganization": _ref("Organization", orgs["MVZ A"]),
        },
    )
    _create(
        world,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "subject": _ref("Patient", world.a["Patient"]),
            "participant": [{"member": _ref("Organization", orgs["Pilotzentrum"])}],
        },
    )
    secrets_b: dict[str, tuple[str, ...]] = {"Patient": (f"Bergfeld{tag}", identifier)}
    for owner, ids in (("B", world.b), ("A", world.a)):
        texts = {t: f"{owner}-secret-{t}-{tag}" for t in TYPES[1:-1]}
        if owner == "B":
            secrets_b.update({t: (texts[t],) for t in texts})
        bridge = {} if owner == "B" else {t: world.b[t] for t in BRIDGES}
        for rtype, resource in _clinical(ids["Patient"], texts, bridge).items():
            ids[rtype] = _create(world, resource)
    world.a["lab"] = _create(world, _observation(world.a["Patient"], "A-lab", {}, "laboratory"))
    world.markers = {t: Marker(world.b[t], secrets_b[t]) for t in TYPES[:-1]}


def _observation(
    patient: str, text: str, extra: dict[str, Any], category: str = "vital-signs"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": _ref("Patient", patient),
        "valueQuantity": {"value": 72, "unit": "/min"},
        "note": [{"text": text}],
        **extra,
    }


def _clinical(
    patient: str, texts: Mapping[str, str], bridge: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """One resource of each clinical type; ``bridge``: ids of B's resources to refer to."""
    subject = _ref("Patient", patient)

    def linked(rtype: str, element: str, value: Any) -> dict[str, Any]:
        return {element: value} if rtype in bridge else {}

    return {
        "Observation": _observation(
            patient,
            texts["Observation"],
            linked(
                "Observation", "derivedFrom", [_ref("Observation", bridge.get("Observation", ""))]
            ),
        ),
        "Condition": {
            "resourceType": "Condition",
            "code": {"text": texts["Condition"]},
            "subject": subject,
            **linked(
                "Condition",
                "evidence",
                [{"detail": [_ref("Condition", bridge.get("Condition", ""))]}],
            ),
        },
        "MedicationRequest": {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": texts["MedicationRequest"]},
            "subject": subject,
        },
        "Encounter": {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
            "subject": subject,
            "reasonCode": [{"text": texts["Encounter"]}],
            **linked("Encounter", "partOf", _ref("Encounter", bridge.get("Encounter", ""))),
        },
        "DocumentReference": {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": subject,
            "description": texts["DocumentReference"],
            "content": [{"attachment": {"contentType": "text/plain", "title": "Arztbrief"}}],
            **linked(
                "DocumentReference",
                "relatesTo",
                [
                    {
                        "code": "appends",
                        "target": _ref("DocumentReference", bridge.get("DocumentReference", "")),
                    }
                ],
            ),
        },
        # A research consent: no network-sharing or telemonitoring kind, so no grants change.
        "Consent": {
            "resourceType": "Consent",
            "status": "active",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "research",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
            "patient": subject,
            "policyRule": {"text": texts["Consent"]},
        },
    }


# --- the callers ----------------------------------------------------------------------------------


def _login(world: World, username: str, totp: str | None, scope: str) -> dict[str, Any]:
    # A fresh browser per login: the login cookie of one user must not carry over.
    browser = TestClient(world.http.app, base_url=BASE, follow_redirects=False)
    code, verifier, _ = login_for_code(browser, username, totp, scope=scope)
    answer = exchange(browser, code, verifier)
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _sign_in(world: World) -> None:
    auth, a = world.auth, world.a
    auth.server.register_client(
        APP,
        name="Medi-KUS-App",
        scopes=f"{PATIENT_SCOPE} {STAFF_SCOPE} online_access",
        redirect_uris=(APP_REDIRECT,),
    )
    accounts = {
        "patientA": ([Role.PATIENT], None, f"Patient/{a['Patient']}"),
        "patientB": ([Role.PATIENT], None, f"Patient/{world.b['Patient']}"),
        "doctorA": ([Role.DOCTOR], a["org"], f"Practitioner/{a['drA']}"),
        "doctorRel": ([Role.DOCTOR], a["org"], f"Practitioner/{a['drRel']}"),
        "doctorB": ([Role.DOCTOR], a["orgB"], f"Practitioner/{a['drB']}"),
        "careStaff": ([Role.CARE_STAFF], a["pilot"], None),
    }
    totp: dict[str, str | None] = {}
    for name, (roles, org, fhir_user) in accounts.items():
        account, secret = auth.identity.create_account(
            name.lower(),
            PASSWORD,
            display_name=f"Konto {name}",
            roles=roles,
            organization=org,
            fhir_user=fhir_user,
        )
        world.subjects[name] = account.id
        totp[name] = secret
    # Issued 400 s before everything else: expired (tokens live at most 300 s) when used.
    expired = _login(world, "patientb", None, PATIENT_SCOPE)["access_token"]
    world.auth_clock.advance(400)
    for name in accounts:
        secret = totp[name]
        code = code_at(secret, world.auth_clock.now) if secret is not None else None
        scope = PATIENT_SCOPE if name.startswith("patient") else STAFF_SCOPE
        world.headers[name] = _bearer(_login(world, name.lower(), code, scope)["access_token"])
    world.headers["backend"] = _bearer(_backend_token(world))
    world.subjects["backend"] = BACKEND
    world.headers["expired"] = _bearer(expired)
    world.headers["wrongAud"] = _bearer(_foreign_audience(world))
    world.headers["noToken"] = {}
    for name in world.headers:
        world.sent[name] = set()


def _backend_token(world: World) -> str:
    return backend_token(world, BACKEND, BACKEND_SCOPE)


def backend_token(world: World, client_id: str, scope: str) -> str:
    """Registers a backend service and gets its token by client credentials (ES384)."""
    key = es384_key()
    world.auth.server.register_client(client_id, name=client_id, scopes=scope, jwks=key.jwks())
    assertion = key.assertion(client_id, now=world.auth_clock.now // 1_000_000)
    answer = world.http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == scope
    return str(answer.json()["access_token"])


@contextmanager
def receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A rest-hook endpoint on this machine: its base URL and the (path, body) it received."""
    received: list[tuple[str, bytes]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            received.append((self.path, self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PUT

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _foreign_audience(world: World) -> str:
    """Patient B's live session, our signing key, another resource server as audience."""
    claims = _claims(world.headers["patientB"]["Authorization"].removeprefix("Bearer "))
    other = dataclasses.replace(world.auth.signing.tokens(), audience="https://other.example/fhir")
    token, _ = other.issue(
        subject=claims["sub"],
        client_id=APP,
        scope=claims["scope"],
        patient=claims.get("patient"),
        fhir_user=claims.get("fhirUser"),
        sid=claims["sid"],
    )
    return token


def _audit_target(world: World) -> None:
    """B's AuditEvent of the matrix: the one recording B's own read of their Patient resource
    (its agent, B's account id, appears in no other actor's data). Before it, A tries B's
    record and B looks at their audit trail (which shows A's attempt): what a patient's trail
    shows of other people is then part of every matrix run, whatever cells are selected."""
    patient = world.b["Patient"]
    assert world.send("patientA", Req("GET", f"Patient/{patient}")).status_code == 404
    world.audit_events()
    own = Req("GET", "AuditEvent", (("patient", f"Patient/{patient}"), ("_count", "500")))
    assert world.send("patientB", own).status_code == 200
    request_id = world.request_id()
    read = world.send("patientB", Req("GET", f"Patient/{patient}"), request_id)
    assert read.status_code == 200, read.text
    for event in world.audit_events():
        ids = [
            e["what"].get("identifier", {}).get("value")
            for e in event.get("entity", ())
            if isinstance(e.get("what"), dict)
        ]
        if request_id in ids:
            world.b["AuditEvent"] = event["id"]
            world.markers["AuditEvent"] = Marker(event["id"], (world.subjects["patientB"],))
            return
    raise AssertionError("B's read left no AuditEvent")


def fake_id() -> str:
    """An id no resource has (same shape as the server's: a UUID)."""
    return str(uuid.uuid4())
