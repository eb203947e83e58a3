"""The FHIRPath subset compiler, including forms the R4 definitions do not use.

Spec: http://hl7.org/fhirpath/N1/ as used by
https://hl7.org/fhir/R4/searchparameter.html#expression.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.search import SearchParamRegistry
from fhir_server.search.compiler import (
    Compiled,
    UnsupportedExpression,
    compile_expression,
    evaluate,
)
from fhir_server.search.values import make_reference_parser

REGISTRY = SearchParamRegistry.load()
PARSE_REFERENCE = make_reference_parser(REGISTRY.resource_types)

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "extension": [
        {"url": "http://x/race", "valueCodeableConcept": {"text": "r"}},
        {"url": "http://x/nick", "valueString": "Bo"},
    ],
    "name": [{"family": "A", "given": ["B", "C"]}, {"family": "D", "given": ["E"]}],
    "telecom": [
        {"system": "phone", "value": "1"},
        {"system": "email", "value": "a@b"},
        {"system": "email", "value": "c@d"},
    ],
    "generalPractitioner": [{"reference": "Practitioner/p"}, {"reference": "Organization/o"}],
    "active": True,
}


def compiled(expression: str, resource_type: str = "Patient") -> Compiled:
    return compile_expression(
        expression,
        resource_type,
        REGISTRY.choice_elements,
        REGISTRY.resource_types,
        PARSE_REFERENCE,
    )


def values(expression: str, resource: dict[str, Any] = PATIENT) -> list[Any]:
    result = compiled(expression, resource["resourceType"])
    return [v for plan in result.plans for v in evaluate(plan, resource)]


def test_paths_and_unions() -> None:
    assert values("Patient.name.given") == ["B", "C", "E"]
    assert values("Patient.name.family | Observation.status | Patient.active") == ["A", "D", True]
    assert values("(Patient.name).family") == ["A", "D"]


def test_relative_paths_start_at_the_resource() -> None:
    assert values("name.family | active") == ["A", "D", True]


def test_where_equality_and_first() -> None:
    assert values("Patient.telecom.where(system='email').value") == ["a@b", "c@d"]
    assert values("Patient.telecom.where(system='email').first().value") == ["a@b"]
    assert values("Patient.name[1].given") == ["E"]


def test_where_resolve_is() -> None:
    expression = "Patient.generalPractitioner.where(resolve() is Organization)"
    assert values(expression) == [{"reference": "Organization/o"}]


def test_extensions() -> None:
    assert values("Patient.extension('http://x/nick').value") == ["Bo"]
    assert values("Patient.extension.where(url='http://x/race').value.ofType(CodeableConcept)") == [
        {"text": "r"}
    ]
    (plan,) = [
        p
        for p in compiled("Patient.extension('http://x/nick').value").plans
        if evaluate(p, PATIENT)
    ]
    assert plan.hint == "String"


def test_choice_types_and_type_casts() -> None:
    observation = {"resourceType": "Observation", "valueQuantity": {"value": 1}}
    for expression in (
        "Observation.value.ofType(Quantity)",
        "Observation.value.as(Quantity)",
        "(Observation.value as Quantity)",
        "Observation.value",
    ):
        assert values(expression, observation) == [{"value": 1}], expression
    assert values("Observation.value.ofType(string)", observation) == []
    hints = {plan.hint for plan in compiled("Observation.effective", "Observation").plans}
    assert hints == {"DateTime", "Period", "Timing", "Instant"}


def test_resource_type_filter() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "P"}]}},
            {"resource": {"resourceType": "Group", "name": "G"}},
        ],
    }
    assert values("Bundle.entry.resource.ofType(Patient).name.family", bundle) == ["P"]
    with pytest.raises(UnsupportedExpression, match="whole resource"):
        compiled("Bundle.entry.resource", "Bundle")


def test_booleans() -> None:
    predicate = compiled("Patient.active = true").predicate
    assert predicate is not None and predicate(PATIENT) is True
    either = compiled("Patient.deceased.exists() or Patient.active.exists()").predicate
    assert either is not None and either(PATIENT) is True
    empty = compiled("Patient.gender = 'male'").predicate
    assert empty is not None and empty(PATIENT) is None
    deceased = compiled("Patient.deceased.exists() and Patient.deceased != false").predicate
    assert deceased is not None
    assert deceased({"resourceType": "Patient", "deceasedBoolean": False}) is False
    assert deceased({"resourceType": "Patient", "deceasedBoolean": True}) is True
    assert deceased({"resourceType": "Patient", "deceasedDateTime": "2020"}) is True


@pytest.mark.parametrize(
    "expression",
    [
        "Patient.name.select(given)",
        "Patient.name.where(given.startsWith('A'))",
        "%resource.name",
        "Patient.name.given + 'x'",
        "Patient.(",
        "Patient.name.ofType(HumanName)",
        "extension('http://x')",
    ],
)
def test_unsupported_forms_raise(expression: str) -> None:
    with pytest.raises(UnsupportedExpression):
        compiled(expression)


def test_other_types_branches_are_dropped() -> None:
    assert compiled("Observation.code | Condition.code").plans == ()
