"""GATT Date Time (0x2A08): the 7-byte timestamp embedded in health measurements.

Spec: https://github.com/oesmith/gatt-xml/blob/master/org.bluetooth.characteristic.date_time.xml
"""

from __future__ import annotations

import calendar
import struct
from dataclasses import dataclass
from datetime import datetime

SIZE = 7
_LAYOUT = struct.Struct("<HBBBBB")


@dataclass(frozen=True)
class DateTime:
    """Device-local wall-clock time; year, month or day 0 means "not known"."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int

    @classmethod
    def decode(cls, chunk: bytes) -> DateTime:
        """Exactly 7 bytes; ValueError (German / English reason) for values the spec forbids."""
        if len(chunk) != SIZE:
            raise ValueError(
                f"Zeitstempel braucht 7 Bytes, nicht {len(chunk)} / "
                f"date time needs 7 bytes, got {len(chunk)}"
            )
        stamp = cls(*_LAYOUT.unpack(chunk))
        reason = stamp.invalid_reason()
        if reason is not None:
            raise ValueError(reason)
        return stamp

    @classmethod
    def from_datetime(cls, moment: datetime) -> DateTime:
        """The wall-clock fields of ``moment`` (its time zone, if any, is not sent)."""
        return cls(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)

    def invalid_reason(self) -> str | None:
        """Why the spec forbids these values, or None if it allows them."""
        for german, english, value, low, high in (
            ("Ungültiges Jahr", "year", self.year, 1582, 9999),
            ("Ungültiger Monat", "month", self.month, 1, 12),
            ("Ungültiger Tag", "day", self.day, 1, 31),
            ("Ungültige Stunde", "hour", self.hour, 0, 23),
            ("Ungültige Minute", "minute", self.minute, 0, 59),
            ("Ungültige Sekunde", "second", self.second, 0, 59),
        ):
            # 0 means "unknown" for year, month and day and is in range for the others.
            if value != 0 and not low <= value <= high:
                return f"{german} {value} / invalid {english} {value}"
        # Without a year, February may still have 29 days (2000 is a leap year).
        if self.month and self.day > calendar.monthrange(self.year or 2000, self.month)[1]:
            return (
                f"Den Tag {self.day} gibt es im Monat {self.month} nicht / "
                f"day {self.day} does not exist in month {self.month}"
            )
        return None

    def to_datetime(self) -> datetime | None:
        """A naive datetime, or None when year, month or day is unknown (0)."""
        if not (self.year and self.month and self.day):
            return None
        return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second)

    def __bytes__(self) -> bytes:
        return _LAYOUT.pack(self.year, self.month, self.day, self.hour, self.minute, self.second)
