"""Index rows: the contract between the search-index extractor and the storage layer.

``grp`` (default 0) numbers the element that the component rows of a composite parameter
(https://hl7.org/fhir/R4/search.html#composite) came from; component ``k`` of composite ``c`` is
stored under the parameter code ``c$k``.

One row kind per FHIR search parameter type
(https://hl7.org/fhir/R4/search.html#ptypes). Each row carries the parameter
``code`` it was produced for, so the storage layer can keep one table per kind
and per resource type.

Sentinels the storage layer must know about:

* :data:`DATE_MIN` / :data:`DATE_MAX` stand for the open ends of a ``Period``
  without ``start``/``end`` (https://hl7.org/fhir/R4/search.html#date). They
  are the signed 64-bit integer limits, so they fit a ``BIGINT`` column.
* :data:`QUANTITY_MIN` / :data:`QUANTITY_MAX` stand for open ends of a
  ``Range`` without ``low``/``high`` or of a ``Quantity`` with a comparator
  (``<5 mg``). They are the finite float limits (not ``inf``), so they survive
  JSON and every SQL ``DOUBLE`` implementation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "DATE_MAX",
    "DATE_MIN",
    "QUANTITY_MAX",
    "QUANTITY_MIN",
    "DateRow",
    "IndexRow",
    "IndexRows",
    "NumberRow",
    "PositionRow",
    "QuantityRow",
    "ReferenceRow",
    "StringRow",
    "TextRow",
    "TokenRow",
    "UriRow",
]

#: Lower bound of an open-started ``Period`` (epoch microseconds).
DATE_MIN: int = -(2**63)
#: Upper bound of an open-ended ``Period`` (epoch microseconds).
DATE_MAX: int = 2**63 - 1
#: Lower bound of a ``Range`` without ``low`` or a ``<``/``<=`` quantity.
QUANTITY_MIN: float = -sys.float_info.max
#: Upper bound of a ``Range`` without ``high`` or a ``>``/``>=`` quantity.
QUANTITY_MAX: float = sys.float_info.max


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A ``system|code`` pair plus display text for ``:text`` searches.

    ``text`` is normalised like :attr:`StringRow.value`. ``param`` is
    ``"<code>:identifier"`` for ``Reference.identifier`` values
    (https://hl7.org/fhir/R4/search.html#reference, ``:identifier`` modifier)
    and ``"<code>:of-type"`` for an Identifier's ``type.coding`` (system, code)
    with the identifier's value, unchanged, as ``text``
    (https://hl7.org/fhir/R4/search.html#modifiers). A row with ``code=None``
    only serves ``:text`` (a ``CodeableConcept.text`` that no coding carries).
    """

    param: str
    system: str | None
    code: str | None
    text: str | None
    grp: int = 0


@dataclass(frozen=True, slots=True)
class StringRow:
    """``value`` is casefolded and accent-stripped; ``exact`` is the original."""

    param: str
    value: str
    exact: str
    grp: int = 0


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """A literal reference (``target_*`` set) or a canonical/absolute URL."""

    param: str
    target_type: str | None
    target_id: str | None
    version: str | None
    url: str
    grp: int = 0


@dataclass(frozen=True, slots=True)
class DateRow:
    """The inclusive range ``[low, high]`` in epoch microseconds (UTC)."""

    param: str
    low: int
    high: int
    grp: int = 0


@dataclass(frozen=True, slots=True)
class NumberRow:
    """A number with the range implied by its precision."""

    param: str
    value: float
    low: float
    high: float
    grp: int = 0


@dataclass(frozen=True, slots=True)
class QuantityRow:
    """A quantity (or Money, Range) with its implicit precision range."""

    param: str
    value: float
    low: float
    high: float
    system: str | None
    code: str | None
    unit: str | None
    grp: int = 0


@dataclass(frozen=True, slots=True)
class UriRow:
    """A ``uri``/``url``/``canonical`` value, compared as an exact string."""

    param: str
    value: str
    grp: int = 0


@dataclass(frozen=True, slots=True)
class PositionRow:
    """``Location.position`` for the ``near`` special parameter."""

    param: str
    latitude: float
    longitude: float
    grp: int = 0


@dataclass(frozen=True, slots=True)
class TextRow:
    """Normalised free text for ``_text`` (narrative) and ``_content`` (all text of a resource).

    Normalised like :attr:`StringRow.value`, whitespace collapsed to single spaces.
    """

    param: str
    value: str
    grp: int = 0


IndexRow: TypeAlias = (
    TokenRow
    | StringRow
    | ReferenceRow
    | DateRow
    | NumberRow
    | QuantityRow
    | UriRow
    | PositionRow
    | TextRow
)


@dataclass(frozen=True, slots=True)
class IndexRows:
    """All index rows of one resource, one de-duplicated tuple per kind."""

    tokens: tuple[TokenRow, ...] = ()
    strings: tuple[StringRow, ...] = ()
    references: tuple[ReferenceRow, ...] = ()
    dates: tuple[DateRow, ...] = ()
    numbers: tuple[NumberRow, ...] = ()
    quantities: tuple[QuantityRow, ...] = ()
    uris: tuple[UriRow, ...] = ()
    positions: tuple[PositionRow, ...] = ()
    texts: tuple[TextRow, ...] = ()

    @classmethod
    def empty(cls) -> IndexRows:
        """Rows of a resource that matches no search parameter."""
        return _EMPTY

    def all(self) -> tuple[IndexRow, ...]:
        """Every row, kinds in field order (handy for logging and tests)."""
        return (
            *self.tokens,
            *self.strings,
            *self.references,
            *self.dates,
            *self.numbers,
            *self.quantities,
            *self.uris,
            *self.positions,
            *self.texts,
        )

    def for_param(self, param: str) -> tuple[IndexRow, ...]:
        """The rows produced for one search parameter code."""
        return tuple(row for row in self.all() if row.param == param)


_EMPTY = IndexRows()
