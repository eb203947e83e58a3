"""The patients a resource belongs to, for the audit trail (IHE BALP: one AuditEvent per patient).

https://hl7.org/fhir/R4/compartmentdefinition-patient.html: a resource is in Patient/x's
compartment when one of the compartment's parameters for its type references Patient/x; a Patient
is in its own (and, through ``link``, in those it links to). Evaluated on the resource's JSON with
the compiled search-parameter expressions (only the compartment's, so a few µs per resource), or
read from a written version's index rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_server.compartments import patient_compartment
from fhir_server.search.compiler import (
    PathPlan,
    UnsupportedExpression,
    compile_expression,
    evaluate,
)
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.rows import IndexRows
from fhir_server.search.values import make_reference_parser

__all__ = ["PatientLinks"]


class PatientLinks:
    """Finds the patients of resources; build once, thread-safe."""

    def __init__(self, registry: SearchParamRegistry) -> None:
        self._registry = registry
        self._parse = make_reference_parser(registry.resource_types)
        self._plans: dict[str, tuple[PathPlan, ...]] = {}

    def of(self, resource: Mapping[str, Any]) -> list[str]:
        """Ids of the patients whose compartment holds ``resource`` (first-seen order)."""
        rtype = resource.get("resourceType")
        if type(rtype) is not str:
            return []
        found: list[str] = []
        if rtype == "Patient" and type(resource.get("id")) is str:
            found.append(resource["id"])
        for plan in self._plans_for(rtype):
            for node in evaluate(plan, resource):
                reference = node.get("reference") if type(node) is dict else None
                parsed = self._parse(reference) if type(reference) is str else None
                if parsed is not None and parsed.target_type == "Patient":
                    found.append(parsed.target_id)
        return list(dict.fromkeys(found))

    def of_rows(self, rtype: str, id: str, index: IndexRows) -> list[str]:
        """The same from a written version's index rows (no JSON to walk)."""
        params = patient_compartment().get(rtype, ())
        found = [id] if rtype == "Patient" else []
        found.extend(
            row.target_id
            for row in index.references
            if row.param in params and row.target_type == "Patient" and row.target_id
        )
        return list(dict.fromkeys(found))

    def of_all(self, resources: Iterable[Mapping[str, Any]]) -> list[str]:
        """The distinct patients of several resources (a search result), first-seen order."""
        return list(dict.fromkeys(p for resource in resources for p in self.of(resource)))

    def _plans_for(self, rtype: str) -> tuple[PathPlan, ...]:
        plans = self._plans.get(rtype)
        if plans is None:
            plans = self._plans[rtype] = self._compile(rtype)  # a race compiles twice: harmless
        return plans

    def _compile(self, rtype: str) -> tuple[PathPlan, ...]:
        registry = self._registry
        definitions = registry.params_for(rtype)
        plans: list[PathPlan] = []
        for code in patient_compartment().get(rtype, ()):
            definition = definitions.get(code)
            if definition is None or definition.expression is None:
                continue  # "{def}": the Patient itself, handled by id
            try:
                compiled = compile_expression(
                    definition.expression,
                    rtype,
                    registry.choice_elements,
                    registry.resource_types,
                    self._parse,
                )
            except UnsupportedExpression:
                continue
            plans.extend(compiled.plans)
        return tuple(plans)
