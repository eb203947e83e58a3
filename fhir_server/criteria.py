"""Search criteria: the parsed, typed form of FHIR search parameters (https://hl7.org/fhir/R4/search.html).

Criteria are AND-ed; the values of one criterion are OR-ed (``code=a,b``). The storage layer turns
them into SQL over the index tables. Strict by default: an unknown or unsupported parameter raises
a FhirError that names it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from fhir_server._time import parse_period
from fhir_server.errors import Category, FhirError
from fhir_server.search.registry import SearchParamRegistry

# Result parameters the server does not implement yet: refused, never silently ignored.
NOT_YET_SUPPORTED = frozenset(
    {
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
    }
)
# Parameters that shape the result rather than select resources.
RESULT_PARAMETERS = NOT_YET_SUPPORTED | {"_count", "_offset", "_format", "_pretty"}
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_REFERENCE = re.compile(r"^(?:(?P<type>[A-Z][A-Za-z]+)/)?(?P<id>[A-Za-z0-9\-.]{1,64})$")


@dataclass(frozen=True, slots=True)
class Token:
    system: str | None
    code: str | None
    # False: the query gave no system ("code"); True with system None: "|code" (no system).
    system_given: bool


@dataclass(frozen=True, slots=True)
class Reference:
    type: str | None
    id: str


@dataclass(frozen=True, slots=True)
class DateRange:
    prefix: str
    low: int
    high: int


Value = str | Token | Reference | DateRange


@dataclass(frozen=True, slots=True)
class Criterion:
    param: str
    kind: str
    modifier: str | None
    values: tuple[Value, ...]


def normalize(text: str) -> str:
    """The form string search compares: case and accents ignored (search.html#string)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def split_values(raw: str) -> list[str]:
    """Splits on unescaped commas; ``\\,`` stays a literal comma (search.html#escaping)."""
    parts, current, escaped = [], [], False
    for char in raw:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


class CriteriaParser:
    """Parses query parameters of one resource type into criteria."""

    def __init__(self, registry: SearchParamRegistry) -> None:
        self._registry = registry

    def parse(self, type: str, query: list[tuple[str, str]]) -> list[Criterion]:
        params = self._registry.params_for(type)
        criteria: list[Criterion] = []
        for key, raw in query:
            if any(ord(c) < 32 for c in raw):
                raise FhirError(
                    Category.INVALID,
                    f"The value of '{key}' contains control characters.",
                    expression=(key,),
                )
            name, _, modifier = key.partition(":")
            if name in NOT_YET_SUPPORTED:
                raise FhirError(
                    Category.NOT_SUPPORTED,
                    f"The parameter '{key}' is not supported yet.",
                    expression=(key,),
                )
            if name in RESULT_PARAMETERS:
                continue
            if name == "_id":
                criteria.append(Criterion("_id", "_id", None, tuple(split_values(raw))))
                continue
            definition = params.get(name)
            if definition is None:
                raise FhirError(
                    Category.INVALID,
                    f"Unknown search parameter '{key}' for resource type {type}.",
                    expression=(key,),
                )
            criteria.append(self._criterion(name, definition.type, modifier or None, raw))
        return criteria

    def _criterion(self, name: str, kind: str, modifier: str | None, raw: str) -> Criterion:
        parse = _VALUE_PARSERS.get(kind)
        if parse is None or modifier not in _MODIFIERS.get(kind, (None,)):
            shown = f"{name}:{modifier}" if modifier else name
            raise FhirError(
                Category.NOT_SUPPORTED,
                f"Search parameter '{shown}' (type {kind}) is not supported in this query.",
                expression=(shown,),
            )
        values = tuple(parse(v, modifier) for v in split_values(raw))
        return Criterion(name, kind, modifier, values)


def _token(raw: str, _modifier: str | None) -> Token:
    if "|" not in raw:
        return Token(None, raw or None, False)
    system, _, code = raw.partition("|")
    return Token(system or None, code or None, True)


def _string(raw: str, modifier: str | None) -> str:
    return raw if modifier == "exact" else normalize(raw)


def _reference(raw: str, _modifier: str | None) -> Reference | str:
    match = _REFERENCE.match(raw)
    if match is None:
        return raw  # an absolute or canonical URL, matched as written
    return Reference(match["type"], match["id"])


def _date(raw: str, _modifier: str | None) -> DateRange:
    prefix = raw[:2] if raw[:2] in _PREFIXES else "eq"
    text = raw[2:] if raw[:2] in _PREFIXES else raw
    period = parse_period(text)
    if period is None:
        raise FhirError(Category.INVALID, f"'{raw}' is not a valid date search value.")
    return DateRange(prefix, *period)


def _uri(raw: str, _modifier: str | None) -> str:
    return raw


_VALUE_PARSERS: dict[str, Callable[[str, str | None], Value]] = {
    "token": _token,
    "string": _string,
    "reference": _reference,
    "date": _date,
    "uri": _uri,
}
_MODIFIERS: dict[str, tuple[str | None, ...]] = {
    "token": (None,),
    "string": (None, "exact", "contains"),
    "reference": (None,),
    "date": (None,),
    "uri": (None,),
}
