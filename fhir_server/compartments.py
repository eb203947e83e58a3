"""The Patient compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).

Which search parameters put a resource into a patient's compartment; the basis of compartment
search (``Patient/123/Observation``) and ``Patient/$everything``. Source: the official R4
CompartmentDefinition in ``definitions/``. A patient's *own* records (access.py) follow it except
for AuditEvent (:func:`in_own_records`).
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


# Whose AuditEvent it is: the compartment's ``patient`` parameter also matches ``agent.who``, so a
# patient's attempt on someone else's record would count as their own event (and show them the
# other patient as its data subject). Their own are those naming them as an entity (BALP: the
# data subject, role 1, or their Patient resource as the data). Known limit: a change of B's
# Patient resource linking it to patient C is also recorded as an event about C, which names B's
# Patient as its data, so B sees that event of C's too.
_OWN_PARAMS = {"AuditEvent": ("entity",)}


@functools.cache
def own_compartment() -> Mapping[str, tuple[str, ...]]:
    """:func:`patient_compartment` with AuditEvent linked through ``entity`` only: what belongs
    to a patient's own record (access, the Art. 15 export)."""
    return MappingProxyType({**patient_compartment(), **_OWN_PARAMS})


def in_own_records(rtype: str, patient_id: str) -> Criterion | None:
    """The criterion "``rtype`` resource belongs to Patient/``patient_id``'s own record": the
    compartment, but for AuditEvent only the events about them (not those they are agent of)."""
    params = _OWN_PARAMS.get(rtype)
    if params is None:
        return in_compartment(rtype, patient_id)
    target = Reference("Patient", patient_id)
    alternatives = tuple(Match(param, "reference", None, (target,)) for param in params)
    return alternatives[0] if len(alternatives) == 1 else AnyOf(alternatives)
