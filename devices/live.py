"""Live feed: readings and observations to in-process subscribers as they arrive (asyncio).

https://docs.python.org/3/library/asyncio-sync.html — publishing never waits: each subscriber has
a bounded queue, and when a slow subscriber's queue is full its *oldest* item is dropped (and
counted on that subscription), so neither the station nor the other subscribers are held up.
The video data channel subscribes to show a patient's values during a consultation.

Loop-bound: publish, subscribe and iterate on the station's event loop (from another thread,
``loop.call_soon_threadsafe(feed.publish, item)``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

__all__ = ["LiveFeed", "Subscription"]

T = TypeVar("T")


class Subscription(Generic[T], AsyncIterator[T]):
    """An async iterator over the items published after subscribing; ends when closed."""

    def __init__(self, feed: LiveFeed[T], capacity: int) -> None:
        self._feed = feed
        self._items: deque[T] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0  # items lost because this subscriber was too slow

    def _offer(self, item: T) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1  # the deque drops the oldest on append
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        """Stops the subscription; a waiting ``async for`` ends after the queued items."""
        self._closed = True
        self._feed._remove(self)
        self._ready.set()

    @property
    def backlog(self) -> int:
        return len(self._items)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class LiveFeed(Generic[T]):
    """Publish/subscribe of ``T`` items; each subscriber buffers at most ``capacity`` items."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._subscribers: list[Subscription[T]] = []

    def subscribe(self, capacity: int | None = None) -> Subscription[T]:
        subscription = Subscription(self, capacity or self._capacity)
        self._subscribers.append(subscription)
        return subscription

    def publish(self, item: T) -> None:
        """Hands ``item`` to every subscriber; never blocks."""
        for subscription in self._subscribers:
            subscription._offer(item)

    def close(self) -> None:
        """Ends every subscription (station shutdown)."""
        for subscription in list(self._subscribers):
            subscription.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _remove(self, subscription: Subscription[T]) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
