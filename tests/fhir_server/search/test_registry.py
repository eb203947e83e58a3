"""The SearchParameter registry over the official R4 definitions.

Spec: https://hl7.org/fhir/R4/searchparameter-registry.html and
https://hl7.org/fhir/R4/search.html#all (parameters for all resources).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from fhir_server.search import SearchParamDef, SearchParamRegistry
from fhir_server.search.compiler import compile_expression

BASE_CODES = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"}


@pytest.fixture(scope="module")
def registry() -> SearchParamRegistry:
    return SearchParamRegistry.load()


def test_loads_all_official_definitions(registry: SearchParamRegistry) -> None:
    assert len(registry.params) == 1378
    assert SearchParamRegistry.load() is registry  # built once
    assert {"Patient", "Observation", "Claim", "Location"} <= registry.resource_types
    assert "Resource" not in registry.resource_types


def test_every_type_gets_the_base_parameters(registry: SearchParamRegistry) -> None:
    for resource_type in registry.resource_types:
        assert registry.params_for(resource_type).keys() >= BASE_CODES, resource_type


def test_domain_resource_parameters_skip_bundle(registry: SearchParamRegistry) -> None:
    assert "_text" in registry.params_for("Patient")
    assert "_text" not in registry.params_for("Bundle")
    assert "_lastUpdated" in registry.params_for("Bundle")


def test_unknown_type_gets_only_base_parameters(registry: SearchParamRegistry) -> None:
    assert set(registry.params_for("Binary")) == BASE_CODES | {"_content", "_query"}


def test_patient_parameters(registry: SearchParamRegistry) -> None:
    params = registry.params_for("Patient")
    birthdate = params["birthdate"]
    assert isinstance(birthdate, SearchParamDef)
    assert birthdate.type == "date"
    assert birthdate.url == "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    assert "Patient" in birthdate.base
    assert set(params["general-practitioner"].target) == {
        "Organization",
        "Practitioner",
        "PractitionerRole",
    }
    assert params["family"].type == "string"


def test_params_for_is_read_only(registry: SearchParamRegistry) -> None:
    with pytest.raises(TypeError):
        registry.params_for("Patient")["x"] = registry.params_for("Patient")["name"]  # type: ignore[index]


def test_composite_components_resolve_to_applicable_params(
    registry: SearchParamRegistry,
) -> None:
    """Composites get no rows of their own, so their components must be indexed."""
    composites = [p for p in registry.params if p.type == "composite"]
    assert len(composites) == 46
    for composite in composites:
        assert composite.components, composite.url
        for component in composite.components:
            part = registry.by_url(component.definition)
            assert part is not None, component.definition
            assert part.type != "composite"
            for resource_type in composite.base:
                assert registry.params_for(resource_type).get(part.code) == part


def test_choice_elements_come_from_the_xpaths(registry: SearchParamRegistry) -> None:
    choices = registry.choice_elements
    assert choices["Observation.effective"] == (
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveTiming",
        "effectiveInstant",
    )
    assert set(choices["Patient.deceased"]) == {"deceasedBoolean", "deceasedDateTime"}
    assert "Patient.birthDate" not in choices


def test_choice_table_agrees_with_an_independent_r4_model(
    registry: SearchParamRegistry,
) -> None:
    """Every element path an expression walks is a choice iff fhirpathpy's R4 model says so."""
    from fhirpathpy.models import models

    model = _ModelChoices(models["r4"])
    checked = 0
    for param in registry.params:
        if param.type == "composite" or not param.expression:
            continue
        for path in _plain_paths(param.expression):
            explicit = path.endswith("!")  # followed by ofType(): needs no table
            path = path.rstrip("!")
            expected = model.choice_keys(path)
            if not explicit:
                assert set(registry.choice_elements.get(path, ())) == expected, path
                checked += bool(expected)
    assert checked >= 15


class _ModelChoices:
    """Choice elements per fhirpathpy's R4 model, following data types."""

    def __init__(self, model: dict[str, dict[str, Any]]) -> None:
        self._choices = model["choiceTypePaths"]
        self._types = model["path2Type"]
        self._elsewhere = model["pathsDefinedElsewhere"]

    def choice_keys(self, path: str) -> set[str]:
        parts = path.split(".")
        current = parts[0]
        for part in parts[1:-1]:
            element = self._elsewhere.get(f"{current}.{part}", f"{current}.{part}")
            data_type = self._types.get(element, "")
            # Descend into a complex data type (UsageContext.value…), else stay on the path.
            is_data_type = data_type[:1].isupper() and data_type not in _ELEMENTS
            current = data_type if is_data_type else element
        last = parts[-1]
        return {last + t for t in self._choices.get(f"{current}.{last}", ())}


_ELEMENTS = ("BackboneElement", "Element")


def _plain_paths(expression: str) -> set[str]:
    """Every prefix path ``Type.a.b`` of each branch; ``!`` marks an ofType() next."""
    paths = set()
    for branch in expression.split("|"):
        match = re.match(r"\s*\(?([A-Z]\w*(?:\.[a-z]\w*\b(?!\())+)(\.ofType\()?", branch)
        if match:
            parts = match.group(1).split(".")
            for i in range(2, len(parts) + 1):
                paths.add(".".join(parts[:i]))
            if match.group(2):
                paths.discard(match.group(1))
                paths.add(match.group(1) + "!")
    return paths


def test_compiles_unions_per_type(registry: SearchParamRegistry) -> None:
    param = registry.params_for("Observation")["patient"]
    assert param.expression is not None and "AllergyIntolerance.patient" in param.expression
    compiled = compile_expression(
        param.expression,
        "Observation",
        registry.choice_elements,
        registry.resource_types,
        lambda ref: None,
    )
    # Only the Observation branch of the 32-type union is compiled.
    assert [plan.first_key for plan in compiled.plans] == ["subject"]
