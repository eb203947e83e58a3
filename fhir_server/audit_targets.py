"""What a request addressed, as the audit sees it: the interaction (https://hl7.org/fhir/R4/
http.html#summary, classified as the router dispatches it), type, id, version, the patient the URL
names, and the raw query BALP records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from compliance.balp import Interaction
from fhir_server.request import FhirRequest

__all__ = ["BUNDLES", "CHANGES", "Target", "classify", "raw_query"]

_INSTANCE_METHODS: Final = {
    "GET": Interaction.READ,
    "PUT": Interaction.UPDATE,
    "PATCH": Interaction.PATCH,
    "DELETE": Interaction.DELETE,
}
_TYPE_METHODS: Final = {
    "GET": Interaction.SEARCH_TYPE,
    "POST": Interaction.CREATE,
    "PUT": Interaction.UPDATE,
    "PATCH": Interaction.PATCH,
    "DELETE": Interaction.DELETE,
}
CHANGES: Final = frozenset(
    {Interaction.CREATE, Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE}
)
BUNDLES: Final = frozenset({Interaction.TRANSACTION, Interaction.BATCH})


@dataclass(frozen=True, slots=True)
class Target:
    """What a request addressed: interaction, type, id, version, and a patient the URL names
    (``Patient/x``, ``Patient/x/Observation``, ``Patient/x/$everything``)."""

    interaction: Interaction
    rtype: str | None = None
    id: str | None = None
    version: str | None = None
    patient: str | None = None


def classify(method: str, path: str) -> Target | None:
    """The interaction of a request, as the router dispatches it; None: not audited
    (the CapabilityStatement holds no personal data)."""
    parts = [p for p in path.split("/") if p]
    n = len(parts)
    if n == 0:
        return Target(Interaction.TRANSACTION)  # or batch: refined from the body
    if n == 1 and parts[0] == "metadata":
        return None
    if n == 1 and parts[0] == "_history":
        return Target(Interaction.HISTORY_SYSTEM)
    rtype = parts[0]
    if n == 1:
        return Target(_TYPE_METHODS.get(method, Interaction.SEARCH_TYPE), rtype)
    second = parts[1]
    patient = second if rtype == "Patient" and not second.startswith(("_", "$")) else None
    if n == 2:
        if second == "_history":
            return Target(Interaction.HISTORY_TYPE, rtype)
        if second == "_search":
            return Target(Interaction.SEARCH_TYPE, rtype)
        if second.startswith("$"):
            return Target(Interaction.OPERATION, rtype)
        return Target(_INSTANCE_METHODS.get(method, Interaction.READ), rtype, second, None, patient)
    third = parts[2]
    if n == 3 and third == "_history":
        return Target(Interaction.HISTORY_INSTANCE, rtype, second, None, patient)
    if n == 3 and rtype == "Patient" and third[:1].isupper():
        return Target(Interaction.SEARCH_TYPE, third, None, None, patient)
    if n == 3 and third.startswith("$"):
        return Target(Interaction.OPERATION, rtype, second, None, patient)
    if n == 4 and third == "_history":
        return Target(Interaction.VREAD, rtype, second, parts[3], patient)
    return Target(Interaction.OPERATION, rtype)  # no such interaction: it failed (404)


def raw_query(request: FhirRequest) -> bytes:
    """The query as received: the form body of ``POST _search``, else the URL with its query
    string (re-encoded from the parsed parameters)."""
    if request.method == "POST" and request.path.rstrip("/").endswith("_search") and request.body:
        return request.body
    url = f"{request.base}/{request.path}" if request.base else request.path
    return (f"{url}?{urlencode(request.query)}" if request.query else url).encode("utf-8")
