"""The station's BlueZ pairing agent (org.bluez.Agent1), answering PIN and passkey requests.

Spec: https://github.com/bluez/bluez/blob/master/doc/org.bluez.Agent.rst and
https://github.com/bluez/bluez/blob/master/doc/org.bluez.AgentManager.rst. bleak has no agent
(https://github.com/hbldh/bleak/pull/1100), so without this one BlueZ cannot pair a meter that
asks for a PIN. Only configured devices are answered; any other device is rejected.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Annotated, Self

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from devices.errors import LinkError

_log = logging.getLogger(__name__)

AGENT_PATH = "/org/medikus/station/agent"
CAPABILITY = "KeyboardDisplay"
_REJECTED = "org.bluez.Error.Rejected"
_DEVICE_PATH = re.compile(r"/dev_((?:[0-9A-Fa-f]{2}_){5}[0-9A-Fa-f]{2})$")

# dbus-fast reads a postponed "-> None" as the literal None, not as "no reply values".
NoReply = Annotated[None, DBusSignature("")]
PasskeyDisplay = Callable[[str, int], None]
"""Shows a passkey the device wants typed in (address, passkey) — for the care-staff UI."""


def address_of(device_path: str) -> str | None:
    """``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`` → ``AA:BB:CC:DD:EE:FF``."""
    match = _DEVICE_PATH.search(device_path)
    return match.group(1).replace("_", ":").upper() if match else None


class _Agent1(ServiceInterface):
    """The D-Bus object BlueZ calls; every answer is decided by ``devices`` (address → PIN)."""

    def __init__(self, devices: Mapping[str, str | None], display: PasskeyDisplay | None) -> None:
        super().__init__("org.bluez.Agent1")
        self._devices = devices
        self._display = display

    def _known(self, device: str) -> str:
        address = address_of(device)
        if address is None or address not in self._devices:
            _log.warning("Kopplung eines unbekannten Geräts abgelehnt / rejected %s", device)
            raise DBusError(_REJECTED, "Gerät nicht konfiguriert / device not configured")
        return address

    def _pin(self, device: str) -> str:
        address = self._known(device)
        pin = self._devices[address]
        if pin is None:
            _log.warning("%s: Gerät will PIN, keine konfiguriert / no PIN configured", address)
            raise DBusError(_REJECTED, "keine PIN konfiguriert / no PIN configured")
        _log.info("%s: PIN übergeben / PIN supplied", address)
        return pin

    @dbus_method()
    def Release(self) -> NoReply:
        _log.info("BlueZ hat den Pairing-Agenten freigegeben / agent released")

    @dbus_method()
    def RequestPinCode(self, device: DBusObjectPath) -> DBusStr:
        return self._pin(device)

    @dbus_method()
    def DisplayPinCode(self, device: DBusObjectPath, pincode: DBusStr) -> NoReply:
        address = self._known(device)
        if self._display is not None and pincode.isdigit():
            self._display(address, int(pincode))

    @dbus_method()
    def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        pin = self._pin(device)
        if not pin.isdigit() or int(pin) > 999_999:
            raise DBusError(_REJECTED, "PIN ist kein Passkey / PIN is not a passkey")
        return int(pin)

    @dbus_method()
    def DisplayPasskey(
        self, device: DBusObjectPath, passkey: DBusUInt32, entered: DBusUInt16
    ) -> NoReply:
        address = self._known(device)
        _log.info("%s: Passkey anzeigen / display passkey (%d digits typed)", address, entered)
        if self._display is not None:
            self._display(address, passkey)

    @dbus_method()
    def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> NoReply:
        # The station has no screen to compare numbers on; a configured device is accepted.
        self._known(device)

    @dbus_method()
    def RequestAuthorization(self, device: DBusObjectPath) -> NoReply:
        self._known(device)

    @dbus_method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> NoReply:
        self._known(device)

    @dbus_method()
    def Cancel(self) -> NoReply:
        _log.info("BlueZ hat die Kopplung abgebrochen / pairing cancelled")


class PairingAgent:
    """Registers the agent as BlueZ's default agent on the system bus until :meth:`close`.

    ``devices`` maps each configured address ("AA:BB:…", upper case) to its PIN or None; it is
    read on every request, so a mapping the station updates takes effect at once.
    ``bus_address`` defaults to ``DBUS_SYSTEM_BUS_ADDRESS`` (else the system socket).
    """

    def __init__(
        self,
        devices: Mapping[str, str | None],
        *,
        display: PasskeyDisplay | None = None,
        bus_address: str | None = None,
        path: str = AGENT_PATH,
    ) -> None:
        self._agent = _Agent1(devices, display)
        self._bus_address = bus_address
        self._path = path
        self._bus: MessageBus | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Exports the agent and makes it BlueZ's default (``KeyboardDisplay``)."""
        bus = MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM)
        try:
            await bus.connect()
            bus.export(self._path, self._agent)
            self._bus = bus
            await self._call("RegisterAgent", "os", [self._path, CAPABILITY])
            await self._call("RequestDefaultAgent", "o", [self._path])
        except (OSError, EOFError, DBusError, LinkError) as exc:
            self._bus = None
            await _leave(bus)
            raise LinkError(
                f"Pairing-Agent nicht registriert / agent not registered: {exc}"
            ) from exc
        except BaseException:
            self._bus = None
            await _leave(bus)
            raise
        _log.info("Pairing-Agent registriert / agent registered at %s", self._path)

    async def close(self) -> None:
        """Unregisters the agent (best effort: BlueZ may already be gone) and leaves the bus."""
        bus = self._bus
        if bus is None:
            return
        try:
            await self._call("UnregisterAgent", "o", [self._path])
        except (OSError, EOFError, DBusError, LinkError) as exc:
            _log.warning("Pairing-Agent nicht abgemeldet / agent not unregistered: %s", exc)
        finally:
            bus.unexport(self._path, self._agent)
            self._bus = None
            await _leave(bus)

    async def _call(self, member: str, signature: str, body: list[str]) -> None:
        if self._bus is None:
            raise LinkError("Pairing-Agent nicht gestartet / agent not started")
        reply = await self._bus.call(
            Message(
                destination="org.bluez",
                path="/org/bluez",
                interface="org.bluez.AgentManager1",
                member=member,
                signature=signature,
                body=body,
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            name = reply.error_name if reply is not None else "no reply"
            detail = reply.body[0] if reply is not None and reply.body else ""
            raise LinkError(f"BlueZ {member}: {name} {detail}".strip())


async def _leave(bus: MessageBus) -> None:
    """Closes the bus connection and waits until its socket is gone (no leaked sockets)."""
    bus.disconnect()
    with contextlib.suppress(Exception):
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
