"""The record core assembled: store, validator, search index and interactions (the public entry point)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import uuid_utils

from compliance.keyring import Keyring
from fhir_server import _http, fhir_json
from fhir_server._sqlstore import SqlAuditLog, SqlRewrap, SqlStore, SqlSubscriptionStore
from fhir_server._time import Clock, system_clock
from fhir_server._validation import ResourceValidator
from fhir_server.audit import AuditSystem
from fhir_server.context import Context, Settings
from fhir_server.criteria import CriteriaParser
from fhir_server.encryption import rewrap
from fhir_server.notifications import DeliverySettings, Dispatcher, WebSocketHub
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.resource_types import supported_types
from fhir_server.router import dispatch
from fhir_server.search.extract import Indexer
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.store import SubscriptionStore
from fhir_server.subscriptions import SubscriptionRules

__all__ = ["Authenticate", "DeliverySettings", "RecordCore", "Settings"]

Authenticate = _http.Authenticate


def _uuid() -> str:
    # Time-ordered (RFC 9562 version 7): new rows land at the end of every index on the id
    # instead of at random pages, so inserts stay fast as the database grows.
    return str(uuid_utils.uuid7())


class RecordCore:
    """A FHIR R4 server on one database; ``install`` mounts it on a FastAPI app at /fhir."""

    def __init__(
        self,
        ctx: Context,
        subscriptions: SubscriptionStore | None = None,
        audit: AuditSystem | None = None,
    ) -> None:
        self.ctx = ctx
        self.subscriptions = subscriptions
        self.audit = audit
        self._hub = WebSocketHub(ctx, subscriptions) if subscriptions is not None else None
        self._dispatcher: Dispatcher | None = None

    @classmethod
    def open(
        cls,
        database_url: str,
        *,
        settings: Settings | None = None,
        migrate: bool = True,
        clock: Clock = system_clock,
        new_id: Callable[[], str] = _uuid,
        pool_size: int = 10,
        version: str = "0",
        keyring: Keyring | None = None,
        audit: bool = False,
    ) -> RecordCore:
        """``keyring``: payloads encrypted and identifying index values stored as tokens
        (fhir_server/encryption.py, protection.py); None (tests, tools): both in plain text, and
        a database that holds encrypted data is refused. The app always passes one. ``audit``
        (needs the keyring): every request and change writes AuditEvents into the chained trail
        (fhir_server/audit.py); start it with ``start_audit``."""
        store = SqlStore.open(
            database_url, pool_size=pool_size, migrate_schema=migrate, keyring=keyring
        )
        registry = SearchParamRegistry.load()
        ctx = Context(
            store=store,
            registry=registry,
            validator=ResourceValidator(),
            indexer=Indexer(registry),
            criteria=CriteriaParser(registry),
            clock=clock,
            new_id=new_id,
            settings=settings or Settings(),
            version=version,
        )
        # Subscriptions are checked (and activated) where every write is validated.
        ctx = replace(ctx, validator=SubscriptionRules(ctx.validator, ctx))
        system = None
        if audit:
            if keyring is None:
                raise ValueError("the audit trail needs the master keys")
            system = AuditSystem.build(ctx, SqlAuditLog(store), keyring)
            ctx = system.ctx
        return cls(ctx, SqlSubscriptionStore(store), system)

    @staticmethod
    def migrate(database_url: str) -> None:
        """Creates or upgrades the schema (run once before starting several workers)."""
        SqlStore.open(database_url, pool_size=1).close()

    def rewrap(self, batch: int = 500) -> int:
        """Key rotation without downtime (encryption.rewrap): payloads and search tokens to the
        current master key version, ``batch`` rows per transaction; the number of rows changed."""
        return rewrap(self._rewrap_store(), self.ctx.indexer.extract, fhir_json.loads, batch)

    def key_versions_in_use(self) -> set[int]:
        """Master key versions some payload or search token is still under; a version of the
        key file not among them can be retired (after ``rewrap``)."""
        store = self.ctx.store
        # The audit chain's HMACs are under a master key version too: retiring it would make
        # the trail unverifiable.
        audit = SqlAuditLog(store).key_versions() if isinstance(store, SqlStore) else set()
        return self._rewrap_store().versions_in_use() | audit

    def _rewrap_store(self) -> SqlRewrap:
        store = self.ctx.store
        if not isinstance(store, SqlStore):
            raise TypeError("key rotation needs the SQL store")
        return SqlRewrap(store)

    def with_settings(self, **changes: Any) -> RecordCore:
        settings = replace(self.ctx.settings, **changes)
        return RecordCore(replace(self.ctx, settings=settings), self.subscriptions, self.audit)

    def install(self, app: Any, authenticate: _http.Authenticate | None = None) -> None:
        """Mounts the FHIR API; with ``authenticate`` every request needs a bearer token."""
        _http.install(app, self.ctx, websocket=self._hub, authenticate=authenticate)

    def start_notifications(self, settings: DeliverySettings | None = None) -> None:
        """Starts this process's subscription dispatcher; of all processes on one database, one
        dispatches at a time and another takes over when it dies (notifications.py)."""
        if self.subscriptions is None or self._dispatcher is not None:
            return
        self._dispatcher = Dispatcher(self.ctx, self.subscriptions, settings)
        self._dispatcher.start()

    def start_audit(self) -> None:
        """Starts this process's writer of read events and its chainer (one chains per
        database at a time)."""
        if self.audit is not None:
            self.audit.start()

    def security_event(self, kind: str, details: Mapping[str, str]) -> None:
        """Records a security event of identity or authorisation (compliance/auth_events.py) in
        the audit trail; only queued, so the login or token request waits no longer. Without an
        audit trail (tests, tools) nothing is recorded."""
        if self.audit is not None:
            self.audit.security(kind, details)

    def stop_audit(self) -> None:
        """Writes the queued events and lets the chainer chain them and sign the head."""
        if self.audit is not None:
            self.audit.stop()

    def stop_notifications(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()
            self._dispatcher = None

    def handle(self, request: FhirRequest) -> FhirResponse:
        """In-process access to the FHIR API (the narrow port for co-located components)."""
        return dispatch(request, self.ctx)

    def warm_up(self) -> None:
        """Loads what the first requests would otherwise load (validation models)."""
        self.ctx.validator.warm_up(supported_types())

    def ready(self) -> None:
        """Raises if the database cannot be reached."""
        self.ctx.store.ping()

    def close(self) -> None:
        self.stop_notifications()
        self.stop_audit()
        self.ctx.store.close()
