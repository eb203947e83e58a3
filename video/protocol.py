"""The signalling messages of /video/ws: parsing client frames, building server frames.

See notes/design_video.md ("Wire protocol") and https://www.rfc-editor.org/rfc/rfc8829 (JSEP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

MAX_FRAME_BYTES: Final = 64 * 1024
MAX_NAME_CHARS: Final = 80

ErrorCode = Literal[
    "bad-message",
    "unauthorized",
    "forbidden",
    "room-full",
    "room-ended",
    "rate-limited",
    "unknown-peer",
]


class VideoError(Exception):
    """Base error of the video package: a wire error code and a German / English message."""

    code: ErrorCode = "bad-message"

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProtocolError(VideoError):
    """A frame that is not a valid signalling message."""


@dataclass(frozen=True, slots=True)
class Hello:
    room: str
    token: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Admit:
    participant: str


@dataclass(frozen=True, slots=True)
class Signal:
    """offer, answer or candidate: relayed to ``to`` with ``from`` added."""

    kind: Literal["offer", "answer", "candidate"]
    to: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Leave:
    pass


@dataclass(frozen=True, slots=True)
class End:
    pass


Message = Hello | Admit | Signal | Leave | End


def parse(raw: str | bytes) -> Message:
    """One client frame as a message; raises :class:`ProtocolError`."""
    if not isinstance(raw, str):
        raise ProtocolError("Nur Textnachrichten erlaubt / text frames only")
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise ProtocolError("Nachricht zu groß / message larger than 64 KiB")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("Kein gültiges JSON / not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("JSON-Objekt erwartet / a JSON object expected")
    kind = data.get("type")
    if kind == "hello":
        return Hello(_text(data, "room"), _text(data, "token"), _name(data))
    if kind == "admit":
        return Admit(_text(data, "participant"))
    if kind in ("offer", "answer"):
        return Signal(kind, _text(data, "to"), {"sdp": _text(data, "sdp")})
    if kind == "candidate":
        return Signal("candidate", _text(data, "to"), {"candidate": _candidate(data)})
    if kind == "leave":
        return Leave()
    if kind == "end":
        return End()
    raise ProtocolError(f"Unbekannter Nachrichtentyp / unknown message type {str(kind)[:40]!r}")


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"Feld {key!r} fehlt oder ist kein Text / {key!r} missing or not text")
    return value


def _name(data: dict[str, Any]) -> str | None:
    value = data.get("name")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError("Name ist kein Text / name is not text")
    return value.strip()[:MAX_NAME_CHARS]


def _candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    if "candidate" not in data:
        raise ProtocolError("Feld 'candidate' fehlt / 'candidate' missing")
    value = data["candidate"]
    if value is None:  # end of candidates
        return None
    if not isinstance(value, dict) or not isinstance(value.get("candidate"), str):
        raise ProtocolError("Ungültiger ICE-Kandidat / malformed ICE candidate")
    mid, index = value.get("sdpMid"), value.get("sdpMLineIndex")
    if mid is not None and not isinstance(mid, str):
        raise ProtocolError("Ungültiges sdpMid / malformed sdpMid")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise ProtocolError("Ungültiger sdpMLineIndex / malformed sdpMLineIndex")
    return {"candidate": value["candidate"], "sdpMid": mid, "sdpMLineIndex": index}


def serialise(message: dict[str, Any]) -> str:
    """A server frame as JSON text."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def error(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def relayed(signal: Signal, sender: str) -> dict[str, Any]:
    """The frame the addressee of an offer/answer/candidate receives."""
    return {"type": signal.kind, "from": sender, "to": signal.to, **signal.payload}
