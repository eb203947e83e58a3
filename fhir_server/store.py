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

from compliance.audit_chain import ChainHead, SignedHead
from fhir_server.search.rows import IndexRows
from fhir_server.search.sql import Statement

__all__ = ["GrantRow", "Statement"]


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

    def replace_grants(self, patient: str, rows: Sequence[GrantRow]) -> None:
        """Replaces the patient's recomputable access grants (all but break-the-glass)."""

    def add_grant(self, row: GrantRow) -> None:
        """Adds one grant (break-the-glass)."""


@dataclass(frozen=True, slots=True)
class GrantRow:
    """``grantee`` (``Organization/…`` or ``Practitioner/…``) may see ``patient``'s resources of
    ``res_class`` (a type or ``*``) from ``valid_from`` until ``valid_until`` (epoch µs, None:
    open), because of ``basis`` (managing, careteam, referral, appointment, consent, btg…)
    recorded in ``source`` (the resource it comes from, or the emergency access)."""

    patient: str
    grantee: str
    res_class: str
    valid_from: int
    valid_until: int | None
    basis: str
    source: str


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
    """The right to do a job one process per database does at a time (dispatching
    notifications, chaining the audit trail)."""

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


# --- Audit trail (IHE BALP AuditEvents in a chained-HMAC log: fhir_server/audit*.py) ---


@dataclass(frozen=True, slots=True)
class PendingAudit:
    """An AuditEvent waiting for the chainer; ``payload`` is sealed JSON (audit_events.seal)."""

    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AuditLink:
    """One link of the chain: its position, the AuditEvent resource it covers, the HMAC key
    version and ``h_seq = HMAC(k, h_{seq-1} || JCS(event))`` (compliance/audit_chain.py)."""

    seq: int
    event_id: str
    key_version: int
    hash: bytes


class AuditLog(Protocol):
    """Pending AuditEvents, the chain over the stored ones and its signed heads (next to a
    Store, which holds the AuditEvent resources themselves)."""

    def stage(self, uow: UnitOfWork, payloads: Sequence[bytes], now: int) -> None:
        """Adds pending events inside a write's transaction: rolled back with the write."""

    def submit(self, payloads: Sequence[bytes], now: int) -> None:
        """Adds pending events in a transaction of their own (reads, searches, failures)."""

    def pending(self, limit: int) -> list[PendingAudit]:
        """The oldest committed pending events, lowest id first."""

    def head(self) -> ChainHead:
        """The last link's (seq, hash); the genesis head when the chain is empty."""

    def append(
        self,
        uow: UnitOfWork,
        head: ChainHead,
        links: Sequence[AuditLink],
        done: Collection[int],
        signed: SignedHead | None,
    ) -> None:
        """In the chainer's unit of work: adds ``links`` after ``head``, deletes the pending
        events ``done`` and stores ``signed``. Raises VersionConflict if the chain no longer
        ends at ``head`` or another chainer took some of ``done`` (the caller rolls back)."""

    def links(self, after: int, limit: int) -> list[AuditLink]:
        """Links with ``seq > after`` in ``seq`` order, at most ``limit`` (keyset paging)."""

    def signed_heads(self) -> list[SignedHead]:
        """All stored signed heads, oldest first."""

    def key_versions(self) -> set[int]:
        """The master key versions the chain's links were made with: verification needs every
        one of them, so they must stay in the key file (never retired by key rotation)."""

    def lead(self) -> Lease | None:
        """The chainer lease if no other live process holds it, else None (never blocks)."""


# --- Retention (§630f BGB, GDPR Art. 17/18): legal holds and the expunge (fhir_server/retention.py) ---


@dataclass(frozen=True, slots=True)
class PatientActivity:
    """What the index shows of one patient's treatment, in epoch µs. ``treatment_end``: the
    highest end of a treatment-evidence date (``DATE_MAX``: an open period; None: none);
    ``last_recorded``: the last write to the Patient or to a live member of its compartment."""

    patient: str
    treatment_end: int | None
    last_recorded: int


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """A legal hold on one patient's record: active while ``released_at`` is None."""

    id: int
    patient: str
    reason: str
    placed_by: str
    placed_at: int
    released_by: str | None = None
    released_at: int | None = None
    release_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ExpungePlan:
    """One patient's record to expunge. ``links``: the (type, parameter) pairs that put a
    resource into the patient's compartment (the types kept, such as AuditEvent, left out);
    ``evidence``: the (type, date parameter) pairs of treatment evidence; ``activity``: what the
    patient was assessed on, checked again under the lock; ``extra``: soft-deleted members
    (their index rows are gone, so the caller found them in their last live version)."""

    patient: str
    links: tuple[tuple[str, str], ...]
    evidence: tuple[tuple[str, str], ...]
    activity: PatientActivity
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Expunged:
    """What one expunge removed: resources per type, their versions, rows per table, and the
    live members kept because they also belong to another patient still on record."""

    patient: str
    resources: dict[str, int]
    versions: int
    rows: dict[str, int]
    kept: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """The bookkeeping of one run of the retention job (no patient ids)."""

    started: int
    finished: int
    dry_run: bool
    patients: int
    due: int
    held: int
    expunged: int
    skipped: int
    run_by: str
    id: int = 0


class RecordChanged(Exception):
    """The patient's record changed since it was assessed (or is gone): not expunged."""


class UnderLegalHold(Exception):
    """A legal hold was placed on the patient meanwhile: not expunged."""


class RetentionStore(Protocol):
    """Legal holds, what the index shows of each patient's treatment, and the hard delete: the
    only one (a FHIR delete is a new version without content)."""

    def activity(
        self,
        links: Sequence[tuple[str, str]],
        evidence: Sequence[tuple[str, str]],
        patient: str | None = None,
    ) -> list[PatientActivity]:
        """One entry per Patient resource (deleted ones too), or only ``patient``."""

    def holds(self, patient: str | None = None, *, released: bool = False) -> list[HoldRecord]:
        """Active holds (all of them with ``released``), of one patient or of all."""

    def place_hold(self, patient: str, reason: str, by: str, at: int) -> HoldRecord: ...

    def release_holds(self, patient: str, by: str, at: int, reason: str) -> list[HoldRecord]:
        """Releases the patient's active holds (kept, with who/when/why released)."""

    def expunge(self, plan: ExpungePlan) -> Expunged:
        """In one transaction: every version of every member of the patient's compartment and
        of the Patient, their index rows, subscription rows, grants and holds. Raises
        UnderLegalHold or RecordChanged (nothing deleted) when the plan no longer holds."""

    def dangling_references(self, limit: int) -> list[tuple[str, str, str, str]]:
        """(type, id, target type, target id) of references to resources that do not exist."""

    def record_run(self, run: RetentionRun) -> None: ...

    def runs(self, limit: int) -> list[RetentionRun]:
        """The latest runs, newest first."""
