"""Current Time (0x2A2B) of the Current Time Service: Exact Time 256 plus adjust reason.

Spec: https://www.bluetooth.com/specifications/specs/current-time-service-1-1/
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from devices.gatt import uuids
from devices.gatt._reader import Reader
from devices.gatt.date_time import DateTime


class AdjustReason(enum.IntFlag):
    """Why the clock last changed (bits 4–7 reserved)."""

    MANUAL = 1 << 0
    EXTERNAL_REFERENCE = 1 << 1
    TIME_ZONE = 1 << 2
    DST = 1 << 3


@dataclass(frozen=True)
class CurrentTime:
    """The device clock: day of week 1 = Monday … 7 = Sunday, 0 = unknown; 1/256 s fractions."""

    date_time: DateTime
    day_of_week: int
    fractions256: int
    adjust_reason: AdjustReason

    @classmethod
    def parse(cls, data: bytes) -> CurrentTime:
        """Exactly 10 bytes; ParseError for a date the spec forbids or a weekday above 7."""
        reader = Reader(data, uuids.CURRENT_TIME)
        date_time, day_of_week = reader.date_time(), reader.u8()
        if day_of_week > 7:
            raise reader.error(
                f"Ungültiger Wochentag {day_of_week} / invalid day of week {day_of_week}"
            )
        current = cls(date_time, day_of_week, reader.u8(), AdjustReason(reader.u8()))
        reader.finish()
        return current

    @classmethod
    def from_datetime(
        cls, moment: datetime, adjust_reason: AdjustReason = AdjustReason.MANUAL
    ) -> CurrentTime:
        """What to write to set a device clock to ``moment`` (its wall-clock fields)."""
        return cls(
            DateTime.from_datetime(moment),
            moment.isoweekday(),
            moment.microsecond * 256 // 1_000_000,
            adjust_reason,
        )

    def to_datetime(self) -> datetime | None:
        """Naive device-local time (fractions floored to µs); None when the date is unknown."""
        moment = self.date_time.to_datetime()
        if moment is None:
            return None
        return moment + timedelta(microseconds=self.fractions256 * 1_000_000 // 256)

    def __bytes__(self) -> bytes:
        tail = bytes([self.day_of_week, self.fractions256, self.adjust_reason])
        return bytes(self.date_time) + tail
