"""devices.pairing_agent: PIN and passkey pairing through the simulated BlueZ, bleak on top."""

from __future__ import annotations

import pytest

from devices.errors import LinkError
from devices.gatt import uuids
from devices.link import Link
from devices.pairing_agent import PairingAgent, address_of
from devices.simulator import DeviceConfig
from tests.devices.profiles.support import bus_address, run, simulator

__all__ = ["bus_address"]

METER = "AA:BB:CC:DD:EE:05"  # asks for a passkey (Agent1.RequestPasskey)
SCALE = "AA:BB:CC:DD:EE:06"  # asks for a PIN code (Agent1.RequestPinCode)
STRANGER = "AA:BB:CC:DD:EE:07"  # a neighbour's device, not configured


def devices() -> list[DeviceConfig]:
    return [
        DeviceConfig("glucose_meter", METER, "Meter", pin="123456"),
        DeviceConfig("weight_scale", SCALE, "Scale", pin="0042", pairing_method="pin"),
        DeviceConfig("glucose_meter", STRANGER, "Other", pin="000000"),
    ]


async def bonded_read(address: str) -> bytes:
    """Pairs (the agent answers), then reads a characteristic that needs the bond."""
    async with Link(timeout=5) as link:
        await link.connect(address, pair=True)
        await link.start_notify(uuids.RECORD_ACCESS_CONTROL_POINT, _ignore)
        return await link.read(uuids.SERIAL_NUMBER_STRING)


async def _ignore(data: bytes, at: object) -> None:
    return None


def test_right_pin_pairs_passkey_and_pin_code_devices(bus_address: str) -> None:
    async def scenario() -> None:
        pins: dict[str, str | None] = {METER: "123456", SCALE: "0042"}
        async with simulator(bus_address, *devices()) as sim, PairingAgent(pins):
            assert await bonded_read(METER)
            assert sim.state(METER)["paired"]
            async with Link(timeout=5) as link:
                await link.connect(SCALE, pair=True)
            assert sim.state(SCALE)["paired"]

    run(scenario())


def test_wrong_pin_is_refused_with_a_clear_link_error(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim, PairingAgent({METER: "654321"}):
            with pytest.raises(LinkError, match=r"PIN falsch.*wrong PIN") as caught:
                await bonded_read(METER)
            assert "AuthenticationFailed" in str(caught.value)
            assert not sim.state(METER)["paired"]

    run(scenario())


def test_unknown_device_and_device_without_pin_are_rejected(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim, PairingAgent({METER: None}):
            for address in (STRANGER, METER):
                with pytest.raises(LinkError, match="Kopplung abgelehnt"):
                    await bonded_read(address)
                assert not sim.state(address)["paired"]

    run(scenario())


def test_without_agent_pairing_fails_and_close_unregisters(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, *devices()) as sim:
            agent = PairingAgent({METER: "123456"})
            await agent.start()
            await agent.close()
            with pytest.raises(LinkError, match="Kopplung abgelehnt"):
                await bonded_read(METER)
            assert not sim.state(METER)["paired"]
            async with PairingAgent({METER: "123456"}):  # registering again works after close
                await bonded_read(METER)

    run(scenario())


def test_agent_without_bluez_is_a_link_error(bus_address: str) -> None:
    async def scenario() -> None:
        with pytest.raises(LinkError, match="agent not registered"):
            await PairingAgent({}).start()

    run(scenario())


@pytest.mark.parametrize(
    ("path", "address"),
    [
        ("/org/bluez/hci0/dev_AA_BB_CC_DD_EE_0f", "AA:BB:CC:DD:EE:0F"),
        ("/org/bluez/hci1/dev_00_11_22_33_44_55", "00:11:22:33:44:55"),
        ("/org/bluez/hci0", None),
        ("/org/bluez/hci0/dev_AA_BB_CC_DD_EE", None),
    ],
)
def test_address_of_device_path(path: str, address: str | None) -> None:
    assert address_of(path) == address
