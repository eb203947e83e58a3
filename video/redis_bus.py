"""The bus on Redis: a pub/sub channel per room and the room's state as a key, so that the
participants of one room may be connected to different processes (issue 6, scale-out).

See https://redis.io/docs/latest/develop/interact/pubsub/ and
https://redis.io/docs/latest/develop/interact/transactions/ (WATCH, optimistic locking).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from video.bus import Deliver, Envelope, Unsubscribe
from video.rooms import Room

T = TypeVar("T")
ROOM_TTL_S: Final = 24 * 3600  # a room's state outlives its call by a day (ended rooms refuse)

_log = logging.getLogger(__name__)


class RedisBus:
    """``prefix`` separates installations (and tests) sharing one Redis."""

    def __init__(self, url: str, prefix: str = "medikus:video:") -> None:
        # A blocking pool: under load requests wait for a free connection instead of failing
        # with "Too many connections" (redis-py's default pool raises at its cap).
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=5)
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)  # closes the pool too
        self._prefix = prefix
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribers: dict[str, list[Deliver]] = {}

    def _key(self, room: str) -> str:
        return f"{self._prefix}room:{room}"

    def _channel(self, room: str) -> str:
        return f"{self._prefix}events:{room}"

    async def update(self, room: str, change: Callable[[Room], T]) -> T:
        key = self._key(room)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    stored = await pipe.get(key)
                    state = Room.from_json(stored) if stored is not None else Room(room)
                    result = change(state)  # a RoomError leaves the stored state as it was
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, state.to_json(), ex=ROOM_TTL_S)
                    await pipe.execute()
                    return result
                except WatchError:  # another process changed the room meanwhile: again
                    continue
                finally:
                    await pipe.reset()  # type: ignore[no-untyped-call]

    async def publish(self, room: str, envelope: Envelope) -> None:
        await self._redis.publish(self._channel(room), envelope.to_json())

    async def subscribe(self, room: str, deliver: Deliver) -> Unsubscribe:
        channel = self._channel(room)
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        subscribers = self._subscribers.setdefault(channel, [])
        subscribers.append(deliver)
        if len(subscribers) == 1:
            await self._pubsub.subscribe(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())

        async def unsubscribe() -> None:
            listeners = self._subscribers.get(channel, [])
            if deliver in listeners:
                listeners.remove(deliver)
            if not listeners:
                self._subscribers.pop(channel, None)
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(channel)

        return unsubscribe

    async def _read(self) -> None:
        while self._subscribers:
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            envelope = Envelope.from_json(message["data"])
            for deliver in list(self._subscribers.get(channel, ())):
                try:
                    await deliver(envelope)
                except Exception:  # one broken connection must not stop the room's events
                    _log.exception("video event delivery failed")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._redis.aclose()
