"""Helpers for the simulator tests: fixed station clock, bleak-safe loop runner, a test agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

from bleak.backends.bluezdbus import manager
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from devices.simulator.dbus_types import NoReply

_T = TypeVar("_T")
STATION_NOW = datetime(2024, 5, 15, 10, 30, 0)


def station_clock() -> datetime:
    return STATION_NOW


def full(number: int) -> str:
    return f"0000{number:04x}-0000-1000-8000-00805f9b34fb"


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a test scenario on a fresh loop (bleak keeps one BlueZ manager per loop)."""
    return asyncio.run(_closing_bleak(coroutine))


async def _closing_bleak(coroutine: Coroutine[Any, Any, _T]) -> _T:
    try:
        return await asyncio.wait_for(coroutine, 30)
    finally:
        # bleak closes a finished loop's manager bus only when the next loop asks for one
        instance = manager._global_instances.pop(asyncio.get_running_loop(), None)
        bus = instance._bus if instance is not None else None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


class Agent(ServiceInterface):
    """A minimal org.bluez.Agent1 that answers with a fixed PIN / passkey."""

    def __init__(self, secret: str) -> None:
        super().__init__("org.bluez.Agent1")
        self.secret = secret
        self.asked: list[str] = []

    @dbus_method(name="RequestPasskey")
    def request_passkey(self, device: DBusObjectPath) -> DBusUInt32:
        self.asked.append(device)
        return int(self.secret)

    @dbus_method(name="RequestPinCode")
    def request_pin_code(self, device: DBusObjectPath) -> DBusStr:
        self.asked.append(device)
        return self.secret

    @dbus_method(name="Release")
    def release(self) -> NoReply:
        return None


async def register_agent(
    bus_address: str, secret: str, default: bool = True
) -> tuple[MessageBus, Agent]:
    """Register an agent on its own connection (as the station's pairing agent does)."""
    bus = await MessageBus(bus_address=bus_address).connect()
    agent = Agent(secret)
    bus.export("/test/agent", agent)
    calls = [("RegisterAgent", "os", ["/test/agent", "KeyboardOnly"])]
    if default:
        calls.append(("RequestDefaultAgent", "o", ["/test/agent"]))
    for member, signature, body in calls:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/org/bluez",
                interface="org.bluez.AgentManager1",
                member=member,
                signature=signature,
                body=body,
            )
        )
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    return bus, agent
