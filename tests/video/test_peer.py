"""aiortc ↔ aiortc calls through a signalling server process over a real network interface."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import ifaddr
import pytest

from tests.video.peer_support import socket_inodes, udp_inodes
from video.peer import ChannelMessage, Peer, SignallingClient, synthetic_tracks

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
FRAMES = 10
READINGS = 20


def usable_ipv4() -> list[str]:
    """Non-loopback IPv4 addresses: aioice gathers host candidates from these (ifaddr, like aioice)."""
    return [
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]


@pytest.fixture
def interface() -> str:
    addresses = usable_ipv4()
    if not addresses:
        reason = (
            "Keine Netzwerkschnittstelle außer Loopback / no non-loopback IPv4 interface: "
            "aiortc ignores 127.0.0.1, add a dummy or veth interface"
        )
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return addresses[0]


@pytest.fixture(params=["relay", "hub"])
def relay(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A signalling server in its own process, so its sockets can be inspected: the test relay,
    and the real hub behind install_video."""
    mode = ["--hub"] if request.param == "hub" else []
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.video.peer_support", *mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), f"relay did not start: {line!r}"
        port = int(line.split()[1])
        path = "/video/ws" if mode else ""
        yield f"ws://127.0.0.1:{port}{path}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def connected(peer: Peer, other: str) -> bool:
    return peer.connection(other).connectionState == "connected"


def has_frames(peer: Peer, other: str, kind: str) -> bool:
    return peer.frames(other, kind) >= FRAMES


def peer_count(peer: Peer, count: int) -> bool:
    return len(peer.peers()) == count


async def collect(peer: Peer, count: int) -> list[ChannelMessage]:
    return [await asyncio.wait_for(peer.messages.get(), 10) for _ in range(count)]


async def call(url: str, server_pid: int, interface: str) -> None:
    doctor = Peer(
        SignallingClient(url, room="apt-1", token="host-doc", name="Dr. Weber"),
        tracks=synthetic_tracks(),
    )
    station = Peer(
        SignallingClient(url, room="apt-1", token="station-1", name="Station Kusel"),
        tracks=synthetic_tracks(),
    )
    try:
        assert (await doctor.join())["state"] == "in-call"
        assert (await station.join())["state"] == "waiting"
        waiting = await asyncio.wait_for(doctor.waiting.get(), 10)
        assert station.me is not None and waiting.id == station.me.id
        await doctor.admit(waiting.id)

        await station.wait_for(lambda: len(station.peers()) == 1, timeout=10)
        await doctor.wait_for(lambda: len(doctor.peers()) == 1, timeout=10)
        (to_doctor,) = station.peers()
        (to_station,) = doctor.peers()
        for peer, other in ((doctor, to_station), (station, to_doctor)):
            pc = peer.connection(other)
            await peer.wait_for(partial(connected, peer, other), timeout=15)
            assert f" {interface} " in pc.localDescription.sdp, "no host candidate on the interface"
            dtls = {t.sender.transport.state for t in pc.getTransceivers()}
            assert dtls == {"connected"}, "DTLS nicht verbunden / SRTP keys not derived"
            for kind in ("audio", "video"):
                await peer.wait_for(partial(has_frames, peer, other, kind), timeout=15)

        # The server process carries no media: none of its sockets is a UDP socket.
        udp = udp_inodes()
        assert socket_inodes(server_pid), "the server's sockets are visible (it holds TCP ones)"
        assert not socket_inodes(server_pid) & udp, "Signalling-Server hält UDP / server holds UDP"
        assert socket_inodes(os.getpid()) & udp, "peers hold UDP sockets (positive control)"

        readings = [
            {"seq": i, "code": "8867-4", "value": 60 + i, "unit": "/min"} for i in range(READINGS)
        ]
        for reading in readings:
            await station.send_reading(reading)
        await doctor.send("chat", "Guten Tag / hello")
        received = await collect(doctor, READINGS)
        assert [(m.sender, m.label) for m in received] == [(to_station, "vitals")] * READINGS
        assert [json.loads(m.data) for m in received] == readings
        chat = await collect(station, 1)
        assert chat == [ChannelMessage(to_doctor, "chat", "Guten Tag / hello")]

        await doctor.end()
        await asyncio.wait_for(station.ended.wait(), 10)
        await asyncio.wait_for(doctor.ended.wait(), 10)
    finally:
        await station.close()
        await doctor.close()


@pytest.mark.timeout(60)
def test_call_between_two_aiortc_peers(interface: str, relay: tuple[str, int]) -> None:
    url, pid = relay
    asyncio.run(call(url, pid, interface))


async def mesh(url: str) -> None:
    doctor = Peer(SignallingClient(url, room="apt-2", token="host-doc"), auto_admit=True)
    station = Peer(
        SignallingClient(url, room="apt-2", token="station-1"), tracks=synthetic_tracks()
    )
    relative = Peer(SignallingClient(url, room="apt-2", token="guest-anna"))
    peers = (doctor, station, relative)
    try:
        await doctor.join()
        await station.join()
        await doctor.wait_for(lambda: len(doctor.peers()) == 1, timeout=10)
        await relative.join()  # admitted last: offers to the doctor and the station
        for peer in peers:
            await peer.wait_for(partial(peer_count, peer, 2), timeout=10)
        assert station.me is not None
        for peer, other in ((doctor, station.me.id), (relative, station.me.id)):
            await peer.wait_for(partial(connected, peer, other), timeout=15)
            await peer.wait_for(partial(has_frames, peer, other, "video"), timeout=15)
            assert peer.frames(other, "audio") > 0
        # Data-only peers send no media: the station receives none from the relative.
        assert relative.me is not None
        assert station.frames(relative.me.id, "video") == 0

        await station.send_reading({"seq": 1, "code": "8867-4", "value": 72})
        for peer in (doctor, relative):
            (message,) = await collect(peer, 1)
            assert (message.sender, message.label) == (station.me.id, "vitals")
            assert json.loads(message.data)["value"] == 72
    finally:
        for peer in peers:
            await peer.close()


@pytest.mark.timeout(60)
def test_mesh_newcomer_offers_to_everyone_in_the_call(
    interface: str, relay: tuple[str, int]
) -> None:
    asyncio.run(mesh(relay[0]))
