"""FHIR JSON that keeps the device's decimal digits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from devices.fhir_json import decimal_text, dumps, loads


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("36.6"), "36.6"),
        (Decimal("70.000"), "70.000"),
        (Decimal("16.0"), "16.0"),
        (Decimal(120), "120"),
        (Decimal("0.00095"), "0.00095"),
        (Decimal("-1234"), "-1234"),
        (Decimal(12).scaleb(2), "1200"),
    ],
)
def test_decimals_are_written_digit_for_digit(value: Decimal, text: str) -> None:
    assert decimal_text(value) == text
    assert dumps({"value": value}) == b'{"value":' + text.encode() + b"}"


def test_round_trip_keeps_trailing_zeros() -> None:
    data = b'{"a":[70.000,1.710,{"b":16.0}],"n":120,"s":"x"}'
    parsed = loads(data)
    assert parsed["a"][0] == Decimal("70.000") and str(parsed["a"][1]) == "1.710"
    assert parsed["n"] == 120 and type(parsed["n"]) is int
    assert dumps(parsed) == data


def test_non_finite_decimals_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        decimal_text(Decimal("Infinity"))
    with pytest.raises(TypeError) as refused:  # orjson wraps the ValueError
        dumps({"value": Decimal("NaN")})
    assert isinstance(refused.value.__cause__, ValueError)
    with pytest.raises(TypeError):
        dumps({"value": object()})
