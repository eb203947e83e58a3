"""Time-limited TURN credentials (the "TURN REST API", draft-uberti-behave-turn-rest-00), as
coturn checks them with ``use-auth-secret`` / ``static-auth-secret``.

TURN relays media it cannot read (DTLS-SRTP stays end to end), for participants whose network
blocks direct UDP paths. Each participant gets its own credentials at the hello; they expire
after ``ttl_s`` and name the participant, so a leaked credential is short-lived and traceable.
https://datatracker.ietf.org/doc/html/draft-uberti-behave-turn-rest-00#section-2.2
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IceServers", "TurnCredentials", "static_ice_servers"]

IceServers = Callable[[str], list[dict[str, Any]]]
"""The ICE servers to offer one participant (its id): the welcome's ``iceServers``."""


def static_ice_servers(servers: Sequence[dict[str, Any]] = ()) -> IceServers:
    """The same servers for everyone (STUN only, or none on a LAN)."""
    fixed = [dict(s) for s in servers]
    return lambda _participant: [dict(s) for s in fixed]


@dataclass(frozen=True)
class TurnCredentials:
    """``urls`` (turn:/turns:) with credentials made from ``secret``; ``stun`` without any."""

    urls: tuple[str, ...]
    secret: bytes = field(repr=False)
    ttl_s: int = 3600
    stun: tuple[str, ...] = ()
    clock: Callable[[], float] = time.time

    def __call__(self, participant: str) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = [{"urls": list(self.stun)}] if self.stun else []
        if self.urls:
            username = f"{int(self.clock()) + self.ttl_s}:{participant}"
            digest = hmac.new(self.secret, username.encode(), hashlib.sha1).digest()
            credential = base64.b64encode(digest).decode("ascii")
            servers.append(
                {"urls": list(self.urls), "username": username, "credential": credential}
            )
        return servers
