"""Glucose record download over RACP with bleak: report all / ≥ seq, count, delete, abort, errors."""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakClient
from bleak.exc import BleakGATTProtocolError

from devices.simulator import DeviceConfig, Simulator
from tests.devices.simulator.support import full, run, station_clock

METER = "AA:BB:CC:DD:EE:05"
TS = "E807050F0A1E00"
# GLS test vectors (shared/reference/ble-devices.md §2): seq 1, 2 (context follows), 3
RECORDS = [
    bytes.fromhex(f"020100{TS}5FB011"),
    bytes.fromhex(f"170200{TS}3C0035C011"),
    bytes.fromhex(f"0A0300{TS}5FB0110100"),
]
CONTEXT_2 = bytes.fromhex("02020002")
RACP = full(0x2A52)


class Download:
    """A client subscribed to 2A18, 2A34 and RACP, collecting what arrives."""

    def __init__(self, client: BleakClient) -> None:
        self.client = client
        self.records: list[bytes] = []
        self.contexts: list[bytes] = []
        self.responses: asyncio.Queue[bytes] = asyncio.Queue()

    async def subscribe(self) -> Download:
        await self.client.start_notify(full(0x2A18), lambda c, d: self.records.append(bytes(d)))
        await self.client.start_notify(full(0x2A34), lambda c, d: self.contexts.append(bytes(d)))
        await self.client.start_notify(RACP, lambda c, d: self.responses.put_nowait(bytes(d)))
        return self

    async def request(self, hex_request: str) -> bytes:
        await self.client.write_gatt_char(RACP, bytes.fromhex(hex_request), response=True)
        return await asyncio.wait_for(self.responses.get(), 2)


def simulator(bus_address: str) -> Simulator:
    return Simulator(
        [DeviceConfig("glucose_meter", METER, "Meter")],
        bus_address=bus_address,
        clock=station_clock,
    )


def test_report_all_then_report_from_sequence(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim, BleakClient(METER, timeout=5) as client:
            sim.add_records(METER, RECORDS, [CONTEXT_2])
            download = await Download(client).subscribe()
            assert await download.request("0101") == bytes.fromhex("06000101")
            assert download.records == RECORDS
            assert download.contexts == [CONTEXT_2]
            download.records.clear()
            assert await download.request("0103010200") == bytes.fromhex("06000101")
            assert download.records == RECORDS[1:]
            assert await download.request("0103010400") == bytes.fromhex("06000106")
            assert await download.request("0106") == bytes.fromhex("06000101")
            assert download.records[-1] == RECORDS[-1]

    run(scenario())


def test_count_delete_abort_and_refused_operators(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim, BleakClient(METER, timeout=5) as client:
            sim.add_records(METER, RECORDS)
            download = await Download(client).subscribe()
            assert await download.request("0401") == bytes.fromhex("05000300")
            assert await download.request("0403010200") == bytes.fromhex("05000200")
            assert await download.request("0300") == bytes.fromhex("06000301")
            assert await download.request("0100") == bytes.fromhex("06000103")  # invalid operator
            assert await download.request("0107") == bytes.fromhex("06000104")  # not supported
            assert await download.request("0103020000") == bytes.fromhex("06000109")  # by time
            assert await download.request("0903") == bytes.fromhex("06000902")  # unknown opcode
            assert await download.request("0202010200") == bytes.fromhex("06000201")
            assert sim.state(METER)["records"] == [3]
            assert download.records == []

    run(scenario())


def test_att_0x81_without_notifications_and_0x80_while_busy(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim, BleakClient(METER, timeout=5) as client:
            sim.add_records(METER, RECORDS * 1)
            with pytest.raises(BleakGATTProtocolError) as no_cccd:
                await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            assert no_cccd.value.code == 0x81
            responses: asyncio.Queue[bytes] = asyncio.Queue()
            await client.start_notify(RACP, lambda c, d: responses.put_nowait(bytes(d)))
            with pytest.raises(BleakGATTProtocolError) as records_off:
                await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            assert records_off.value.code == 0x81
            await client.start_notify(full(0x2A18), lambda c, d: None)
            device = sim.device(METER)
            assert device.records is not None
            device.records.record_interval = 0.2
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            with pytest.raises(BleakGATTProtocolError) as busy:
                await client.write_gatt_char(RACP, b"\x04\x01", response=True)
            assert busy.value.code == 0x80
            await client.write_gatt_char(RACP, b"\x03\x00", response=True)  # abort
            assert await asyncio.wait_for(responses.get(), 2) == bytes.fromhex("06000301")

    run(scenario())


def test_disconnect_mid_download_then_resume_after_reconnect(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            sim.add_records(METER, RECORDS)
            lost = asyncio.Event()
            client = BleakClient(METER, timeout=5, disconnected_callback=lambda _: lost.set())
            await client.connect()
            download = await Download(client).subscribe()
            sim.disconnect_after(METER, 2)
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            await asyncio.wait_for(lost.wait(), 2)
            await client.disconnect()
            assert download.records == RECORDS[:2]
            assert download.responses.empty()
            async with BleakClient(METER, timeout=5) as again:
                resumed = await Download(again).subscribe()
                assert await resumed.request("0103010300") == bytes.fromhex("06000101")
                assert resumed.records == RECORDS[2:]

    run(scenario())
