"""FHIR JSON whose decimals keep the device's digits ("36.6", "70.000", "16.0").

IG: http://hl7.org/fhir/uv/phd/MderFLOATsandSFLOATs.html — valueQuantity.value must honour the
reported precision; FHIR decimals are JSON numbers whose digits carry it
(https://hl7.org/fhir/R4/json.html#primitive). The mapper puts ``Decimal``s in its dicts;
``dumps`` writes them digit for digit (orjson cannot serialise Decimal itself), ``loads`` reads
numbers with a fraction or exponent back as ``Decimal`` (orjson would make them floats: 70.0).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


def decimal_text(value: Decimal) -> str:
    """Fixed-point digits: 1.2E+3 → "1200", 0.00095 → "0.00095", 70.000 → "70.000"."""
    if not value.is_finite():
        raise ValueError(f"FHIR decimals are finite, not {value}")
    return format(value, "f")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(decimal_text(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(resource: Any) -> bytes:
    """Compact JSON (UTF-8) with every Decimal written exactly."""
    return orjson.dumps(resource, default=_default)


def loads(data: bytes | str) -> Any:
    """JSON with non-integer numbers as Decimal, so ``dumps(loads(b))`` keeps the digits."""
    return json.loads(data, parse_float=Decimal)
