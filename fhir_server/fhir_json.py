"""FHIR JSON whose decimals keep their digits (https://hl7.org/fhir/R4/json.html#primitive).

A decimal's precision is part of its value (https://hl7.org/fhir/R4/datatypes.html#decimal:
70.000 is not 70.0), but orjson reads numbers as floats and writes their shortest repr. ``loads``
therefore parses with orjson (fast, and the strict judge of what is valid JSON) and, only when
the text holds a number that a float would not give back digit for digit, parses it again with
``json`` into :class:`JsonDecimal`, which remembers its text; ``dumps`` writes that text as is.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, Final

import orjson

# A number ends before optional whitespace and , ] or } (inside a string it ends before text).
_END: Final = rb"(?=[ \t\n\r]*(?:[,\]}]|\Z))"
_FRACTION: Final = re.compile(rb"\.[0-9]+(?:[eE][+-]?[0-9]+)?" + _END)
# Searched in the text with every digit mapped to 0 and E to e: a literal prefix is fast to find.
_EXPONENT: Final = re.compile(rb"0e[+-]?0+" + _END)
_SHAPE: Final = bytes.maketrans(b"0123456789E", b"0000000000e")
_LONG_RUN: Final = b"0" * 19  # orjson reads integers beyond 64 bits as floats
_BEFORE: Final = frozenset(b" \t\n\r:,[")
_WHITESPACE: Final = frozenset(b" \t\n\r")
_DELIMITERS: Final = frozenset(b",]}")


class JsonDecimal(Decimal):
    """A JSON number as ``Decimal`` together with its text ("1.0e2" stays "1.0e2")."""

    __slots__ = ("text",)
    text: str

    @classmethod
    def parse(cls, text: str) -> JsonDecimal:
        number = cls(text)
        number.text = text
        return number


def loads(data: bytes | str) -> Any:
    """Parses JSON; numbers a float would change come back as :class:`JsonDecimal`.

    Raises ``orjson.JSONDecodeError`` for anything orjson refuses (NaN, lone surrogates, …).
    """
    parsed = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data
    if not _float_changes(raw):
        return parsed
    text = data if isinstance(data, str) else data.decode()
    try:
        return json.loads(text, parse_float=JsonDecimal.parse, parse_int=_integer)
    except RecursionError as exc:  # json recurses; orjson allows a depth Python may not
        raise orjson.JSONDecodeError("The JSON is nested too deeply.", text, 0) from exc


def dumps(value: Any) -> bytes:
    """Compact JSON (UTF-8) like ``orjson.dumps``, with every ``Decimal`` written exactly."""
    return orjson.dumps(value, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, JsonDecimal):
        return orjson.Fragment(value.text)
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serialisable")


def _integer(text: str) -> int | JsonDecimal:
    return int(text) if len(text) < 19 else JsonDecimal.parse(text)


def _float_changes(raw: bytes) -> bool:
    """Whether a number in ``raw`` would not survive orjson's float round trip digit for digit.

    May err towards yes (text inside strings that looks like a number), never towards no.
    """
    for match in _FRACTION.finditer(raw):
        start = match.start()
        while start and 0x30 <= raw[start - 1] <= 0x39:
            start -= 1
        if start and raw[start - 1] == 0x2D:  # minus sign
            start -= 1
        token = raw[start : match.end()]
        if orjson.dumps(float(token)) != token:
            return True
    shape = raw.translate(_SHAPE)
    return _EXPONENT.search(shape) is not None or _long_integer(shape)


def _long_integer(shape: bytes) -> bool:
    """A run of 19 or more digits standing as a number (``shape``: digits mapped to 0)."""
    size = len(shape)
    found = shape.find(_LONG_RUN)
    while found != -1:
        start, end = found, found + len(_LONG_RUN)
        while end < size and shape[end] == 0x30:
            end += 1
        if start and shape[start - 1] == 0x2D:
            start -= 1
        after = end
        while after < size and shape[after] in _WHITESPACE:
            after += 1
        if (start == 0 or shape[start - 1] in _BEFORE) and (
            after == size or shape[after] in _DELIMITERS
        ):
            return True
        found = shape.find(_LONG_RUN, end)
    return False
