"""The simulator: BlueZ objects, devices, streams and fault injection on one bus connection (https://github.com/bluez/bluez/tree/master/doc)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

from dbus_fast.aio import MessageBus

from devices.simulator.bluez import BLUEZ, BlueZ, DeviceObject
from devices.simulator.control import CONTROL_NAME, CONTROL_PATH, ControlInterface
from devices.simulator.devices import DeviceConfig, SimulatedDevice, build
from devices.simulator.errors import SimulatorError
from devices.simulator.model import Clock, Operation
from devices.simulator.payloads import uuid


class Simulator:
    """Simulated bluetoothd with standard health devices; drive it in-process or over D-Bus."""

    def __init__(
        self,
        devices: Iterable[DeviceConfig],
        *,
        bus_address: str,
        clock: Clock,
        adapter_address: str = "00:1A:7D:DA:71:13",
    ) -> None:
        self.bus_address = bus_address
        self.clock = clock
        self.adapter_address = adapter_address
        self.devices: dict[str, SimulatedDevice] = {}
        self._configs = list(devices)
        self._bus: MessageBus | None = None
        self._bluez: BlueZ | None = None
        self._streams: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Connect, export adapter, devices and control interface, then own ``org.bluez``."""
        self._bus = await MessageBus(bus_address=self.bus_address).connect()
        # dbus-fast drops the connection when a socket write would block (python-dbus-next#153):
        # a station connecting many devices at once makes a burst of signals; 4 MiB of send
        # buffer (as far as net.core.wmem_max allows) gives room.
        if self._bus._sock is not None:
            self._bus._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._bluez = BlueZ(self._bus, self.adapter_address)
        for config in self._configs:
            self.add_device(config)
        await self._bluez.start()
        self._bus.export(CONTROL_PATH, ControlInterface(self))
        await self._bus.request_name(BLUEZ)
        await self._bus.request_name(CONTROL_NAME)

    async def stop(self) -> None:
        for task in self._streams.values():
            task.cancel()
        for task in self._streams.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._streams.clear()
        if self._bluez is not None:
            await self._bluez.stop()
        if self._bus is not None:
            self._bus.disconnect()
            await self.closed()
            self._bus = None

    async def closed(self) -> None:
        """Return when the bus connection ends (stopped, or the daemon went away)."""
        if self._bus is not None:
            with contextlib.suppress(Exception):
                # shielded: a cancelled waiter must not cancel dbus-fast's shared future
                await asyncio.shield(self._bus.wait_for_disconnect())  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- devices ----------------------------------------------------------------------------

    def add_device(self, config: DeviceConfig) -> SimulatedDevice:
        """Add a device (also while running); it shows up at the next discovery."""
        if self._bluez is None:
            raise SimulatorError("Simulator läuft nicht / simulator not started")
        device = build(config, self.clock)
        address = device.peripheral.address
        if address in self.devices:
            raise SimulatorError(f"Adresse doppelt / duplicate address: {address}")
        self.devices[address] = device
        self._bluez.add(device.peripheral)
        return device

    def device(self, address: str) -> SimulatedDevice:
        try:
            return self.devices[address.upper()]
        except KeyError:
            raise SimulatorError(f"unbekanntes Gerät / unknown device: {address}") from None

    def _object(self, address: str) -> DeviceObject:
        if self._bluez is None:
            raise SimulatorError("Simulator läuft nicht / simulator not started")
        return self._bluez.devices[self.device(address).peripheral.address]

    # --- scripting --------------------------------------------------------------------------

    def notify(self, address: str, char_uuid: str, payload: bytes) -> bool:
        """The device sends a notification/indication; False when nobody subscribed (dropped)."""
        return self.device(address).peripheral.notify(char_uuid, payload)

    def add_records(
        self, address: str, records: Iterable[bytes], contexts: Iterable[bytes] = ()
    ) -> None:
        """Store raw records (glucose 0x2A18 / PLX spot-check 0x2A5E) behind RACP."""
        store = self.device(address).records
        if store is None:
            raise SimulatorError(f"{address}: keine RACP-Datensätze / no RACP records")
        store.add(records, contexts)

    add_glucose_records = add_records

    def start_stream(
        self, address: str, char_uuid: str, payloads: Sequence[bytes], interval: float
    ) -> None:
        """Send the payloads in a cycle, one every ``interval`` seconds while subscribed."""
        peripheral = self.device(address).peripheral
        key = (peripheral.address, peripheral.characteristic(char_uuid).uuid)
        if not payloads or interval <= 0:
            raise SimulatorError("Stream braucht Daten und Intervall / stream needs data, interval")
        self.stop_stream(address, char_uuid)
        loop = asyncio.get_running_loop()
        self._streams[key] = loop.create_task(self._stream(key, list(payloads), interval))

    def stop_stream(self, address: str, char_uuid: str) -> None:
        task = self._streams.pop((self.device(address).peripheral.address, uuid(char_uuid)), None)
        if task is not None:
            task.cancel()

    async def _stream(self, key: tuple[str, str], payloads: list[bytes], interval: float) -> None:
        peripheral = self.devices[key[0]].peripheral
        index = 0
        while True:
            await asyncio.sleep(interval)
            if peripheral.notify(key[1], payloads[index % len(payloads)]):
                index += 1

    # --- fault injection --------------------------------------------------------------------

    def set_in_range(self, address: str, in_range: bool) -> None:
        """Out of range: no advertisements, the link drops, connects fail; and back."""
        peripheral = self.device(address).peripheral
        peripheral.in_range = in_range
        if not in_range:
            peripheral.drop_link()

    def disconnect(self, address: str) -> None:
        """The device ends the connection now."""
        self.device(address).peripheral.drop_link()

    def disconnect_after(self, address: str, notifications: int) -> None:
        """Drop the link right after the next ``notifications`` notifications/indications."""
        self.device(address).peripheral.disconnect_after = notifications

    def fail_next(
        self,
        address: str,
        char_uuid: str,
        att_error: int | None = None,
        operation: str = "any",
    ) -> None:
        """The next read/write/notify (StartNotify) fails with an ATT error, or NotPermitted."""
        self.device(address).peripheral.fail_next(char_uuid, att_error, Operation(operation))

    def set_cts_writable(self, address: str, writable: bool) -> None:
        self.device(address).current_time.writable = writable

    def set_clock_offset(self, address: str, offset: timedelta) -> None:
        clock = self.device(address).current_time.clock
        clock.set(self.clock() + offset)

    def forget_bond(self, address: str) -> None:
        """The device lost its bond (reset): BlueZ still thinks it is paired."""
        self.device(address).peripheral.paired = False

    # --- inspection -------------------------------------------------------------------------

    def state(self, address: str) -> dict[str, Any]:
        device = self.device(address)
        peripheral, obj = device.peripheral, self._object(address)
        return {
            "address": peripheral.address,
            "kind": peripheral.kind,
            "in_range": peripheral.in_range,
            "known": obj.exported,
            "connected": obj.connected,
            "paired": peripheral.paired,
            "subscribed": sorted(u for u, senders in obj.subscribers.items() if senders),
            "device_time": device.current_time.clock.now().isoformat(),
            "clock_set": device.current_time.clock.is_set,
            "records": sorted(device.records.records) if device.records else [],
        }
