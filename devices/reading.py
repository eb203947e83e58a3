"""One notification or indication as the station received it, before parsing.

The raw payload is what the station keeps durably: parsing and mapping can be repeated, and a
payload that does not parse stays available for review.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Reading:
    device_address: str  # "AA:BB:CC:DD:EE:FF", upper case
    characteristic: str  # full 128-bit characteristic UUID, lower case
    raw: bytes  # the payload exactly as received
    received_at: datetime  # station clock, UTC, timezone-aware
    device_time_offset: timedelta | None = None  # station time − device time (CTS), if known
    sequence: int | None = None  # glucose record sequence number (RACP downloads)
    clock_read_at: datetime | None = None  # station time when the device clock was read (CTS)
