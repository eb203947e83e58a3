"""Research extracts of FHIR resources: only coded and quantitative data, pseudonymised (compliance.md §3; EDPB Guidelines 01/2025).

The rule (an allow-list: what is not named here does not leave):
- kept: codes (``system``, ``code``, ``version``, ``status``, ``gender``, ``unit`` and the other
  code-valued elements of :data:`CODE_ELEMENTS`), numbers and booleans (quantities, ranges,
  ratios, counts, flags), sampled data (numbers only), and the structure around them (Coding,
  CodeableConcept without its text, Quantity, Period, Timing…);
- moved: dates, dateTimes and instants of the elements in :data:`DATE_ELEMENTS` (and every element
  named ``…Date``, ``…DateTime``, ``…Instant``) by the patient's day offset, at their precision,
  so intervals within one patient survive; ``birthDate`` moved, then cut to the year;
- replaced: the resource's id and every reference to a patient or to a resource of a patient
  compartment type, by the study's keyed pseudonyms (pseudonyms.py);
- dropped: all other strings, so every kind of free text (narrative ``text``, ``note``,
  Annotation, ``comment``, ``description``, ``CodeableConcept.text``, ``display``,
  ``valueString``…), names, addresses, telecom, identifiers, photos and attachments, contained
  resources, extensions (their meaning is not known here), ``meta`` (real timestamps), element
  ids, URLs, and references to anything else (practitioners, organisations, locations, devices:
  quasi-identifiers of a small district), or that are not literal (``#contained``, ``urn:``,
  logical references by identifier). Objects and lists left empty are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any, Final

from compliance import fhir_dates
from compliance.pseudonyms import StudyPseudonyms

__all__ = ["CODE_ELEMENTS", "DATE_ELEMENTS", "DROPPED_ELEMENTS", "deidentify"]

# Elements whose string value is a code (or a code system URI): kept as they are.
CODE_ELEMENTS: Final = frozenset(
    {
        "system",
        "code",
        "version",
        "unit",
        "status",
        "intent",
        "priority",
        "gender",
        "use",
        "comparator",
        "language",
        "mode",
        "kind",
        "criticality",
        "severity",
        "type",
        "category",
        "valueCode",
        "durationUnit",
        "periodUnit",
        "dayOfWeek",
        "when",
        "timeOfDay",
    }
)
DATE_ELEMENTS: Final = frozenset(
    {
        "start",
        "end",
        "date",
        "issued",
        "recorded",
        "created",
        "authoredOn",
        "event",
        "onset",
        "lastOccurrence",
        "whenHandedOver",
        "whenPrepared",
        "dateAsserted",
        "dateWritten",
        "birthDate",
    }
)
_DATE_SUFFIXES: Final = ("Date", "DateTime", "Instant")
# Dropped whole, whatever they hold (documentation: most would be dropped by the rule anyway).
DROPPED_ELEMENTS: Final = frozenset(
    {
        "text",
        "note",
        "name",
        "address",
        "telecom",
        "identifier",
        "photo",
        "contact",
        "contained",
        "extension",
        "modifierExtension",
        "meta",
        "implicitRules",
        "display",
        "presentedForm",
        "content",
        "attachment",
        "valueAttachment",
        "id",
    }
)
_SAMPLED: Final = re.compile(r"^[0-9EUL.+\- ]*$")


def deidentify(
    resource: Mapping[str, Any],
    owner: str,
    pseudonyms: StudyPseudonyms,
    linkable: Collection[str],
) -> dict[str, Any]:
    """``resource`` of patient ``owner`` reduced to coded and quantitative data (module rule).
    ``linkable``: the resource types whose references stay (pseudonymised), besides Patient."""
    rtype = str(resource.get("resourceType", ""))
    out: dict[str, Any] = {"resourceType": rtype}
    rid = resource.get("id")
    if isinstance(rid, str):
        out["id"] = (
            pseudonyms.patient(rid) if rtype == "Patient" else pseudonyms.resource(rtype, rid)
        )
    walker = _Walker(pseudonyms, pseudonyms.day_offset(owner), frozenset(linkable))
    out.update(walker.object(resource))
    return out


class _Walker:
    def __init__(self, pseudonyms: StudyPseudonyms, days: int, linkable: frozenset[str]):
        self._p = pseudonyms
        self._days = days
        self._linkable = linkable

    def object(self, value: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in DROPPED_ELEMENTS or key == "resourceType":
                continue
            if key == "reference":
                mapped = self._reference(item)
                if mapped is None:
                    return {}  # a reference that may not leave takes its Reference along
                out[key] = mapped
                continue
            kept = self._value(key, item)
            if kept is not None:
                out[key] = kept
        return out

    def _value(self, key: str, item: Any) -> Any:
        if isinstance(item, bool | int | float | Decimal):
            return item
        if isinstance(item, str):
            return self._string(key, item)
        if isinstance(item, Mapping):
            return self.object(item) or None
        if isinstance(item, list):
            kept = [k for k in (self._value(key, element) for element in item) if k is not None]
            return kept or None
        return None

    def _string(self, key: str, text: str) -> str | None:
        if key in CODE_ELEMENTS:
            return text
        if key in DATE_ELEMENTS or key.endswith(_DATE_SUFFIXES):
            moved = fhir_dates.shift(text, self._days)
            if moved is not None and key == "birthDate":
                return moved[:4]
            return moved
        if key == "data" and _SAMPLED.match(text):
            return text  # SampledData.data: numbers, E, L and U only
        return None

    def _reference(self, item: Any) -> str | None:
        if not isinstance(item, str) or item.startswith(("#", "urn:")):
            return None
        parts = item.split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) < 2 or not parts[-1]:
            return None
        rtype, rid = parts[-2], parts[-1]
        if rtype == "Patient":
            return f"Patient/{self._p.patient(rid)}"
        if rtype in self._linkable:
            return f"{rtype}/{self._p.resource(rtype, rid)}"
        return None
