"""Unmodified bleak 3.1 against the simulated BlueZ: scan, connect, GATT, pairing, link loss."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakDBusError, BleakGATTProtocolError

from devices.simulator import DeviceConfig, Simulator
from tests.devices.simulator.support import full, register_agent, run, station_clock

BP = "AA:BB:CC:DD:EE:01"
THERMO = "AA:BB:CC:DD:EE:02"
GLUCOSE = "AA:BB:CC:DD:EE:05"
DEVICES = [
    DeviceConfig(
        "blood_pressure", BP, "Cuff", serial="SN-0001", clock_offset=timedelta(minutes=-5)
    ),
    DeviceConfig("thermometer", THERMO, "Thermo", cts_writable=False),
    DeviceConfig("glucose_meter", GLUCOSE, "Meter", pin="123456"),
]


def _into(queue: asyncio.Queue[bytes]) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
    return lambda char, data: queue.put_nowait(bytes(data))


def simulator(bus_address: str) -> Simulator:
    return Simulator(DEVICES, bus_address=bus_address, clock=station_clock)


def test_scan_reports_devices_with_name_service_and_rssi(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address):
            found = await BleakScanner.discover(timeout=0.6, return_adv=True)
            seen = {device.address: (device.name, adv) for device, adv in found.values()}
            assert set(seen) == {BP, THERMO, GLUCOSE}
            name, adv = seen[BP]
            assert name == "Cuff"
            assert adv.service_uuids == [full(0x1810)]
            assert -70 < adv.rssi < -50
            only_glucose = await BleakScanner.discover(timeout=0.6, service_uuids=[full(0x1808)])
            assert [device.address for device in only_glucose] == [GLUCOSE]

    run(scenario())


def test_connect_reads_device_information_and_gatt_layout(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address), BleakClient(BP, timeout=5) as client:
            uuids = {service.uuid for service in client.services}
            assert uuids == {full(n) for n in (0x1810, 0x180A, 0x180F, 0x1805)}
            assert await client.read_gatt_char(full(0x2A25)) == b"SN-0001"
            assert await client.read_gatt_char(full(0x2A19)) == bytes([87])
            system_id = await client.read_gatt_char(full(0x2A23))
            assert len(system_id) == 8 and system_id[5:] == bytes.fromhex("ccbbaa")
            measurement = client.services.get_characteristic(full(0x2A35))
            assert measurement is not None and measurement.properties == ["indicate"]
            assert [d.uuid for d in measurement.descriptors] == [full(0x2902)]
            assert measurement.service_handle == 0x000A and measurement.handle == 0x000B

    run(scenario())


def test_notifications_and_indications_reach_the_subscriber(bus_address: str) -> None:
    cuff = bytes.fromhex("1E780050005D00E807050F0A1E004800010000")

    async def scenario() -> None:
        async with simulator(bus_address) as sim, BleakClient(BP, timeout=5) as client:
            received: list[tuple[str, bytes]] = []
            assert not sim.notify(BP, "2a35", cuff), "nobody subscribed: dropped"
            for number in (0x2A35, 0x2A36):
                await client.start_notify(
                    full(number), lambda char, data: received.append((char.uuid, bytes(data)))
                )
            assert sim.state(BP)["subscribed"] == [full(0x2A35), full(0x2A36)]
            assert sim.notify(BP, "2A36", bytes.fromhex("006400FF07FF07"))
            assert sim.notify(BP, "0x2a35", cuff)
            assert sim.notify(BP, "2a35", cuff)  # a repeated value is delivered again
            await asyncio.sleep(0.1)
            assert received == [
                (full(0x2A36), bytes.fromhex("006400FF07FF07")),
                (full(0x2A35), cuff),
                (full(0x2A35), cuff),
            ]
            await client.stop_notify(full(0x2A36))
            assert not sim.notify(BP, "2a36", b"\x00")

    run(scenario())


def test_current_time_follows_device_clock_and_refuses_writes_when_configured(
    bus_address: str,
) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            async with BleakClient(BP, timeout=5) as client:
                # 2024-05-15 10:25:00 (5 minutes slow), Wednesday, fractions 0, no adjust reason
                assert await client.read_gatt_char(full(0x2A2B)) == bytes.fromhex(
                    "E807050F0A19000300" + "00"
                )
                await client.write_gatt_char(
                    full(0x2A2B), bytes.fromhex("E807050F0A1E00030001"), response=True
                )
                assert await client.read_gatt_char(full(0x2A2B)) == bytes.fromhex(
                    "E807050F0A1E00030000"
                )
            async with BleakClient(THERMO, timeout=5) as client:
                with pytest.raises(BleakGATTProtocolError) as refused:
                    await client.write_gatt_char(full(0x2A2B), bytes(10), response=True)
                assert refused.value.code == 0x80
                sim.set_cts_writable(THERMO, True)
                await client.write_gatt_char(
                    full(0x2A2B), bytes.fromhex("E807050F0A1E00030001"), response=True
                )
            assert sim.state(THERMO)["device_time"] == "2024-05-15T10:30:00"

    run(scenario())


def test_injected_faults_fail_the_next_operation_only(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim, BleakClient(BP, timeout=5) as client:
            sim.fail_next(BP, "2a29", att_error=0x0E, operation="read")
            with pytest.raises(BleakGATTProtocolError) as unlikely:
                await client.read_gatt_char(full(0x2A29))
            assert unlikely.value.code == 0x0E
            assert await client.read_gatt_char(full(0x2A29)) == b"Medi-KUS Simulator"
            sim.fail_next(BP, "2a35", operation="notify")
            with pytest.raises(BleakDBusError) as refused:
                await client.start_notify(full(0x2A35), lambda char, data: None)
            assert refused.value.dbus_error == "org.bluez.Error.NotPermitted"
            await client.start_notify(full(0x2A35), lambda char, data: None)
            with pytest.raises(BleakGATTProtocolError) as not_readable:
                await client.read_gatt_char(full(0x2A35))
            assert not_readable.value.code == 0x02

    run(scenario())


def test_pairing_with_the_right_pin_unlocks_protected_characteristics(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            agent_bus, agent = await register_agent(bus_address, "123456")
            try:
                async with BleakClient(GLUCOSE, timeout=5) as client:
                    assert await client.read_gatt_char(full(0x2A29))  # DIS needs no bond
                    with pytest.raises(BleakGATTProtocolError) as locked:
                        await client.start_notify(full(0x2A18), lambda char, data: None)
                    assert locked.value.code == 0x05
                    await client.pair()
                    assert sim.state(GLUCOSE)["paired"]
                    await client.start_notify(full(0x2A18), lambda char, data: None)
                assert agent.asked == ["/org/bluez/hci0/dev_AA_BB_CC_DD_EE_05"]
                # the bond survives the disconnect: connect without pairing again
                async with BleakClient(GLUCOSE, timeout=5, pair=True) as client:
                    await client.start_notify(full(0x2A18), lambda char, data: None)
                assert len(agent.asked) == 1
            finally:
                agent_bus.disconnect()

    run(scenario())


def test_pairing_with_a_wrong_pin_or_without_default_agent_is_refused(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            agent_bus, agent = await register_agent(bus_address, "654321", default=False)
            try:
                with pytest.raises(BleakDBusError) as no_agent:
                    await BleakClient(GLUCOSE, timeout=5, pair=True).connect()
                assert no_agent.value.dbus_error == "org.bluez.Error.AuthenticationFailed"
                assert agent.asked == []
            finally:
                agent_bus.disconnect()
            agent_bus, agent = await register_agent(bus_address, "654321")
            try:
                with pytest.raises(BleakDBusError) as wrong:
                    await BleakClient(GLUCOSE, timeout=5, pair=True).connect()
                assert wrong.value.dbus_error == "org.bluez.Error.AuthenticationFailed"
                assert len(agent.asked) == 1
                assert not sim.state(GLUCOSE)["paired"]
            finally:
                agent_bus.disconnect()

    run(scenario())


def test_out_of_range_drops_the_link_and_hides_the_device(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            lost = asyncio.Event()
            client = BleakClient(BP, timeout=5, disconnected_callback=lambda _: lost.set())
            await client.connect()
            sim.set_in_range(BP, False)
            await asyncio.wait_for(lost.wait(), 2)
            assert not client.is_connected
            await client.disconnect()  # bleak keeps the client's bus open until asked
            assert await BleakScanner.find_device_by_address(BP, timeout=0.8) is None
            sim.set_in_range(BP, True)
            assert await BleakScanner.find_device_by_address(BP, timeout=2) is not None
            async with BleakClient(BP, timeout=5) as again:
                assert await again.read_gatt_char(full(0x2A19)) == bytes([87])

    run(scenario())


def test_connect_to_a_vanished_device_fails(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            device = await BleakScanner.find_device_by_address(THERMO, timeout=2)
            assert device is not None
            sim.set_in_range(THERMO, False)
            with pytest.raises(BleakDBusError) as failed:
                await BleakClient(device, timeout=5).connect()
            assert failed.value.dbus_error == "org.bluez.Error.Failed"

    run(scenario())


def test_repeated_scan_connect_cycles_and_remove_device(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address) as sim:
            for cycle in range(3):
                device = await BleakScanner.find_device_by_address(THERMO, timeout=2)
                assert device is not None, f"cycle {cycle}"
                async with BleakClient(device, timeout=5) as client:
                    values: asyncio.Queue[bytes] = asyncio.Queue()
                    await client.start_notify(full(0x2A1C), _into(values))
                    assert sim.notify(THERMO, "2a1c", bytes.fromhex("006E0100FF"))
                    assert await asyncio.wait_for(values.get(), 1) == bytes.fromhex("006E0100FF")
                    if cycle == 1:
                        await client.unpair()  # Adapter1.RemoveDevice: the object goes away
                assert sim.state(THERMO)["known"] == (cycle != 1)

    run(scenario())
