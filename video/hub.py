"""The signalling hub: connections ↔ rooms, routing of offers/answers/candidates, rate limits.

Media never pass here (peer-to-peer DTLS-SRTP, ../shared/reference/video.md §1); the hub only
relays small JSON frames between the participants of one room, through a Bus so that the
participants of one room may sit on different processes. Wire protocol: notes/design_video.md.
The start and end of each call go to an injected CallRecorder (video/calls.py), exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar

from video.bus import Bus, Envelope
from video.calls import CallEvent, CallRecorder, Closed, Finished, NoRecorder, Started, track
from video.protocol import (
    Admit,
    End,
    ErrorCode,
    Hello,
    Leave,
    Message,
    ProtocolError,
    Signal,
    VideoError,
    error,
    parse,
    relayed,
    serialise,
)
from video.rooms import Participant, Role, Room, RoomError
from video.turn import IceServers, static_ice_servers

POLICY_VIOLATION: Final = 1008
NORMAL: Final = 1000
# These errors end the connection; the others (bad-message, forbidden, unknown-peer) only answer.
CLOSING: Final[frozenset[ErrorCode]] = frozenset(
    {"unauthorized", "room-ended", "room-full", "rate-limited"}
)

_log = logging.getLogger(__name__)


class Connection(Protocol):
    """One client connection (a WebSocket); ``receive`` returns None once it is closed."""

    async def receive(self) -> str | bytes | None: ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int) -> None: ...


class Caller(Protocol):
    """Who presented the hello's token (e.g. compliance's Principal)."""

    @property
    def subject(self) -> str: ...

    @property
    def name(self) -> str | None: ...


C = TypeVar("C", bound=Caller)
T = TypeVar("T")
Authenticate = Callable[[str], C | None]  # token → caller; None: refused
Allowed = Callable[[C, str], Role | None]  # (caller, room) → role; None: not in this room


class TokenBucket:
    """``rate`` messages per second sustained, bursts up to ``burst``; ``clock`` in seconds."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def new_participant_id() -> str:
    return "p-" + secrets.token_hex(6)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Close:
    """The outbox's last item: close the connection after what came before."""

    code: int


_CLOSE = _Close(NORMAL)
_CLOSE_POLICY = _Close(POLICY_VIOLATION)


@dataclass
class _Session:
    """One admitted connection: its participant and its outbox (written by one task, so a slow
    client never blocks the sender of an event)."""

    conn: Connection
    me: Participant
    outbox: asyncio.Queue[object]
    pending: list[object] | None = field(default_factory=list)  # until the welcome is out

    def put(self, item: object) -> None:
        if self.pending is not None:
            self.pending.append(item)
            return
        try:
            self.outbox.put_nowait(item)
        except asyncio.QueueFull:  # a client that does not read: only its connection goes
            self.outbox = asyncio.Queue(1)
            self.outbox.put_nowait(_CLOSE_POLICY)

    def welcome(self, frame: dict[str, Any]) -> None:
        pending, self.pending = self.pending or [], None
        self.put(frame)
        for item in pending:
            self.put(item)

    async def deliver(self, envelope: Envelope) -> None:
        if envelope.addresses(self.me.id):
            self.put(envelope.msg)
            if envelope.close:
                self.put(_CLOSE)

    async def write(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, _Close):
                await self.conn.close(item.code)
                return
            assert isinstance(item, dict)  # nosec B101 # only frames and _CLOSE are queued
            await self.conn.send(serialise(item))


class Hub:
    """Signalling for all rooms of this process (``serve`` one connection per call)."""

    def __init__(
        self,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.monotonic,
        ids: Callable[[], str] = new_participant_id,
        ice_servers: IceServers | None = None,
        rate: float = 30.0,
        burst: int = 60,
        outbox: int = 256,
        recorder: CallRecorder | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.bus = bus
        self._clock = clock
        self._ids = ids
        self._ice = ice_servers or static_ice_servers()  # none: host candidates only (LAN)
        self._rate, self._burst, self._outbox = rate, burst, outbox
        self._recorder: CallRecorder = recorder or NoRecorder()
        self._now = now

    async def _update(self, room: str, change: Callable[[Room], T]) -> T:
        """A change that may start or end the call: the transition is decided inside the atomic
        update, so only the process whose update took effect reports it (before the caller
        tells the participants, so that the record is there when they learn of it)."""
        at = self._now()

        def tracked(state: Room) -> tuple[T, list[CallEvent]]:
            result = change(state)
            return result, track(state, at)

        result, events = await self.bus.update(room, tracked)
        for event in events:
            await self._report(event)
        return result

    async def _report(self, event: CallEvent) -> None:
        recorder = self._recorder
        try:
            if isinstance(event, Started):
                await asyncio.to_thread(recorder.started, event.call)
            elif isinstance(event, Finished):
                await asyncio.to_thread(recorder.finished, event.call)
            else:
                await asyncio.to_thread(recorder.closed, event.room, event.calls, event.at)
        except Exception:  # a failed record must not break the call; the log tells
            _log.exception("video call record failed: %s", type(event).__name__)

    async def serve(
        self, conn: Connection, authenticate: Authenticate[C], allowed: Allowed[C]
    ) -> None:
        """Runs one connection from its hello to its end; never raises for client errors."""
        limiter = TokenBucket(self._rate, self._burst, self._clock)
        hello = await self._hello(conn, limiter)
        if hello is None:
            return
        caller = await asyncio.to_thread(authenticate, hello.token)
        if caller is None:
            await _refuse(conn, "unauthorized", "Anmeldung ungültig / invalid or expired token")
            return
        role = await asyncio.to_thread(allowed, caller, hello.room)
        if role is None:
            await _refuse(
                conn, "forbidden", "Kein Zugang zu diesem Raum / not allowed in this room"
            )
            return
        me = Participant(self._ids(), hello.name or caller.name or role.value, role)
        session = _Session(conn, me, asyncio.Queue(self._outbox))
        unsubscribe = await self.bus.subscribe(hello.room, session.deliver)
        try:
            await self._run(session, hello.room, limiter)
        finally:
            await unsubscribe()

    async def _hello(self, conn: Connection, limiter: TokenBucket) -> Hello | None:
        while True:
            raw = await conn.receive()
            if raw is None:
                return None
            if not limiter.take():
                await _refuse(conn, "rate-limited", _FLOOD)
                return None
            try:
                message = parse(raw)
            except ProtocolError as exc:
                await conn.send(serialise(error("bad-message", exc.message)))
                continue
            if isinstance(message, Hello):
                return message
            await conn.send(serialise(error("bad-message", "Erst hello senden / hello first")))

    async def _run(self, session: _Session, room: str, limiter: TokenBucket) -> None:
        me = session.me
        try:
            in_call, roster, waiting, hosts = await self._update(room, lambda r: _join(r, me))
        except RoomError as exc:
            await _refuse(session.conn, exc.code, exc.message)
            return
        writer = asyncio.create_task(session.write())
        try:
            session.welcome(
                {
                    "type": "welcome",
                    "you": me.public(),
                    "state": "in-call" if in_call else "waiting",
                    "participants": roster,
                    "iceServers": self._ice(me.id),
                }
            )
            for other in waiting:
                session.put({"type": "waiting", "participant": other.public()})
            if in_call:
                joined = {"type": "joined", "participant": me.public()}
                await self.bus.publish(room, Envelope(joined, skip=me.id))
            else:
                note = {"type": "waiting", "participant": me.public()}
                await self.bus.publish(room, Envelope(note, to=tuple(hosts)))
            await self._loop(session, room, limiter, writer)
        finally:
            gone = await self._update(room, lambda r: r.leave(me.id))
            if gone is not None:
                left = {"type": "left", "participant": me.id}
                await self.bus.publish(room, Envelope(left, skip=me.id))
            if not writer.done():
                session.put(_CLOSE)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 5)
            if writer.done() and not writer.cancelled():
                writer.exception()  # a failed send (the client went away) is no error here

    async def _loop(
        self, session: _Session, room: str, limiter: TokenBucket, writer: asyncio.Task[None]
    ) -> None:
        while not writer.done():
            raw = await _receive_or_done(session.conn, writer)
            if raw is None:
                return
            if not limiter.take():
                session.put(error("rate-limited", _FLOOD))
                session.put(_CLOSE_POLICY)
                return
            try:
                message = parse(raw)
                if isinstance(message, Leave):
                    return
                await self._handle(session, room, message)
            except VideoError as exc:
                session.put(error(exc.code, exc.message))
                if exc.code in CLOSING:
                    session.put(_CLOSE_POLICY)
                    return

    async def _handle(self, session: _Session, room: str, message: Message) -> None:
        me = session.me
        if isinstance(message, Signal):
            await self.bus.update(room, lambda r: r.check_peer(me.id, message.to))
            await self.bus.publish(room, Envelope(relayed(message, me.id), to=(message.to,)))
        elif isinstance(message, Admit):
            admitted, peers = await self._update(room, lambda r: _admit(r, me, message))
            frame = {"type": "admitted", "peers": [p.public() for p in peers]}
            await self.bus.publish(room, Envelope(frame, to=(admitted.id,)))
            joined = {"type": "joined", "participant": admitted.public()}
            await self.bus.publish(room, Envelope(joined, to=tuple(p.id for p in peers)))
        elif isinstance(message, End):
            calls = await self._update(room, lambda r: _end(r, me))
            await self._report(Closed(room, calls, self._now()))
            await self.bus.publish(room, Envelope({"type": "ended"}, close=True))
        else:  # a second hello
            raise ProtocolError("Schon angemeldet / already joined")


_FLOOD = "Zu viele Nachrichten / too many messages"


def _join(
    room: Room, me: Participant
) -> tuple[bool, list[dict[str, str]], list[Participant], list[str]]:
    """Joins; the roster, who waits (for a host) and the hosts (to tell of a new guest)."""
    in_call = room.join(me)
    waiting = [room.participants[p] for p in room.waiting] if me.role is Role.HOST else []
    return in_call, room.roster(), waiting, room.hosts()


def _admit(room: Room, me: Participant, message: Admit) -> tuple[Participant, list[Participant]]:
    admitted = room.admit(me.id, message.participant)
    return admitted, room.peers(admitted.id)


def _end(room: Room, me: Participant) -> int:
    room.end(me.id)
    return room.calls


async def _receive_or_done(conn: Connection, writer: asyncio.Task[None]) -> str | bytes | None:
    """The next frame, or None when the connection closed or our writer closed it."""
    receive = asyncio.ensure_future(conn.receive())
    done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
    if receive in done:
        return receive.result()
    receive.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await receive
    return None


async def _refuse(conn: Connection, code: ErrorCode, message: str) -> None:
    with contextlib.suppress(Exception):
        await conn.send(serialise(error(code, message)))
        await conn.close(POLICY_VIOLATION)
