"""Row builders: turn the values a parameter's expression selected into rows.

One builder per search parameter type (https://hl7.org/fhir/R4/search.html#ptypes).
The FHIR data type of a value is decided from the compile-time ``hint`` (the
choice-element suffix, e.g. ``"Period"`` for ``effectivePeriod``) and otherwise
from the JSON shape, as the R4 search page maps types to parameters
(https://hl7.org/fhir/R4/search.html#token, #string, #reference, #date,
#quantity, #number, #uri):

* token: code/string/uri/id primitives, booleans (``"true"``/``"false"``),
  Coding, CodeableConcept (one row per coding; text = display, falling back to
  CodeableConcept.text; a text no coding carries gets a ``code=None`` row),
  Identifier (text = type.text) and ContactPoint (value only: its system is a code). ``text`` is
  normalised like strings, for ``:text``. Each ``Identifier.type.coding`` also
  gives a ``<code>:of-type`` row: the coding's system and code, and the
  identifier's value unchanged as text (https://hl7.org/fhir/R4/search.html#modifiers);
* string: primitives, HumanName and Address parts;
* reference: literal references (``#contained`` skipped), canonical/uri
  strings (``url`` only, ``version`` from ``|v`` if at most 64 characters);
  ``Reference.identifier`` becomes a :class:`TokenRow` for ``<code>:identifier``;
* date: date/dateTime/instant, Period (open ends -> DATE_MIN/DATE_MAX), Timing
  (each ``event`` plus ``repeat.boundsPeriod``);
* quantity: Quantity and its profiles (Age, Duration, Count, Distance),
  Money (system ``urn:iso:std:iso:4217``, code = currency), Range; SampledData
  and Ratio are not searchable values and give no rows;
* number: integer/decimal, Range.

Token codes and systems, string values and uris are cut to
:data:`~fhir_server.search.values.INDEX_TEXT_MAX` characters (btree limits).
Rows are accumulated as plain tuples (C-level hashing for de-duplication)
and become the dataclasses of :mod:`fhir_server.search.rows` only once.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from itertools import starmap
from typing import Any, Final, TypeAlias, TypeGuard, TypeVar

from fhir_server.search.rows import (
    QUANTITY_MAX,
    QUANTITY_MIN,
    DateRow,
    IndexRows,
    NumberRow,
    PositionRow,
    QuantityRow,
    ReferenceRow,
    StringRow,
    TextRow,
    TokenRow,
    UriRow,
)
from fhir_server.search.values import (
    INDEX_TEXT_MAX,
    ParsedReference,
    cap,
    date_range,
    normalize_string,
    number_range,
    period_range,
)

__all__ = ["EMITTERS", "EMITTER_OUTPUTS", "Accumulator", "Emitter"]

_R = TypeVar("_R")

_MAX: Final = INDEX_TEXT_MAX
_CONTACT_POINT_SYSTEMS: Final = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_NUMBERS: Final = (int, float, Decimal)
_ISO_4217: Final = "urn:iso:std:iso:4217"
_DATE_HINTS: Final = frozenset({None, "Date", "DateTime", "Instant"})
_STRING_PARTS: Final = (
    # HumanName
    "family", "given", "prefix", "suffix", "text",
    # Address
    "line", "city", "district", "state", "postalCode", "country",
)  # fmt: skip


class Accumulator:
    """The rows of one resource while it is being indexed."""

    __slots__ = (
        "dates",
        "numbers",
        "parse_reference",
        "positions",
        "quantities",
        "references",
        "strings",
        "texts",
        "tokens",
        "uris",
    )  # fmt: skip

    def __init__(self, parse_reference: Callable[[str], ParsedReference | None]) -> None:
        self.parse_reference = parse_reference
        self.tokens: list[tuple[str, str | None, str | None, str | None]] = []
        self.strings: list[tuple[str, str, str]] = []
        self.references: list[tuple[str, str | None, str | None, str | None, str]] = []
        self.dates: list[tuple[str, int, int]] = []
        self.numbers: list[tuple[str, float, float, float]] = []
        self.quantities: list[
            tuple[str, float, float, float, str | None, str | None, str | None]
        ] = []
        self.uris: list[tuple[str, str]] = []
        self.positions: list[tuple[str, float, float]] = []
        self.texts: list[tuple[str, str]] = []

    def freeze(self) -> IndexRows:
        """De-duplicate (keeping first-seen order) and build the rows."""
        return IndexRows(
            tokens=_unique(TokenRow, self.tokens),
            strings=_unique(StringRow, self.strings),
            references=_unique(ReferenceRow, self.references),
            dates=_unique(DateRow, self.dates),
            numbers=_unique(NumberRow, self.numbers),
            quantities=_unique(QuantityRow, self.quantities),
            uris=_unique(UriRow, self.uris),
            positions=_unique(PositionRow, self.positions),
            texts=_unique(TextRow, self.texts),
        )


def _unique(row_type: Callable[..., _R], values: list[tuple[Any, ...]]) -> tuple[_R, ...]:
    # Most kinds are empty for a given resource: skip the work for those.
    return tuple(starmap(row_type, dict.fromkeys(values))) if values else ()


Emitter: TypeAlias = Callable[[Accumulator, str, list[Any], str | None], None]


# Inline `x and cap(x)` (None stays None) and `x and normalize_string(x)`:
# token rows are the most frequent, a helper call per field would show.


def emit_token(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    out = acc.tokens
    for node in nodes:
        kind = type(node)
        if kind is str:
            out.append((code, None, cap(node), None))
        elif kind is bool:
            out.append((code, None, "true" if node else "false", None))
        elif kind is dict:
            _token_from_dict(out, code, node)
            if "type" in node and "value" in node:
                _of_type(out, code, node)


def _token_from_dict(
    out: list[tuple[str, str | None, str | None, str | None]],
    code: str,
    node: dict[str, Any],
) -> None:
    if "coding" in node:
        _codeable_concept(out, code, node)
    elif "value" in node:
        # Identifier or ContactPoint: both are system + value (a Quantity's
        # number is not a token).
        value = node["value"]
        if type(value) is str:
            kind = node.get("type")
            text = kind.get("text") if type(kind) is dict else None
            system = node.get("system")
            if system in _CONTACT_POINT_SYSTEMS:
                # A ContactPoint: its system is a code (phone, email…), not a code system URI,
                # so the value is matched without a system (an Identifier's system is a URI).
                system = None
            out.append((code, system and cap(system), cap(value), text and normalize_string(text)))
    elif "code" in node or "system" in node:
        system, value, text = node.get("system"), node.get("code"), node.get("display")
        out.append(
            (
                code,
                system and cap(system),
                value and cap(value),
                text and normalize_string(text),
            )
        )
    elif "text" in node:
        text = node["text"]
        out.append((code, None, None, text and normalize_string(text)))


def _codeable_concept(
    out: list[tuple[str, str | None, str | None, str | None]],
    code: str,
    concept: dict[str, Any],
) -> None:
    text = concept.get("text")
    text_carried = False
    for coding in concept["coding"] or ():
        if type(coding) is dict:
            display = coding.get("display") or text
            text_carried = text_carried or display == text
            system, value = coding.get("system"), coding.get("code")
            out.append(
                (
                    code,
                    system and cap(system),
                    value and cap(value),
                    display and normalize_string(display),
                )
            )
    if text is not None and not text_carried:
        out.append((code, None, None, text and normalize_string(text)))


def _of_type(
    out: list[tuple[str, str | None, str | None, str | None]],
    code: str,
    identifier: dict[str, Any],
) -> None:
    """``<code>:of-type`` rows of an Identifier: type system|code, value as text."""
    value, kind = identifier["value"], identifier["type"]
    if type(value) is not str or type(kind) is not dict:
        return
    for coding in kind.get("coding") or ():
        if type(coding) is dict:
            system, type_code = coding.get("system"), coding.get("code")
            out.append(
                (f"{code}:of-type", system and cap(system), type_code and cap(type_code), value)
            )


def emit_string(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    out = acc.strings
    for node in nodes:
        if type(node) is str:
            out.append((code, cap(normalize_string(node)), cap(node)))
        elif type(node) is dict:
            for part in _STRING_PARTS:
                value = node.get(part)
                if type(value) is str:
                    out.append((code, cap(normalize_string(value)), cap(value)))
                elif type(value) is list:
                    out.extend(
                        (code, cap(normalize_string(v)), cap(v)) for v in value if type(v) is str
                    )


def emit_reference(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    out = acc.references
    for node in nodes:
        if type(node) is str:
            # canonical/uri: "url|version" (https://hl7.org/fhir/R4/references.html#canonical)
            version = node.partition("|")[2]
            # Versions are bounded like ids (64 chars); a longer one stays only in url.
            out.append((code, None, None, version if 0 < len(version) <= 64 else None, node))
        elif type(node) is dict:
            reference = node.get("reference")
            if type(reference) is str:
                # "#id" (a contained resource) is kept as url only: it counts for :missing.
                parsed = None if reference.startswith("#") else acc.parse_reference(reference)
                if parsed is None:
                    out.append((code, None, None, None, reference))
                else:
                    out.append((code, *parsed, reference))
            identifier = node.get("identifier")
            if type(identifier) is dict:
                _token_from_dict(acc.tokens, f"{code}:identifier", identifier)


def emit_date(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    out = acc.dates
    for node in nodes:
        if type(node) is str:
            span = date_range(node) if hint in _DATE_HINTS else None
        elif type(node) is dict:
            if "event" in node or "repeat" in node:
                _timing(out, code, node)
                continue
            span = period_range(node.get("start"), node.get("end"))
        else:
            continue
        if span is not None:
            out.append((code, *span))


def _timing(out: list[tuple[str, int, int]], code: str, timing: dict[str, Any]) -> None:
    for event in timing.get("event") or ():
        span = date_range(event) if type(event) is str else None
        if span is not None:
            out.append((code, *span))
    repeat = timing.get("repeat")
    bounds = repeat.get("boundsPeriod") if type(repeat) is dict else None
    if type(bounds) is dict:
        span = period_range(bounds.get("start"), bounds.get("end"))
        if span is not None:
            out.append((code, *span))


def emit_number(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    for node in nodes:
        bounds = _range_bounds(node) if type(node) is dict else number_range(node)
        if bounds is not None:
            acc.numbers.append((code, *bounds))


def emit_quantity(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    out = acc.quantities
    for node in nodes:
        if type(node) is not dict:
            bounds = number_range(node)
            if bounds is not None:
                out.append((code, *bounds, None, None, None))
        elif "low" in node or "high" in node:
            _range(out, code, node)
        elif "value" in node and hint != "SampledData":
            _quantity(out, code, node)


def _quantity(
    out: list[tuple[str, float, float, float, str | None, str | None, str | None]],
    code: str,
    node: dict[str, Any],
) -> None:
    bounds = number_range(node["value"])
    if bounds is None:
        return
    value, low, high = bounds
    comparator = node.get("comparator")
    if comparator in ("<", "<="):
        low = QUANTITY_MIN
    elif comparator in (">", ">="):
        high = QUANTITY_MAX
    if "currency" in node:
        out.append((code, value, low, high, _ISO_4217, node["currency"], None))
    else:
        units = node.get("system"), node.get("code"), node.get("unit")
        out.append((code, value, low, high, *units))


def _range(
    out: list[tuple[str, float, float, float, str | None, str | None, str | None]],
    code: str,
    node: dict[str, Any],
) -> None:
    bounds = _range_bounds(node)
    if bounds is None:
        return
    unit = node.get("low") or node.get("high")
    assert type(unit) is dict
    out.append((code, *bounds, unit.get("system"), unit.get("code"), unit.get("unit")))


def _range_bounds(node: dict[str, Any]) -> tuple[float, float, float] | None:
    """``(value, low, high)`` of a Range: the value is the midpoint if closed."""
    low_q, high_q = node.get("low"), node.get("high")
    low = number_range(low_q.get("value")) if type(low_q) is dict else None
    high = number_range(high_q.get("value")) if type(high_q) is dict else None
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        return (low[0] + high[0]) / 2, low[0], high[0]
    if low is not None:
        return low[0], low[0], QUANTITY_MAX
    assert high is not None
    return high[0], QUANTITY_MIN, high[0]


def emit_uri(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    acc.uris.extend((code, cap(node)) for node in nodes if type(node) is str)


def emit_position(acc: Accumulator, code: str, nodes: list[Any], hint: str | None) -> None:
    for node in nodes:
        if type(node) is not dict:
            continue
        latitude, longitude = node.get("latitude"), node.get("longitude")
        if _is_number(latitude) and _is_number(longitude):
            acc.positions.append((code, float(latitude), float(longitude)))


def _is_number(value: object) -> TypeGuard[int | float | Decimal]:
    # Decimal: in case the caller parsed JSON with parse_float=Decimal.
    return isinstance(value, _NUMBERS) and not isinstance(value, bool)


#: Builder per SearchParameter.type; ``special`` only covers ``near``.
EMITTERS: Final[dict[str, Emitter]] = {
    "token": emit_token,
    "string": emit_string,
    "reference": emit_reference,
    "date": emit_date,
    "number": emit_number,
    "quantity": emit_quantity,
    "uri": emit_uri,
    "special": emit_position,
}

#: The :class:`Accumulator` lists each builder of :data:`EMITTERS` appends to.
EMITTER_OUTPUTS: Final[dict[str, tuple[str, ...]]] = {
    "token": ("tokens",),
    "string": ("strings",),
    "reference": ("references", "tokens"),  # tokens: <code>:identifier
    "date": ("dates",),
    "number": ("numbers",),
    "quantity": ("quantities",),
    "uri": ("uris",),
    "special": ("positions",),
}
