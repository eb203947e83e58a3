"""``python -m devices.simulator``: run a simulated BlueZ with a scenario's devices until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from devices.simulator.bus import PrivateBus
from devices.simulator.errors import SimulatorError
from devices.simulator.scenario import apply, demo_path, load
from devices.simulator.simulator import Simulator


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devices.simulator", description=__doc__)
    parser.add_argument("--scenario", type=Path, default=None, help="scenario JSON (default: demo)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bus-address", help="an existing private bus (DBUS_SYSTEM_BUS_ADDRESS)")
    where.add_argument("--start-bus", action="store_true", help="start a private dbus-daemon")
    return parser.parse_args(argv)


def _station_clock() -> datetime:
    return datetime.now()


@contextlib.contextmanager
def _bus(arguments: argparse.Namespace) -> Iterator[str]:
    if not arguments.start_bus:
        yield arguments.bus_address
        return
    bus = PrivateBus.start()
    try:
        yield bus.address
    finally:
        bus.stop()


async def _serve(scenario_path: Path, bus_address: str) -> None:
    scenario = load(scenario_path, _station_clock)
    simulator = Simulator(
        scenario.configs,
        bus_address=bus_address,
        clock=_station_clock,
        adapter_address=scenario.adapter_address,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with simulator:
        apply(simulator, scenario)
        ready = {"bus_address": bus_address, "devices": sorted(simulator.devices)}
        print(json.dumps(ready), flush=True)
        waits = {loop.create_task(stopping.wait()), loop.create_task(simulator.closed())}
        _done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _arguments(argv)
    try:
        with _bus(arguments) as address:
            asyncio.run(_serve(arguments.scenario or demo_path(), address))
    except SimulatorError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
