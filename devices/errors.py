"""Errors of the pilot-centre station; ``DeviceError`` is the root of them all.

```
DeviceError
├── ParseError        a payload that is not what the GATT specification allows (raw bytes kept)
├── ClockUnusable     a stored reading whose device clock is neither current nor synchronised
├── LinkError         the Bluetooth link failed (out of range, disconnected, BlueZ refused)
│   └── AttError      the device answered with an ATT error code
└── UploadError       the record core refused or could not be reached
```
"""

from __future__ import annotations


class DeviceError(Exception):
    """Root of the station's errors."""


class ParseError(DeviceError):
    """A payload violates its characteristic's layout; ``raw`` is kept for the review queue."""

    def __init__(self, characteristic: str, reason: str, raw: bytes) -> None:
        super().__init__(f"{characteristic}: {reason} (raw {raw.hex()})")
        self.characteristic = characteristic
        self.reason = reason
        self.raw = bytes(raw)


class ClockUnusable(DeviceError):
    """A stored record carries a device time that cannot be corrected to real time."""


class LinkError(DeviceError):
    """The Bluetooth link to a device failed."""


class AttError(LinkError):
    """The device answered an ATT request with an error code (e.g. 0x81 for RACP)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class UploadError(DeviceError):
    """The record core refused a batch or could not be reached."""
