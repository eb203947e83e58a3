"""The simulator as a separate process, driven through de.medikus.Simulator1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bleak import BleakClient
from bleak.exc import BleakGATTProtocolError

from devices.simulator import SimulatorControl, SimulatorError
from tests.devices.simulator.support import full, run

OXIMETER = "C0:FF:EE:00:00:03"
SCENARIO = {
    "devices": [
        {
            "kind": "pulse_oximeter",
            "address": OXIMETER,
            "name": "Oxi",
            "streams": [
                {
                    "characteristic": "2a5f",
                    "interval": 0.05,
                    "payloads": ["0061004B00", "0062004A00"],
                }
            ],
        },
        {"kind": "glucose_meter", "address": "C0:FF:EE:00:00:05", "records": {"count": 3}},
    ]
}


def test_separate_process_is_driven_over_the_control_interface(
    bus_address: str, tmp_path: Path
) -> None:
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(SCENARIO), encoding="utf-8")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devices.simulator",
            "--scenario",
            str(scenario_file),
            "--bus-address",
            bus_address,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready == {"bus_address": bus_address, "devices": [OXIMETER, "C0:FF:EE:00:00:05"]}
        run(_drive(bus_address))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stdout is not None
        process.stdout.close()


async def _drive(bus_address: str) -> None:
    lost = asyncio.Event()
    client = BleakClient(OXIMETER, timeout=5, disconnected_callback=lambda _: lost.set())
    async with SimulatorControl(bus_address) as control, client:
        stream: list[bytes] = []
        spot: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(full(0x2A5F), lambda c, d: stream.append(bytes(d)))
        await client.start_notify(full(0x2A5E), lambda c, d: spot.put_nowait(bytes(d)))
        await asyncio.sleep(0.3)
        assert stream[:2] == [bytes.fromhex("0061004B00"), bytes.fromhex("0062004A00")]
        await control.stop_stream(OXIMETER, "2a5f")
        assert await control.notify(OXIMETER, "2a5e", bytes.fromhex("0062004800"))
        assert await asyncio.wait_for(spot.get(), 2) == bytes.fromhex("0062004800")
        state = await control.state(OXIMETER)
        assert state["connected"] and state["subscribed"] == [full(0x2A5E), full(0x2A5F)]
        assert (await control.state("C0:FF:EE:00:00:05"))["records"] == [1, 2, 3]
        await control.fail_next(OXIMETER, "2a60", "read", 0x0E)
        with pytest.raises(BleakGATTProtocolError) as unlikely:
            await client.read_gatt_char(full(0x2A60))
        assert unlikely.value.code == 0x0E
        with pytest.raises(SimulatorError, match="unknown device"):
            await control.notify("00:00:00:00:00:00", "2a5e", b"")
        await control.set_in_range(OXIMETER, False)
        await asyncio.wait_for(lost.wait(), 2)
