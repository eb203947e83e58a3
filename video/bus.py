"""The bus behind the hub: room state and per-room events, shared by all signalling processes.

``MemoryBus`` serves one process; ``video.redis_bus.RedisBus`` several (issue 6, scale-out).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from video.rooms import Room

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event of a room: ``msg`` for the participants in ``to`` (None: everyone but
    ``skip``); ``close``: their connections are closed after it."""

    msg: dict[str, Any]
    to: tuple[str, ...] | None = None
    skip: str | None = None
    close: bool = False

    def addresses(self, participant: str) -> bool:
        if self.to is not None:
            return participant in self.to
        return participant != self.skip

    def to_json(self) -> str:
        to = list(self.to) if self.to is not None else None
        return json.dumps({"msg": self.msg, "to": to, "skip": self.skip, "close": self.close})

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        data = json.loads(text)
        to = tuple(data["to"]) if data["to"] is not None else None
        return cls(data["msg"], to, data["skip"], bool(data["close"]))


Deliver = Callable[[Envelope], Awaitable[None]]
Unsubscribe = Callable[[], Awaitable[None]]


class Bus(Protocol):
    async def update(self, room: str, change: Callable[[Room], T]) -> T:
        """Applies ``change`` to the room's state atomically (across processes) and stores it;
        an exception from ``change`` leaves the state unchanged."""
        ...

    async def publish(self, room: str, envelope: Envelope) -> None: ...

    async def subscribe(self, room: str, deliver: Deliver) -> Unsubscribe:
        """Delivers the room's events from now on, until the returned callable is awaited."""
        ...

    async def close(self) -> None: ...


class MemoryBus:
    """Rooms and subscriptions in this process."""

    def __init__(self) -> None:
        self._rooms: dict[str, str] = {}  # as JSON: a failed change cannot leave half an edit
        self._subscribers: dict[str, list[Deliver]] = {}
        self._lock: asyncio.Lock | None = None

    async def update(self, room: str, change: Callable[[Room], T]) -> T:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            stored = self._rooms.get(room)
            state = Room.from_json(stored) if stored is not None else Room(room)
            result = change(state)
            self._rooms[room] = state.to_json()
            return result

    async def publish(self, room: str, envelope: Envelope) -> None:
        for deliver in list(self._subscribers.get(room, ())):
            await deliver(envelope)

    async def subscribe(self, room: str, deliver: Deliver) -> Unsubscribe:
        self._subscribers.setdefault(room, []).append(deliver)

        async def unsubscribe() -> None:
            subscribers = self._subscribers.get(room, [])
            if deliver in subscribers:
                subscribers.remove(deliver)
            if not subscribers:
                self._subscribers.pop(room, None)

        return unsubscribe

    async def close(self) -> None:
        self._subscribers.clear()
