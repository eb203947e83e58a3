"""The storage port of the record core: versioned resources, unit of work, history.

Every version of every resource is kept (§630f BGB: the original must stay visible); a delete is a
new version marked deleted. The SQL implementation lives in ``_sqlstore``; the contract tests in
``tests/fhir_server/test_store_contract.py`` run against SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_server.search.rows import IndexRows
from fhir_server.search.sql import Statement


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

    def select(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Rows of a read-only search statement, inside this transaction."""

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

    def select(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Rows of a read-only search statement (a snapshot that may be stale)."""

    def fetch(self, keys: Sequence[tuple[str, str]]) -> list[StoredVersion]:
        """Current, non-deleted versions of ``keys`` in their order; missing ones skipped."""

    def ping(self) -> None: ...

    def close(self) -> None: ...


# --- Subscriptions (https://hl7.org/fhir/R4/subscription.html) ---


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A committed version that the subscriptions have not been matched against yet."""

    seq: int
    type: str
    id: str
    version: int


@dataclass(frozen=True, slots=True)
class Notification:
    """A notification owed to one subscription: the version that triggered it (``id`` 0: new)."""

    subscription: str
    channel: str
    type: str
    resource_id: str
    version: int
    id: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where delivery to one subscription stands; kept across restarts and leader changes.
    ``subscription_version`` is the Subscription version it belongs to: a client's update resets it."""

    subscription: str
    subscription_version: int
    failures: int = 0
    next_attempt: int = 0
    last_error: str | None = None


class Lease(Protocol):
    """The right to dispatch notifications, held by one process per database at a time."""

    def alive(self) -> bool: ...

    def release(self) -> None: ...


class SubscriptionStore(Protocol):
    """Outbox, notifications and delivery state of the subscriptions (next to a Store)."""

    def lead(self) -> Lease | None:
        """The dispatcher lease if no other live process holds it, else None (never blocks)."""

    def subscriptions(self) -> list[StoredVersion]:
        """The current, non-deleted Subscription resources."""

    def outbox(self, limit: int) -> list[OutboxEntry]:
        """The oldest outbox entries (committed ones only, lowest ``seq`` first)."""

    def enqueue(self, matched: dict[int, list[Notification]], now: int) -> None:
        """In one transaction: deletes the outbox entries (keys: their ``seq``) and stores the
        notifications of those this call deleted (a concurrent dispatcher may have taken some)."""

    def due(self, subscription: str, channel: str, limit: int) -> list[Notification]:
        """The oldest pending notifications of one subscription, in order."""

    def pending(self) -> list[tuple[str, str]]:
        """The (subscription, channel) pairs that have pending notifications."""

    def acknowledge(self, ids: Collection[int]) -> None:
        """Deletes delivered notifications."""

    def discard(self, pairs: Collection[tuple[str, str]]) -> None:
        """Deletes all notifications of these (subscription, channel) pairs."""

    def prune(self, channel: str, before: int) -> None:
        """Deletes the notifications of ``channel`` created before ``before`` (epoch µs)."""

    def delivery_states(self) -> dict[str, DeliveryState]: ...

    def save_state(self, state: DeliveryState) -> None: ...

    def forget_states(self, subscriptions: Collection[str]) -> None: ...

    def last_notification_id(self) -> int:
        """The highest notification id so far (0 if none)."""

    def notifications_after(self, after: int, channel: str, limit: int) -> list[Notification]:
        """Notifications of ``channel`` with an id above ``after``, in id order. Ids grow in commit
        order (notifications are inserted one transaction at a time), so a cursor misses none."""
