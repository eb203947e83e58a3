"""The storage port of the record core: versioned resources, unit of work, history.

Every version of every resource is kept (§630f BGB: the original must stay visible); a delete is a
new version marked deleted. The SQL implementation lives in ``_sqlstore``; the contract tests in
``tests/fhir_server/test_store_contract.py`` run against SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from fhir_server.criteria import Criterion
from fhir_server.search.rows import IndexRows


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One stored version; ``content`` is the resource's JSON exactly as served (None when deleted)."""

    type: str
    id: str
    version: int
    last_updated: int
    deleted: bool
    method: str
    content: bytes | None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to write. ``prior`` is the version it replaces (None: the resource is new)."""

    type: str
    id: str
    version: int
    last_updated: int
    method: str
    content: bytes | None
    index: IndexRows = field(default_factory=IndexRows.empty)
    prior: int | None = None

    @property
    def deleted(self) -> bool:
        return self.content is None


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """History at system (type None), type (id None) or instance level, newest first."""

    type: str | None = None
    id: str | None = None
    since: int | None = None
    at: int | None = None
    count: int = 50
    before_seq: int | None = None


class VersionConflict(Exception):
    """The resource changed (or came into being) after it was read: another writer won."""


class StaleGuess(Exception):
    """A conditional match guessed before the unit of work differs inside it: redo the work."""


class StoreUnavailable(Exception):
    """The database cannot be reached or is overloaded; the request may be retried."""


class UnitOfWork(Protocol):
    """The writes and reads of one database transaction; all or nothing."""

    def current(self, type: str, id: str) -> StoredVersion | None:
        """The current version (also when deleted), locked against concurrent writers."""

    def put(self, version: NewVersion) -> None:
        """Writes a version; raises VersionConflict if ``prior`` no longer is the current one."""

    def existing(self, keys: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (type, id) pairs among ``keys`` that exist and are not deleted."""

    def match(self, type: str, criteria: list[Criterion], limit: int) -> list[str]:
        """Ids of current resources of ``type`` that match all criteria (at most ``limit``)."""

    def lock(self, key: str) -> None:
        """Serialises this transaction with others that lock the same key (conditional create)."""


class Store(Protocol):
    """Versioned resource storage."""

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]: ...

    def write_slot(self) -> AbstractContextManager[None]:
        """Held around a whole write request (checks included); serialises where the database
        has a single writer."""

    def read(self, type: str, id: str) -> StoredVersion | None: ...

    def vread(self, type: str, id: str, version: int) -> StoredVersion | None: ...

    def history(self, query: HistoryQuery) -> list[StoredVersion]: ...

    def search(
        self, type: str, criteria: list[Criterion], count: int, offset: int
    ) -> Iterator[StoredVersion]: ...

    def count(self, type: str, criteria: list[Criterion]) -> int: ...

    def match(self, type: str, criteria: list[Criterion], limit: int) -> list[str]:
        """Like UnitOfWork.match, outside any unit of work (a snapshot that may be stale)."""

    def ping(self) -> None: ...

    def close(self) -> None: ...
