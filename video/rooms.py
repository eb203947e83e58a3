"""A consultation room as a pure state machine: waiting room, admission, the call, its end.

See notes/design_video.md and ../shared/reference/video.md §1 (waiting room, host admits).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Final

from video.protocol import VideoError

MAX_PARTICIPANTS: Final = 4  # a mesh: every pair is a peer connection


class Role(StrEnum):
    HOST = "host"  # the doctor
    GUEST = "guest"  # patient, relative, interpreter, nurse
    STATION = "station"  # the pilot-centre station (aiortc)


class State(StrEnum):
    OPEN = "open"  # nobody in the call yet
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Participant:
    id: str
    name: str
    role: Role

    def public(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role.value}


class RoomError(VideoError):
    """A room operation refused (full, ended, not the host, unknown participant)."""


@dataclass
class Room:
    """Who is in the call and who waits. Methods check first and change after, so a refused
    operation leaves the room as it was."""

    id: str
    state: State = State.OPEN
    participants: dict[str, Participant] = field(default_factory=dict)
    in_call: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    # The call's record (video/calls.py): calls started so far, the running call's start (ISO
    # instant; None: no call runs) and everyone who has been in it.
    calls: int = 0
    call_started: str | None = None
    attendees: dict[str, Participant] = field(default_factory=dict)

    def join(self, participant: Participant) -> bool:
        """Adds a participant; the host enters the call, others wait. True: in the call."""
        self._refuse_if_ended()
        if len(self.participants) >= MAX_PARTICIPANTS:
            raise RoomError("Raum ist voll / room is full", "room-full")
        self.participants[participant.id] = participant
        if participant.role is Role.HOST:
            self.in_call.append(participant.id)
            self.state = State.ACTIVE
            return True
        self.waiting.append(participant.id)
        return False

    def admit(self, by: str, participant: str) -> Participant:
        self._refuse_if_ended()
        self._require_host(by)
        if participant not in self.waiting:
            raise RoomError(
                "Niemand wartet unter dieser ID / no one waiting with this id", "unknown-peer"
            )
        self.waiting.remove(participant)
        self.in_call.append(participant)
        return self.participants[participant]

    def leave(self, participant: str) -> Participant | None:
        """Removes a participant; None when not (or no longer) in the room."""
        gone = self.participants.pop(participant, None)
        if gone is None:
            return None
        for ids in (self.in_call, self.waiting):
            if participant in ids:
                ids.remove(participant)
        if not self.in_call and self.state is State.ACTIVE:
            self.state = State.OPEN
        return gone

    def end(self, by: str) -> list[Participant]:
        """Ends the call for everyone: the room refuses joins from now on."""
        self._refuse_if_ended()
        self._require_host(by)
        everyone = list(self.participants.values())
        self.state = State.ENDED
        self.participants.clear()
        self.in_call.clear()
        self.waiting.clear()
        return everyone

    def check_peer(self, sender: str, to: str) -> None:
        """Signals go only between two participants in the call."""
        if sender not in self.in_call:
            raise RoomError("Noch nicht im Gespräch / not in the call yet", "forbidden")
        if to not in self.in_call or to == sender:
            raise RoomError("Unbekannter Teilnehmer / unknown peer", "unknown-peer")

    def peers(self, of: str) -> list[Participant]:
        return [self.participants[p] for p in self.in_call if p != of]

    def hosts(self) -> list[str]:
        return [p for p in self.in_call if self.participants[p].role is Role.HOST]

    def roster(self) -> list[dict[str, str]]:
        """Everyone with their state, for the welcome frame."""
        return [
            {**self.participants[p].public(), "state": state}
            for ids, state in ((self.in_call, "in-call"), (self.waiting, "waiting"))
            for p in ids
        ]

    def _refuse_if_ended(self) -> None:
        if self.state is State.ENDED:
            raise RoomError("Sprechstunde ist beendet / the consultation has ended", "room-ended")

    def _require_host(self, by: str) -> None:
        if by not in self.in_call or self.participants[by].role is not Role.HOST:
            raise RoomError("Nur der Arzt darf das / host only", "forbidden")

    # --- persistence (the Redis bus keeps rooms as JSON) ---

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Room:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=data["id"],
            state=State(data["state"]),
            participants={
                k: Participant(v["id"], v["name"], Role(v["role"]))
                for k, v in data["participants"].items()
            },
            in_call=list(data["in_call"]),
            waiting=list(data["waiting"]),
            calls=int(data.get("calls", 0)),
            call_started=data.get("call_started"),
            attendees={
                k: Participant(v["id"], v["name"], Role(v["role"]))
                for k, v in data.get("attendees", {}).items()
            },
        )
