"""``de.medikus.Simulator1``: drive a simulator in another process over its private bus (https://dbus.freedesktop.org/doc/dbus-specification.html)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusByte,
    DBusBytes,
    DBusDouble,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.service import ServiceInterface, dbus_method

from devices.simulator.dbus_types import DBusByteArrays, DBusStrings, NoReply
from devices.simulator.errors import SimulatorError

if TYPE_CHECKING:
    from devices.simulator.simulator import Simulator

CONTROL_NAME = "de.medikus.Simulator"
CONTROL_PATH = "/de/medikus/Simulator"
CONTROL_INTERFACE = "de.medikus.Simulator1"
CONTROL_ERROR = "de.medikus.Simulator.Error"

_T = TypeVar("_T")


class ControlInterface(ServiceInterface):
    """Each method maps one-to-one onto the ``Simulator`` Python API."""

    def __init__(self, simulator: Simulator) -> None:
        super().__init__(CONTROL_INTERFACE)
        self._sim = simulator

    def _call(self, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except (SimulatorError, ValueError) as exc:
            raise DBusError(CONTROL_ERROR, str(exc)) from exc

    @dbus_method(name="Devices")
    def devices(self) -> DBusStrings:
        return sorted(self._sim.devices)

    @dbus_method(name="State")
    def state(self, address: DBusStr) -> DBusStr:
        return json.dumps(self._call(lambda: self._sim.state(address)))

    @dbus_method(name="Notify")
    def notify(self, address: DBusStr, characteristic: DBusStr, payload: DBusBytes) -> DBusBool:
        return self._call(lambda: self._sim.notify(address, characteristic, payload))

    @dbus_method(name="AddRecords")
    def add_records(
        self, address: DBusStr, records: DBusByteArrays, contexts: DBusByteArrays
    ) -> NoReply:
        self._call(lambda: self._sim.add_records(address, records, contexts))

    @dbus_method(name="StartStream")
    def start_stream(
        self,
        address: DBusStr,
        characteristic: DBusStr,
        payloads: DBusByteArrays,
        interval: DBusDouble,
    ) -> NoReply:
        self._call(lambda: self._sim.start_stream(address, characteristic, payloads, interval))

    @dbus_method(name="StopStream")
    def stop_stream(self, address: DBusStr, characteristic: DBusStr) -> NoReply:
        self._call(lambda: self._sim.stop_stream(address, characteristic))

    @dbus_method(name="SetInRange")
    def set_in_range(self, address: DBusStr, in_range: DBusBool) -> NoReply:
        self._call(lambda: self._sim.set_in_range(address, in_range))

    @dbus_method(name="Disconnect")
    def disconnect(self, address: DBusStr) -> NoReply:
        self._call(lambda: self._sim.disconnect(address))

    @dbus_method(name="DisconnectAfter")
    def disconnect_after(self, address: DBusStr, notifications: DBusUInt32) -> NoReply:
        self._call(lambda: self._sim.disconnect_after(address, notifications))

    @dbus_method(name="FailNext")
    def fail_next(
        self, address: DBusStr, characteristic: DBusStr, operation: DBusStr, att_error: DBusByte
    ) -> NoReply:
        """``att_error`` 0 means org.bluez.Error.NotPermitted instead of an ATT error."""
        code = att_error or None
        self._call(lambda: self._sim.fail_next(address, characteristic, code, operation))

    @dbus_method(name="SetCtsWritable")
    def set_cts_writable(self, address: DBusStr, writable: DBusBool) -> NoReply:
        self._call(lambda: self._sim.set_cts_writable(address, writable))

    @dbus_method(name="SetClockOffset")
    def set_clock_offset(self, address: DBusStr, seconds: DBusDouble) -> NoReply:
        self._call(lambda: self._sim.set_clock_offset(address, timedelta(seconds=seconds)))

    @dbus_method(name="ForgetBond")
    def forget_bond(self, address: DBusStr) -> NoReply:
        self._call(lambda: self._sim.forget_bond(address))


class SimulatorControl:
    """Client of ``de.medikus.Simulator1`` for tests and ``make demo`` (own bus connection)."""

    def __init__(self, bus_address: str) -> None:
        self.bus_address = bus_address
        self._bus: MessageBus | None = None

    async def __aenter__(self) -> SimulatorControl:
        self._bus = await MessageBus(bus_address=self.bus_address).connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            self._bus = None

    async def call(self, member: str, signature: str = "", *body: Any) -> list[Any]:
        """Call a control method; a refusal raises ``SimulatorError``."""
        if self._bus is None:
            raise SimulatorError("SimulatorControl nicht verbunden / not connected (async with)")
        reply = await self._bus.call(
            Message(
                destination=CONTROL_NAME,
                path=CONTROL_PATH,
                interface=CONTROL_INTERFACE,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            detail = reply.body[0] if reply is not None and reply.body else "no reply"
            raise SimulatorError(f"{member}: {detail}")
        return list(reply.body)

    async def devices(self) -> list[str]:
        return list((await self.call("Devices"))[0])

    async def state(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((await self.call("State", "s", address))[0])
        return result

    async def notify(self, address: str, characteristic: str, payload: bytes) -> bool:
        return bool((await self.call("Notify", "ssay", address, characteristic, payload))[0])

    async def add_records(
        self, address: str, records: list[bytes], contexts: list[bytes] | None = None
    ) -> None:
        await self.call("AddRecords", "saayaay", address, records, contexts or [])

    async def start_stream(
        self, address: str, characteristic: str, payloads: list[bytes], interval: float
    ) -> None:
        await self.call("StartStream", "ssaayd", address, characteristic, payloads, interval)

    async def stop_stream(self, address: str, characteristic: str) -> None:
        await self.call("StopStream", "ss", address, characteristic)

    async def set_in_range(self, address: str, in_range: bool) -> None:
        await self.call("SetInRange", "sb", address, in_range)

    async def disconnect(self, address: str) -> None:
        await self.call("Disconnect", "s", address)

    async def disconnect_after(self, address: str, notifications: int) -> None:
        await self.call("DisconnectAfter", "su", address, notifications)

    async def fail_next(
        self, address: str, characteristic: str, operation: str = "any", att_error: int = 0
    ) -> None:
        await self.call("FailNext", "sssy", address, characteristic, operation, att_error)

    async def set_cts_writable(self, address: str, writable: bool) -> None:
        await self.call("SetCtsWritable", "sb", address, writable)

    async def set_clock_offset(self, address: str, seconds: float) -> None:
        await self.call("SetClockOffset", "sd", address, seconds)

    async def forget_bond(self, address: str) -> None:
        await self.call("ForgetBond", "s", address)
