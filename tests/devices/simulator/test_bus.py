"""The private dbus-daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dbus_fast.aio import MessageBus

from devices.simulator import PrivateBus


def test_private_bus_accepts_connections_and_cleans_up() -> None:
    bus = PrivateBus.start()
    try:
        assert bus.address.startswith(f"unix:path={bus.directory}/bus")

        async def hello() -> str | None:
            connection = await MessageBus(bus_address=bus.address).connect()
            name = connection.unique_name
            connection.disconnect()
            await connection.wait_for_disconnect()  # type: ignore[no-untyped-call]
            return name

        assert (asyncio.run(hello()) or "").startswith(":")
    finally:
        bus.stop()
    assert bus.process.poll() is not None
    assert not Path(bus.directory).exists()
