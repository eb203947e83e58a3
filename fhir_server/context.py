"""The components an interaction needs, injected once by the app factory (no module singletons)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fhir_server._time import Clock
from fhir_server.criteria import CriteriaParser
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.rows import IndexRows
from fhir_server.store import NewVersion, Store, StoredVersion, UnitOfWork

if TYPE_CHECKING:
    from fhir_server.request import FhirRequest, FhirResponse


class Validator(Protocol):
    def validate(self, resource: dict[str, Any]) -> None: ...

    def warm_up(self, types: frozenset[str]) -> None: ...

    def elements(self, rtype: str) -> tuple[frozenset[str], frozenset[str]]: ...


class Indexer(Protocol):
    def extract(self, resource: dict[str, Any]) -> IndexRows: ...


@dataclass(frozen=True, slots=True)
class Settings:
    """Behaviour switches of the record core."""

    max_body_bytes: int = 32 * 1024 * 1024
    # Off only for imports of foreign data whose references point outside this server.
    enforce_references: bool = True
    default_count: int = 50
    max_count: int = 1000
    max_bundle_entries: int = 20_000
    # Subscription rest-hook endpoints on loopback, private or link-local addresses (SSRF into
    # the server's own network): refused unless allowed (tests, a subscriber on the same host).
    allow_private_endpoints: bool = False


class Audit(Protocol):
    """The audit trail's hooks (fhir_server/audit.py): the router runs every request through
    ``audited``; the write path hands each unit of work's versions to ``changes`` before commit;
    the HTTP layer reports requests refused for want of a valid token to ``unauthenticated``."""

    def audited(self, request: FhirRequest, run: Callable[[], FhirResponse]) -> FhirResponse: ...

    def changes(
        self, uow: UnitOfWork, written: list[tuple[NewVersion, StoredVersion | None]]
    ) -> None: ...

    def unauthenticated(
        self, request: FhirRequest, response: FhirResponse, address: str | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Context:
    store: Store
    registry: SearchParamRegistry
    validator: Validator
    indexer: Indexer
    criteria: CriteriaParser
    clock: Clock
    new_id: Callable[[], str]
    settings: Settings
    version: str = "0"
    audit: Audit | None = None  # None: nothing is audited (tools, the audit chainer)
