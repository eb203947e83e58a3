"""A cursor over a little-endian GATT payload that raises ParseError with the characteristic.

Spec: https://www.bluetooth.com/specifications/gss/ (all multi-byte fields little-endian)
"""

from __future__ import annotations

from devices.errors import ParseError
from devices.gatt.date_time import SIZE as DATE_TIME_SIZE
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric, decode_float, decode_sfloat


class Reader:
    """Reads fields front to back; ``finish()`` rejects bytes the flags do not explain."""

    def __init__(self, data: bytes, characteristic: str) -> None:
        self.data = bytes(data)
        self.characteristic = characteristic
        self.position = 0

    def error(self, reason: str) -> ParseError:
        return ParseError(self.characteristic, reason, self.data)

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > len(self.data):
            raise self.error(
                f"Messwert zu kurz: {len(self.data)} Bytes, erwartet mindestens {end} / "
                f"truncated: {len(self.data)} bytes, need at least {end}"
            )
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def s16(self) -> int:
        return int.from_bytes(self.take(2), "little", signed=True)

    def sfloat(self) -> Numeric:
        return decode_sfloat(self.u16())

    def float32(self) -> Numeric:
        return decode_float(self.uint(4))

    def date_time(self) -> DateTime:
        try:
            return DateTime.decode(self.take(DATE_TIME_SIZE))
        except ValueError as exc:
            raise self.error(str(exc)) from exc

    def remaining(self) -> int:
        return len(self.data) - self.position

    def finish(self) -> None:
        if self.remaining():
            raise self.error(
                f"Messwert zu lang: {len(self.data)} Bytes, die Flags erklären nur "
                f"{self.position} / trailing bytes: {len(self.data)} bytes, "
                f"flags explain only {self.position}"
            )


def flag(flags: int, bit: int) -> bool:
    """Whether bit number ``bit`` of a flags field is set."""
    return bool(flags >> bit & 1)
