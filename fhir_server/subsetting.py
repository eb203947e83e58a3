"""Subsetting search results: ``_summary`` and ``_elements`` (https://hl7.org/fhir/R4/search.html#summary,
https://hl7.org/fhir/R4/search.html#elements).

A subsetted resource carries the ``SUBSETTED`` tag (https://hl7.org/fhir/R4/resource.html#tag), so
no client mistakes it for the whole resource and writes it back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_server import fhir_json
from fhir_server.errors import Category, FhirError

SUMMARY_MODES = ("true", "false", "text", "data", "count")
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})

# (summary elements, mandatory elements) of a resource type.
ElementInfo = Callable[[str], tuple[frozenset[str], frozenset[str]]]


def check_summary(value: str | None) -> str | None:
    if value is not None and value not in SUMMARY_MODES:
        raise FhirError(
            Category.INVALID,
            f"_summary must be one of {', '.join(SUMMARY_MODES)}, not '{value}'.",
            expression=("_summary",),
        )
    return None if value == "false" else value


def subset(
    content: bytes, summary: str | None, elements: frozenset[str] | None, info: ElementInfo
) -> bytes:
    """The stored JSON reduced per ``_summary`` (true/text/data) or ``_elements``."""
    if summary is None and elements is None:
        return content
    resource: dict[str, Any] = fhir_json.loads(content)
    rtype = resource["resourceType"]
    summary_elements, mandatory = info(rtype)
    if summary == "true":
        keep = _ALWAYS | summary_elements | mandatory
    elif summary == "text":
        keep = _ALWAYS | {"text"} | mandatory
    elif summary == "data":
        keep = frozenset(resource) - {"text"}
    else:
        assert elements is not None
        keep = _ALWAYS | mandatory | elements
    reduced = {k: v for k, v in resource.items() if k in keep}
    meta = dict(reduced.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    reduced["meta"] = meta
    return fhir_json.dumps(reduced)
