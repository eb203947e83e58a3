"""The record core assembled: store, validator, search index and interactions (the public entry point)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import uuid_utils

from fhir_server import _http
from fhir_server._sqlstore import SqlStore, SqlSubscriptionStore
from fhir_server._time import Clock, system_clock
from fhir_server._validation import ResourceValidator
from fhir_server.context import Context, Settings
from fhir_server.criteria import CriteriaParser
from fhir_server.notifications import DeliverySettings, Dispatcher, WebSocketHub
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.resource_types import supported_types
from fhir_server.router import dispatch
from fhir_server.search.extract import Indexer
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.store import SubscriptionStore
from fhir_server.subscriptions import SubscriptionRules

__all__ = ["DeliverySettings", "RecordCore", "Settings"]


def _uuid() -> str:
    # Time-ordered (RFC 9562 version 7): new rows land at the end of every index on the id
    # instead of at random pages, so inserts stay fast as the database grows.
    return str(uuid_utils.uuid7())


class RecordCore:
    """A FHIR R4 server on one database; ``install`` mounts it on a FastAPI app at /fhir."""

    def __init__(self, ctx: Context, subscriptions: SubscriptionStore | None = None) -> None:
        self.ctx = ctx
        self.subscriptions = subscriptions
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
    ) -> RecordCore:
        store = SqlStore.open(database_url, pool_size=pool_size, migrate_schema=migrate)
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
        return cls(ctx, SqlSubscriptionStore(store))

    @staticmethod
    def migrate(database_url: str) -> None:
        """Creates or upgrades the schema (run once before starting several workers)."""
        SqlStore.open(database_url, pool_size=1).close()

    def with_settings(self, **changes: Any) -> RecordCore:
        settings = replace(self.ctx.settings, **changes)
        return RecordCore(replace(self.ctx, settings=settings), self.subscriptions)

    def install(self, app: Any) -> None:
        _http.install(app, self.ctx, websocket=self._hub)

    def start_notifications(self, settings: DeliverySettings | None = None) -> None:
        """Starts this process's subscription dispatcher; of all processes on one database, one
        dispatches at a time and another takes over when it dies (notifications.py)."""
        if self.subscriptions is None or self._dispatcher is not None:
            return
        self._dispatcher = Dispatcher(self.ctx, self.subscriptions, settings)
        self._dispatcher.start()

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
        self.ctx.store.close()
