"""WebRTC endpoint (aiortc) for stations and test bots: signalling client and mesh peer.

Spec: https://www.w3.org/TR/webrtc/ (RTCPeerConnection); wire protocol in notes/design_video.md.
aiortc does no trickle ICE: candidates travel inside the SDP; remote candidates from browsers
are still accepted ("candidate" messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import websockets
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection

__all__ = [
    "CHANNELS",
    "ChannelMessage",
    "Participant",
    "Peer",
    "PeerError",
    "SignallingClient",
    "synthetic_tracks",
]

Message = dict[str, Any]
# "vitals": discrete readings, reliable and ordered; "chat": text between participants.
CHANNELS = ("vitals", "chat")
_MAX_FRAME = 64 * 1024


class PeerError(Exception):
    """A signalling or call failure seen by the aiortc endpoint."""


@dataclass(frozen=True)
class Participant:
    """Someone in a room, as the server describes them."""

    id: str
    name: str
    role: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Participant:
        return cls(id=str(raw["id"]), name=str(raw.get("name", "")), role=str(raw.get("role", "")))


@dataclass(frozen=True)
class ChannelMessage:
    """A data-channel message received from a peer."""

    sender: str
    label: str
    data: str


class SignallingClient:
    """JSON text frames over a WebSocket; the token goes in "hello", never in the URL."""

    def __init__(self, url: str, *, room: str, token: str, name: str | None = None) -> None:
        self._url = url
        self._hello: Message = {"type": "hello", "room": room, "token": token}
        if name is not None:
            self._hello["name"] = name
        self._socket: ClientConnection | None = None

    async def connect(self) -> Message:
        """Open the socket, say hello and return the server's welcome."""
        self._socket = await websockets.connect(self._url, max_size=_MAX_FRAME)
        await self.send(self._hello)
        welcome = await self.receive()
        if welcome.get("type") != "welcome":
            await self.close()
            raise PeerError(f"Anmeldung abgelehnt / join refused: {welcome}")
        return welcome

    async def send(self, message: Mapping[str, Any]) -> None:
        await self._connection().send(json.dumps(message))

    async def receive(self) -> Message:
        """The next message; PeerError when the server closed the socket."""
        try:
            raw = await self._connection().recv()
        except websockets.ConnectionClosed as closed:
            raise PeerError("Verbindung beendet / signalling closed") from closed
        message = json.loads(raw)
        if not isinstance(message, dict):
            raise PeerError("Ungültige Nachricht / bad message from server")
        return message

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()

    def _connection(self) -> ClientConnection:
        if self._socket is None:
            raise PeerError("Nicht verbunden / not connected")
        return self._socket


def synthetic_tracks() -> list[MediaStreamTrack]:
    """Silence and a plain test picture (aiortc's generators) for bots and tests."""
    return [AudioStreamTrack(), VideoStreamTrack()]


def _configuration(ice_servers: Sequence[Mapping[str, Any]]) -> RTCConfiguration:
    # An empty list matters offline: aiortc's default STUN server costs 5 s when unreachable.
    servers = [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


class _Link:
    """One RTCPeerConnection to one other participant, with its channels and received frames."""

    def __init__(self, connection: RTCPeerConnection) -> None:
        self.connection = connection
        self.channels: dict[str, RTCDataChannel] = {}
        self.frames: Counter[str] = Counter()
        self.remote_set = asyncio.Event()
        self.pending: list[Mapping[str, Any]] = []


class Peer:
    """Joins a room, follows the mesh rule and carries media and data channels to each peer.

    The newly admitted participant offers to every peer already in the call; the others answer.
    """

    def __init__(
        self,
        signalling: SignallingClient,
        *,
        tracks: Sequence[MediaStreamTrack] = (),
        auto_admit: bool = False,
    ) -> None:
        self._signalling = signalling
        self._tracks = list(tracks)
        self._auto_admit = auto_admit
        self._links: dict[str, _Link] = {}
        self._ice_servers: list[Mapping[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self.me: Participant | None = None
        self.waiting: asyncio.Queue[Participant] = asyncio.Queue()
        self.messages: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        self.ended = asyncio.Event()

    async def join(self) -> Message:
        """Say hello; the signalling loop then runs until the call ends or the peer closes."""
        welcome = await self._signalling.connect()
        self.me = Participant.parse(welcome["you"])
        self._ice_servers = list(welcome.get("iceServers", []))
        self._spawn(self._signalling_loop())
        return welcome

    async def admit(self, participant: str) -> None:
        await self._signalling.send({"type": "admit", "participant": participant})

    async def leave(self) -> None:
        await self._signalling.send({"type": "leave"})
        await self.close()

    async def end(self) -> None:
        await self._signalling.send({"type": "end"})

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for link in self._links.values():
            await link.connection.close()
        await self._signalling.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def peers(self) -> list[str]:
        return list(self._links)

    def connection(self, peer: str) -> RTCPeerConnection:
        return self._links[peer].connection

    def frames(self, peer: str, kind: str) -> int:
        """Decoded frames received from a peer ("audio" or "video")."""
        return self._links[peer].frames[kind]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until a condition on this peer's state holds (checked on every change)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def send(self, label: str, data: str, *, to: str | None = None) -> None:
        """Send text on a data channel to one peer or to all, once the channel is open."""
        targets = [to] if to is not None else list(self._links)
        for peer in targets:
            await self.wait_for(functools.partial(self._open, peer, label), timeout=10)
            self._links[peer].channels[label].send(data)

    async def send_reading(self, reading: Mapping[str, Any], *, to: str | None = None) -> None:
        """The station's live readings travel as JSON on "vitals"."""
        await self.send("vitals", json.dumps(reading, separators=(",", ":")), to=to)

    def _open(self, peer: str, label: str) -> bool:
        link = self._links.get(peer)
        channel = link.channels.get(label) if link else None
        return channel is not None and channel.readyState == "open"

    async def _signalling_loop(self) -> None:
        handlers: dict[str, Callable[[Message], Awaitable[None]]] = {
            "waiting": self._on_waiting,
            "admitted": self._on_admitted,
            "offer": self._on_offer,
            "answer": self._on_answer,
            "candidate": self._on_candidate,
            "left": self._on_left,
        }
        try:
            while True:
                message = await self._signalling.receive()
                if message.get("type") == "ended":
                    break
                handler = handlers.get(str(message.get("type")))
                if handler is not None:
                    await handler(message)
        except PeerError:
            pass  # the server closed the socket: the call is over for us
        finally:
            self.ended.set()
            await self._notify()

    async def _on_waiting(self, message: Message) -> None:
        participant = Participant.parse(message["participant"])
        if self._auto_admit:
            await self.admit(participant.id)
        else:
            self.waiting.put_nowait(participant)

    async def _on_admitted(self, message: Message) -> None:
        for raw in message.get("peers", []):
            await self._offer(Participant.parse(raw).id)

    async def _offer(self, peer: str) -> None:
        link = self._link(peer)
        connection = link.connection
        for label in CHANNELS:
            self._attach(peer, connection.createDataChannel(label, ordered=True))
        kinds = {track.kind for track in self._tracks}
        for track in self._tracks:
            connection.addTrack(track)
        for kind in ("audio", "video"):
            if kind not in kinds:  # still receive what the other side sends
                connection.addTransceiver(kind, direction="recvonly")
        await connection.setLocalDescription(await connection.createOffer())
        await self._signal("offer", peer, sdp=connection.localDescription.sdp)

    async def _on_offer(self, message: Message) -> None:
        peer = str(message["from"])
        link = self._link(peer)
        connection = link.connection
        await connection.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
        await self._remote_set(link)
        for track in self._tracks:
            connection.addTrack(track)
        await connection.setLocalDescription(await connection.createAnswer())
        await self._signal("answer", peer, sdp=connection.localDescription.sdp)

    async def _on_answer(self, message: Message) -> None:
        link = self._links.get(str(message["from"]))
        if link is None:
            return
        answer = RTCSessionDescription(message["sdp"], "answer")
        await link.connection.setRemoteDescription(answer)
        await self._remote_set(link)

    async def _on_candidate(self, message: Message) -> None:
        link = self._links.get(str(message["from"]))
        candidate = message.get("candidate")
        if link is None or not candidate:
            return  # end-of-candidates needs nothing: aiortc has gathered everything already
        if link.remote_set.is_set():
            await self._add_candidate(link, candidate)
        else:
            link.pending.append(candidate)

    async def _remote_set(self, link: _Link) -> None:
        link.remote_set.set()
        for candidate in link.pending:
            await self._add_candidate(link, candidate)
        link.pending.clear()

    @staticmethod
    async def _add_candidate(link: _Link, raw: Mapping[str, Any]) -> None:
        text = str(raw.get("candidate", ""))
        if not text:
            return
        candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        candidate.sdpMid = raw.get("sdpMid")
        candidate.sdpMLineIndex = raw.get("sdpMLineIndex")
        await link.connection.addIceCandidate(candidate)

    async def _on_left(self, message: Message) -> None:
        link = self._links.pop(str(message["participant"]), None)
        if link is not None:
            # Shielded: cancelling this loop in close() would cancel aiortc's shared close future.
            await asyncio.shield(link.connection.close())
        await self._notify()

    async def _signal(self, kind: str, peer: str, **fields: Any) -> None:
        await self._signalling.send({"type": kind, "to": peer, **fields})

    def _link(self, peer: str) -> _Link:
        if peer in self._links:
            raise PeerError(f"Doppelte Verbindung / duplicate connection to {peer}")
        connection = RTCPeerConnection(_configuration(self._ice_servers))
        link = _Link(connection)
        self._links[peer] = link

        @connection.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self._attach(peer, channel)

        @connection.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._receive(link, track))

        @connection.on("connectionstatechange")
        async def on_state() -> None:
            await self._notify()

        return link

    def _attach(self, peer: str, channel: RTCDataChannel) -> None:
        link = self._links[peer]
        link.channels[channel.label] = channel

        @channel.on("open")
        async def on_open() -> None:
            await self._notify()

        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            text = data if isinstance(data, str) else data.decode()
            self.messages.put_nowait(ChannelMessage(peer, channel.label, text))

        if channel.readyState == "open":  # the answerer's channels may arrive already open
            self._spawn(self._notify())

    async def _receive(self, link: _Link, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                link.frames[track.kind] += 1
                await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
