"""IEEE 11073 SFLOAT/FLOAT: the reference test vectors and generated numbers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.gatt.ieee11073 import Numeric, Special, parse_float, parse_sfloat
from tests.devices.gatt.wire import Num, check_numeric, floats, sfloat_bytes, sfloats


@pytest.mark.parametrize(
    ("hex_", "text", "mantissa", "exponent"),
    [
        ("7800", "120", 120, 0),
        ("6EF1", "36.6", 366, -1),
        ("5FB0", "0.00095", 95, -5),
        ("35C0", "0.0053", 53, -4),
        ("2E0B", "-1234", -1234, 0),
        ("A0F0", "16.0", 160, -1),
        ("14F0", "2.0", 20, -1),  # HL7 PHD FLOATS page: 0xF014 → "2.0"
        ("C8E0", "2.00", 200, -2),
        ("0210", "20", 2, 1),
        ("0220", "200", 2, 2),
    ],
)
def test_sfloat_vectors_keep_precision(hex_: str, text: str, mantissa: int, exponent: int) -> None:
    number = parse_sfloat(bytes.fromhex(hex_))
    assert (number.mantissa, number.exponent, number.special) == (mantissa, exponent, None)
    assert str(number) == text
    assert number.value == Decimal(text)


@pytest.mark.parametrize(
    ("hex_", "special", "text"),
    [
        ("FF07", Special.NAN, "NaN"),
        ("0008", Special.NRES, "NRes"),
        ("FE07", Special.POSITIVE_INFINITY, "+INF"),
        ("0208", Special.NEGATIVE_INFINITY, "-INF"),
        ("0108", Special.RESERVED, "RFU"),
    ],
)
def test_sfloat_specials(hex_: str, special: Special, text: str) -> None:
    number = parse_sfloat(bytes.fromhex(hex_))
    assert number.special is special
    assert number.value is None
    assert str(number) == text


@pytest.mark.parametrize(
    ("hex_", "text", "special"),
    [
        ("6E0100FF", "36.6", None),
        ("DA0300FF", "98.6", None),
        ("2EFBFF00", "-1234", None),
        ("FFFF7F00", "NaN", Special.NAN),
        ("00008000", "NRes", Special.NRES),
        ("FEFF7F00", "+INF", Special.POSITIVE_INFINITY),
        ("02008000", "-INF", Special.NEGATIVE_INFINITY),
        ("01008000", "RFU", Special.RESERVED),
        ("140000FF", "2.0", None),
    ],
)
def test_float_vectors(hex_: str, text: str, special: Special | None) -> None:
    number = parse_float(bytes.fromhex(hex_))
    assert number.special is special
    assert str(number) == text
    assert number.value == (None if special else Decimal(text))


def test_special_mantissas_with_an_exponent_are_ordinary_numbers() -> None:
    # 0xF7FF: exponent -1, mantissa 2047 → 204.7, not NaN (specials need exponent 0).
    number = parse_sfloat(bytes.fromhex("FFF7"))
    assert number.special is None
    assert str(number) == "204.7"


@pytest.mark.parametrize("size", [0, 1, 3])
def test_sfloat_needs_exactly_two_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="2 bytes"):
        parse_sfloat(bytes(size))


@pytest.mark.parametrize("size", [0, 3, 5])
def test_float_needs_exactly_four_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        parse_float(bytes(size))


def test_scaled_shifts_the_exponent_and_leaves_specials() -> None:
    assert Numeric(95, -5).scaled(5) == Numeric(95, 0)
    nan = Numeric(2047, 0, Special.NAN)
    assert nan.scaled(3) is nan


@given(sfloats())
def test_every_sfloat_decodes_to_its_fields(number: Num) -> None:
    check_numeric(parse_sfloat(number.raw), number)


@given(floats())
def test_every_float_decodes_to_its_fields(number: Num) -> None:
    check_numeric(parse_float(number.raw), number)


@given(st.binary(min_size=2, max_size=2))
def test_any_two_bytes_are_an_sfloat(data: bytes) -> None:
    number = parse_sfloat(data)
    assert (number.value is None) == (number.special is not None)


@given(st.integers(-2048, 2047), st.integers(-8, 7))
def test_str_is_the_exact_decimal(mantissa: int, exponent: int) -> None:
    number = parse_sfloat(sfloat_bytes(mantissa, exponent))
    if number.special is None:
        assert Decimal(str(number)) == Decimal(mantissa) * Decimal(10) ** exponent
        # Digits after the point = resolution: -exponent for negative exponents.
        assert len(str(number).partition(".")[2]) == max(0, -exponent)
