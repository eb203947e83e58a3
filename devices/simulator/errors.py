"""Errors of the BLE device simulator; ``SimulatorError`` is their root.

```
SimulatorError       bad scenario, unknown device or characteristic, bus trouble
├── AttError         the simulated peripheral answers an ATT request with an error code
└── NotPermitted     BlueZ refuses the request before it reaches the peripheral
```
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of the simulator's errors."""


class AttError(SimulatorError):
    """An ATT error response (e.g. 0x05 insufficient authentication, 0x81 CCCD not configured)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"Operation failed with ATT error: 0x{code:02x}")
        self.code = code


class NotPermitted(SimulatorError):
    """``org.bluez.Error.NotPermitted`` with BlueZ's message (e.g. "Read not permitted")."""
