"""Simulated BlueZ with standard BLE health devices on a private D-Bus, for tests and demos (https://github.com/bluez/bluez/tree/master/doc)."""

from __future__ import annotations

from devices.simulator.bus import PrivateBus, private_bus
from devices.simulator.control import SimulatorControl
from devices.simulator.devices import KINDS, DeviceConfig, SimulatedDevice
from devices.simulator.errors import AttError, NotPermitted, SimulatorError
from devices.simulator.simulator import Simulator

__all__ = [
    "KINDS",
    "AttError",
    "DeviceConfig",
    "NotPermitted",
    "PrivateBus",
    "SimulatedDevice",
    "Simulator",
    "SimulatorControl",
    "SimulatorError",
    "private_bus",
]
