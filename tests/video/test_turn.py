"""TURN REST credentials (coturn ``use-auth-secret``) in the welcome, and their configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from pydantic import ValidationError

from medikus.config import Config
from medikus.video_setup import ice_servers
from tests.video.test_hub import Client, run
from video.hub import Hub
from video.turn import TurnCredentials


def test_credentials_are_what_coturn_computes() -> None:
    turn = TurnCredentials(
        ("turns:turn.kusel.example:5349",), b"coturn-secret", 3600, clock=lambda: 1_700_000_000
    )
    (server,) = turn("p-1")
    assert server["username"] == "1700003600:p-1"  # expiry (epoch s) : participant
    # `echo -n 1700003600:p-1 | openssl dgst -sha1 -hmac coturn-secret -binary | base64`
    assert server["credential"] == "ADKVi803jJPa1ZRTOWqkgjZTKy0="
    assert server["urls"] == ["turns:turn.kusel.example:5349"]


def test_every_participant_gets_own_credentials_in_the_welcome() -> None:
    turn = TurnCredentials(("turn:turn.example:3478",), b"s", 600, ("stun:turn.example:3478",))

    async def scenario(_hub: Hub, connect: Callable[..., Awaitable[Client]]) -> None:
        host = await connect("doc")
        guest = await connect("pat")
        first, second = (await host.next())["iceServers"], (await guest.next())["iceServers"]
        assert first[0] == second[0] == {"urls": ["stun:turn.example:3478"]}
        assert first[1]["username"] != second[1]["username"]

    run(scenario, ice_servers=turn)


def test_configuration() -> None:
    config = Config(turn_urls="turn:a:3478, turns:a:5349", turn_secret="x", stun_urls="stun:a:3478")
    servers = ice_servers(config)("p-9")
    assert [s["urls"] for s in servers] == [["stun:a:3478"], ["turn:a:3478", "turns:a:5349"]]
    assert ice_servers(Config())("p-9") == []  # nothing configured: host candidates only (LAN)
    with pytest.raises(ValidationError, match="MEDIKUS_TURN_SECRET"):
        Config(turn_urls="turn:a:3478")
