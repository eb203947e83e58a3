"""The Bluetooth LE link: bleak (BlueZ over D-Bus) behind the station's own errors.

This is the only module of ``devices`` that imports bleak
(https://bleak.readthedocs.io/en/latest/api/client.html). bleak's exceptions are mapped here:
an ATT error response becomes :class:`~devices.errors.AttError` with its code, everything else
that goes wrong on the link (D-Bus errors, time-outs, a lost connection) becomes
:class:`~devices.errors.LinkError`.

Notifications and indications are handed from bleak's callback (which must not block) to one
queue per link; a single task delivers them to the subscribers in arrival order, awaiting each
subscriber, so a profile can store a reading durably before the next one is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from bleak import BleakAdapter, BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from dbus_fast.errors import DBusError

from devices.errors import AttError, LinkError

_log = logging.getLogger(__name__)
T = TypeVar("T")

NotifyCallback = Callable[[bytes, datetime], Awaitable[None]]
"""Receives one notification/indication payload and the station time it arrived."""

_AUTH_ERRORS = {
    "org.bluez.Error.AuthenticationFailed",
    "org.bluez.Error.AuthenticationRejected",
    "org.bluez.Error.AuthenticationCanceled",
    "org.bluez.Error.AuthenticationTimeout",
}
_REFUSALS = {"org.bluez.Error.NotPermitted", "org.bluez.Error.NotAuthorized"}
_READ_NOT_PERMITTED = 0x02
_WRITE_NOT_PERMITTED = 0x03
# Everything below bleak that can surface when BlueZ or the bus goes away mid-call.
_TRANSPORT_ERRORS = (BleakError, DBusError, EOFError, ConnectionError, AssertionError)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Advertisement:
    """One device seen while scanning."""

    address: str
    name: str | None
    service_uuids: tuple[str, ...]
    rssi: int | None
    # bleak's handle on the BlueZ object: connecting with it skips a second scan.
    device: Any = field(default=None, compare=False, repr=False)


async def scan(timeout: float, services: Collection[str] = ()) -> list[Advertisement]:
    """Scans for ``timeout`` seconds; with ``services``, only devices advertising one of them."""
    wanted = {s.lower() for s in services}
    try:
        if wanted:
            found = await BleakScanner.discover(
                timeout, return_adv=True, service_uuids=sorted(wanted)
            )
        else:
            found = await BleakScanner.discover(timeout, return_adv=True)
    except _TRANSPORT_ERRORS as exc:
        raise LinkError(f"Suche fehlgeschlagen / scan failed: {exc}") from exc
    adverts = [
        Advertisement(
            address=device.address.upper(),
            name=data.local_name or device.name,
            service_uuids=tuple(u.lower() for u in data.service_uuids),
            rssi=data.rssi,
            device=device,
        )
        for device, data in found.values()
    ]
    return [a for a in adverts if not wanted or wanted & set(a.service_uuids)]


@contextlib.contextmanager
def _mapped(what: str, address: str, refused: int | None = None) -> Iterator[None]:
    """Translates bleak/D-Bus failures of one operation into the station's errors.

    ``refused`` is the ATT code reported when BlueZ answers NotPermitted/NotAuthorized without
    one (it does so for "read/write not permitted" and for requests needing a bond).
    """
    try:
        yield
    except BleakGATTProtocolError as exc:
        code = int(exc.code)
        raise AttError(
            code,
            f"{address}: {what}: Gerät meldet ATT-Fehler 0x{code:02X} / "
            f"device answered ATT error 0x{code:02X}",
        ) from exc
    except BleakDeviceNotFoundError as exc:
        raise LinkError(
            f"{address}: Gerät nicht in Reichweite / device not found (out of range)"
        ) from exc
    except BleakDBusError as exc:
        if refused is not None and exc.dbus_error in _REFUSALS:
            raise AttError(
                refused, f"{address}: {what}: abgelehnt / refused ({exc.dbus_error})"
            ) from exc
        if exc.dbus_error in _AUTH_ERRORS:
            raise LinkError(
                f"{address}: Kopplung abgelehnt – PIN falsch? / pairing refused – wrong PIN? "
                f"({exc.dbus_error})"
            ) from exc
        raise LinkError(f"{address}: {what} fehlgeschlagen / failed: {exc}") from exc
    except TimeoutError as exc:
        raise LinkError(f"{address}: {what}: Zeitüberschreitung / timed out") from exc
    except _TRANSPORT_ERRORS as exc:
        raise LinkError(f"{address}: {what} fehlgeschlagen / failed: {exc!r}") from exc


class Link:
    """One connection to one device; use as ``async with Link() as link: await link.connect(…)``.

    ``clock`` stamps each notification on arrival. ``timeout`` bounds connecting (including the
    scan bleak makes when it has no advertisement, and pairing); ``io_timeout`` bounds each
    read, write and (un)subscription.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utc_now,
        timeout: float = 30.0,
        io_timeout: float = 10.0,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._io_timeout = io_timeout
        self._client: BleakClient | None = None
        self._address = ""
        self._queue: asyncio.Queue[tuple[NotifyCallback, bytes, datetime] | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        self._failure: BaseException | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    @property
    def address(self) -> str:
        return self._address

    @property
    def is_connected(self) -> bool:
        return self._client is not None and self._client.is_connected and not self._ended.is_set()

    async def connect(self, target: str | Advertisement, *, pair: bool = False) -> None:
        """Connects (pairing first when ``pair`` and not yet bonded) and resolves the services."""
        if self._pump is not None or self._ended.is_set():  # one connection per Link
            raise LinkError(f"{self._address}: Link schon benutzt / link already used")
        address = target if isinstance(target, str) else target.address
        device = getattr(target, "device", None)
        self._address = address.upper()
        if device is None:
            # After a station crash BlueZ still holds the link: a connected device does not
            # advertise, so a scan would never find it; take over the existing connection.
            device = await _already_connected(self._address)
        client = BleakClient(
            device if isinstance(device, BLEDevice) else self._address,
            self._on_disconnected,
            timeout=self._timeout,
            pair=pair,
        )
        try:
            with _mapped("Verbinden / connect", self._address):
                # bleak bounds its own steps by ``timeout``; this also bounds a hung D-Bus call.
                await asyncio.wait_for(client.connect(), self._timeout + 5)
        except BaseException:
            self._ended.set()
            raise
        self._client = client
        self._pump = asyncio.create_task(self._deliver(), name=f"link-{self._address}")

    async def disconnect(self) -> None:
        """Disconnects; notifications that already arrived are still delivered first."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            with _mapped("Trennen / disconnect", self._address):
                await asyncio.wait_for(client.disconnect(), self._io_timeout)
        except LinkError as exc:
            _log.warning("%s", exc)
        finally:
            self._queue.put_nowait(None)
            if self._pump is not None:
                await asyncio.gather(self._pump, return_exceptions=True)

    async def unpair(self) -> None:
        """Removes the bond (BlueZ forgets the device and disconnects); the next connect with
        ``pair=True`` pairs anew — for a device that lost its keys (reset, battery change)."""
        client = self._bleak()
        with _mapped("Entkoppeln / unpair", self._address):
            await asyncio.wait_for(client.unpair(), self._io_timeout)

    def service_uuids(self) -> frozenset[str]:
        return frozenset(s.uuid for s in self._bleak().services)

    def has(self, characteristic: str) -> bool:
        client = self._client
        if client is None or not client.is_connected:
            return False
        return self._characteristic_or_none(client, characteristic) is not None

    def properties(self, characteristic: str) -> frozenset[str]:
        """GATT properties ("read", "write", "notify", "indicate" …), empty when absent."""
        found = self._characteristic_or_none(self._bleak(), characteristic)
        return frozenset(found.properties) if found is not None else frozenset()

    async def read(self, characteristic: str) -> bytes:
        client = self._bleak()
        with _mapped(f"Lesen / read {characteristic}", self._address, _READ_NOT_PERMITTED):
            return bytes(
                await asyncio.wait_for(client.read_gatt_char(characteristic), self._io_timeout)
            )

    async def write(self, characteristic: str, data: bytes, *, response: bool = True) -> None:
        client = self._bleak()
        with _mapped(f"Schreiben / write {characteristic}", self._address, _WRITE_NOT_PERMITTED):
            await asyncio.wait_for(
                client.write_gatt_char(characteristic, data, response=response), self._io_timeout
            )

    async def start_notify(self, characteristic: str, callback: NotifyCallback) -> None:
        """Subscribes; ``callback`` is awaited for each payload, in arrival order."""
        client = self._bleak()

        def on_value(_: BleakGATTCharacteristic, data: bytearray) -> None:
            # bleak calls this from its D-Bus message handler: only enqueue here.
            self._queue.put_nowait((callback, bytes(data), self._clock()))

        with _mapped(f"Abonnieren / subscribe {characteristic}", self._address):
            await asyncio.wait_for(client.start_notify(characteristic, on_value), self._io_timeout)

    async def stop_notify(self, characteristic: str) -> None:
        client = self._bleak()
        with _mapped(f"Abo beenden / unsubscribe {characteristic}", self._address):
            await asyncio.wait_for(client.stop_notify(characteristic), self._io_timeout)

    async def wait_for(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Awaits ``awaitable`` unless the link ends first (LinkError) or ``timeout`` passes."""
        task = asyncio.ensure_future(awaitable)
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({task, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # our caller was cancelled: take the awaitable down with it
            task.cancel()
            raise
        finally:
            ended.cancel()
        if task.done():
            return task.result()
        task.cancel()
        self._raise_failure()
        if self._ended.is_set():
            raise LinkError(f"{self._address}: Verbindung getrennt / disconnected")
        raise LinkError(f"{self._address}: keine Antwort / no answer within {timeout} s")

    async def wait_disconnected(self) -> None:
        """Returns once the link ended and every received notification was delivered.

        Re-raises what a notification callback raised (e.g. the outbox could not store).
        """
        await self._ended.wait()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _bleak(self) -> BleakClient:
        if self._client is None or self._ended.is_set():
            raise LinkError(f"{self._address or 'link'}: nicht verbunden / not connected")
        return self._client

    @staticmethod
    def _characteristic_or_none(
        client: BleakClient, characteristic: str
    ) -> BleakGATTCharacteristic | None:
        try:
            return client.services.get_characteristic(characteristic)
        except BleakError:  # no service discovery (yet) or several with this UUID
            return None

    def _on_disconnected(self, _: BleakClient) -> None:
        _log.info("%s: getrennt / disconnected", self._address)
        self._queue.put_nowait(None)  # after what is queued: those are still delivered

    async def _deliver(self) -> None:
        try:
            while (item := await self._queue.get()) is not None:
                callback, data, received_at = item
                await callback(data, received_at)
        except Exception as exc:  # the subscriber failed: stop taking data, report it
            _log.exception("%s: Verarbeitung fehlgeschlagen / delivery failed", self._address)
            self._failure = exc
            client = self._client
            if client is not None:
                with contextlib.suppress(*_TRANSPORT_ERRORS, TimeoutError):
                    await asyncio.wait_for(client.disconnect(), self._io_timeout)
        finally:
            self._ended.set()


# The health services the station reads (a connected device lists at least one of them).
_HEALTH_SERVICES = [f"0000{n:04x}-0000-1000-8000-00805f9b34fb" for n in (
    0x1808, 0x1809, 0x180D, 0x1810, 0x181D, 0x1822
)]  # fmt: skip


async def _already_connected(address: str) -> BLEDevice | None:
    """The device if BlueZ has it connected already (no scan needed), else None."""
    try:
        adapter = await BleakAdapter.get()
        connected = await adapter.get_connected_devices(_HEALTH_SERVICES)
    except (BleakError, OSError, ValueError) as exc:
        _log.debug("connected devices unknown: %s", exc)
        return None
    return next((d for d in connected if d.address.upper() == address), None)
