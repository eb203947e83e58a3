"""Keeps one configured device connected: connect (pair), read its information, run its profiles.

When the link ends (device switched off, out of range, refused) the connection is tried again
after an exponential back-off. The state is changed only through ``_set_state``, which tells the
observer (the care-staff UI).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, tzinfo

from devices.errors import AttError, LinkError
from devices.link import Link
from devices.profiles.base import Profile, ReadingSink, Session
from devices.profiles.device_information import DeviceInformation, read_device_information

_log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
_LOST_BOND = {0x05, 0x0F}  # ATT insufficient authentication / insufficient encryption


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"  # not yet started
    CONNECTING = "connecting"  # scanning for the device, connecting, pairing
    DOWNLOADING = "downloading"  # reading device information, subscribing, RACP download
    CONNECTED = "connected"  # waiting for measurements
    WAITING = "waiting"  # back-off before the next attempt
    STOPPED = "stopped"


StateObserver = Callable[[str, ConnectionState], None]
InformationObserver = Callable[[DeviceInformation], Awaitable[None]]


class Backoff:
    """Exponential back-off: ``initial`` · 2ⁿ seconds, at most ``maximum``; reset on success."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        delay: float = min(self.initial * 2.0**self.failures, self.maximum)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class DeviceConnection:
    """One device's connection loop; ``run()`` until ``stop()``.

    ``profiles`` are the candidate procedures; those whose characteristic the device offers
    run on every connection. ``link_factory`` makes a fresh :class:`Link` per attempt.
    """

    def __init__(
        self,
        address: str,
        *,
        profiles: Sequence[Profile],
        sink: ReadingSink,
        clock: Callable[[], datetime],
        device_zone: tzinfo,
        pair: bool = False,
        link_factory: Callable[[], Link] | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        observer: StateObserver | None = None,
        on_information: InformationObserver | None = None,
        clock_tolerance: timedelta = timedelta(seconds=2),
    ) -> None:
        self.address = address.upper()
        self._profiles = tuple(profiles)
        self._sink = sink
        self._clock = clock
        self._zone = device_zone
        self._pair = pair
        self._link_factory = link_factory or (lambda: Link(clock=clock))
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._observer = observer
        self._on_information = on_information
        self._tolerance = clock_tolerance
        self._stopping = asyncio.Event()
        self._link: Link | None = None
        self._connecting: asyncio.Future[None] | None = None
        self.state = ConnectionState.DISCONNECTED
        self.information: DeviceInformation | None = None
        self.last_error: str | None = None

    async def run(self) -> None:
        """Connects, and reconnects after each loss, until :meth:`stop`."""
        try:
            while not self._stopping.is_set():
                await self._session()
                if not self._stopping.is_set():
                    await self._wait(self._backoff.next_delay())
        finally:
            self._set_state(ConnectionState.STOPPED)

    async def stop(self) -> None:
        """Ends the loop: a back-off wait ends at once, a live link is disconnected."""
        self._stopping.set()
        if self._connecting is not None:
            self._connecting.cancel()
        link = self._link
        if link is not None:
            await link.disconnect()

    async def _session(self) -> None:
        self._set_state(ConnectionState.CONNECTING)
        try:
            async with self._link_factory() as link:
                self._link = link
                if self._stopping.is_set():
                    return
                self._connecting = asyncio.ensure_future(
                    link.connect(self.address, pair=self._pair)
                )
                try:
                    await self._connecting
                except asyncio.CancelledError:
                    if self._stopping.is_set():  # stop() while scanning or pairing
                        return
                    raise
                self._backoff.reset()
                self.last_error = None
                try:
                    await self._serve(link)
                except AttError as exc:
                    await self._forget_lost_bond(link, exc)
                    raise
        except LinkError as exc:
            self.last_error = str(exc)
            _log.warning("%s", exc)
        except Exception as exc:  # a failing sink or profile must not end the station
            self.last_error = repr(exc)
            _log.exception("%s: Sitzung abgebrochen / session failed", self.address)
        finally:
            self._link = None
            self._connecting = None

    async def _serve(self, link: Link) -> None:
        self._set_state(ConnectionState.DOWNLOADING)
        info = await read_device_information(
            link, clock=self._clock, zone=self._zone, tolerance=self._tolerance
        )
        self.information = info
        if self._on_information is not None:
            await self._on_information(info)
        session = Session(
            link=link,
            sink=self._sink,
            device_time_offset=info.device_time_offset,
            device_time_read_at=info.device_time_read_at,
        )
        for profile in self._profiles:
            if profile.applies(link):
                _log.info("%s: Profil / profile %s", self.address, profile.name)
                await profile.start(session)
        self._set_state(ConnectionState.CONNECTED)
        await link.wait_disconnected()

    async def _forget_lost_bond(self, link: Link, exc: AttError) -> None:
        """A paired device that answers "insufficient authentication/encryption" has lost its
        keys (reset): drop BlueZ's stale bond so that the next attempt pairs again."""
        if not (self._pair and exc.code in _LOST_BOND and link.is_connected):
            return
        _log.warning("%s: Kopplung verloren, neu koppeln / bond lost, pairing again", self.address)
        try:
            await link.unpair()
        except LinkError as failed:
            _log.warning("%s", failed)

    async def _wait(self, delay: float) -> None:
        self._set_state(ConnectionState.WAITING)
        sleeping = asyncio.ensure_future(self._sleep(delay))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            stopping.cancel()

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        _log.info("%s: %s → %s", self.address, self.state.value, state.value)
        self.state = state
        if self._observer is not None:
            self._observer(self.address, state)
