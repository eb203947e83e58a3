"""The org.bluez D-Bus objects bleak 3.1 talks to (https://github.com/bluez/bluez/tree/master/doc: org.bluez.Adapter, Device, GattService, GattCharacteristic, GattDescriptor, AgentManager)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from dbus_fast import DBusError, Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusStr,
    DBusUInt16,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from devices.simulator.dbus_types import DBusManufacturerData, DBusStrings, NoReply
from devices.simulator.errors import AttError, NotPermitted, SimulatorError
from devices.simulator.model import Characteristic, Peripheral

BLUEZ = "org.bluez"
ERROR = "org.bluez.Error."
ADAPTER_PATH = "/org/bluez/hci0"
CCCD = "00002902-0000-1000-8000-00805f9b34fb"
RSSI_INTERVAL = 0.5  # seconds between advertisement reports while discovering
CONNECT_FAIL_DELAY = 0.5  # how long a connect to an absent device takes to fail
PAIRING_TIMEOUT = 25.0


READ = PropertyAccess.READ
READWRITE = PropertyAccess.READWRITE


def dbus_error(exc: AttError | NotPermitted) -> DBusError:
    """BlueZ's rendering of a GATT failure, as bleak's ``assert_gatt_reply`` parses it."""
    if isinstance(exc, AttError):
        return DBusError(ERROR + "Failed", str(exc))
    return DBusError(ERROR + "NotPermitted", str(exc))


def device_path(address: str) -> str:
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


class AdapterInterface(ServiceInterface):
    """org.bluez.Adapter1 on /org/bluez/hci0: discovery sessions per client."""

    def __init__(self, bluez: BlueZ, address: str) -> None:
        super().__init__("org.bluez.Adapter1")
        self._bluez = bluez
        self._address = address

    @dbus_property(READ, name="Address")
    def address(self) -> DBusStr:
        return self._address

    @dbus_property(READ, name="AddressType")
    def address_type(self) -> DBusStr:
        return "public"

    @dbus_property(READ, name="Name")
    def name_(self) -> DBusStr:
        return "medikus-sim"

    @dbus_property(READ, name="Alias")
    def alias(self) -> DBusStr:
        return "medikus-sim"

    @dbus_property(READ, name="Powered")
    def powered(self) -> DBusBool:
        return True

    @dbus_property(READ, name="Discovering")
    def discovering(self) -> DBusBool:
        return self._bluez.discovering

    @dbus_property(READ, name="Pairable")
    def pairable(self) -> DBusBool:
        return True

    @dbus_property(READ, name="Roles")
    def roles(self) -> DBusStrings:
        return ["central", "peripheral"]

    @dbus_property(READ, name="UUIDs")
    def uuids(self) -> DBusStrings:
        return []

    @dbus_method(name="SetDiscoveryFilter")
    def set_discovery_filter(self, properties: DBusDict) -> NoReply:
        self._bluez.set_discovery_filter(properties)

    @dbus_method(name="StartDiscovery")
    def start_discovery(self) -> NoReply:
        self._bluez.start_discovery()

    @dbus_method(name="StopDiscovery")
    def stop_discovery(self) -> NoReply:
        self._bluez.stop_discovery()

    @dbus_method(name="RemoveDevice")
    def remove_device(self, device: DBusObjectPath) -> NoReply:
        self._bluez.remove_device(device)

    @dbus_method(name="GetDiscoveryFilters")
    def get_discovery_filters(self) -> DBusStrings:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable"]


class AgentManagerInterface(ServiceInterface):
    """org.bluez.AgentManager1 on /org/bluez: who answers PIN and passkey requests."""

    def __init__(self, bluez: BlueZ) -> None:
        super().__init__("org.bluez.AgentManager1")
        self._bluez = bluez

    @dbus_method(name="RegisterAgent")
    def register_agent(self, agent: DBusObjectPath, capability: DBusStr) -> NoReply:
        self._bluez.register_agent(agent, capability)

    @dbus_method(name="UnregisterAgent")
    def unregister_agent(self, agent: DBusObjectPath) -> NoReply:
        self._bluez.unregister_agent(agent)

    @dbus_method(name="RequestDefaultAgent")
    def request_default_agent(self, agent: DBusObjectPath) -> NoReply:
        self._bluez.request_default_agent(agent)


class DeviceInterface(ServiceInterface):
    """org.bluez.Device1: advertisement data and connection state of one peripheral."""

    def __init__(self, device: DeviceObject) -> None:
        super().__init__("org.bluez.Device1")
        self._device = device
        self._peripheral = device.peripheral

    @dbus_property(READ, name="Address")
    def address(self) -> DBusStr:
        return self._peripheral.address

    @dbus_property(READ, name="AddressType")
    def address_type(self) -> DBusStr:
        return "public"

    @dbus_property(READ, name="Name")
    def name_(self) -> DBusStr:
        return self._peripheral.name

    @dbus_property(READ, name="Alias")
    def alias(self) -> DBusStr:
        return self._peripheral.name

    @dbus_property(READ, name="Adapter")
    def adapter(self) -> DBusObjectPath:
        return ADAPTER_PATH

    @dbus_property(READ, name="UUIDs")
    def uuids(self) -> DBusStrings:
        if self._device.connected:
            return [service.uuid for service in self._peripheral.services]
        return list(self._peripheral.advertised_uuids)

    @dbus_property(READ, name="RSSI")
    def rssi(self) -> DBusInt16:
        return self._device.rssi

    @dbus_property(READ, name="ManufacturerData")
    def manufacturer_data(self) -> DBusManufacturerData:
        return {
            key: Variant("ay", value) for key, value in self._peripheral.manufacturer_data.items()
        }

    @dbus_property(READ, name="ServiceData")
    def service_data(self) -> DBusDict:
        return {}

    @dbus_property(READ, name="Connected")
    def connected(self) -> DBusBool:
        return self._device.connected

    @dbus_property(READ, name="ServicesResolved")
    def services_resolved(self) -> DBusBool:
        return self._device.services_resolved

    @dbus_property(READ, name="Paired")
    def paired(self) -> DBusBool:
        return self._peripheral.paired

    @dbus_property(READ, name="Bonded")
    def bonded(self) -> DBusBool:
        return self._peripheral.paired

    @dbus_property(READWRITE, name="Trusted")
    def trusted(self) -> DBusBool:
        return self._device.trusted

    @trusted.setter  # type: ignore[no-redef]  # bleak sets Trusted before Pair
    def trusted(self, value: DBusBool) -> None:
        self._device.trusted = value
        self.emit_properties_changed({"Trusted": value})

    @dbus_property(READ, name="Blocked")
    def blocked(self) -> DBusBool:
        return False

    @dbus_property(READ, name="LegacyPairing")
    def legacy_pairing(self) -> DBusBool:
        return False

    @dbus_method(name="Connect")
    async def connect(self) -> NoReply:
        await self._device.connect()

    @dbus_method(name="Disconnect")
    def disconnect(self) -> NoReply:
        self._device.disconnect()

    @dbus_method(name="Pair")
    def pair(self) -> NoReply:
        """Never runs: BlueZ.observe answers Pair itself (it needs the caller and awaits the agent)."""
        raise DBusError(ERROR + "Failed", "Pair is handled by the simulator")

    @dbus_method(name="CancelPairing")
    def cancel_pairing(self) -> NoReply:
        self._device.cancel_pairing()


class GattServiceInterface(ServiceInterface):
    def __init__(self, uuid: str, device_path: str) -> None:
        super().__init__("org.bluez.GattService1")
        self._uuid = uuid
        self._device_path = device_path

    @dbus_property(READ, name="UUID")
    def uuid(self) -> DBusStr:
        return self._uuid

    @dbus_property(READ, name="Device")
    def device(self) -> DBusObjectPath:
        return self._device_path

    @dbus_property(READ, name="Primary")
    def primary(self) -> DBusBool:
        return True


class GattCharacteristicInterface(ServiceInterface):
    """org.bluez.GattCharacteristic1; no NotifyAcquired, so bleak stays on StartNotify."""

    def __init__(self, device: DeviceObject, char: Characteristic, service_path: str) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self._device = device
        self._char = char
        self._service_path = service_path

    @dbus_property(READ, name="UUID")
    def uuid(self) -> DBusStr:
        return self._char.uuid

    @dbus_property(READ, name="Service")
    def service(self) -> DBusObjectPath:
        return self._service_path

    @dbus_property(READ, name="Flags")
    def flags(self) -> DBusStrings:
        return list(self._char.flags)

    @dbus_property(READ, name="Value")
    def value(self) -> DBusBytes:
        return self._char.value

    @dbus_property(READ, name="Notifying")
    def notifying(self) -> DBusBool:
        return self._device.subscribed(self._char.uuid)

    @dbus_property(READ, name="MTU")
    def mtu(self) -> DBusUInt16:
        return 23

    @dbus_method(name="ReadValue")
    def read_value(self, options: DBusDict) -> DBusBytes:
        try:
            value = self._device.peripheral.read(self._char.uuid)
        except (AttError, NotPermitted) as exc:
            raise dbus_error(exc) from exc
        # BlueZ updates Value on a read, so a subscribed client also sees it as a notification
        self.emit_properties_changed({"Value": value})
        return value

    @dbus_method(name="WriteValue")
    def write_value(self, value: DBusBytes, options: DBusDict) -> NoReply:
        try:
            self._device.peripheral.write(self._char.uuid, value)
        except (AttError, NotPermitted) as exc:
            raise dbus_error(exc) from exc

    @dbus_method(name="StartNotify")
    def start_notify(self) -> NoReply:
        self._device.start_notify(self._char)

    @dbus_method(name="StopNotify")
    def stop_notify(self) -> NoReply:
        self._device.stop_notify(self._char)

    def emit_value(self, payload: bytes) -> None:
        self.emit_properties_changed({"Value": payload})


class GattDescriptorInterface(ServiceInterface):
    """The Client Characteristic Configuration descriptor (0x2902), managed by BlueZ itself."""

    def __init__(self, device: DeviceObject, char: Characteristic, char_path: str) -> None:
        super().__init__("org.bluez.GattDescriptor1")
        self._device = device
        self._char = char
        self._char_path = char_path

    @dbus_property(READ, name="UUID")
    def uuid(self) -> DBusStr:
        return CCCD

    @dbus_property(READ, name="Characteristic")
    def characteristic(self) -> DBusObjectPath:
        return self._char_path

    @dbus_property(READ, name="Value")
    def value(self) -> DBusBytes:
        return self._current()

    @dbus_property(READ, name="Flags")
    def flags(self) -> DBusStrings:
        return ["read", "write"]

    def _current(self) -> bytes:
        if not self._device.subscribed(self._char.uuid):
            return b"\x00\x00"
        return b"\x01\x00" if "notify" in self._char.flags else b"\x02\x00"

    @dbus_method(name="ReadValue")
    def read_value(self, options: DBusDict) -> DBusBytes:
        return self._current()

    @dbus_method(name="WriteValue")
    def write_value(self, value: DBusBytes, options: DBusDict) -> NoReply:
        raise DBusError(ERROR + "NotPermitted", "Write not permitted")


class DeviceObject:
    """One peripheral as BlueZ shows it: Device1 plus its GATT objects while connected."""

    def __init__(self, bluez: BlueZ, peripheral: Peripheral) -> None:
        self.bluez = bluez
        self.peripheral = peripheral
        self.path = device_path(peripheral.address)
        self.interface = DeviceInterface(self)
        self.exported = False
        self.connected = False
        self.services_resolved = False
        self.trusted = False
        self.rssi = peripheral.rssi
        self.subscribers: dict[str, set[str]] = {}
        self._pairing: asyncio.Task[None] | None = None
        self._gatt: list[tuple[str, ServiceInterface]] = []
        self._chars: dict[str, GattCharacteristicInterface] = {}
        self._build_gatt()

    def _build_gatt(self) -> None:
        """Object paths carry the ATT handles: service000a/char000b(value 000c)/desc000d."""
        handle = 0x000A
        for service in self.peripheral.services:
            service_path = f"{self.path}/service{handle:04x}"
            self._gatt.append((service_path, GattServiceInterface(service.uuid, self.path)))
            for char in service.characteristics:
                char_path = f"{service_path}/char{handle + 1:04x}"
                interface = GattCharacteristicInterface(self, char, service_path)
                self._gatt.append((char_path, interface))
                self._chars[char.uuid] = interface
                handle += 2
                if char.notifies:
                    handle += 1
                    descriptor = GattDescriptorInterface(self, char, char_path)
                    self._gatt.append((f"{char_path}/desc{handle:04x}", descriptor))
            handle += 1

    def _emit(self, **changes: object) -> None:
        self.interface.emit_properties_changed(changes)

    # --- presence ---------------------------------------------------------------------------

    def advertise(self, rssi: int) -> None:
        """One advertisement seen while discovering: a new object, or an RSSI update."""
        self.rssi = rssi
        if not self.exported:
            self.bluez.bus.export(self.path, self.interface)
            self.exported = True
        else:
            self._emit(RSSI=rssi)

    def remove(self) -> None:
        """Adapter1.RemoveDevice: drop the link, forget the bond, remove the object."""
        self.disconnect()
        self.peripheral.paired = False
        self.trusted = False
        if self.exported:
            self.bluez.bus.unexport(self.path, self.interface)
            self.exported = False

    # --- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        if self.connected:
            return
        if not self.peripheral.in_range:
            await asyncio.sleep(CONNECT_FAIL_DELAY)
            raise DBusError(ERROR + "Failed", "Software caused connection abort")
        self.connected = True
        self.peripheral.link = self
        self._emit(Connected=True)
        for path, interface in self._gatt:
            self.bluez.bus.export(path, interface)
        self.services_resolved = True
        self._emit(ServicesResolved=True)

    def disconnect(self) -> None:
        """Either side ends the link: reverse of connect, notifications off."""
        if not self.connected:
            return
        self.peripheral.link = None
        self.subscribers.clear()
        if self._pairing is not None:
            self._pairing.cancel()
        for hook in self.peripheral.on_disconnect:
            hook()
        self.services_resolved = False
        self._emit(ServicesResolved=False)
        for path, interface in reversed(self._gatt):
            self.bluez.bus.unexport(path, interface)
        self.connected = False
        self._emit(Connected=False)

    # --- Link (what the peripheral uses) ----------------------------------------------------

    def send(self, char_uuid: str, payload: bytes) -> None:
        self._chars[char_uuid].emit_value(payload)

    def subscribed(self, char_uuid: str) -> bool:
        return bool(self.subscribers.get(char_uuid))

    def drop(self) -> None:
        self.disconnect()

    # --- notifications, per D-Bus client ----------------------------------------------------

    def start_notify(self, char: Characteristic) -> None:
        if not char.notifies:
            raise DBusError(ERROR + "NotSupported", "Operation is not supported")
        try:
            self.peripheral.check_subscribe(char.uuid)
        except (AttError, NotPermitted) as exc:
            raise dbus_error(exc) from exc
        was_on = self.subscribed(char.uuid)
        self.subscribers.setdefault(char.uuid, set()).add(self.bluez.sender)
        if not was_on:
            self._chars[char.uuid].emit_properties_changed({"Notifying": True})

    def stop_notify(self, char: Characteristic) -> None:
        senders = self.subscribers.get(char.uuid, set())
        if self.bluez.sender not in senders:
            raise DBusError(ERROR + "Failed", "No notify session started")
        self.forget_client(self.bluez.sender, char.uuid)

    def forget_client(self, sender: str, only: str | None = None) -> None:
        for char_uuid, senders in self.subscribers.items():
            if (only is None or only == char_uuid) and sender in senders:
                senders.discard(sender)
                if not senders and self.connected:
                    self._chars[char_uuid].emit_properties_changed({"Notifying": False})

    # --- pairing ----------------------------------------------------------------------------

    async def pair(self, caller: str) -> None:
        if self.peripheral.paired:
            raise DBusError(ERROR + "AlreadyExists", "Already Exists")
        await self.connect()
        pin = self.peripheral.pin
        if pin is not None:
            self._pairing = asyncio.current_task()
            try:
                answer = await self.bluez.ask_agent(
                    caller, self.peripheral.pairing_method, self.path
                )
            except asyncio.CancelledError:
                raise DBusError(
                    ERROR + "AuthenticationCanceled", "Authentication Canceled"
                ) from None
            finally:
                self._pairing = None
            if answer.lstrip("0") != pin.lstrip("0"):
                raise DBusError(ERROR + "AuthenticationFailed", "Authentication Failed")
        self.peripheral.paired = True
        self._emit(Paired=True, Bonded=True)

    def cancel_pairing(self) -> None:
        if self._pairing is None:
            raise DBusError(ERROR + "DoesNotExist", "Does Not Exist")
        self._pairing.cancel()


class BlueZ:
    """The simulated bluetoothd: adapter, agents, discovery sessions and device objects."""

    def __init__(self, bus: MessageBus, adapter_address: str = "00:1A:7D:DA:71:13") -> None:
        self.bus = bus
        self.adapter = AdapterInterface(self, adapter_address)
        self.agent_manager = AgentManagerInterface(self)
        self.devices: dict[str, DeviceObject] = {}
        self.sender = ""  # unique name of the client whose method call is being dispatched
        self._sessions: dict[str, int] = {}
        self._filters: dict[str, set[str]] = {}
        self._agents: dict[str, tuple[str, str]] = {}  # owner → (path, capability)
        self._default_agent: str | None = None  # owner
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Export adapter and agent manager; the caller requests the name afterwards."""
        self.bus.add_message_handler(self.observe)
        self.bus.export("/org/bluez", self.agent_manager)
        self.bus.export(ADAPTER_PATH, self.adapter)
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
            )
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise SimulatorError("AddMatch NameOwnerChanged abgelehnt / refused")
        self._ticker = asyncio.get_running_loop().create_task(self._advertise_loop())

    async def stop(self) -> None:
        for task in [self._ticker, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for device in self.devices.values():
            device.disconnect()

    def add(self, peripheral: Peripheral) -> DeviceObject:
        device = DeviceObject(self, peripheral)
        self.devices[peripheral.address] = device
        return device

    def by_path(self, path: str) -> DeviceObject:
        for device in self.devices.values():
            if device.path == path and device.exported:
                return device
        raise DBusError(ERROR + "DoesNotExist", "Does Not Exist")

    # --- message dispatch -------------------------------------------------------------------

    def observe(self, message: Message) -> bool:
        """Runs before dbus-fast dispatches: remembers the caller, answers Pair, sees clients leave."""
        if message.message_type == MessageType.METHOD_CALL:
            self.sender = message.sender or ""
            if message.interface == "org.bluez.Device1" and message.member == "Pair":
                self._spawn(self._answer_pair(message))
                return True
        elif message.member == "NameOwnerChanged" and message.sender == "org.freedesktop.DBus":
            name, _old, new = message.body
            if not new:
                self._client_left(name)
        return False

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_pair(self, message: Message) -> None:
        try:
            device = self.by_path(message.path or "")
            await device.pair(message.sender or "")
            reply = Message.new_method_return(message)
        except DBusError as exc:
            reply = Message.new_error(message, exc.type, exc.text)
        self.bus.send(reply)

    def _client_left(self, name: str) -> None:
        self._sessions.pop(name, None)
        self._filters.pop(name, None)
        self._agents.pop(name, None)
        if self._default_agent == name:
            self._default_agent = None
        for device in self.devices.values():
            device.forget_client(name)
        self._discovering_changed()

    # --- discovery --------------------------------------------------------------------------

    @property
    def discovering(self) -> bool:
        return bool(self._sessions)

    def set_discovery_filter(self, properties: dict[str, Variant]) -> None:
        uuids = properties.get("UUIDs")
        self._filters[self.sender] = {u.lower() for u in uuids.value} if uuids else set()

    def start_discovery(self) -> None:
        was = self.discovering
        self._sessions[self.sender] = self._sessions.get(self.sender, 0) + 1
        if not was:
            self.adapter.emit_properties_changed({"Discovering": True})
        self.advertise()

    def stop_discovery(self) -> None:
        count = self._sessions.get(self.sender, 0)
        if count == 0:
            raise DBusError(ERROR + "Failed", "No discovery started")
        if count == 1:
            del self._sessions[self.sender]
        else:
            self._sessions[self.sender] = count - 1
        self._discovering_changed()

    def _discovering_changed(self) -> None:
        if not self.discovering:
            self.adapter.emit_properties_changed({"Discovering": False})

    def remove_device(self, path: str) -> None:
        self.by_path(path).remove()

    def _wanted(self, peripheral: Peripheral) -> bool:
        advertised = set(peripheral.advertised_uuids)
        return any(
            not self._filters.get(sender) or advertised & self._filters[sender]
            for sender in self._sessions
        )

    def advertise(self) -> None:
        """Every device in range and not connected advertises once."""
        for device in self.devices.values():
            peripheral = device.peripheral
            if peripheral.in_range and not device.connected and self._wanted(peripheral):
                device.advertise(peripheral.rssi - (device.rssi == peripheral.rssi))

    async def _advertise_loop(self) -> None:
        while True:
            await asyncio.sleep(RSSI_INTERVAL)
            if self.discovering:
                self.advertise()

    # --- agents -----------------------------------------------------------------------------

    def register_agent(self, path: str, capability: str) -> None:
        if self.sender in self._agents:
            raise DBusError(ERROR + "AlreadyExists", "Already Exists")
        self._agents[self.sender] = (path, capability)

    def unregister_agent(self, path: str) -> None:
        if self._agents.get(self.sender, ("", ""))[0] != path:
            raise DBusError(ERROR + "DoesNotExist", "Does Not Exist")
        self._client_left_agent(self.sender)

    def _client_left_agent(self, owner: str) -> None:
        del self._agents[owner]
        if self._default_agent == owner:
            self._default_agent = None

    def request_default_agent(self, path: str) -> None:
        if self._agents.get(self.sender, ("", ""))[0] != path:
            raise DBusError(ERROR + "DoesNotExist", "Does Not Exist")
        self._default_agent = self.sender

    async def ask_agent(self, caller: str, method: str, device: str) -> str:
        """The caller's own agent, else the default agent, answers (as bluetoothd's agent_get)."""
        owner = caller if caller in self._agents else self._default_agent
        if owner is None:
            raise DBusError(ERROR + "AuthenticationFailed", "Authentication Failed")
        member = "RequestPasskey" if method == "passkey" else "RequestPinCode"
        call = Message(
            destination=owner,
            path=self._agents[owner][0],
            interface="org.bluez.Agent1",
            member=member,
            signature="o",
            body=[device],
        )
        reply = await asyncio.wait_for(self.bus.call(call), PAIRING_TIMEOUT)
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            canceled = reply is not None and reply.error_name == ERROR + "Canceled"
            kind = "AuthenticationCanceled" if canceled else "AuthenticationRejected"
            raise DBusError(ERROR + kind, "Authentication " + kind.removeprefix("Authentication"))
        return str(reply.body[0])
