"""The live feed: every subscriber sees what is published; a slow one never holds anybody up."""

from __future__ import annotations

import asyncio

import pytest

from devices.live import LiveFeed, Subscription


async def collect(subscription: Subscription[int], count: int) -> list[int]:
    return [await anext(subscription) for _ in range(count)]


def test_subscribers_get_items_in_order() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        feed: LiveFeed[int] = LiveFeed()
        first, second = feed.subscribe(), feed.subscribe()
        tasks = [asyncio.create_task(collect(s, 5)) for s in (first, second)]
        await asyncio.sleep(0)  # both are waiting before anything is published
        for n in range(5):
            feed.publish(n)
            await asyncio.sleep(0)
        a, b = await asyncio.gather(*tasks)
        return a, b

    assert asyncio.run(scenario()) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])


def test_only_items_after_subscribing_arrive() -> None:
    async def scenario() -> list[int]:
        feed: LiveFeed[int] = LiveFeed()
        feed.publish(1)
        subscription = feed.subscribe()
        feed.publish(2)
        feed.close()
        return [n async for n in subscription]

    assert asyncio.run(scenario()) == [2]


def test_a_slow_subscriber_drops_its_oldest_and_blocks_nobody() -> None:
    async def scenario() -> None:
        feed: LiveFeed[int] = LiveFeed(capacity=3)
        slow, fast = feed.subscribe(), feed.subscribe(capacity=100)
        received: list[int] = []

        async def consume() -> None:
            async for n in fast:
                received.append(n)

        consumer = asyncio.create_task(consume())
        for n in range(10):
            feed.publish(n)  # synchronous: publishing never waits for anybody
            await asyncio.sleep(0)
        assert received == list(range(10))
        assert (slow.dropped, slow.backlog, fast.dropped) == (7, 3, 0)
        assert await collect(slow, 3) == [7, 8, 9]  # the newest survive
        slow.close()
        assert feed.subscribers == 1
        feed.publish(10)  # a closed subscription is no longer fed
        assert slow.backlog == 0
        feed.close()
        await consumer
        assert received == list(range(11))

    asyncio.run(scenario())


def test_closing_ends_iteration_after_the_queued_items() -> None:
    async def scenario() -> list[int]:
        feed: LiveFeed[int] = LiveFeed()
        async with feed.subscribe() as subscription:
            feed.publish(1)
            feed.publish(2)
            subscription.close()
            items = [n async for n in subscription]
        assert feed.subscribers == 0
        return items

    assert asyncio.run(scenario()) == [1, 2]


def test_a_waiting_subscriber_wakes_when_the_feed_closes() -> None:
    async def scenario() -> list[int]:
        feed: LiveFeed[int] = LiveFeed()
        subscription = feed.subscribe()
        waiting = asyncio.create_task(collect_all(subscription))
        await asyncio.sleep(0)
        feed.close()
        return await asyncio.wait_for(waiting, 1)

    async def collect_all(subscription: Subscription[int]) -> list[int]:
        return [n async for n in subscription]

    assert asyncio.run(scenario()) == []


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LiveFeed(capacity=0)
