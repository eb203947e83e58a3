"""Conversions of FHIR JSON values into the comparable forms of the index.

* dates: https://hl7.org/fhir/R4/search.html#date: a date/dateTime/instant
  stands for the whole interval its precision covers;
* numbers and quantities: https://hl7.org/fhir/R4/search.html#number: the
  implicit range is +/- half a unit of the last given digit;
* strings: https://hl7.org/fhir/R4/search.html#string: case- and
  accent-insensitive;
* free text: https://hl7.org/fhir/R4/search.html#text (``_text``, the narrative)
  and #content (``_content``, all text of the resource), normalised like strings;
* index caps: PostgreSQL btree entries must stay under ~2700 bytes, so indexed
  texts are cut to :data:`INDEX_TEXT_MAX` characters (the query side cuts
  search values the same way);
* references: https://hl7.org/fhir/R4/references.html#literal: relative,
  versioned and absolute literal references.

All functions return ``None`` for values they cannot interpret rather than
raising: indexing must not fail a write that validation already accepted.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import math
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from typing import Any, Final, NamedTuple

from fhir_server.search.rows import DATE_MAX, DATE_MIN

__all__ = [
    "INDEX_TEXT_MAX",
    "ParsedReference",
    "cap",
    "content_text",
    "date_range",
    "make_reference_parser",
    "narrative_text",
    "normalize_string",
    "number_range",
    "period_range",
]

#: Longest indexed text in characters: 512 characters of at most 4 UTF-8 bytes
#: keep a one-text-column btree entry under PostgreSQL's 2,704-byte limit (an
#: index over two such columns, token code and system, can still exceed it).
INDEX_TEXT_MAX: Final = 512
INDEX_BYTES_MAX: Final = 1_000

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US: Final = dt.timedelta(microseconds=1)
_US_PER_DAY: Final = 86_400_000_000
_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
# Width of a dateTime by the number of digits after the seconds' dot.
_FRACTION_WIDTH: Final = (1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)
# Half a unit of the last decimal place, by number of decimals (a float repr
# has at most 17 significant digits, hence 0..400 covers every position).
_MAX_EXACT_INT: Final = 2**1000  # well inside float range (about 2**1024)
_HALF_UNIT: Final = tuple(float(Decimal(5).scaleb(-n - 1)) for n in range(400))
# A tuple, not ``int | float | …``: that union would be rebuilt on every call.
_NUMERIC: Final = (int, float, Decimal, str)


@functools.lru_cache(maxsize=8192)
def date_range(value: str) -> tuple[int, int] | None:
    """The inclusive epoch-microsecond range a date/dateTime/instant covers.

    Values without a timezone are taken as UTC. Cached because bundles repeat
    the same timestamps (an encounter's observations share them).
    """
    try:
        if len(value) <= 10:
            return _partial_date_range(value)
        return _datetime_range(value)
    except ValueError:
        return None


def period_range(start: object, end: object) -> tuple[int, int] | None:
    """The range of a Period; a missing bound is open (DATE_MIN/DATE_MAX)."""
    low, high = DATE_MIN, DATE_MAX
    if isinstance(start, str):
        start_range = date_range(start)
        if start_range is None:
            return None
        low = start_range[0]
    if isinstance(end, str):
        end_range = date_range(end)
        if end_range is None:
            return None
        high = end_range[1]
    if start is None and end is None:
        return None
    return low, high


def _partial_date_range(value: str) -> tuple[int, int]:
    year = int(value[0:4])
    if len(value) == 4:
        first, after = dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
    elif len(value) == 7 and value[4] == "-":
        month = int(value[5:7])
        first = dt.date(year, month, 1)
        after = dt.date(year + month // 12, month % 12 + 1, 1)
    else:
        first = dt.date.fromisoformat(value)
        return _day_start(first), _day_start(first) + _US_PER_DAY - 1
    return _day_start(first), _day_start(after) - 1


def _day_start(day: dt.date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * _US_PER_DAY


def _datetime_range(value: str) -> tuple[int, int]:
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    low = (parsed - _EPOCH) // _ONE_US
    return low, low + _datetime_width(value) - 1


def _datetime_width(value: str) -> int:
    """Microseconds covered by the precision of a ``...THH:MM[:SS[.f]]`` text."""
    time = value[value.index("T") + 1 :].rstrip("Z")
    for sign in "+-":
        if sign in time:
            time = time[: time.index(sign)]
    if "." in time:
        digits = len(time) - time.index(".") - 1
        return _FRACTION_WIDTH[min(digits, 6)]
    return 1_000_000 if time.count(":") >= 2 else 60_000_000


def number_range(value: object) -> tuple[float, float, float] | None:
    """``(value, low, high)`` with the implicit precision range of ``value``.

    JSON ``100`` gives 99.5..100.5. Precision comes from the literal as the
    JSON parser kept it: ``Decimal``/``str`` keep trailing zeros ("1.00" gives
    0.995..1.005), a ``float`` only has its shortest repr (``1.0``), so
    orjson-parsed "1.00" is indexed as 0.95..1.05, i.e. slightly wider.
    """
    if isinstance(value, bool) or not isinstance(value, _NUMERIC):
        return None
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT_INT:
            return None  # beyond float range: no comparable row
        return float(value), value - 0.5, value + 0.5
    if isinstance(value, float):
        text = repr(value)  # the shortest repr: what the JSON text at least had
        if "e" not in text and "n" not in text:  # not exponent/inf/nan
            half_unit = _HALF_UNIT[len(text) - text.index(".") - 1]
            return value, value - half_unit, value + half_unit
    try:
        exact = Decimal(repr(value) if isinstance(value, float) else value)
    except ArithmeticError:
        return None
    if not exact.is_finite():
        return None
    exponent = exact.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, so not 'n'/'N'/'F'
    half = Decimal(5).scaleb(exponent - 1)
    bounds = float(exact), float(exact - half), float(exact + half)
    return bounds if all(map(math.isfinite, bounds)) else None


_CACHED_MAX: Final = 256
_NON_ASCII: Final = re.compile(r"[^\x00-\x7f]+")


def normalize_string(value: str) -> str:
    """Casefold and strip diacritics (NFKD, combining marks dropped)."""
    if value.isascii():
        # ASCII is its own NFKD form and casefold() equals lower() on it.
        return value.lower()
    if len(value) > _CACHED_MAX:
        return _fold(value)  # long texts (narratives) would bloat the cache
    return _fold_cached(value)


def _fold(value: str) -> str:
    # Casefold again after NFKD: compatibility capitals ("ℬ") decompose to capitals ("B").
    decomposed = unicodedata.normalize("NFKD", value.casefold()).casefold()
    # Combining marks are never ASCII: only the non-ASCII runs need a look.
    return _NON_ASCII.sub(_drop_marks, decomposed)


def _drop_marks(run: re.Match[str]) -> str:
    return "".join(c for c in run.group() if not unicodedata.combining(c))


_fold_cached: Final = functools.lru_cache(maxsize=4096)(_fold)


def cap(text: str) -> str:
    """``text`` cut to :data:`INDEX_TEXT_MAX` characters and :data:`INDEX_BYTES_MAX` UTF-8
    bytes (PostgreSQL refuses btree entries over ~2,700 bytes; ix_token's holds two texts)."""
    text = text[:INDEX_TEXT_MAX]
    if text.isascii() or len(text.encode()) <= INDEX_BYTES_MAX:
        return text
    return text.encode()[:INDEX_BYTES_MAX].decode(errors="ignore")


# Inline XHTML elements (https://hl7.org/fhir/R4/narrative.html#xhtml) join the
# text around them ("H<sub>2</sub>O"); every other tag separates words.
_INLINE_TAG: Final = re.compile(
    r"</?(?:a|abbr|acronym|b|bdo|big|cite|code|dfn|em|i|kbd|q|s|samp|small|span"
    r"|strike|strong|sub|sup|tt|u|var)\b[^>]*>",
    re.IGNORECASE,
)
_TAG: Final = re.compile(r"<[^>]*>")


def narrative_text(div: str) -> str:
    """The text of a narrative ``div``, normalised, whitespace collapsed."""
    text = html.unescape(_TAG.sub(" ", _INLINE_TAG.sub("", div)))
    return " ".join(normalize_string(text).split())


# Keys whose values are not searchable content: the narrative (``_text``),
# reference literals, base64 payloads, ids and metadata, the type name.
_NOT_CONTENT: Final = frozenset({"div", "reference", "data", "id", "meta", "resourceType"})


def content_text(resource: Mapping[str, Any]) -> str:
    """All string values of ``resource`` (``_content``), normalised and joined.

    Walks with an explicit stack, so the depth of the resource does not matter.
    Values of a node come before those of its children; across siblings the
    order is not the document order (the text is searched by substring).
    Whitespace is collapsed as for the narrative.
    """
    parts: list[str] = []
    append = parts.append
    pending: list[Mapping[str, Any]] = [resource]
    push, pop = pending.append, pending.pop
    skip = _NOT_CONTENT
    # One loop per JSON object; arrays are unrolled in place (FHIR arrays hold
    # only primitives or objects, never arrays).
    while pending:
        for key, value in pop().items():
            kind = type(value)
            if kind is str:
                if key not in skip:
                    append(value)
            elif kind is dict:
                if key not in skip:
                    push(value)
            elif kind is list and key not in skip:
                for item in value:
                    kind = type(item)
                    if kind is str:
                        append(item)
                    elif kind is dict:
                        push(item)
    return _collapse(normalize_string(" ".join(parts)))


def _collapse(text: str) -> str:
    # isprintable() is false for every whitespace character but " " (a regex
    # search for irregular spaces cost 4x the split and join it saves).
    if text.isprintable() and "  " not in text and text[:1] != " " != text[-1:]:
        return text  # the common case: nothing to collapse
    return " ".join(text.split())


class ParsedReference(NamedTuple):
    """Type, id and version of a literal reference."""

    target_type: str
    target_id: str
    version: str | None


_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def make_reference_parser(
    resource_types: Collection[str],
) -> Callable[[str], ParsedReference | None]:
    """A cached parser of ``Type/id``, ``Type/id/_history/v`` and absolute URLs.

    Only known resource types count, so ``http://example.org/a/b`` is not
    mistaken for a reference to resource type ``a``. ``urn:uuid:``/``urn:oid:``
    references are unresolved placeholders and give ``None``.
    """
    known = frozenset(resource_types)

    @functools.lru_cache(maxsize=16384)
    def parse(reference: str) -> ParsedReference | None:
        parts = reference.split("/")
        version = None
        if len(parts) >= 4 and parts[-2] == "_history":
            version = parts[-1]
            parts = parts[:-2]
        if len(parts) < 2 or parts[-2] not in known:
            return None
        if len(parts) > 2 and "://" not in reference:
            return None  # e.g. "a/Patient/1" is neither relative nor absolute
        if not _ID.fullmatch(parts[-1]):
            return None
        if version is not None and not _ID.fullmatch(version):
            return None
        return ParsedReference(parts[-2], parts[-1], version)

    return parse
