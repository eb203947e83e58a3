"""The audit trail: every access and every change leaves IHE BALP AuditEvents (one per patient).

https://profiles.ihe.net/ITI/BALP/ (events: audit_events.py). Two hooks feed it:

- the write path (``Writes.finish``, before the commit) hands over the versions a unit of work
  wrote; what their events need (who, which version, whose data: a few µs per version, the
  chainer builds the BALP events from it) is sealed and inserted into ``audit_pending`` in the
  same transaction, so a rolled-back write leaves no event and a committed one always has them;
- the router runs each request through :meth:`AuditTrail.audited`; once the answer is known,
  reads, searches, failures and refusals are queued in process — as are the security events of
  identity and authorisation (:meth:`AuditTrail.security`: logins, logouts, tokens, account and
  client changes, which the composition root hands over) — and a background writer inserts
  them in small batches (group commit every ``flush_interval`` or ``batch`` events), so a read
  never waits for a database write. The price: on a hard crash (SIGKILL, power loss) the read
  events of at most the last ``flush_interval`` (plus the one insert under way) are lost; a
  clean shutdown (:meth:`close`) writes them all. When the writer falls ``queue_limit`` events
  behind (database down), requests wait instead of going unrecorded.

The chainer (audit_chainer.py) later moves pending events into the tamper-evident chain and
stores each as an AuditEvent resource. Requests without a principal (in-process callers) are
recorded as the system. The access layer calls :func:`note_refusal` when it answers a refused
access like a missing resource, so the failure event says what really happened, and
:func:`note_break_glass` when data is reached only through an emergency grant (or hands over the
caller's emergency-only patients, ``note_emergency_grants``: the writer labels an answer that
holds their data).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from compliance import balp
from compliance.balp import Failure, Interaction
from compliance.keyring import Keyring
from compliance.principal import Principal
from compliance.scopes import parse_scopes
from fhir_server._time import Clock
from fhir_server.audit_chainer import Chainer, ChainSettings
from fhir_server.audit_events import DEFAULT_SERVER, EventBuilder, Fetch, internal_error
from fhir_server.audit_keys import AuditKeys
from fhir_server.audit_patients import PatientLinks
from fhir_server.audit_scope import (
    SCOPE,
    EmergencyGrants,
    Refusal,
    Scope,
    note_break_glass,
    note_refusal,
)
from fhir_server.audit_targets import BUNDLES, CHANGES, Target, classify
from fhir_server.context import Context
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.store import AuditLog, NewVersion, StoredVersion, StoreUnavailable, UnitOfWork

__all__ = [
    "AuditSettings",
    "AuditSystem",
    "AuditTrail",
    "ChainSettings",
    "note_break_glass",
    "note_refusal",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Timing and sizes of the in-process writer of read events (seconds unless named)."""

    flush_interval: float = 0.1  # group commit: also the loss window of read events on a crash
    batch: int = 500  # events per insert at most
    queue_limit: int = 20_000  # requests wait when the writer is this far behind
    retry: float = 1.0  # after a failed insert (database unavailable)


@dataclass(frozen=True, slots=True)
class _Answered:
    target: Target
    request: FhirRequest
    response: FhirResponse
    principal: Principal | None
    recorded: int
    refusal: Refusal | None
    emergency: str | None
    grants: EmergencyGrants | None


@dataclass(frozen=True, slots=True)
class _Security:
    """A security event of identity or authorisation (compliance/auth_events.py)."""

    kind: str
    details: Mapping[str, str]
    recorded: int


@dataclass(frozen=True, slots=True)
class _Marker:
    """Put into the queue by ``flush``/``close``: the writer writes at once and signals."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False


_Event = _Answered | _Security
_Item = _Event | _Marker
_GIVE_UP: Final = 5  # failed inserts in a row that are not the database being down
_SKIP_ON_SUCCESS: Final = BUNDLES  # a bundle's entries are recorded one by one


class AuditTrail:
    """The record core's audit hooks (``Context.audit``) and the writer of read events."""

    def __init__(
        self,
        log: AuditLog,
        keys: AuditKeys,
        registry: SearchParamRegistry,
        clock: Clock,
        *,
        server_id: str = DEFAULT_SERVER,
        settings: AuditSettings | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self.log = log
        self.keys = keys
        self.events = EventBuilder(PatientLinks(registry), server_id, fetch)
        self._clock = clock
        self._settings = settings or AuditSettings()
        self._queue: queue.Queue[_Item] = queue.Queue(self._settings.queue_limit)
        self._write_lock = threading.Lock()  # one writer at a time keeps the queue's order
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- the router hook -------------------------------------------------------------------

    def audited(self, request: FhirRequest, run: Callable[[], FhirResponse]) -> FhirResponse:
        """Runs ``run`` (the interaction) as the current request, then records its answer."""
        target = classify(request.method, request.path)
        if target is None:
            return run()
        scope = Scope(request, request.principal)
        token = SCOPE.set(scope)
        try:
            response = run()
        except BaseException:
            self._answered(target, scope, internal_error())  # the HTTP layer answers 500
            raise
        finally:
            SCOPE.reset(token)
        if response.status < 400 and (
            target.interaction in _SKIP_ON_SUCCESS
            or (target.interaction in CHANGES and scope.staged)
        ):
            return response  # recorded with the transaction (or entry by entry)
        self._answered(target, scope, response)
        return response

    def record(self, request: FhirRequest, response: FhirResponse) -> None:
        """Records a request answered outside the router."""
        target = classify(request.method, request.path)
        if target is not None:
            self._answered(target, Scope(request, request.principal), response)

    def unauthenticated(
        self, request: FhirRequest, response: FhirResponse, address: str | None
    ) -> None:
        """Records a request refused for want of a valid token (401): the caller is unknown,
        not the system; ``address`` is the TCP peer."""
        target = classify(request.method, request.path)
        if target is not None:
            caller = Principal("anonymous", "anonymous", parse_scopes(""), address=address)
            self._answered(target, Scope(request, caller), response)

    def _answered(self, target: Target, scope: Scope, response: FhirResponse) -> None:
        item = _Answered(
            target,
            scope.request,
            response,
            scope.principal,
            self._clock(),
            scope.refusal,
            scope.emergency,
            scope.emergency_grants,
        )
        self._enqueue(item)

    def security(self, kind: str, details: Mapping[str, str]) -> None:
        """Records a security event (the sink of compliance/auth_events.py): only queued, the
        caller waits no longer than a read does."""
        self._enqueue(_Security(kind, dict(details), self._clock()))

    def _enqueue(self, item: _Event) -> None:
        if self._thread is not None:
            self._queue.put(item)  # waits only when the writer is far behind
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # no writer thread (tests, tools): write inline
            self.flush()
            self._queue.put_nowait(item)

    # -- the write-path hook ---------------------------------------------------------------

    def changes(
        self, uow: UnitOfWork, written: list[tuple[NewVersion, StoredVersion | None]]
    ) -> None:
        """Stages the change events of a unit of work in its own transaction."""
        if not written:
            return
        scope = SCOPE.get()
        principal = scope.principal if scope is not None else None
        request = scope.request if scope is not None else None
        emergency = scope.emergency if scope is not None else None
        grants = scope.emergency_grants if scope is not None else None
        facts = self.events.change_facts(written, principal, request, emergency, grants)
        payloads = [self.keys.seal(orjson.dumps({"changes": f})) for f in facts]
        self.log.stage(uow, payloads, self._clock())
        if scope is not None:
            scope.staged += len(written)

    # -- the writer of read events ---------------------------------------------------------

    def start(self) -> None:
        """Starts the background writer (one per process)."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 30.0) -> None:
        """Returns once every event queued before the call is in ``audit_pending``."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._write_queued()
            return
        marker = _Marker()
        self._queue.put(marker)
        if not marker.done.wait(timeout):
            raise TimeoutError("the audit writer did not catch up")

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued and stops the writer."""
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._stopping.set()
            self._queue.put(_Marker(stop=True))
            thread.join(timeout)
        self._write_queued()

    def _run(self) -> None:
        while True:
            batch = self._collect()
            try:
                with self._write_lock:
                    self._write([item for item in batch if not isinstance(item, _Marker)])
            except Exception:  # a bug must not stop the writer: requests would wait for ever
                log.exception("writing audit events failed")
            finally:
                for item in batch:
                    if isinstance(item, _Marker):
                        item.done.set()
            if any(isinstance(item, _Marker) and item.stop for item in batch):
                return

    def _collect(self) -> list[_Item]:
        """The first waiting item and what follows within ``flush_interval`` (group commit)."""
        batch = [self._queue.get()]
        deadline = time.monotonic() + self._settings.flush_interval
        while len(batch) < self._settings.batch and not isinstance(batch[-1], _Marker):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _write_queued(self) -> None:
        with self._write_lock:
            items: list[_Event] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Marker):
                    item.done.set()
                else:
                    items.append(item)
            for start in range(0, len(items), self._settings.batch):
                self._write(items[start : start + self._settings.batch])

    def _write(self, items: list[_Event]) -> None:
        if not items:
            return
        # One row per request: its events (one per patient) travel together.
        payloads = [self.keys.seal(orjson.dumps({"events": self._build(i)})) for i in items]
        failures = 0
        while True:
            try:
                self.log.submit(payloads, self._clock())
                return
            except StoreUnavailable:  # the database is down: wait for it (requests wait too)
                log.warning("database unavailable: audit events wait", exc_info=True)
            except Exception:
                failures += 1
                log.exception("storing audit events failed (%d)", failures)
            if self._stopping.is_set() or failures >= _GIVE_UP:
                log.error("%d audit events could not be stored and are lost", len(payloads))
                return
            time.sleep(self._settings.retry)

    def _build(self, item: _Event) -> list[dict[str, Any]]:
        try:
            if isinstance(item, _Security):
                return [self.events.security(item.kind, item.details, item.recorded)]
            return self.events.request(
                item.target,
                item.request,
                item.response,
                item.principal,
                item.recorded,
                item.refusal,
                item.emergency,
                item.grants,
            )
        except Exception as exc:  # a bug must not lose the fact that the event happened
            log.exception("building the AuditEvent failed; a minimal one is recorded")
            if isinstance(item, _Security):
                noted = {"error": f"audit event incomplete ({type(exc).__name__})"}
                return [self.events.security(item.kind, noted, item.recorded)]
            return [self._minimal(item, exc)]

    def _minimal(self, item: _Answered, exc: Exception) -> dict[str, Any]:
        ctx = self.events.request_context(item.principal, item.request, item.recorded)
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "exception",
                    "diagnostics": f"audit event incomplete ({type(exc).__name__})",
                }
            ],
        }
        raw = f"{item.request.method} {item.request.path}".encode()
        failure = Failure("12" if item.response.status >= 500 else "4", outcome)
        event = balp.query(ctx, raw, interaction=Interaction.OPERATION, failure=failure)
        if item.response.status < 400:
            event["outcome"] = "0"
        return event


@dataclass(frozen=True, slots=True)
class AuditSystem:
    """The audit trail of one process wired into a Context: the hooks, the writer of read
    events and the chainer (one of the processes on a database chains at a time)."""

    ctx: Context
    trail: AuditTrail
    chainer: Chainer

    @classmethod
    def build(
        cls,
        ctx: Context,
        log: AuditLog,
        keyring: Keyring,
        *,
        server_id: str = DEFAULT_SERVER,
        settings: AuditSettings | None = None,
        chain_settings: ChainSettings | None = None,
    ) -> AuditSystem:
        """``ctx`` with the audit hooks set, and the parts to start and stop."""
        keys = AuditKeys(keyring)
        trail = AuditTrail(
            log,
            keys,
            ctx.registry,
            ctx.clock,
            server_id=server_id,
            settings=settings,
            fetch=ctx.store.fetch,
        )
        chainer = Chainer(ctx, log, keys, trail.events, chain_settings)
        return cls(replace(ctx, audit=trail), trail, chainer)

    def security(self, kind: str, details: Mapping[str, str]) -> None:
        """Records a security event of identity or authorisation (queued only)."""
        self.trail.security(kind, details)

    def start(self) -> None:
        self.trail.start()
        self.chainer.start()

    def stop(self) -> None:
        """Writes the queued read events, then lets the chainer chain them and sign the head."""
        self.trail.close()
        self.chainer.stop()
