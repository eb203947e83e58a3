"""Glucose Profile: download of stored records through the Record Access Control Point.

Spec: GLP 1.0.1 / GLS 1.0.1 §3.3 (https://www.bluetooth.com/specifications/specs/glucose-profile-1-0-1/).
Notifications on 2A18 (and 2A34) and indications on 2A52 are enabled, then "report stored
records" asks for everything after the last stored sequence number (or for all records the
first time). Each record goes to the sink, and is stored, before the next one is processed; the
sink advances the cursor, so a broken link loses nothing: the next connection asks again from
the cursor.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from devices.errors import AttError, LinkError, ParseError
from devices.gatt import racp, uuids
from devices.profiles.base import GattLink, GlucoseCursor, NotifyCallback, Session

_log = logging.getLogger(__name__)

ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0x80  # GLS §3.3.3: answer to a RACP write while busy
_OP_REPORT = 0x01
_OP_ABORT = 0x03
_DONE = {racp.ResponseCode.SUCCESS, racp.ResponseCode.NO_RECORDS}


def record_sequence(raw: bytes) -> int | None:
    """The sequence number of a 2A18 or 2A34 payload: both start with flags (u8), sequence (u16).

    Read from the fixed header, not the full parse, so that a record the station cannot parse
    still carries its sequence number (and goes to review instead of being asked for forever).
    """
    return int.from_bytes(raw[1:3], "little") if len(raw) >= 3 else None


@dataclass(frozen=True)
class Glucose:
    """The glucose profile; ``cursor`` says where the last download ended (per device)."""

    cursor: GlucoseCursor
    idle_timeout: float = 15.0  # longest silence (no record, no response) during a download
    attempts: int = 3  # RACP requests refused as "procedure already in progress" are retried
    name: str = field(default="glucose", init=False)

    def applies(self, link: GattLink) -> bool:
        return link.has(uuids.GLUCOSE_MEASUREMENT) and link.has(uuids.RECORD_ACCESS_CONTROL_POINT)

    async def start(self, session: Session) -> None:
        await _Download(self, session).run()


class _Download:
    def __init__(self, profile: Glucose, session: Session) -> None:
        self._profile = profile
        self._session = session
        self._link = session.link
        self._responses: asyncio.Queue[racp.RacpResponse] = asyncio.Queue()
        self._activity = 0  # payloads delivered so far: a download that makes progress is alive

    async def run(self) -> None:
        await self._subscribe()
        for attempt in range(1, self._profile.attempts + 1):
            request = self._request()
            try:
                await self._link.write(uuids.RECORD_ACCESS_CONTROL_POINT, request)
            except AttError as exc:
                if (
                    exc.code != ATT_PROCEDURE_ALREADY_IN_PROGRESS
                    or attempt == self._profile.attempts
                ):
                    raise
                _log.info("%s: RACP beschäftigt, Abbruch / busy, aborting", self._link.address)
                await self._abort()
                continue
            response = await self._response(_OP_REPORT)
            if response.code not in _DONE:
                raise LinkError(
                    f"{self._link.address}: Glukose-Download abgelehnt (RACP-Code "
                    f"{response.code}) / glucose download refused"
                )
            _log.info(
                "%s: Glukose-Download fertig / download done (%s)",
                self._link.address,
                response.code,
            )
            return

    def _request(self) -> bytes:
        last = self._profile.cursor.last_sequence(self._link.address)
        if last is None:
            return racp.report_all()
        return racp.report_from(min(last + 1, 0xFFFF))

    async def _subscribe(self) -> None:
        link = self._link
        await link.start_notify(uuids.GLUCOSE_MEASUREMENT, self._store(uuids.GLUCOSE_MEASUREMENT))
        if link.has(uuids.GLUCOSE_MEASUREMENT_CONTEXT):
            context = uuids.GLUCOSE_MEASUREMENT_CONTEXT
            await link.start_notify(context, self._store(context))
        await link.start_notify(uuids.RECORD_ACCESS_CONTROL_POINT, self._on_racp)

    def _store(self, characteristic: str) -> NotifyCallback:
        async def store(raw: bytes, received_at: datetime) -> None:
            reading = self._session.reading(characteristic, raw, received_at, record_sequence(raw))
            await self._session.sink(reading)
            self._activity += 1

        return store

    async def _on_racp(self, raw: bytes, received_at: datetime) -> None:
        self._activity += 1
        try:
            self._responses.put_nowait(racp.parse_response(raw))
        except ParseError as exc:
            _log.warning("%s: RACP-Antwort unlesbar / unreadable: %s", self._link.address, exc)

    async def _abort(self) -> None:
        await self._link.write(uuids.RECORD_ACCESS_CONTROL_POINT, racp.abort())
        await self._response(_OP_ABORT)

    async def _response(self, request_opcode: int) -> racp.RacpResponse:
        """The response to ``request_opcode``; waits while records keep arriving."""
        while True:
            seen = self._activity
            try:
                response = await self._link.wait_for(
                    asyncio.wait_for(self._responses.get(), self._profile.idle_timeout)
                )
            except TimeoutError:
                if self._activity != seen:
                    continue
                raise LinkError(
                    f"{self._link.address}: Messgerät antwortet nicht / meter stopped answering"
                ) from None
            except LinkError:
                if self._responses.empty():
                    raise
                response = self._responses.get_nowait()  # arrived just before the link ended
            if response.request_opcode == request_opcode:
                return response
            _log.info("%s: RACP-Antwort ignoriert / ignored: %s", self._link.address, response)
