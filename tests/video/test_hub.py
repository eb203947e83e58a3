"""The hub with in-memory connections: no network; the clock of the rate limit is injected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from video.bus import MemoryBus
from video.hub import Hub
from video.rooms import Role
from video.turn import IceServers, static_ice_servers


@dataclass(frozen=True)
class Caller:
    subject: str
    name: str | None


ROLES = {"doc": Role.HOST, "pat": Role.GUEST, "pat2": Role.GUEST, "stn": Role.STATION}


def authenticate(token: str) -> Caller | None:
    return Caller(token, token.upper()) if token in ROLES else None


def allowed(caller: Caller, room: str) -> Role | None:
    return ROLES[caller.subject] if room.startswith("a") else None


@dataclass
class Client:
    """The client end of one connection."""

    inbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    closed: int | None = None

    # the hub's side (Connection)
    async def receive(self) -> str | bytes | None:
        return await self.inbox.get()

    async def send(self, text: str) -> None:
        await self.frames.put(json.loads(text))

    async def close(self, code: int) -> None:
        self.closed = code
        await self.frames.put({"type": "<closed>", "code": code})

    # the test's side
    def say(self, **frame: Any) -> None:
        self.inbox.put_nowait(json.dumps(frame))

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), 5)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    scenario: Callable[[Hub, Callable[..., Awaitable[Client]]], Awaitable[None]],
    clock: Clock | None = None,
    ice_servers: IceServers | None = None,
) -> None:
    clock = clock or Clock()
    ice = ice_servers or static_ice_servers([{"urls": "stun:stun.example"}])

    async def main() -> None:
        hub = Hub(MemoryBus(), clock=clock, ice_servers=ice)
        tasks: list[asyncio.Task[None]] = []

        async def connect(token: str, room: str = "a1", **extra: Any) -> Client:
            client = Client()
            tasks.append(asyncio.create_task(hub.serve(client, authenticate, allowed)))
            client.say(type="hello", room=room, token=token, **extra)
            return client

        await scenario(hub, connect)
        for client_task in tasks:
            client_task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


async def _call(connect: Callable[..., Awaitable[Client]]) -> tuple[Client, Client, str, str]:
    """A host and an admitted guest; their ids."""
    doc = await connect("doc")
    welcome = await doc.next()
    assert welcome["state"] == "in-call"
    assert welcome["iceServers"] == [{"urls": "stun:stun.example"}]
    pat = await connect("pat", name="Erika M.")
    waiting_welcome = await pat.next()
    assert waiting_welcome["state"] == "waiting"
    guest = waiting_welcome["you"]
    assert guest["name"] == "Erika M."
    assert guest["role"] == "guest"
    assert await doc.next() == {"type": "waiting", "participant": guest}
    doc.say(type="admit", participant=guest["id"])
    admitted = await pat.next()
    assert admitted == {"type": "admitted", "peers": [welcome["you"]]}
    assert await doc.next() == {"type": "joined", "participant": guest}
    return doc, pat, welcome["you"]["id"], guest["id"]


def test_waiting_admit_relay_end() -> None:
    async def scenario(hub: Hub, connect: Callable[..., Awaitable[Client]]) -> None:
        doc, pat, doc_id, pat_id = await _call(connect)
        pat.say(type="offer", to=doc_id, sdp="v=0 offer")
        assert await doc.next() == {
            "type": "offer",
            "from": pat_id,
            "to": doc_id,
            "sdp": "v=0 offer",
        }
        doc.say(type="answer", to=pat_id, sdp="v=0 answer")
        assert (await pat.next())["sdp"] == "v=0 answer"
        doc.say(type="end")
        for client in (doc, pat):
            assert await client.next() == {"type": "ended"}
            assert await client.next() == {"type": "<closed>", "code": 1000}
        late = await connect("pat")
        assert (await late.next())["code"] == "room-ended"
        assert await late.next() == {"type": "<closed>", "code": 1008}

    run(scenario)


def test_errors_answer_without_closing() -> None:
    async def scenario(hub: Hub, connect: Callable[..., Awaitable[Client]]) -> None:
        doc, pat, doc_id, pat_id = await _call(connect)
        pat.inbox.put_nowait("{not json")
        assert (await pat.next())["code"] == "bad-message"
        pat.say(type="offer", to="p-nobody", sdp="x")
        assert (await pat.next())["code"] == "unknown-peer"
        pat.say(type="end")
        assert (await pat.next())["code"] == "forbidden"
        pat.say(type="candidate", to=doc_id, candidate=None)
        assert await doc.next() == {
            "type": "candidate",
            "from": pat_id,
            "to": doc_id,
            "candidate": None,
        }
        pat.say(type="leave")
        assert await doc.next() == {"type": "left", "participant": pat_id}
        assert pat.closed is None or pat.closed == 1000

    run(scenario)


def test_refusals_close_the_connection() -> None:
    async def scenario(hub: Hub, connect: Callable[..., Awaitable[Client]]) -> None:
        for token, room, code in (("forged", "a1", "unauthorized"), ("doc", "b1", "forbidden")):
            client = await connect(token, room=room)
            assert (await client.next())["code"] == code
            assert await client.next() == {"type": "<closed>", "code": 1008}
        await connect("doc", room="a2")
        for token in ("pat", "pat2", "stn"):
            assert (await (await connect(token, room="a2")).next())["type"] == "welcome"
        full = await connect("pat", room="a2")
        assert (await full.next())["code"] == "room-full"

    run(scenario)


def test_a_flood_closes_only_that_connection() -> None:
    async def scenario(hub: Hub, connect: Callable[..., Awaitable[Client]]) -> None:
        doc, pat, doc_id, pat_id = await _call(connect)
        other = await connect("doc", room="a9")
        assert (await other.next())["type"] == "welcome"
        for _ in range(100):  # the clock stands still: the burst of 60 runs out
            pat.say(type="candidate", to=doc_id, candidate=None)
        relayed = 0
        while (frame := await pat.next())["type"] != "error":
            pass
        assert frame["code"] == "rate-limited"
        assert await pat.next() == {"type": "<closed>", "code": 1008}
        while (frame := await doc.next())["type"] == "candidate":
            relayed += 1
        assert frame == {"type": "left", "participant": pat_id}
        assert 55 <= relayed < 60  # the burst minus hello and the admit round
        doc.say(type="end")
        assert await doc.next() == {"type": "ended"}
        other.say(type="end")  # the other room was not touched
        assert await other.next() == {"type": "ended"}

    run(scenario)


def test_the_bucket_refills_with_time() -> None:
    clock = Clock()

    async def scenario(hub: Hub, connect: Callable[..., Awaitable[Client]]) -> None:
        doc, pat, doc_id, _ = await _call(connect)
        for _round in range(3):  # 3 × 50 frames, each round after 2 s: never more than the burst
            for _ in range(50):
                pat.say(type="candidate", to=doc_id, candidate=None)
            for _ in range(50):
                assert (await doc.next())["type"] == "candidate"
            clock.now += 2.0
        assert pat.closed is None

    run(scenario, clock)
