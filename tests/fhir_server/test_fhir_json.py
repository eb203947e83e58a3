"""fhir_server/fhir_json.py: numbers survive loads → dumps digit for digit, floats where safe."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.fhir_json import JsonDecimal, dumps, loads

KEPT = (
    "70.000",
    "1.710",
    "0.00095",
    "16.0",
    "1200",
    "-0.50",
    "3.14159265358979323846",
    "1.0e2",
    "1E+2",
    "5e-3",
    "0.0000001",
    "12345678901234567890",
    "-98765432109876543210",
)


@pytest.mark.parametrize("text", KEPT)
def test_numbers_keep_their_text(text: str) -> None:
    for shape in ('{"a":%s}', '{"a": [ %s ] }', "[1,%s,2]", "%s", '{"a":\n  %s\n}'):
        body = (shape % text).encode()
        assert text.encode() in dumps(loads(body)), body


def test_numbers_a_float_keeps_stay_floats() -> None:
    parsed = loads(b'{"a":1.71,"b":[0.5,16.5,-2.25],"c":7,"d":"70.000","e":"1e2x"}')
    assert parsed == {"a": 1.71, "b": [0.5, 16.5, -2.25], "c": 7, "d": "70.000", "e": "1e2x"}
    assert all(type(v) is float for v in [parsed["a"], *parsed["b"]])


def test_precise_numbers_come_back_as_decimal() -> None:
    parsed = loads(b'{"a":70.000,"b":1.71}')
    assert isinstance(parsed["a"], JsonDecimal) and parsed["a"] == Decimal("70.000")
    assert parsed["b"] == Decimal("1.71")  # once slow, the whole document is Decimal


def test_plain_decimals_are_written_with_their_precision() -> None:
    assert dumps({"a": Decimal("70.000"), "b": Decimal("1.2E+3")}) == b'{"a":70.000,"b":1.2E+3}'
    with pytest.raises(TypeError):
        dumps({"a": Decimal("NaN")})


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":70.000,"b":NaN}',
        b'{"a":70.000,"b":"\\udc00"}',
        b'{"a":70.000,"b":1e999}',
        b'{"a":70.000,}',
        b"[" * 1100 + b"1.50" + b"]" * 1100,
    ],
)
def test_what_orjson_refuses_is_refused(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads(body)


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
    st.sampled_from(["", "0", "00"]),
)
def test_any_decimal_text_round_trips(text: str, zeros: str) -> None:
    if "E" not in text and "." in text:
        text += zeros
    if text == "-0":
        text = "0"  # a Python int has no sign of zero (the value is the same)
    body = b'{"v":[%s]}' % text.encode()
    assert dumps(loads(body)) == body
