"""Search criteria: the parsed, typed form of FHIR search parameters (https://hl7.org/fhir/R4/search.html).

A query is a list of criteria that are AND-ed; the values of one criterion are OR-ed (``code=a,b``).
Chains (``subject:Patient.name=x``) and reverse chains (``_has:Observation:patient:code=x``) nest
criteria of other resource types. ``fhir_server.search.sql`` turns criteria into SQL over the index
tables. Strict by default: an unknown or unsupported parameter raises a FhirError that names it; in
lenient mode it is skipped and left out of the list of parameters that were used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from fhir_server._time import parse_period
from fhir_server.errors import Category, FhirError
from fhir_server.search.registry import SearchParamDef, SearchParamRegistry
from fhir_server.search.values import cap, normalize_string

# Parameters that shape the result rather than select resources (search.html#return).
RESULT_PARAMETERS = frozenset(
    {
        "_sort",
        "_count",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
    }
)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_REFERENCE = re.compile(
    r"^(?:(?P<type>[A-Z][A-Za-z]+)/)?(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# The most nested criteria one query may carry: chains and _has are joins, keep them bounded.
MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Token:
    system: str | None
    code: str | None
    # False: the query gave no system ("code"); True with system None: "|code" (no system).
    system_given: bool
    # :of-type carries the identifier value as well (type-system|type-code|value).
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    type: str | None
    id: str | None
    url: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Bound:
    """A date (epoch microseconds) or number with its precision range [low, high] and a prefix."""

    prefix: str
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Quantity:
    bound: Bound
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class Near:
    latitude: float
    longitude: float
    km: float


Value = str | Token | Reference | Bound | Quantity | Near | tuple["Value", ...]


@dataclass(frozen=True, slots=True)
class Match:
    """``param`` (index code) of ``kind`` matches any of ``values`` (under ``modifier``)."""

    param: str
    kind: str
    modifier: str | None
    values: tuple[Value, ...]
    # Composite: the kind of each component, in order.
    components: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Missing:
    param: str
    kind: str
    missing: bool


@dataclass(frozen=True, slots=True)
class Ids:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LastUpdated:
    values: tuple[Bound, ...]


@dataclass(frozen=True, slots=True)
class InList:
    list_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Chain:
    """The reference ``param`` points at a resource of one of the branch types matching its criterion."""

    param: str
    branches: tuple[tuple[str, Criterion], ...]


@dataclass(frozen=True, slots=True)
class Has:
    """Some ``source`` resource whose reference ``param`` points here matches ``criterion``."""

    source: str
    param: str
    criterion: Criterion


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one of the criteria holds (compartment membership)."""

    criteria: tuple[Criterion, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """All of the criteria hold (one alternative of an access restriction)."""

    criteria: tuple[Criterion, ...]


@dataclass(frozen=True, slots=True)
class Not:
    criterion: Criterion


@dataclass(frozen=True, slots=True)
class Granted:
    """The Patient is one whose record ``grantees`` may see for resources of ``for_type`` at the
    instant ``at`` (epoch microseconds): a row of ``access_grant`` (fhir_server/access.py).
    Never parsed from a query; the access layer adds it."""

    grantees: tuple[str, ...]
    for_type: str
    at: int


Criterion = (
    Match | Missing | Ids | LastUpdated | InList | Chain | Has | AnyOf | AllOf | Not | Granted
)


@dataclass(frozen=True, slots=True)
class Parsed:
    criteria: list[Criterion]
    # The (key, value) pairs that were understood, for the self link.
    used: list[tuple[str, str]]


def split_values(raw: str) -> list[str]:
    """Splits on unescaped commas; ``\\,`` stays a literal comma (search.html#escaping). The
    escapes of ``, $ | \\`` are resolved here, any other backslash stays as written."""
    return _split(raw, ",", drop=",$|\\")


def _split_escaped(raw: str, sep: str, limit: int = -1) -> list[str]:
    """Splits on unescaped ``sep`` (``|`` of tokens, ``$`` of composites), dropping the escapes."""
    return _split(raw, sep, limit=limit)


def _split(raw: str, sep: str, *, limit: int = -1, drop: str | None = None) -> list[str]:
    """Splits on unescaped ``sep`` (at most ``limit`` times). An escaped character loses its
    backslash if it is in ``drop`` (None: always)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in raw:
        if escaped:
            current.append(char if drop is None or char in drop else "\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == sep and (limit < 0 or len(parts) < limit):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _invalid(message: str, key: str) -> FhirError:
    return FhirError(Category.INVALID, message, expression=(key,))


def _unsupported(message: str, key: str) -> FhirError:
    return FhirError(Category.NOT_SUPPORTED, message, expression=(key,))


class CriteriaParser:
    """Parses query parameters of one resource type into criteria."""

    def __init__(self, registry: SearchParamRegistry) -> None:
        self._registry = registry
        self._types = registry.resource_types

    def params(self, type: str) -> Mapping[str, SearchParamDef]:
        return self._registry.params_for(type)

    def parse(self, type: str, query: list[tuple[str, str]]) -> list[Criterion]:
        """Strict parse of selection criteria; result parameters are skipped."""
        return self.parse_query(type, query, lenient=False).criteria

    def parse_query(self, type: str, query: list[tuple[str, str]], *, lenient: bool) -> Parsed:
        criteria: list[Criterion] = []
        used: list[tuple[str, str]] = []
        for key, raw in query:
            if any(ord(c) < 32 for c in raw) or any(ord(c) < 32 for c in key):
                raise _invalid(f"The value of '{key}' contains control characters.", key)
            name = key.partition(":")[0]
            if name in RESULT_PARAMETERS:
                continue
            try:
                criteria.append(self.criterion(type, key, raw, 0))
            except FhirError as error:
                # Lenient handling ignores unknown parameters, never malformed values.
                if not (lenient and error.unknown_parameter):
                    raise
                continue
            used.append((key, raw))
        return Parsed(criteria, used)

    def criterion(self, type: str, key: str, raw: str, depth: int) -> Criterion:
        if depth > MAX_DEPTH:
            raise _invalid(f"'{key}' nests chains deeper than {MAX_DEPTH} levels.", key)
        if key.startswith("_has:"):
            return self._has(type, key, raw, depth)
        head, dot, rest = key.partition(".")
        name, _, modifier = head.partition(":")
        if dot:
            return self._chain(type, key, name, modifier or None, rest, raw, depth)
        if name in ("_id", "_lastUpdated") and modifier == "missing":
            if raw not in ("true", "false"):
                raise _invalid(f"':missing' takes true or false, not '{raw}'.", key)
            # Every resource has an id and a lastUpdated.
            return Ids(()) if raw == "true" else Not(Ids(()))
        if name == "_id":
            if modifier not in (None, "", "not"):
                raise _unsupported(f"The modifier ':{modifier}' is not supported on _id.", key)
            # _id is a token without a system: "|id" matches, "system|id" cannot.
            values = [v.partition("|") if "|" in v else ("", "", v) for v in split_values(raw)]
            found = Ids(tuple(code.strip() for system, _, code in values if not system))
            return Not(found) if modifier == "not" else found
        if name == "_lastUpdated":
            if modifier:
                raise _unsupported(f"The modifier ':{modifier}' is not supported on {name}.", key)
            return LastUpdated(tuple(_date(v, key) for v in split_values(raw)))
        if name == "_list":
            return InList(tuple(split_values(raw)))
        if name in ("_text", "_content"):
            if modifier:
                raise _unsupported(f"The modifier ':{modifier}' is not supported on {name}.", key)
            return Match(name, "text", None, tuple(normalize_string(v) for v in split_values(raw)))
        definition = self.params(type).get(name)
        if definition is None:
            error = _invalid(f"Unknown search parameter '{name}' for resource type {type}.", key)
            error.unknown_parameter = True
            raise error
        return self._match(type, key, definition, modifier or None, raw)

    def _match(
        self, type: str, key: str, definition: SearchParamDef, modifier: str | None, raw: str
    ) -> Criterion:
        kind = definition.type
        if kind == "special" and definition.code != "near":
            raise _unsupported(f"The special parameter '{definition.code}' is not supported.", key)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise _invalid(f"':missing' takes true or false, not '{raw}'.", key)
            return Missing(definition.code, kind, raw == "true")
        if kind == "composite":
            if modifier:
                raise _unsupported(f"The modifier ':{modifier}' is not supported on '{key}'.", key)
            return self._composite(type, key, definition, raw)
        if kind == "reference":
            return self._reference(key, definition, modifier, raw)
        allowed = _MODIFIERS.get(kind, ())
        if modifier is not None and modifier not in allowed:
            raise _unsupported(
                f"The modifier ':{modifier}' is not supported on '{definition.code}' ({kind}).", key
            )
        parse = _VALUE_PARSERS[kind]
        values = tuple(parse(v, modifier, key) for v in split_values(raw))
        if modifier == "of-type":
            return Match(f"{definition.code}:of-type", "token", "of-type", values)
        return Match(definition.code, kind, modifier, values)

    def _reference(
        self, key: str, definition: SearchParamDef, modifier: str | None, raw: str
    ) -> Criterion:
        if modifier == "identifier":
            values = tuple(_token(v, None, key) for v in split_values(raw))
            return Match(f"{definition.code}:identifier", "token", None, values)
        target: str | None = None
        if modifier is not None:
            if modifier not in self._types:
                raise _unsupported(
                    f"The modifier ':{modifier}' is not supported on '{definition.code}' (reference).",
                    key,
                )
            if definition.target and modifier not in definition.target:
                raise _invalid(f"'{definition.code}' cannot refer to a {modifier}.", key)
            target = modifier
        elif len(definition.target) == 1:
            target = definition.target[0]
        references = tuple(self._reference_value(v, target, key) for v in split_values(raw))
        return Match(definition.code, "reference", None, references)

    def _reference_value(self, raw: str, target: str | None, key: str) -> Reference:
        if not raw:
            raise _invalid(f"'{key}' needs a reference value.", key)
        match = _REFERENCE.match(raw)
        if match is not None:
            rtype = match["type"]
            if rtype is not None and rtype not in self._types:
                raise _invalid(f"'{rtype}' is not a resource type.", key)
            if rtype is not None and target is not None and rtype != target:
                raise _invalid(f"'{raw}' is not a {target} reference.", key)
            return Reference(rtype or target, match["id"])
        url, _, version = raw.partition("|")
        return Reference(None, None, cap(url), version or None)

    def _composite(self, type: str, key: str, definition: SearchParamDef, raw: str) -> Match:
        kinds: list[str] = []
        for component in definition.components:
            part = self._registry.by_url(component.definition)
            if part is None:
                raise _unsupported(f"The composite parameter '{key}' is not supported.", key)
            kinds.append(part.type)
        values: list[Value] = []
        for value in split_values(raw):
            parts = _split_escaped(value, "$")
            if len(parts) != len(kinds):
                raise _invalid(
                    f"'{value}' needs {len(kinds)} components separated by '$' for '{key}'.", key
                )
            values.append(
                tuple(_VALUE_PARSERS[k](p, None, key) for k, p in zip(kinds, parts, strict=True))
            )
        return Match(definition.code, "composite", None, tuple(values), tuple(kinds))

    def _chain(
        self,
        type: str,
        key: str,
        name: str,
        modifier: str | None,
        rest: str,
        raw: str,
        depth: int,
    ) -> Criterion:
        definition = self.params(type).get(name)
        if definition is None or definition.type != "reference":
            error = _invalid(f"'{name}' is not a reference parameter of {type} to chain on.", key)
            error.unknown_parameter = definition is None
            raise error
        if modifier is not None and modifier not in self._types:
            raise _invalid(f"':{modifier}' in '{key}' is not a resource type.", key)
        targets = [modifier] if modifier else list(definition.target or ())
        next_name = rest.partition(".")[0].partition(":")[0]
        branches: list[tuple[str, Criterion]] = []
        for target in targets:
            if target not in self._types:
                continue
            if next_name not in self.params(target) and next_name not in _CHAINABLE_COMMON:
                continue
            branches.append((target, self.criterion(target, rest, raw, depth + 1)))
        if not branches:
            raise _invalid(f"The chain '{key}' names no parameter of the referenced types.", key)
        return Chain(name, tuple(branches))

    def _has(self, type: str, key: str, raw: str, depth: int) -> Criterion:
        parts = key.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise _invalid(f"'{key}' must read _has:Type:reference:parameter.", key)
        _, source, param, rest = parts
        if source not in self._types:
            raise _invalid(f"'{source}' in '{key}' is not a resource type.", key)
        definition = self.params(source).get(param)
        if definition is None or definition.type != "reference":
            raise _invalid(f"'{param}' is not a reference parameter of {source}.", key)
        if definition.target and type not in definition.target:
            raise _invalid(f"{source}.{param} cannot refer to a {type}.", key)
        return Has(source, param, self.criterion(source, rest, raw, depth + 1))


_CHAINABLE_COMMON = frozenset({"_id", "_lastUpdated", "_has", "_list", "_text", "_content"})


def _token(raw: str, modifier: str | None, key: str) -> Token:
    if modifier == "text":
        return Token(None, None, False, normalize_string(raw))
    if modifier == "of-type":
        parts = _split_escaped(raw, "|")
        if len(parts) != 3 or not all(parts):
            raise _invalid(f"':of-type' takes system|code|value, not '{raw}'.", key)
        return Token(cap(parts[0]), cap(parts[1]), True, parts[2])
    parts = _split_escaped(raw, "|", 1)
    if len(parts) == 1:
        return Token(None, cap(parts[0]) if parts[0] else None, False)
    system, code = parts
    return Token(cap(system) if system else None, cap(code) if code else None, True)


def _string(raw: str, modifier: str | None, key: str) -> str:
    return cap(raw) if modifier == "exact" else cap(normalize_string(raw))


def _uri(raw: str, _modifier: str | None, key: str) -> str:
    if not raw:
        raise _invalid(f"'{key}' needs a value.", key)
    return cap(raw)


def _prefixed(raw: str) -> tuple[str, str]:
    if raw[:2] in PREFIXES:
        return raw[:2], raw[2:]
    return "eq", raw


def _date(raw: str, key: str) -> Bound:
    prefix, text = _prefixed(raw)
    period = parse_period(text)
    if period is None:
        raise _invalid(f"'{raw}' is not a valid date search value for '{key}'.", key)
    return Bound(prefix, period[0], period[0], period[1])


def _date_value(raw: str, _modifier: str | None, key: str) -> Bound:
    return _date(raw, key)


def _number(raw: str, key: str) -> Bound:
    prefix, text = _prefixed(raw)
    if not _NUMBER.match(text):
        raise _invalid(f"'{raw}' is not a valid number search value for '{key}'.", key)
    exact = Decimal(text)
    exponent = exact.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return Bound(prefix, float(exact), float(exact - half), float(exact + half))


def _number_value(raw: str, _modifier: str | None, key: str) -> Bound:
    return _number(raw, key)


def _quantity(raw: str, _modifier: str | None, key: str) -> Quantity:
    parts = _split_escaped(raw, "|")
    if len(parts) not in (1, 3):
        raise _invalid(f"'{raw}' must read [prefix]number|system|code for '{key}'.", key)
    bound = _number(parts[0], key)
    if len(parts) == 1:
        return Quantity(bound, None, None)
    return Quantity(bound, cap(parts[1]) or None, cap(parts[2]) or None)


def _near(raw: str, _modifier: str | None, key: str) -> Near:
    parts = raw.split("|")
    try:
        latitude, longitude = float(parts[0]), float(parts[1])
        km = float(parts[2]) if len(parts) > 2 and parts[2] else 10.0
    except (ValueError, IndexError):
        raise _invalid(f"'{raw}' must read latitude|longitude|distance|unit.", key) from None
    unit = parts[3] if len(parts) > 3 else "km"
    factor = _DISTANCE_UNITS.get(unit)
    if factor is None or not (-90 <= latitude <= 90 and -180 <= longitude <= 180) or km < 0:
        raise _invalid(f"'{raw}' is not a valid position, distance or unit (km, m, mi).", key)
    return Near(latitude, longitude, km * factor)


_DISTANCE_UNITS = {"km": 1.0, "m": 0.001, "mi": 1.609344, "[mi_i]": 1.609344}

_VALUE_PARSERS: dict[str, Callable[[str, str | None, str], Value]] = {
    "token": _token,
    "string": _string,
    "date": _date_value,
    "uri": _uri,
    "number": _number_value,
    "quantity": _quantity,
    "special": _near,
    "reference": lambda raw, modifier, key: Reference(None, None, cap(raw)),
}
_MODIFIERS: dict[str, tuple[str, ...]] = {
    "token": ("not", "text", "of-type"),
    "string": ("exact", "contains"),
    "date": (),
    "uri": ("above", "below"),
    "number": (),
    "quantity": (),
    "special": (),
}
