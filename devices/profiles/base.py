"""What every GATT profile procedure needs: the link port, the reading sink, the session.

Profiles follow the Bluetooth SIG profile specifications (https://www.bluetooth.com/specifications/specs/):
a profile knows which characteristics to subscribe to and which procedures to run on them; it
never parses measurements (the station does that when it stores a reading) except where the
procedure itself needs a field (the glucose record sequence number).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from devices.reading import Reading

T = TypeVar("T")

ReadingSink = Callable[[Reading], Awaitable[None]]
"""Stores one reading durably (the station's outbox); returns only once it is stored."""

NotifyCallback = Callable[[bytes, datetime], Awaitable[None]]
"""Receives one notification/indication payload and the station time it arrived."""


class GlucoseCursor(Protocol):
    """The last glucose record sequence number stored for a device (advanced by the sink)."""

    def last_sequence(self, address: str) -> int | None: ...


class GattLink(Protocol):
    """The part of :class:`devices.link.Link` that profiles use (UUIDs are full, lower case)."""

    @property
    def address(self) -> str: ...

    def has(self, characteristic: str) -> bool: ...

    def properties(self, characteristic: str) -> frozenset[str]: ...

    async def read(self, characteristic: str) -> bytes: ...

    async def write(self, characteristic: str, data: bytes, *, response: bool = True) -> None: ...

    async def start_notify(self, characteristic: str, callback: NotifyCallback) -> None: ...

    async def stop_notify(self, characteristic: str) -> None: ...

    async def wait_for(self, awaitable: Awaitable[T], timeout: float | None = None) -> T: ...


@dataclass(frozen=True)
class Session:
    """One connection's context: where readings go and the device clock's offset."""

    link: GattLink
    sink: ReadingSink
    device_time_offset: timedelta | None = None
    device_time_read_at: datetime | None = None  # when the offset was measured (station clock)

    def reading(
        self, characteristic: str, raw: bytes, received_at: datetime, sequence: int | None = None
    ) -> Reading:
        return Reading(
            device_address=self.link.address,
            characteristic=characteristic,
            raw=raw,
            received_at=received_at,
            device_time_offset=self.device_time_offset,
            sequence=sequence,
            clock_read_at=self.device_time_read_at,
        )


class Profile(Protocol):
    """A service's procedure: ``start`` subscribes (and downloads) and returns; readings then
    keep flowing to the sink until the link ends."""

    @property
    def name(self) -> str: ...

    def applies(self, link: GattLink) -> bool:
        """Whether the connected device offers this service's mandatory characteristic."""
        ...

    async def start(self, session: Session) -> None: ...


@dataclass(frozen=True)
class Subscription:
    """A profile that forwards the payloads of its measurement characteristics as readings.

    ``primary`` must be present (it decides :meth:`applies`); ``optional`` characteristics are
    subscribed to when the device has them (intermediate values, continuous measurements).
    """

    name: str
    primary: str
    optional: tuple[str, ...] = ()

    def applies(self, link: GattLink) -> bool:
        return link.has(self.primary)

    async def start(self, session: Session) -> None:
        for characteristic in (self.primary, *self.optional):
            if session.link.has(characteristic):
                await session.link.start_notify(characteristic, _forward(session, characteristic))


def _forward(session: Session, characteristic: str) -> NotifyCallback:
    async def forward(raw: bytes, received_at: datetime) -> None:
        await session.sink(session.reading(characteristic, raw, received_at))

    return forward
