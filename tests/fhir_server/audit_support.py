"""A record core with its audit trail, driven in process (the router HTTP uses), for the audit tests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from fhir.resources.R4B.auditevent import AuditEvent

from compliance.keyring import Keyring
from compliance.principal import Principal, Role
from compliance.scopes import parse_scopes
from fhir_server._sqlstore import SqlAuditLog, SqlStore
from fhir_server.audit import AuditSettings, AuditSystem, ChainSettings
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.store import HistoryQuery

BASE = "https://medikus.test/fhir"
ISSUER = "https://medikus.test/auth"
SERVICE = Principal(
    subject="station-7",
    client_id="station-7",
    scopes=parse_scopes("system/*.cruds"),
    issuer=ISSUER,
    token_id="jti-service",
    address="192.0.2.7",
)
DOCTOR = Principal(
    subject="staff-17",
    client_id="medikus-web",
    scopes=parse_scopes("user/*.cruds"),
    roles=frozenset({Role.DOCTOR}),
    fhir_user="Practitioner/pr-17",
    organization="mvz-1",
    issuer=ISSUER,
    token_id="jti-doctor",
    session_id="session-1",
    address="198.51.100.4",
    name="Dr. Anna Weber",
)


@dataclass
class Audited:
    """The record core on a real database, its audit system, and ways to look at the trail."""

    core: RecordCore
    system: AuditSystem

    @property
    def store(self) -> SqlStore:
        store = self.core.ctx.store
        assert isinstance(store, SqlStore)
        return store

    @property
    def log(self) -> SqlAuditLog:
        log = self.system.trail.log
        assert isinstance(log, SqlAuditLog)
        return log

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        principal: Principal | None = SERVICE,
        request_id: str | None = "req-1",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> FhirResponse:
        sent = {"content-type": "application/fhir+json", **(headers or {})}
        if request_id is not None:
            sent["x-request-id"] = request_id
        content = raw if raw is not None else orjson.dumps(body) if body is not None else b""
        request = FhirRequest(method, path, query or [], sent, content, BASE, principal=principal)
        return self.core.handle(request)

    def created(self, body: dict[str, Any], **kw: Any) -> str:
        response = self.call("POST", body["resourceType"], body, **kw)
        assert response.status == 201, response.body
        return str(orjson.loads(response.body)["id"])

    def chain(self) -> None:
        """Everything queued is written, chained and stored as AuditEvent resources."""
        self.system.trail.flush()
        self.system.chainer.run_until_idle()

    def events(self) -> list[dict[str, Any]]:
        """Every stored AuditEvent, oldest first, read from the store (not through the API)."""
        self.chain()
        versions = self.store.history(HistoryQuery(type="AuditEvent", count=100_000))
        events = [orjson.loads(v.content) for v in reversed(versions) if v.content]
        for event in events:
            AuditEvent.model_validate(event)  # each is a valid R4 AuditEvent
        return events

    def sql(self, text: str, **params: Any) -> list[Any]:
        with self.store.engine.begin() as conn:
            result = conn.execute(sa.text(text), params)
            return list(result) if result.returns_rows else []


def open_audited(
    database_url: str,
    clock: Any,
    keyring: Keyring,
    *,
    chain_settings: ChainSettings | None = None,
    settings: AuditSettings | None = None,
) -> Audited:
    core = RecordCore.open(database_url, clock=clock, keyring=keyring)
    log = SqlAuditLog(core.ctx.store)  # type: ignore[arg-type]
    system = AuditSystem.build(
        core.ctx,
        log,
        keyring,
        server_id=BASE,
        settings=settings,
        chain_settings=chain_settings or ChainSettings(sign_every=1_000_000),
    )
    return Audited(RecordCore(system.ctx, core.subscriptions), system)


def audited_core(database_url: str, clock: Any, keyring: Keyring, **kw: Any) -> Iterator[Audited]:
    audited = open_audited(database_url, clock, keyring, **kw)
    try:
        yield audited
    finally:
        audited.system.stop()
        audited.core.close()


# --- looking into events ----------------------------------------------------------------------


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def patients(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["reference"].removeprefix("Patient/")
        for e in event["entity"]
        if e.get("role", {}).get("code") == "1"
    ]


def data(event: dict[str, Any]) -> list[Any]:
    return [e["what"] for e in event["entity"] if e.get("role", {}).get("code") == "4"]


def query(event: dict[str, Any]) -> bytes:
    (entity,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "24"]
    return base64.b64decode(entity["query"])


def request_ids(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in event["entity"]
        if e.get("type", {}).get("code") == "XrequestId"
    ]


def agent(event: dict[str, Any], code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        a for a in event["agent"] if a["type"]["coding"][0]["code"] == code
    ]
    assert len(found) == 1
    return found[0]
