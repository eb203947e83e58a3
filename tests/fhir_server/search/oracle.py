"""A brute-force FHIR search: which resources match a query, decided in Python over their JSON.

The oracle for the SQL search engine (https://hl7.org/fhir/R4/search.html). Which values a
parameter selects comes from its R4 SearchParameter ``expression``, evaluated by fhirpathpy (the
same rewriting of ``resolve()`` and ``Resource.`` as tests/fhir_server/search/test_oracle.py);
fhirpathpy's R4 model types every value (HumanName, Identifier, ContactPoint, Period, ...), so
nothing is guessed from the shape of the JSON (a top-level union ``a | b`` is evaluated branch by
branch, as fhirpathpy's union drops the types). A parameter with values of a type not listed
below is left out (``Oracle.unevaluable``), as is ``phonetic``, whose algorithm is the server's.
Matching is implemented here from the spec text, independently of the server's code. The rules:

Values (https://hl7.org/fhir/R4/search.html#ptypes)
  * token: Coding -> (system, code); CodeableConcept -> each of its codings; Identifier ->
    (system, value); ContactPoint -> value, without system (its ``system`` is a code, not a
    URI); code/string/uri/id/... primitives -> the value, without system; boolean -> "true" or
    "false". Matching is exact (case-sensitive). ``code`` matches any system; ``system|code``
    needs both; ``|code`` needs a value without system; ``system|`` any value of that system.
  * string: a primitive, or the parts of a HumanName (family, given, prefix, suffix, text) or
    an Address (line, city, district, state, postalCode, country, text). Plain: the normalised
    value starts with the normalised search value (normalised = casefold, NFKD, combining marks
    dropped); ``:exact``: equal as written; ``:contains``: normalised substring. Parameters
    the server stores as keyed tokens (``fhir_server.protection.protected``: names, addresses
    of persons) match by words instead: every word of the normalised search value (runs of
    letters and digits, cut to 12 characters) starts some word of some value of the resource;
    ``:contains`` is refused there.
  * reference: ``Type/id`` matches a literal reference ``Type/id`` or ``Type/id/_history/v``
    (https://hl7.org/fhir/R4/references.html#literal). Canonical and uri values are kept as
    written (never equal to a relative ``Type/id``).
  * uri: equal as written.
  * date: every value is a range by its precision: a year, month or day (a date-only value is
    a whole day in UTC), a minute, a second or a fraction of a second (as many digits as
    given); a dateTime without time zone is UTC; a Period is [start.low, end.high], a missing
    start or end unbounded. Search values the same way. With target t and search value s:
    eq: s.low <= t.low and t.high <= s.high; ne: not eq; gt: t.high > s.high; lt: t.low <
    s.low; ge: t.high >= s.low; le: t.low <= s.high; sa: t.low > s.high; eb: t.high < s.low;
    ap: the ranges overlap.
  * number and quantity: a search value with n decimals covers [v - 0.5*10^-n, v + 0.5*10^-n]
    (search.html#number); the stored value t is a point. eq: s.low <= t < s.high (or t = v); ne: not
    eq; and since "the implicit precision of the number is ignored" for the other prefixes:
    gt and sa: t > v; lt and eb: t < v; ge: t >= v; le: t <= v. Quantity
    ``v|system|code`` also needs equal system and code, ``v||code`` a code or unit equal to
    ``code``, plain ``v`` any unit.

Combining (https://hl7.org/fhir/R4/search.html#combining)
  A resource matches a parameter if ANY of its values matches ANY of the comma-separated
  values (so with ``ne``, if any of its values is not eq). ``:not`` matches a resource that has
  no value matching any of the search values (a resource without values included).
  ``:missing=true`` matches a resource without a value the parameter can match on (a Reference
  with only a display or identifier, a Quantity without value, a Coding without system and code
  count as no value), ``:missing=false`` one with such a value. Parameters are AND-ed.

Escapes (https://hl7.org/fhir/R4/search.html#escaping): ``\\,``, ``\\|``, ``\\$`` and
``\\\\`` stand for the character itself.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from fhir_server.protection import protected
from fhir_server.search.registry import SearchParamDef, SearchParamRegistry

R4 = fhirpath_models["r4"]
KINDS = frozenset({"token", "string", "reference", "date", "number", "quantity", "uri"})
# Their matching the spec leaves to the server (phonetic: "a phonetic matching algorithm").
SERVER_DEFINED = frozenset({"phonetic"})
MODIFIERS: Mapping[str, frozenset[str | None]] = {
    "token": frozenset({None, "not", "missing"}),
    "string": frozenset({None, "exact", "contains", "missing"}),
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Outside every real date, in nanoseconds: the open end of a Period.
OPEN_LOW = -(10**30)
OPEN_HIGH = 10**30

_RESOLVE = re.compile(r"where\(resolve\(\) is (\w+)\)")
_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_STRINGS = frozenset({"string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid"})
_TOKEN_PRIMITIVES = _STRINGS | {"boolean"}
_DATES = frozenset({"date", "dateTime", "instant"})
_QUANTITIES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity"})
_NUMBERS = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_WORD = re.compile(r"\w+")
_WORD_PREFIX_MAX = 12


@dataclass(frozen=True, slots=True)
class Token:
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class Span:
    """An inclusive range: nanoseconds since the epoch for dates, a Decimal for numbers."""

    low: Any
    high: Any


@dataclass(frozen=True, slots=True)
class Amount:
    """A Quantity with a value."""

    span: Span
    system: str | None
    code: str | None
    unit: str | None


Atom = Token | str | Span | Amount


def oracle_expression(expression: str, resource_type: str) -> str:
    """fhirpathpy cannot resolve() and has no ``Resource.`` wildcard root: equivalent rewrite."""
    expression = re.sub(r"\b(Resource|DomainResource)\.", f"{resource_type}.", expression)
    literal = r"(^|/)\1/[A-Za-z0-9.-]+(/_history/[A-Za-z0-9.-]+)?$"
    return _RESOLVE.sub(f"where(reference.matches('{literal}'))", expression)


def normalize(text: str) -> str:
    """Case- and accent-insensitive form (search.html#string)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# -- date and number ranges -------------------------------------------------------------------


def date_span(text: str) -> Span | None:
    """The range of nanoseconds a date/dateTime/instant covers; None if it is not one."""
    m = _DATE.match(text)
    if m is None:
        return None
    try:
        year, month, day = int(m["y"]), int(m["m"] or 1), int(m["d"] or 1)
        if m["H"] is None:
            start = datetime(year, month, day, tzinfo=UTC)
            if m["m"] is None:
                end = datetime(year + 1, 1, 1, tzinfo=UTC)
            elif m["d"] is None:
                end = start + timedelta(days=calendar.monthrange(year, month)[1])
            else:
                end = start + timedelta(days=1)
            return Span(_nanos(start), _nanos(end) - 1)
        zone = m["tz"] or "Z"
        offset = timedelta(0)
        if zone != "Z":
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            offset = offset if zone[0] == "+" else -offset
        start = datetime(year, month, day, int(m["H"]), int(m["M"]), int(m["S"] or 0), tzinfo=UTC)
        low = _nanos(start - offset)
        if m["S"] is None:
            return Span(low, low + 60 * 10**9 - 1)
        fraction = (m["f"] or "")[:9]
        low += int(fraction.ljust(9, "0")) if fraction else 0
        return Span(low, low + 10 ** (9 - len(fraction)) - 1)
    except ValueError:
        return None


def _nanos(moment: datetime) -> int:
    delta = moment - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds) * 1000


def number_span(value: Decimal | int | str) -> Span | None:
    """v +/- half a unit of the last given decimal (search.html#number)."""
    try:
        exact = Decimal(value)
    except InvalidOperation:
        return None
    if not exact.is_finite():
        return None
    exponent = exact.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return Span(exact - half, exact + half)


def written(span: Span) -> Decimal:
    """The number whose implicit range ``span`` is, with as many decimals as it was written."""
    exponent = (span.high - span.low).adjusted()
    return Decimal((span.low + span.high) / 2).quantize(Decimal(1).scaleb(exponent))


# -- values of a resource -----------------------------------------------------------------------


def atoms(kind: str, nodes: Iterable[Any]) -> tuple[list[Atom], list[str]]:
    """The matchable values of fhirpathpy results (raw nodes) and the FHIR types not understood."""
    found: list[Atom] = []
    unknown: list[str] = []
    for node in nodes:
        fhir_type, data = _typed(node)
        if data is None:
            continue  # a primitive with only an extension
        if not _ATOMS[kind](fhir_type, data, found):
            unknown.append(f"{fhir_type}:{str(data)[:40]}")
    return found, unknown


def _typed(node: Any) -> tuple[str, Any]:
    if isinstance(node, bool):
        return "boolean", node
    path = getattr(node, "path", None)
    data = getattr(node, "data", node)
    if not isinstance(path, str):
        return type(data).__name__, data
    if path.startswith("System."):  # FHIRPath system types: System.String -> string
        return path[7].lower() + path[8:], data
    return path, data


def union_branches(expression: str) -> list[str]:
    """The operands of the top-level ``|`` (fhirpathpy's union drops the types of its items)."""
    branches, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(expression):
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        elif not quoted and depth == 0 and char == "|":
            branches.append(expression[start:i].strip())
            start = i + 1
    branches.append(expression[start:].strip())
    return branches


def _token_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type == "boolean" and isinstance(data, bool):
        out.append(Token(None, "true" if data else "false"))
    elif fhir_type in _TOKEN_PRIMITIVES and isinstance(data, str):
        out.append(Token(None, data))
    elif fhir_type == "Coding":
        _add_coding(data, out)
    elif fhir_type == "CodeableConcept":
        for coding in data.get("coding", ()):
            _add_coding(coding, out)
    elif fhir_type == "Identifier":
        if "system" in data or "value" in data:
            out.append(Token(data.get("system"), data.get("value")))
    elif fhir_type == "ContactPoint":
        if "value" in data:
            out.append(Token(None, data["value"]))
    else:
        return False
    return True


def _add_coding(coding: Mapping[str, Any], out: list[Atom]) -> None:
    if "system" in coding or "code" in coding:
        out.append(Token(coding.get("system"), coding.get("code")))


def _string_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type in _STRINGS and isinstance(data, str):
        out.append(data)
        return True
    parts = {"HumanName": _NAME_PARTS, "Address": _ADDRESS_PARTS}.get(fhir_type)
    if parts is None:
        return False
    for part in parts:
        value = data.get(part)
        out.extend(value if isinstance(value, list) else [] if value is None else [value])
    return True


def _reference_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type == "Reference":
        if isinstance(data.get("reference"), str):
            out.append(data["reference"])
    elif fhir_type in _STRINGS and isinstance(data, str):
        out.append(data)
    else:
        return False
    return True


def _uri_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type in _STRINGS and isinstance(data, str):
        out.append(data)
        return True
    return False


def _date_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type in _DATES and isinstance(data, str):
        span = date_span(data)
        if span is None:
            return False
        out.append(span)
    elif fhir_type == "Period":
        start = date_span(data["start"]) if "start" in data else Span(OPEN_LOW, OPEN_LOW)
        end = date_span(data["end"]) if "end" in data else Span(OPEN_HIGH, OPEN_HIGH)
        if start is None or end is None:
            return False
        out.append(Span(start.low, end.high))
    else:
        return False
    return True


def _number_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type not in _NUMBERS or isinstance(data, bool) or not isinstance(data, Decimal | int):
        return False
    span = number_span(data)
    if span is not None:
        out.append(span)
    return span is not None


def _quantity_atoms(fhir_type: str, data: Any, out: list[Atom]) -> bool:
    if fhir_type not in _QUANTITIES:
        return False
    if "value" in data:
        span = number_span(data["value"])
        if span is None:
            return False
        out.append(Amount(span, data.get("system"), data.get("code"), data.get("unit")))
    return True


_ATOMS: Mapping[str, Callable[[str, Any, list[Atom]], bool]] = {
    "token": _token_atoms,
    "string": _string_atoms,
    "reference": _reference_atoms,
    "uri": _uri_atoms,
    "date": _date_atoms,
    "number": _number_atoms,
    "quantity": _quantity_atoms,
}


# -- search values ----------------------------------------------------------------------------


def split_unescaped(text: str, separator: str) -> list[str]:
    """Splits on ``separator`` unless escaped by a backslash; escapes stay in the parts."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current) + ("\\" if escaped else ""))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def escape(text: str) -> str:
    return re.sub(r"([\\,|$])", r"\\\1", text)


def _prefixed(text: str) -> tuple[str, str]:
    return (text[:2], text[2:]) if text[:2] in PREFIXES else ("eq", text)


def _token_matcher(raw: str) -> Callable[[Atom], bool]:
    parts = split_unescaped(raw, "|")
    if len(parts) == 1:
        code = unescape(raw)
        return lambda a: isinstance(a, Token) and a.code == code
    if len(parts) != 2 or parts == ["", ""]:
        raise ValueError(f"not a token: {raw!r}")
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system:
        return lambda a: isinstance(a, Token) and a.system is None and a.code == code
    if not code:
        return lambda a: isinstance(a, Token) and a.system == system
    return lambda a: isinstance(a, Token) and a.system == system and a.code == code


def _string_matcher(raw: str, modifier: str | None) -> Callable[[Atom], bool]:
    text = unescape(raw)
    if modifier == "exact":
        return lambda a: isinstance(a, str) and a == text
    wanted = normalize(text)
    if modifier == "contains":
        return lambda a: isinstance(a, str) and wanted in normalize(a)
    return lambda a: isinstance(a, str) and normalize(a).startswith(wanted)


def _reference_matcher(raw: str) -> Callable[[Atom], bool]:
    wanted = unescape(raw)
    if not re.fullmatch(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", wanted):
        raise ValueError(f"only Type/id references are supported by the oracle: {raw!r}")
    versioned = wanted + "/_history/"
    return lambda a: isinstance(a, str) and (a == wanted or a.startswith(versioned))


def _date_matcher(raw: str) -> Callable[[Atom], bool]:
    prefix, text = _prefixed(unescape(raw))
    s = date_span(text)
    if s is None:
        raise ValueError(f"not a date: {raw!r}")
    tests: dict[str, Callable[[Span], bool]] = {
        "eq": lambda t: s.low <= t.low and t.high <= s.high,
        "ne": lambda t: not (s.low <= t.low and t.high <= s.high),
        "gt": lambda t: t.high > s.high,
        "lt": lambda t: t.low < s.low,
        "ge": lambda t: t.high >= s.low,
        "le": lambda t: t.low <= s.high,
        "sa": lambda t: t.low > s.high,
        "eb": lambda t: t.high < s.low,
        "ap": lambda t: t.low <= s.high and t.high >= s.low,
    }
    test = tests[prefix]
    return lambda a: isinstance(a, Span) and test(a)


def _number_test(prefix: str, number: str) -> Callable[[Span], bool]:
    s = number_span(number)
    if s is None or prefix == "ap":
        raise ValueError(f"not a number search value: {prefix}{number}")
    v = Decimal(number)
    tests: dict[str, Callable[[Decimal], bool]] = {
        "eq": lambda t: s.low <= t < s.high or t == v,
        "ne": lambda t: not (s.low <= t < s.high or t == v),
        "gt": lambda t: t > v,
        "lt": lambda t: t < v,
        "ge": lambda t: t >= v,
        "le": lambda t: t <= v,
        "sa": lambda t: t > v,
        "eb": lambda t: t < v,
    }
    test = tests[prefix]
    return lambda t: test((t.low + t.high) / 2)


def _number_matcher(raw: str) -> Callable[[Atom], bool]:
    test = _number_test(*_prefixed(unescape(raw)))
    return lambda a: isinstance(a, Span) and test(a)


def _quantity_matcher(raw: str) -> Callable[[Atom], bool]:
    parts = [unescape(p) for p in split_unescaped(raw, "|")]
    if len(parts) not in (1, 3):
        raise ValueError(f"not a quantity: {raw!r}")
    test = _number_test(*_prefixed(parts[0]))
    system, code = (parts[1], parts[2]) if len(parts) == 3 else ("", "")

    def unit_ok(a: Amount) -> bool:
        if system:
            return a.system == system and a.code == code
        return not code or code in (a.code, a.unit)

    return lambda a: isinstance(a, Amount) and unit_ok(a) and test(a.span)


def _uri_matcher(raw: str) -> Callable[[Atom], bool]:
    wanted = unescape(raw)
    return lambda a: isinstance(a, str) and a == wanted


def matcher(kind: str, modifier: str | None, raw: str) -> Callable[[Atom], bool]:
    """Whether one value of a resource matches one (comma-free) search value."""
    if kind == "string":
        return _string_matcher(raw, modifier)
    simple: dict[str, Callable[[str], Callable[[Atom], bool]]] = {
        "token": _token_matcher,
        "reference": _reference_matcher,
        "date": _date_matcher,
        "number": _number_matcher,
        "quantity": _quantity_matcher,
        "uri": _uri_matcher,
    }
    return simple[kind](raw)


def words_match(text: str, found: Sequence[Atom]) -> bool:
    """A protected string: every word of ``text`` starts some word of the values ``found``."""
    if not text:
        return any(isinstance(a, str) for a in found)
    wanted = [w[:_WORD_PREFIX_MAX] for w in _WORD.findall(normalize(text))]
    have = {w for a in found if isinstance(a, str) for w in _WORD.findall(normalize(a))}
    return bool(wanted) and all(any(h.startswith(w) for h in have) for w in wanted)


# -- the oracle -------------------------------------------------------------------------------


class Oracle:
    """Evaluates searches over a fixed set of resources (the current versions in the server)."""

    def __init__(
        self, resources: Iterable[Mapping[str, Any]], registry: SearchParamRegistry
    ) -> None:
        self.registry = registry
        self.by_type: dict[str, list[Mapping[str, Any]]] = {}
        for resource in resources:
            self.by_type.setdefault(resource["resourceType"], []).append(resource)
        self._atoms: dict[tuple[str, str], dict[str, tuple[Atom, ...]]] = {}
        #: (type, code) -> why fhirpathpy could not evaluate the parameter.
        self.unevaluable: dict[tuple[str, str], str] = {}
        #: (type, code) -> FHIR values of a type the oracle does not interpret (excluded).
        self.unknown_values: dict[tuple[str, str], list[str]] = {}

    def params(self, resource_type: str) -> list[SearchParamDef]:
        """The parameters of ``resource_type`` the oracle can decide."""
        return [
            p
            for p in self.registry.params_for(resource_type).values()
            if p.type in KINDS
            and p.expression is not None
            and p.code not in SERVER_DEFINED
            and self.values(resource_type, p.code) is not None
        ]

    def values(self, resource_type: str, code: str) -> Mapping[str, tuple[Atom, ...]] | None:
        """Resource id -> the values the parameter selects; None if the oracle cannot tell."""
        key = (resource_type, code)
        if key not in self._atoms and key not in self.unevaluable:
            self._evaluate(resource_type, code)
        return self._atoms.get(key)

    def _evaluate(self, resource_type: str, code: str) -> None:
        key = (resource_type, code)
        param = self.registry.params_for(resource_type)[code]
        assert param.expression is not None
        expression = oracle_expression(param.expression, resource_type)
        try:
            # Union is evaluated branch by branch: duplicates do not change any match.
            branches = [
                fhirpathpy.compile(branch, R4, {"returnRawData": True})
                for branch in union_branches(expression)
            ]
            found: dict[str, tuple[Atom, ...]] = {}
            for resource in self.by_type.get(resource_type, ()):
                nodes = [node for branch in branches for node in branch(resource, {})]
                values, unknown = atoms(param.type, nodes)
                if unknown:
                    self.unknown_values.setdefault(key, []).extend(unknown)
                found[resource["id"]] = tuple(values)
        except Exception as exc:  # fhirpathpy raises plain Exceptions for what it lacks
            self.unevaluable[key] = f"{type(exc).__name__}: {exc}"[:200]
            return
        if key in self.unknown_values:
            self.unevaluable[key] = f"values of unknown types: {self.unknown_values[key][:3]}"
            return
        self._atoms[key] = found

    def search(self, resource_type: str, query: Sequence[tuple[str, str]]) -> set[str]:
        """The ids of ``resource_type`` matching all criteria of ``query`` (raw key, value)."""
        ids = {r["id"] for r in self.by_type.get(resource_type, ())}
        for key, raw in query:
            ids &= self._matching(resource_type, key, raw)
        return ids

    def _matching(self, resource_type: str, key: str, raw: str) -> set[str]:
        code, _, modifier_text = key.partition(":")
        modifier = modifier_text or None
        param = self.registry.params_for(resource_type)[code]
        values = self.values(resource_type, code)
        if values is None:
            raise ValueError(f"the oracle cannot evaluate {resource_type}.{code}")
        if modifier not in MODIFIERS.get(param.type, frozenset({None, "missing"})):
            raise ValueError(f"modifier {modifier} of {param.type} is not in the oracle")
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise ValueError(f":missing takes true or false, not {raw!r}")
            return {i for i, found in values.items() if (not found) == (raw == "true")}
        if modifier is None and param.type == "string" and protected(resource_type, code, "string"):
            wanted = [unescape(v) for v in split_unescaped(raw, ",")]
            return {i for i, found in values.items() if any(words_match(w, found) for w in wanted)}
        tests = [matcher(param.type, modifier, v) for v in split_unescaped(raw, ",")]
        hit = {i for i, found in values.items() if any(t(a) for a in found for t in tests)}
        return set(values) - hit if modifier == "not" else hit
