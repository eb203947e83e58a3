"""Test support for video.peer: a minimal signalling relay speaking the design's wire protocol.

Run as a process (`python -m tests.video.peer_support [--hub]`): it prints "PORT <n>" once
listening on 127.0.0.1. Roles come from the token's prefix ("host…", "station…", else guest). The
relay checks nothing else; with --hub the real hub (video.hub through video._http.install_video,
under uvicorn) serves instead, with the same token → role rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)


@dataclass
class _Member:
    id: str
    name: str
    role: str
    socket: ServerConnection
    in_call: bool = False

    def public(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role}


@dataclass
class _Room:
    members: dict[str, _Member] = field(default_factory=dict)
    ended: bool = False

    def in_call(self) -> list[_Member]:
        return [m for m in self.members.values() if m.in_call]


_rooms: dict[str, _Room] = {}


async def _send(member: _Member, message: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionClosed):  # a member that just left misses the news
        await member.socket.send(json.dumps(message))


def _role(token: str) -> str:
    for role in ("host", "station"):
        if token.startswith(role):
            return role
    return "guest"


async def _handle(socket: ServerConnection) -> None:
    hello = json.loads(await socket.recv())
    room = _rooms.setdefault(str(hello["room"]), _Room())
    if room.ended:
        await socket.send(json.dumps({"type": "error", "code": "room-ended", "message": "-"}))
        await socket.close(1008)
        return
    role = _role(str(hello["token"]))
    me = _Member(f"p-{next(_ids)}", str(hello.get("name", role)), role, socket, role == "host")
    room.members[me.id] = me
    await _send(
        me,
        {
            "type": "welcome",
            "you": me.public(),
            "state": "in-call" if me.in_call else "waiting",
            "participants": [m.public() for m in room.members.values()],
            "iceServers": [],
        },
    )
    if not me.in_call:
        for host in (m for m in room.in_call() if m.role == "host"):
            await _send(host, {"type": "waiting", "participant": me.public()})
    try:
        async for raw in socket:
            await _dispatch(room, me, json.loads(raw))
    finally:
        room.members.pop(me.id, None)
        for other in room.members.values():
            await _send(other, {"type": "left", "participant": me.id})


async def _dispatch(room: _Room, me: _Member, message: dict[str, Any]) -> None:
    kind = message["type"]
    if kind == "admit" and me.role == "host":
        guest = room.members[message["participant"]]
        peers = [m.public() for m in room.in_call()]
        guest.in_call = True
        await _send(guest, {"type": "admitted", "peers": peers})
        for other in room.in_call():
            await _send(other, {"type": "joined", "participant": guest.public()})
    elif kind in ("offer", "answer", "candidate"):
        target = room.members[message.pop("to")]
        await _send(target, {**message, "from": me.id})
    elif kind == "leave":
        await me.socket.close()
    elif kind == "end" and me.role == "host":
        room.ended = True
        for member in list(room.members.values()):
            await _send(member, {"type": "ended"})
            await member.socket.close()


async def _main() -> None:
    async with serve(_handle, "127.0.0.1", 0, max_size=64 * 1024) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


@dataclass(frozen=True)
class _Caller:
    subject: str
    name: str | None


def _hub_main() -> None:
    import uvicorn
    from fastapi import FastAPI

    from video._http import install_video
    from video.bus import MemoryBus
    from video.hub import Hub
    from video.rooms import Role

    app = FastAPI()
    install_video(
        app,
        Hub(MemoryBus()),
        lambda token: _Caller(token, None),
        lambda caller, room: Role(_role(caller.subject)),
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # clients queue in the backlog until uvicorn serves
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    asyncio.run(server.serve(sockets=[listener]))


def udp_inodes() -> set[int]:
    """Inodes of all UDP sockets (IPv4 and IPv6) in this network namespace."""
    inodes: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        lines = Path(table).read_text().splitlines()[1:]
        inodes.update(int(line.split()[9]) for line in lines)
    return inodes


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds open (from /proc/<pid>/fd)."""
    return set(_socket_inodes(Path(f"/proc/{pid}/fd")))


def _socket_inodes(fds: Path) -> Iterator[int]:
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed while we looked
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            yield int(match.group(1))


if __name__ == "__main__":
    try:
        _hub_main() if "--hub" in sys.argv else asyncio.run(_main())
    except KeyboardInterrupt:
        sys.exit(0)
