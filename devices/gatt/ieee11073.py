"""IEEE 11073-20601 SFLOAT and FLOAT numbers: mantissa × 10^exponent, precision kept.

Spec: https://github.com/HL7/phd/blob/master/input/pagecontent/MderFLOATsandSFLOATs.md
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal


class Special(enum.Enum):
    """The reserved bit patterns of SFLOAT/FLOAT (exponent 0); FHIR dataAbsentReason per value."""

    NAN = "not-a-number"
    NRES = "nres"
    POSITIVE_INFINITY = "positive-infinity"
    NEGATIVE_INFINITY = "negative-infinity"
    RESERVED = "reserved"


_LABELS = {
    Special.NAN: "NaN",
    Special.NRES: "NRes",
    Special.POSITIVE_INFINITY: "+INF",
    Special.NEGATIVE_INFINITY: "-INF",
    Special.RESERVED: "RFU",
}


@dataclass(frozen=True)
class Numeric:
    """A decimal number as the device sent it; ``Numeric(20, -1)`` (2.0) ≠ ``Numeric(2, 0)`` (2)."""

    mantissa: int
    exponent: int
    special: Special | None = None

    @property
    def value(self) -> Decimal | None:
        """The exact value, or None for a special (NaN, NRes, ±INF, reserved)."""
        if self.special is not None:
            return None
        return Decimal(self.mantissa).scaleb(self.exponent)

    def scaled(self, decades: int) -> Numeric:
        """The same reading in a unit 10^decades smaller (kg/L → mg/dL: 5); specials unchanged."""
        if self.special is not None:
            return self
        return Numeric(self.mantissa, self.exponent + decades)

    def __str__(self) -> str:
        if self.special is not None:
            return _LABELS[self.special]
        # "f" writes 1.2E+3 as 1200 and keeps trailing zeros of a negative exponent (2.0).
        return format(Decimal(self.mantissa).scaleb(self.exponent), "f")


# Specials are whole bit patterns with exponent 0 (IEEE 11073-20601 Annex F); the same
# mantissas with another exponent are ordinary numbers.
_SFLOAT_SPECIALS = {
    0x07FF: Special.NAN,
    0x0800: Special.NRES,
    0x07FE: Special.POSITIVE_INFINITY,
    0x0802: Special.NEGATIVE_INFINITY,
    0x0801: Special.RESERVED,
}
_FLOAT_SPECIALS = {
    0x007FFFFF: Special.NAN,
    0x00800000: Special.NRES,
    0x007FFFFE: Special.POSITIVE_INFINITY,
    0x00800002: Special.NEGATIVE_INFINITY,
    0x00800001: Special.RESERVED,
}


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


def _decode(raw: int, mantissa_bits: int, specials: dict[int, Special]) -> Numeric:
    mantissa = _signed(raw & ((1 << mantissa_bits) - 1), mantissa_bits)
    exponent_bits = 16 if mantissa_bits == 12 else 32
    exponent = _signed(raw >> mantissa_bits, exponent_bits - mantissa_bits)
    return Numeric(mantissa, exponent, specials.get(raw))


def decode_sfloat(raw: int) -> Numeric:
    """An SFLOAT given as its 16-bit integer (4-bit exponent, 12-bit mantissa, both signed)."""
    return _decode(raw, 12, _SFLOAT_SPECIALS)


def decode_float(raw: int) -> Numeric:
    """A FLOAT given as its 32-bit integer (8-bit exponent, 24-bit mantissa, both signed)."""
    return _decode(raw, 24, _FLOAT_SPECIALS)


def parse_sfloat(data: bytes) -> Numeric:
    """An SFLOAT from exactly 2 little-endian bytes; ValueError for another length."""
    if len(data) != 2:
        raise ValueError(f"SFLOAT needs 2 bytes, got {len(data)}")
    return decode_sfloat(int.from_bytes(data, "little"))


def parse_float(data: bytes) -> Numeric:
    """A FLOAT from exactly 4 little-endian bytes; ValueError for another length."""
    if len(data) != 4:
        raise ValueError(f"FLOAT needs 4 bytes, got {len(data)}")
    return decode_float(int.from_bytes(data, "little"))
