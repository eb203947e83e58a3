"""The Patient compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).

Which search parameters put a resource into a patient's compartment; the basis of compartment
search (``Patient/123/Observation``) and ``Patient/$everything``. Source: the official R4
CompartmentDefinition in ``definitions/``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

import orjson

from fhir_server.criteria import AnyOf, Criterion, Ids, Match, Reference


@functools.cache
def patient_compartment() -> Mapping[str, tuple[str, ...]]:
    """Resource type -> the parameters that link it to a patient (types outside: absent)."""
    path = resources.files("fhir_server") / "definitions" / "compartmentdefinition-patient.json"
    definition = orjson.loads(path.read_bytes())
    return MappingProxyType(
        {
            entry["code"]: tuple(entry["param"])
            for entry in definition["resource"]
            if entry.get("param")
        }
    )


def in_compartment(rtype: str, patient_id: str) -> Criterion | None:
    """The criterion "``rtype`` resource is in Patient/``patient_id``'s compartment"."""
    params = patient_compartment().get(rtype)
    if params is None:
        return None
    target = Reference("Patient", patient_id)
    alternatives: list[Criterion] = [
        Match(param, "reference", None, (target,)) for param in params if param != "{def}"
    ]
    if rtype == "Patient":
        alternatives.append(Ids((patient_id,)))
    return AnyOf(tuple(alternatives))
