"""A simulated GATT peripheral, independent of D-Bus (https://www.bluetooth.com/specifications/specs/core-specification/, Vol 3 Part G)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from devices.simulator.errors import AttError, NotPermitted, SimulatorError
from devices.simulator.payloads import uuid

Clock = Callable[[], datetime]
ATT_INSUFFICIENT_AUTHENTICATION = 0x05
UNSET_CLOCK_EPOCH = datetime(2000, 1, 1)


class Operation(enum.Enum):
    """What a client does to a characteristic; faults are injected per operation."""

    READ = "read"
    WRITE = "write"
    NOTIFY = "notify"  # StartNotify
    ANY = "any"


@dataclass(eq=False)
class Characteristic:
    """One characteristic: flags as BlueZ names them, a value, optional behaviour."""

    uuid: str
    flags: tuple[str, ...]
    value: bytes = b""
    protected: bool = False  # needs a bond when the device has a PIN
    on_read: Callable[[], bytes] | None = None
    on_write: Callable[[bytes], None] | None = None

    @property
    def notifies(self) -> bool:
        return "notify" in self.flags or "indicate" in self.flags


@dataclass(eq=False)
class Service:
    uuid: str
    characteristics: list[Characteristic]


class Link(Protocol):
    """The BlueZ side of a connection, as the peripheral sees it."""

    def send(self, char_uuid: str, payload: bytes) -> None: ...

    def subscribed(self, char_uuid: str) -> bool: ...

    def drop(self) -> None: ...


class DeviceClock:
    """The device's own wall clock: station time plus an offset, or running from 2000 when unset."""

    def __init__(self, station: Clock, offset: timedelta | None) -> None:
        self._station = station
        self.is_set = offset is not None
        self.offset = offset if offset is not None else UNSET_CLOCK_EPOCH - station()

    def now(self) -> datetime:
        return self._station() + self.offset

    def set(self, moment: datetime) -> None:
        self.offset = moment - self._station()
        self.is_set = True


@dataclass
class Fault:
    operation: Operation
    att_error: int | None  # None → org.bluez.Error.NotPermitted


@dataclass(eq=False)
class Peripheral:
    """A device: advertising data, GATT database, pairing needs and injected faults."""

    address: str
    name: str
    kind: str
    services: list[Service]
    clock: DeviceClock
    pin: str | None = None
    pairing_method: str = "passkey"  # "passkey" → Agent1.RequestPasskey, "pin" → RequestPinCode
    rssi: int = -60
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    advertised_uuids: tuple[str, ...] = ()
    in_range: bool = True
    paired: bool = False
    link: Link | None = None
    disconnect_after: int | None = None
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    on_disconnect: list[Callable[[], None]] = field(default_factory=list)

    def characteristic(self, char_uuid: str) -> Characteristic:
        wanted = uuid(char_uuid)
        for service in self.services:
            for char in service.characteristics:
                if char.uuid == wanted:
                    return char
        raise SimulatorError(
            f"{self.address}: keine Charakteristik {wanted} / no characteristic {wanted}"
        )

    # --- requests from the central (through BlueZ) -------------------------------------------

    def read(self, char_uuid: str) -> bytes:
        char = self._guard(char_uuid, Operation.READ)
        if "read" not in char.flags:
            raise NotPermitted("Read not permitted")
        if char.on_read is not None:
            char.value = char.on_read()
        return char.value

    def write(self, char_uuid: str, data: bytes) -> None:
        char = self._guard(char_uuid, Operation.WRITE)
        if "write" not in char.flags and "write-without-response" not in char.flags:
            raise NotPermitted("Write not permitted")
        if char.on_write is None:
            char.value = bytes(data)
        else:
            char.on_write(bytes(data))

    def check_subscribe(self, char_uuid: str) -> Characteristic:
        """Raise what the device answers to a CCCD write; return the characteristic."""
        return self._guard(char_uuid, Operation.NOTIFY)

    def _guard(self, char_uuid: str, operation: Operation) -> Characteristic:
        char = self.characteristic(char_uuid)
        self._take_fault(char.uuid, operation)
        if char.protected and self.pin is not None and not self.paired:
            raise AttError(ATT_INSUFFICIENT_AUTHENTICATION)
        return char

    def _take_fault(self, char_uuid: str, operation: Operation) -> None:
        pending = self.faults.get(char_uuid, [])
        for fault in pending:
            if fault.operation in (operation, Operation.ANY):
                pending.remove(fault)
                if fault.att_error is None:
                    raise NotPermitted("Not permitted")
                raise AttError(fault.att_error)

    # --- what the device does on its own ------------------------------------------------------

    def subscribed(self, char_uuid: str) -> bool:
        return self.link is not None and self.link.subscribed(uuid(char_uuid))

    def notify(self, char_uuid: str, payload: bytes) -> bool:
        """Send a notification/indication; False when not connected or not enabled (dropped)."""
        char = self.characteristic(char_uuid)
        if self.link is None or not self.link.subscribed(char.uuid):
            return False
        char.value = bytes(payload)
        self.link.send(char.uuid, char.value)
        if self.disconnect_after is not None:
            self.disconnect_after -= 1
            if self.disconnect_after <= 0:
                self.disconnect_after = None
                self.drop_link()
        return True

    def drop_link(self) -> None:
        """The radio link breaks (out of range, device switched off, injected fault)."""
        if self.link is not None:
            self.link.drop()

    def fail_next(self, char_uuid: str, att_error: int | None, operation: Operation) -> None:
        char = self.characteristic(char_uuid)
        self.faults.setdefault(char.uuid, []).append(Fault(operation, att_error))
