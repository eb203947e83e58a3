"""Index rows extracted from the official R4 examples and Synthea bundles.

Spec: https://hl7.org/fhir/R4/search.html#ptypes (what each parameter type
matches) and https://hl7.org/fhir/R4/search.html#all (base parameters).
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.search import (
    DATE_MAX,
    QUANTITY_MAX,
    DateRow,
    Indexer,
    IndexRows,
    NumberRow,
    PositionRow,
    QuantityRow,
    ReferenceRow,
    SearchParamRegistry,
    StringRow,
    TokenRow,
    UriRow,
    extract,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "tests" / "data" / "fhir-r4-examples"
SYNTHEA = ROOT / "medikus" / "demo_data" / "synthea-r4"


def load_example(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = orjson.loads((EXAMPLES / name).read_bytes())
    return resource


def all_examples() -> Iterator[dict[str, Any]]:
    for path in sorted(EXAMPLES.glob("*.json")):
        yield orjson.loads(path.read_bytes())


def us(text: str) -> int:
    """Epoch microseconds of an ISO timestamp (the test's independent oracle)."""
    moment = dt.datetime.fromisoformat(text)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@pytest.fixture(scope="module")
def indexer() -> Indexer:
    return Indexer()


def test_patient_example(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("patient-example.json"))
    assert rows.for_param("identifier") == (
        TokenRow("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345", None),
    )
    assert TokenRow("gender", None, "male", None) in rows.tokens
    assert TokenRow("active", None, "true", None) in rows.tokens
    assert TokenRow("deceased", None, "false", None) in rows.tokens
    assert StringRow("family", "chalmers", "Chalmers") in rows.strings
    assert {r.exact for r in rows.strings if r.param == "given"} == {"Peter", "James", "Jim"}
    assert rows.for_param("address-city") == (
        StringRow("address-city", "pleasantville", "PleasantVille"),
    )
    assert rows.for_param("birthdate") == (
        DateRow("birthdate", us("1974-12-25T00:00:00+00:00"), us("1974-12-26T00:00:00+00:00") - 1),
    )
    assert ReferenceRow("organization", "Organization", "1", None, "Organization/1") in (
        rows.references
    )
    # A ContactPoint's system is a code (phone), not a code system: the value has none.
    assert TokenRow("phone", None, "(03) 5555 6473", None) in rows.tokens
    assert rows.for_param("_id") == ()


def test_observation_example(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("observation-example-f001-glucose.json"))
    assert rows.for_param("code") == (
        # The display is normalised for :text (https://hl7.org/fhir/R4/search.html#token).
        TokenRow("code", "http://loinc.org", "15074-8", "glucose [moles/volume] in blood"),
    )
    assert rows.for_param("value-quantity") == (
        QuantityRow(
            "value-quantity", 6.3, 6.25, 6.35, "http://unitsofmeasure.org", "mmol/L", "mmol/l"
        ),
    )
    # effectivePeriod without end: open to the future.
    assert rows.for_param("date") == (DateRow("date", us("2013-04-02T09:30:10+01:00"), DATE_MAX),)
    subject = ReferenceRow("subject", "Patient", "f001", None, "Patient/f001")
    assert subject in rows.references
    assert ReferenceRow("patient", "Patient", "f001", None, "Patient/f001") in rows.references


def test_location_position_for_near(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("location-example.json"))
    assert rows.positions == (PositionRow("near", 42.25475478, -83.6945691),)


def test_composite_components_are_indexed(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("observation-example-bloodpressure-dar.json"))
    component_codes = {r.code for r in rows.tokens if r.param == "component-code"}
    assert component_codes >= {"8480-6", "8462-4"}
    values = {r.value for r in rows.quantities if r.param == "component-value-quantity"}
    assert values == {107.0}  # the diastolic component has a dataAbsentReason
    # The composite's rows come under c$k with the component's number as grp; the
    # diastolic component (grp 2) lacks a value, so it cannot match and gets none.
    assert rows.for_param("component-code-value-quantity") == ()
    assert {
        (r.code, r.grp) for r in rows.tokens if r.param == "component-code-value-quantity$0"
    } == {
        ("8480-6", 1),
        ("271649006", 1),
        ("bp-s", 1),
    }
    (systolic,) = rows.for_param("component-code-value-quantity$1")
    assert isinstance(systolic, QuantityRow) and (systolic.value, systolic.grp) == (107.0, 1)


def test_base_parameters(indexer: Indexer) -> None:
    bmi = indexer.extract(load_example("observation-example-bmi.json"))
    assert bmi.for_param("_profile") == (
        UriRow("_profile", "http://hl7.org/fhir/StructureDefinition/vitalsigns"),
    )
    bundle = indexer.extract(load_example("bundle-example.json"))
    moment = us("2014-08-18T01:43:30+00:00")
    assert bundle.for_param("_lastUpdated") == (DateRow("_lastUpdated", moment, moment + 999_999),)
    condition = indexer.extract(load_example("condition-example-f202-malignancy.json"))
    assert condition.for_param("_security") == (
        TokenRow("_security", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "TBOO", "taboo"),
    )
    assert TokenRow(
        "_tag", "http://terminology.hl7.org/CodeSystem/v3-ActReason", "HTEST", "test health data"
    ) in (condition.tokens)


def test_meta_source(indexer: Indexer) -> None:
    patient = load_example("patient-example.json")
    patient["meta"] = {"source": "http://example.org/ingest#42", "lastUpdated": "2024-05-01"}
    rows = indexer.extract(patient)
    assert rows.for_param("_source") == (UriRow("_source", "http://example.org/ingest#42"),)
    assert rows.for_param("_tag") == ()
    day = us("2024-05-01T00:00:00+00:00")
    assert rows.for_param("_lastUpdated") == (
        DateRow("_lastUpdated", day, day + 86_400_000_000 - 1),
    )


def test_deceased_datetime_is_true(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("patient-example-c.json"))
    assert rows.for_param("deceased") == (TokenRow("deceased", None, "true", None),)


def test_choice_types_by_hint(indexer: Indexer) -> None:
    condition = indexer.extract(load_example("condition-example-f202-malignancy.json"))
    assert condition.for_param("onset-age") == (
        QuantityRow("onset-age", 52.0, 51.5, 52.5, "http://unitsofmeasure.org", "a", "years"),
    )
    assert condition.for_param("onset-date") == ()  # onsetAge is not a date


def test_money_and_decimal(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("chargeitem-example.json"))
    assert rows.for_param("price-override") == (
        QuantityRow("price-override", 40.0, 39.5, 40.5, "urn:iso:std:iso:4217", "EUR", None),
    )
    (factor,) = rows.for_param("factor-override")
    assert isinstance(factor, NumberRow)
    assert (factor.value, factor.low, factor.high) == pytest.approx((0.8, 0.75, 0.85))


def test_reference_identifier_becomes_a_token(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("claim-example-oral-contained-identifier.json"))
    assert TokenRow(
        "provider:identifier", "http://www.jurisdiction.com/careorganizations", "HOSP12345", None
    ) in (rows.tokens)
    # "#patient-1" points into `contained`: a url-only row (it counts for :missing).
    assert rows.for_param("patient") == (ReferenceRow("patient", None, None, None, "#patient-1"),)


def test_versioned_reference(indexer: Indexer) -> None:
    rows = indexer.extract(load_example("provenance-example.json"))
    assert ReferenceRow("target", "Procedure", "example", "1", "Procedure/example/_history/1") in (
        rows.references
    )


def test_reference_forms(indexer: Indexer) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": "https://fhir.example.org/r4/Patient/p1/_history/3"},
        "performer": [
            {"reference": "urn:uuid:0b8f1e9c-6b4e-4d2a-9a6c-1c2f1f6d1a11"},
            {"reference": "#contained"},
            {"display": "just a name"},
        ],
        "focus": [{"reference": "Group/g1"}],
        "hasMember": [{"reference": "Observation?code=1234"}],
    }
    rows = indexer.extract(observation)
    url = "https://fhir.example.org/r4/Patient/p1/_history/3"
    assert rows.for_param("subject") == (ReferenceRow("subject", "Patient", "p1", "3", url),)
    assert rows.for_param("patient") == (ReferenceRow("patient", "Patient", "p1", "3", url),)
    assert rows.for_param("performer") == (
        ReferenceRow(
            "performer", None, None, None, "urn:uuid:0b8f1e9c-6b4e-4d2a-9a6c-1c2f1f6d1a11"
        ),
        ReferenceRow("performer", None, None, None, "#contained"),
    )
    assert rows.for_param("hasMember") == ()
    assert rows.for_param("has-member") == (
        ReferenceRow("has-member", None, None, None, "Observation?code=1234"),
    )
    assert rows.for_param("code") == (TokenRow("code", None, None, "note"),)


def test_resolve_is_filters_by_target_type(indexer: Indexer) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Group/g1"},
    }
    rows = indexer.extract(observation)
    assert rows.for_param("subject") == (ReferenceRow("subject", "Group", "g1", None, "Group/g1"),)
    assert rows.for_param("patient") == ()


def test_canonical_reference(indexer: Indexer) -> None:
    questionnaire_response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/phq9|2.0",
    }
    rows = indexer.extract(questionnaire_response)
    assert rows.for_param("questionnaire") == (
        ReferenceRow(
            "questionnaire", None, None, "2.0", "http://example.org/Questionnaire/phq9|2.0"
        ),
    )


def test_range_and_comparator_quantities(indexer: Indexer) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 5, "comparator": "<", "system": "http://unitsofmeasure.org"},
        "component": [
            {"code": {"text": "y"}, "valueRange": {"low": {"value": 2}, "high": {"value": 4}}}
        ],
    }
    rows = indexer.extract(observation)
    (quantity,) = rows.for_param("value-quantity")
    assert isinstance(quantity, QuantityRow)
    assert quantity.low < -1e300 and quantity.high == 5.5
    context = {
        "resourceType": "ValueSet",
        "status": "draft",
        "useContext": [
            {"code": {"code": "age"}, "valueRange": {"low": {"value": 18, "code": "a"}}}
        ],
    }
    (age,) = indexer.extract(context).for_param("context-quantity")
    assert age == QuantityRow("context-quantity", 18.0, 18.0, QUANTITY_MAX, None, "a", None)


def test_string_normalisation(indexer: Indexer) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Müller-Straße", "given": ["Zoë"]}]}
    rows = indexer.extract(patient)
    assert StringRow("family", "muller-strasse", "Müller-Straße") in rows.strings
    assert StringRow("given", "zoe", "Zoë") in rows.strings


def test_rows_are_deduplicated(indexer: Indexer) -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Smith"}, {"family": "Smith"}],
        "identifier": [{"system": "s", "value": "1"}, {"system": "s", "value": "1"}],
    }
    rows = indexer.extract(patient)
    assert rows.for_param("family") == (StringRow("family", "smith", "Smith"),)
    assert rows.for_param("identifier") == (TokenRow("identifier", "s", "1", None),)


def test_deeply_nested_resource_is_fine(indexer: Indexer) -> None:
    nested: dict[str, Any] = {"url": "http://x", "valueString": "leaf"}
    for _ in range(50_000):
        nested = {"url": "http://x", "extension": [nested]}
    rows = indexer.extract({"resourceType": "Patient", "extension": [nested], "gender": "other"})
    assert rows.for_param("gender") == (TokenRow("gender", None, "other", None),)


def test_deceased_is_false_when_absent(indexer: Indexer) -> None:
    # FHIRPath: deceased.exists() is false, so the whole "and" is false, not empty.
    rows = indexer.extract({"resourceType": "Patient"})
    assert rows.for_param("deceased") == (TokenRow("deceased", None, "false", None),)


def test_unknown_type_gets_base_parameters(indexer: Indexer) -> None:
    binary = {
        "resourceType": "Binary",
        "meta": {"tag": [{"system": "s", "code": "c"}]},
        "contentType": "text/plain",
    }
    assert indexer.extract(binary).tokens == (TokenRow("_tag", "s", "c", None),)


def test_missing_resource_type_is_rejected(indexer: Indexer) -> None:
    with pytest.raises(ValueError, match="resourceType"):
        indexer.extract({"id": "x"})


def test_every_example_extracts_valid_rows(indexer: Indexer) -> None:
    registry = SearchParamRegistry.load()
    total = 0
    for resource in all_examples():
        before = copy.deepcopy(resource)
        rows = indexer.extract(resource)
        assert resource == before  # extraction never mutates
        params = registry.params_for(resource["resourceType"])
        for row in rows.all():
            code, dollar, k = row.param.removesuffix(":identifier").partition("$")
            code = code.removesuffix(":of-type")
            assert code in params, row
            if dollar:  # a composite's component k, from its element number grp
                assert params[code].type == "composite" and int(k) < len(params[code].components)
                assert row.grp >= 1, row
            else:
                assert row.grp == 0, row
            total += 1
        assert all(r.low <= r.high for r in rows.dates)
        assert all(r.low <= r.value <= r.high for r in rows.numbers)
        assert all(r.low <= r.value <= r.high for r in rows.quantities)
        assert len(set(rows.all())) == len(rows.all())
    assert total > 3_000


def test_synthea_bundle(indexer: Indexer) -> None:
    bundle = orjson.loads(gzip.decompress((SYNTHEA / "patient-001.json.gz").read_bytes()))
    resources = [entry["resource"] for entry in bundle["entry"]]
    rows = [indexer.extract(resource) for resource in resources]
    assert all(isinstance(r, IndexRows) for r in rows)
    observations = [
        (res, row)
        for res, row in zip(resources, rows, strict=True)
        if res["resourceType"] == "Observation" and "valueQuantity" in res
    ]
    assert observations
    resource, row = observations[0]
    (quantity,) = row.for_param("value-quantity")
    assert isinstance(quantity, QuantityRow)
    assert quantity.value == pytest.approx(resource["valueQuantity"]["value"])
    assert row.for_param("date")  # effectiveDateTime
    # Transaction bundles reference urn:uuid placeholders: url only, no target.
    (subject,) = row.for_param("subject")
    assert isinstance(subject, ReferenceRow) and subject.url.startswith("urn:uuid:")
    assert subject.target_type is None


def test_unsupported_expressions_are_few_and_documented(indexer: Indexer) -> None:
    unsupported = {(u.resource_type, u.code) for u in indexer.unsupported}
    assert unsupported == {("Bundle", "composition"), ("Bundle", "message")}
    assert extract.__doc__ is not None
    for item in indexer.unsupported:
        assert f"Bundle-{item.code}" in extract.__doc__
    bundle = load_example("bundle-example.json")
    assert indexer.extract(bundle).for_param("composition") == ()
