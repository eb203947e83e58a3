"""Call lifecycle: when a consultation's call starts and ends, told to its record (an Encounter).

See https://hl7.org/fhir/R4/encounter.html and ../shared/reference/video.md §5 (call metadata).

A call starts when a second participant is in it (the host admitted a guest or the station)
and ends when the host ends the consultation or when the last participant has left (at that
moment); a later re-join starts a new call with the next number. The transitions are decided
inside the room's atomic update (``track``), so exactly one process reports each of them even
when several share the room through Redis.

Retention: the video part keeps no call metadata of its own. Who was in the call, when and how
long goes to the record core only (the Encounter, the documentation of the consultation); the
signalling server holds nothing beyond the room state in the bus (in memory, or in Redis with a
TTL of ``video.redis_bus.ROOM_TTL_S``, a day — far below the three months of Anlage 31b BMV-Ä).
Media and chat never pass the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from video.rooms import Participant, Room, State


@dataclass(frozen=True, slots=True)
class Call:
    """One call of a room: ``number`` counts from 1; ``ended`` is None while it runs."""

    room: str
    number: int
    participants: tuple[Participant, ...]
    started: datetime
    ended: datetime | None = None

    @property
    def minutes(self) -> float | None:
        if self.ended is None:
            return None
        return round((self.ended - self.started).total_seconds() / 60, 2)


@dataclass(frozen=True, slots=True)
class Started:
    call: Call


@dataclass(frozen=True, slots=True)
class Finished:
    call: Call


@dataclass(frozen=True, slots=True)
class Closed:
    """The host ended the consultation; ``calls``: how many calls it had."""

    room: str
    calls: int
    at: datetime


CallEvent = Started | Finished | Closed


class CallRecorder(Protocol):
    """Keeps the record of calls; called from a worker thread, once per event (may block)."""

    def started(self, call: Call) -> None: ...

    def finished(self, call: Call) -> None: ...

    def closed(self, room: str, calls: int, at: datetime) -> None: ...


class NoRecorder:
    """Records nothing (tests of the signalling alone)."""

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call) -> None:
        pass

    def closed(self, room: str, calls: int, at: datetime) -> None:
        pass


def track(room: Room, at: datetime) -> list[CallEvent]:
    """After a change of ``room``: starts or finishes its call; the events to report."""
    running = room.call_started is not None
    if not running and room.state is State.ACTIVE and len(room.in_call) >= 2:
        room.calls += 1
        room.call_started = at.isoformat()
        room.attendees = {p: room.participants[p] for p in room.in_call}
        return [Started(_call(room))]
    for p in room.in_call if running else ():
        room.attendees.setdefault(p, room.participants[p])
    if running and (room.state is State.ENDED or not room.in_call):
        finished = Finished(_call(room, ended=at))
        room.call_started = None
        room.attendees = {}
        return [finished]
    return []


def _call(room: Room, ended: datetime | None = None) -> Call:
    assert room.call_started is not None  # nosec B101 # only for a running call
    return Call(
        room.id,
        room.calls,
        tuple(room.attendees.values()),
        datetime.fromisoformat(room.call_started),
        ended,
    )
