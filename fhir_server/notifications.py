"""Delivery of subscription notifications (https://hl7.org/fhir/R4/subscription.html#channels).

Every written version gets an outbox row in its own transaction (``_sqlstore``): a rolled-back write
never notifies and a committed one is never lost. One :class:`Dispatcher` per database works at a
time (a PostgreSQL advisory lock or a file lock next to the SQLite file; when its process dies,
another worker's dispatcher takes over within ``lead_retry``). It matches a batch of outbox rows
against the live subscriptions (``search_type.matching_ids``), and in one transaction deletes the
rows and stores a notification per subscription and matching version. Then it delivers:

- rest-hook: one request per notification, in order, one subscription at a time: without payload
  ``POST [endpoint]`` without body; with payload the endpoint is a FHIR base and the version that
  triggered the notification is sent as ``PUT [endpoint]/[type]/[id]`` (R4 SubscriptionChannelType
  rest-hook). A notification is deleted once answered 2xx. A failure waits ``retry_base``,
  doubled per failure in a row up to ``retry_max``; after ``error_after`` failures in a row the
  Subscription gets status error and Subscription.error; the next success makes it active again.
- websocket: the client opens ``/fhir/ws``, sends ``bind <id>`` and gets ``bound <id>``, then
  ``ping <id>`` per notification. Every worker polls the notification table for the clients bound to
  it (:class:`WebSocketHub`); websocket notifications are deleted after ``websocket_retention``.

Guarantees: at least once (a notification is deleted only after delivery; a restart or a new
leader delivers again what was not acknowledged) and in order per resource (versions of a resource
commit in order, are matched in outbox order and delivered in notification order). Criteria are
applied to the resource as it is when matched, normally well under a second after the write:
a version superseded by then notifies if the newer one matches (R4: no notification on delete).
Only resources the Subscription's owner may read notify (subscription_owner), and a rest-hook
endpoint on a private address is not served unless the settings allow it (status error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import httpx

from fhir_server import fhir_json
from fhir_server.access import READ, Guard
from fhir_server.context import Context
from fhir_server.errors import FhirError
from fhir_server.leadership import lead_until_stopped
from fhir_server.request import FHIR_JSON
from fhir_server.search_type import matching_ids
from fhir_server.store import (
    DeliveryState,
    Lease,
    Notification,
    OutboxEntry,
    Store,
    StoreUnavailable,
    SubscriptionStore,
    VersionConflict,
)
from fhir_server.subscriptions import Subscription, parse, private_endpoint
from fhir_server.writes import ID, Writes

log = logging.getLogger(__name__)
_MATCH_CHUNK = 500
_DELIVERY_FAILED = "Delivery failed"  # how Subscription.error starts when delivery set it


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Timing and sizes of the dispatcher (seconds unless named otherwise)."""

    poll_interval: float = 0.2  # between rounds when there is nothing to do
    lead_retry: float = 1.0  # how often a waiting process tries to take over
    batch: int = 500  # outbox rows matched per transaction
    per_round: int = 50  # notifications sent to one subscription per round
    retry_base: float = 2.0
    retry_max: float = 600.0
    error_after: int = 6  # failures in a row until status error
    timeout: float = 10.0  # per HTTP request
    concurrency: int = 4  # subscriptions delivered to in parallel
    websocket_poll: float = 0.25
    websocket_retention: float = 300.0
    housekeeping: float = 5.0  # dropping notifications of subscriptions turned off or deleted

    def backoff(self, failures: int) -> int:
        """µs to wait after the n-th failure in a row: base, 2·base, 4·base … up to max."""
        seconds = min(self.retry_base * 2 ** min(failures - 1, 40), self.retry_max)
        return int(seconds * 1_000_000)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One delivery round of one subscription: the notifications delivered, then the failure
    that stopped it (None: all delivered)."""

    ids: tuple[int, ...]
    error: str | None


class Dispatcher:
    """Matches the outbox and delivers rest-hook notifications while this process holds the lease.

    ``start`` runs it on a thread; tests drive it with ``open``/``step``/``close`` instead."""

    def __init__(
        self,
        ctx: Context,
        store: SubscriptionStore,
        settings: DeliverySettings | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._ctx = ctx
        self._store = store
        self._settings = settings or DeliverySettings()
        self._transport = transport
        self._states: dict[str, DeliveryState] = {}
        self._jobs: dict[str, Future[Delivered]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None
        self._stop = threading.Event()
        # Set when a delivery finishes (or on stop): the next round starts without waiting.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_housekeeping = -float("inf")

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="subscription-dispatcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops; deliveries under way are abandoned (and made again by the next dispatcher)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        lead_until_stopped(
            self._store.lead, self._lead, self._stop, self._settings.lead_retry, "dispatcher", log
        )

    def _lead(self, lease: Lease) -> None:
        log.info("this process dispatches the subscription notifications")
        self.open()
        try:
            while not self._stop.is_set() and lease.alive():
                busy = False
                self._wake.clear()  # before the round: a delivery ending in it wakes the next
                try:
                    busy = self.step()
                except StoreUnavailable:
                    log.warning("database unavailable: notifications wait", exc_info=True)
                    self._stop.wait(self._settings.lead_retry)
                except Exception:  # a bug must not end delivery for good: log it, go on
                    log.exception("dispatching notifications failed")
                    self._stop.wait(self._settings.lead_retry)
                if not busy:
                    self._wake.wait(self._settings.poll_interval)
        finally:
            self.close()

    def open(self) -> None:
        self._states = self._store.delivery_states()
        self._executor = ThreadPoolExecutor(
            self._settings.concurrency, thread_name_prefix="rest-hook"
        )
        self._http = httpx.Client(timeout=self._settings.timeout, transport=self._transport)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.close()
        self._jobs.clear()

    def step(self, *, wait: bool = False) -> bool:
        """One round: match a batch of the outbox, record finished deliveries, start due ones.
        True if the outbox holds more (go again at once). ``wait``: deliveries finish in it."""
        subs = self._subscriptions()
        busy = self._match(subs)
        self._collect(subs, block=False)
        self._schedule(subs)
        if wait:
            self._collect(subs, block=True)
        self._housekeeping(subs, force=wait)
        return busy

    def _subscriptions(self) -> dict[str, Subscription]:
        subs = {}
        for stored in self._store.subscriptions():
            sub = parse(stored)
            if sub is None:
                continue
            if sub.live and sub.end is not None and sub.end <= self._ctx.clock():
                self._set_status(sub, "off", None)  # Subscription.end has passed
                continue
            if sub.live and self._forbidden_endpoint(sub):
                message = f"Endpoint {sub.endpoint} is on a private network: not served."
                if sub.error != message:
                    self._set_status(sub, "error", message)
                continue
            subs[sub.id] = sub
        return subs

    def _match(self, subs: dict[str, Subscription]) -> bool:
        entries = self._store.outbox(self._settings.batch)
        if not entries:
            return False
        by_type: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            by_type.setdefault(entry.type, []).append(entry)
        matched: dict[int, list[Notification]] = {e.seq: [] for e in entries}
        for sub in subs.values():
            candidates = by_type.get(sub.type)
            if not sub.live or not candidates:
                continue
            hits = self._matching(sub, {e.id for e in candidates})
            for e in candidates:
                if e.id in hits:
                    matched[e.seq].append(
                        Notification(sub.id, sub.channel, e.type, e.id, e.version)
                    )
        self._store.enqueue(matched, self._ctx.clock())
        return len(entries) >= self._settings.batch

    def _matching(self, sub: Subscription, ids: set[str]) -> set[str]:
        ordered = sorted(ids)
        hits: set[str] = set()
        try:
            for start in range(0, len(ordered), _MATCH_CHUNK):
                chunk = ordered[start : start + _MATCH_CHUNK]
                hits |= matching_ids(self._ctx, sub.type, sub.query, chunk)
            if hits and sub.owner.principal is not None:
                # Only what the owner may read, with the grants as they are now.
                hits = Guard(self._ctx, sub.owner.principal).visible(sub.type, hits, READ)
        except FhirError as error:
            # Accepted when written, but no longer a search this server runs (an upgrade).
            message = f"Subscription.criteria cannot be evaluated: {error.diagnostics}"
            if sub.error != message:
                self._set_status(sub, "error", message)
            return set()
        return hits

    def _forbidden_endpoint(self, sub: Subscription) -> bool:
        """A rest-hook endpoint the settings no longer allow (accepted under other settings)."""
        if sub.channel != "rest-hook" or sub.endpoint is None:
            return False
        return not self._ctx.settings.allow_private_endpoints and private_endpoint(sub.endpoint)

    def _schedule(self, subs: dict[str, Subscription]) -> None:
        assert self._executor is not None and self._http is not None, "open() first"
        for sub in subs.values():
            if sub.channel != "rest-hook" or not sub.live or sub.id in self._jobs:
                continue
            state = self._state(sub)
            if state.next_attempt and state.next_attempt > self._ctx.clock():
                continue
            notes = self._store.due(sub.id, "rest-hook", self._settings.per_round)
            if notes:
                job = self._executor.submit(deliver, self._http, self._ctx.store, sub, notes)
                job.add_done_callback(lambda _: self._wake.set())
                self._jobs[sub.id] = job

    def _collect(self, subs: dict[str, Subscription], *, block: bool) -> None:
        for sub_id, job in list(self._jobs.items()):
            if block or job.done():
                del self._jobs[sub_id]
                self._record(subs.get(sub_id), job.result())

    def _record(self, sub: Subscription | None, result: Delivered) -> None:
        if result.ids:
            self._store.acknowledge(result.ids)
        if sub is None:
            return
        state = self._state(sub)
        if result.error is None:
            if state.failures:
                self._save(replace(state, failures=0, next_attempt=0, last_error=None))
            if sub.status == "error" and (sub.error or "").startswith(_DELIVERY_FAILED):
                self._set_status(sub, "active", None)
            return
        # Consecutive failures: a round that delivered something before failing starts anew.
        failures = 1 if result.ids else state.failures + 1
        next_attempt = self._ctx.clock() + self._settings.backoff(failures)
        self._save(
            replace(state, failures=failures, next_attempt=next_attempt, last_error=result.error)
        )
        if failures >= self._settings.error_after and sub.status == "active":
            message = f"{_DELIVERY_FAILED} {failures} times in a row; the last time: {result.error}"
            self._set_status(sub, "error", message)

    def _state(self, sub: Subscription) -> DeliveryState:
        state = self._states.get(sub.id)
        if state is None or state.subscription_version < sub.version:
            # New, or changed by a client (a new endpoint, say): delivery starts afresh.
            state = DeliveryState(sub.id, sub.version)
            self._save(state)
        return state

    def _save(self, state: DeliveryState) -> None:
        self._store.save_state(state)
        self._states[state.subscription] = state

    def _set_status(self, sub: Subscription, status: str, error: str | None) -> None:
        """Writes a new version of the Subscription, unless it changed since ``sub`` was read."""
        store = self._ctx.store
        try:
            with store.write_slot(), store.unit_of_work() as uow:
                current = uow.current("Subscription", sub.id)
                if current is None or current.content is None or current.version != sub.version:
                    return  # changed meanwhile: the next round decides again
                resource = fhir_json.loads(current.content)
                resource["status"] = status
                if error is None:
                    resource.pop("error", None)
                else:
                    resource["error"] = error
                writes = Writes(self._ctx, uow, self._ctx.clock())
                stored, _ = writes.update("Subscription", sub.id, resource, sub.version)
                writes.finish()
        except (VersionConflict, FhirError):
            return  # a client won the race; the next round decides again
        log.info("Subscription/%s is now %s", sub.id, status)
        state = self._states.get(sub.id) or DeliveryState(sub.id, stored.version)
        self._save(replace(state, subscription_version=stored.version))

    def _housekeeping(self, subs: dict[str, Subscription], *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_housekeeping < self._settings.housekeeping:
            return
        self._last_housekeeping = now
        wanted = {(s.id, s.channel) for s in subs.values() if s.live}
        pending = self._store.pending()
        stale = [pair for pair in pending if pair not in wanted]
        if stale:
            self._store.discard(stale)  # turned off, deleted or moved to another channel
        gone = [i for i in self._states if i not in subs or not subs[i].live]
        if gone:
            self._store.forget_states(gone)
            for i in gone:
                del self._states[i]
        if any(channel == "websocket" for _, channel in pending):
            retention = int(self._settings.websocket_retention * 1_000_000)
            self._store.prune("websocket", self._ctx.clock() - retention)


def deliver(
    client: httpx.Client, store: Store, sub: Subscription, notes: list[Notification]
) -> Delivered:
    """Sends the notifications in order and stops at the first failure (the rest must wait)."""
    done: list[int] = []
    for note in notes:
        try:
            error = _send(client, store, sub, note)
        except Exception as exc:  # the database, say: a failed attempt like any other
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            return Delivered(tuple(done), error)
        done.append(note.id)
    return Delivered(tuple(done), None)


def _send(client: httpx.Client, store: Store, sub: Subscription, note: Notification) -> str | None:
    assert sub.endpoint is not None, "a rest-hook has an endpoint (subscriptions.accept)"
    headers = dict(sub.headers)
    if sub.payload:
        stored = store.vread(note.type, note.resource_id, note.version)
        if stored is None or stored.content is None:
            return None  # nothing to send (history is never rewritten, so this does not happen)
        method, url = "PUT", f"{sub.endpoint.rstrip('/')}/{note.type}/{note.resource_id}"
        headers["Content-Type"] = FHIR_JSON
        body = stored.content
    else:
        method, url, body = "POST", sub.endpoint, b""
    try:
        response = client.request(method, url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{method} {url}: {type(exc).__name__} {exc}".rstrip()
    if response.is_success:
        return None
    return f"{method} {url} answered HTTP {response.status_code}"


class WebSocketHub:
    """Pings the websocket clients of this worker process (subscription.html#channels): polls the
    notification table, since any worker's dispatcher may have stored the notification."""

    def __init__(
        self, ctx: Context, store: SubscriptionStore, settings: DeliverySettings | None = None
    ) -> None:
        self._ctx = ctx
        self._store = store
        self._settings = settings or DeliverySettings()
        self._listeners: dict[str, set[asyncio.Queue[str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None

    def session(self) -> WebSocketSession:
        return WebSocketSession(self)

    async def bind(self, sub_id: str, queue: asyncio.Queue[str]) -> bool:
        """Binds ``queue`` to a subscription and puts the answer (``bound <id>`` or ``error``)."""
        refusal = await asyncio.to_thread(self._refusal, sub_id)
        if refusal is None:
            try:
                await self._running()
            except StoreUnavailable:
                refusal = "the database is not available; try again"
        if refusal is not None:
            await queue.put(f"error {sub_id} {refusal}")
            return False
        # No await from here on: "bound" goes out before the first ping.
        self._listeners.setdefault(sub_id, set()).add(queue)
        queue.put_nowait(f"bound {sub_id}")
        return True

    def unbind(self, sub_id: str, queue: asyncio.Queue[str]) -> None:
        queues = self._listeners.get(sub_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._listeners[sub_id]

    def _refusal(self, sub_id: str) -> str | None:
        if not ID.match(sub_id):
            return "is not a Subscription id"
        stored = self._ctx.store.read("Subscription", sub_id)
        sub = parse(stored) if stored is not None else None
        if sub is None:
            return "is not a Subscription of this server"
        if sub.channel != "websocket":
            return f"has channel type {sub.channel}, not websocket"
        if not sub.live:
            return f"has status {sub.status}"
        return None

    async def _running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._started = loop.create_future()
            self._task = loop.create_task(self._poll(self._started))
        assert self._started is not None
        await asyncio.shield(self._started)

    async def _poll(self, started: asyncio.Future[None]) -> None:
        try:
            # Ids grow in commit order: starting at the highest, no later one is missed.
            cursor = await asyncio.to_thread(self._store.last_notification_id)
        except Exception as exc:  # handed to the binding client
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            await asyncio.sleep(self._settings.websocket_poll)
            if not self._listeners:
                return  # the next bind starts polling again
            try:
                notes = await asyncio.to_thread(
                    self._store.notifications_after, cursor, "websocket", 1000
                )
            except Exception:  # the database, say: try again on the next tick
                log.warning("polling websocket notifications failed", exc_info=True)
                continue
            for note in notes:
                cursor = note.id
                for queue in self._listeners.get(note.subscription, ()):
                    # A client that does not read loses pings, not the server its memory.
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(f"ping {note.subscription}")


class WebSocketSession:
    """One websocket connection: commands in (``bind <id>``, several allowed), messages out."""

    def __init__(self, hub: WebSocketHub) -> None:
        self._hub = hub
        self._bound: set[str] = set()
        self.outgoing: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

    async def receive(self, text: str) -> None:
        command, _, argument = text.strip().partition(" ")
        sub_id = argument.strip()
        if command == "bind" and sub_id:
            if await self._hub.bind(sub_id, self.outgoing):
                self._bound.add(sub_id)
            return
        await self.outgoing.put(f"error unknown command {text.strip()[:80]!r}: send 'bind <id>'")

    async def next_message(self) -> str:
        return await self.outgoing.get()

    def close(self) -> None:
        for sub_id in self._bound:
            self._hub.unbind(sub_id, self.outgoing)
