"""The WebSocket endpoint /video/ws (FastAPI/Starlette stay in this module).

See notes/design_video.md; https://www.rfc-editor.org/rfc/rfc6455 (close code 1008).
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from video.hub import Allowed, Authenticate, C, Hub


class _Socket:
    """A Starlette WebSocket as the hub's Connection."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive(self) -> str | bytes | None:
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        await self._ws.send_text(text)

    async def close(self, code: int) -> None:
        if self._ws.application_state is not WebSocketState.DISCONNECTED:
            with contextlib.suppress(RuntimeError):
                await self._ws.close(code)


def install_video(
    app: FastAPI, hub: Hub, authenticate: Authenticate[C], allowed: Allowed[C]
) -> None:
    """Mounts the signalling endpoint ``/video/ws`` (the token comes in the hello frame, never
    in the URL, which ends up in logs)."""

    @app.websocket("/video/ws")
    async def video_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        socket = _Socket(websocket)
        try:
            await hub.serve(socket, authenticate, allowed)
        finally:
            await socket.close(1000)
