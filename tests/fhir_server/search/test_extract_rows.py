"""Composite, ``:of-type``, ``:text``, ``_text``/``_content`` rows and index value caps.

Spec: https://hl7.org/fhir/R4/search.html#composite (values of one element are
paired), #modifiers (``:of-type`` and ``:text`` on tokens), #text and #content
(``_text``, ``_content``), https://hl7.org/fhir/R4/narrative.html#xhtml.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server._sqlstore import SqlStore
from fhir_server.search import (
    Indexer,
    IndexRow,
    IndexRows,
    NumberRow,
    QuantityRow,
    ReferenceRow,
    SearchParamRegistry,
    StringRow,
    TokenRow,
    UriRow,
)
from fhir_server.search.compiler import compile_component, compile_groups
from fhir_server.search.rows import TextRow
from fhir_server.search.values import (
    INDEX_BYTES_MAX,
    INDEX_TEXT_MAX,
    cap,
    content_text,
    make_reference_parser,
    narrative_text,
    normalize_string,
)
from fhir_server.store import NewVersion

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "tests" / "data" / "fhir-r4-examples"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
REGISTRY = SearchParamRegistry.load()
PARSE_REFERENCE = make_reference_parser(REGISTRY.resource_types)


@pytest.fixture(scope="module")
def indexer() -> Indexer:
    return Indexer()


def coded(code: str, display: str | None = None, system: str = LOINC) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return {"coding": [coding]}


def mmhg(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}


def blood_pressure(systolic: float, diastolic: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": coded("85354-9", "Blood pressure panel"),
        "component": [
            {"code": coded("8480-6", "Systolic"), "valueQuantity": mmhg(systolic)},
            {"code": coded("8462-4", "Diastolic"), "valueQuantity": mmhg(diastolic)},
        ],
    }


def matches(rows: IndexRows, composite: str, code: str, value: float) -> bool:
    """Brute-force composite search: a token and a quantity row of one element."""
    codes = {r.grp for r in rows.tokens if r.param == f"{composite}$0" and r.code == code}
    values = {
        r.grp for r in rows.quantities if r.param == f"{composite}$1" and r.low <= value <= r.high
    }
    return bool(codes & values)


def pairs(rows: tuple[IndexRow, ...]) -> set[tuple[Any, int]]:
    out: set[tuple[Any, int]] = set()
    for row in rows:
        if isinstance(row, TokenRow):
            out.add((row.code, row.grp))
        elif isinstance(row, QuantityRow | NumberRow):
            out.add((row.value, row.grp))
        elif isinstance(row, ReferenceRow):
            out.add((row.url, row.grp))
    return out


# Composite parameters ------------------------------------------------------------------------


def test_blood_pressure_components_are_paired_by_grp(indexer: Indexer) -> None:
    rows = indexer.extract(blood_pressure(120, 80))
    composite = "component-code-value-quantity"
    assert rows.for_param(f"{composite}$0") == (
        TokenRow(f"{composite}$0", LOINC, "8480-6", "systolic", grp=1),
        TokenRow(f"{composite}$0", LOINC, "8462-4", "diastolic", grp=2),
    )
    assert rows.for_param(f"{composite}$1") == (
        QuantityRow(f"{composite}$1", 120.0, 119.5, 120.5, UCUM, "mm[Hg]", "mmHg", grp=1),
        QuantityRow(f"{composite}$1", 80.0, 79.5, 80.5, UCUM, "mm[Hg]", "mmHg", grp=2),
    )
    assert matches(rows, composite, "8480-6", 120)
    assert matches(rows, composite, "8462-4", 80)
    # The plain component parameters cannot tell these apart; the composite can.
    assert not matches(rows, composite, "8480-6", 80)
    assert not matches(rows, composite, "8462-4", 120)


def test_combo_counts_the_observation_and_its_components(indexer: Indexer) -> None:
    rows = indexer.extract(blood_pressure(120, 80))
    # Element 1 is the Observation: it has a code but no value, so no rows.
    assert pairs(rows.for_param("combo-code-value-quantity$0")) == {("8480-6", 2), ("8462-4", 3)}
    assert pairs(rows.for_param("combo-code-value-quantity$1")) == {(120.0, 2), (80.0, 3)}
    assert not matches(rows, "combo-code-value-quantity", "85354-9", 120)
    # Observation-level composites: no value on the Observation, no rows.
    for code in ("code-value-quantity", "code-value-concept", "code-value-string"):
        assert [r for r in rows.all() if r.param.startswith(f"{code}$")] == []


def test_observation_level_composite(indexer: Indexer) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": coded("2339-0", "Glucose"),
        "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": UCUM, "code": "mmol/L"},
    }
    rows = indexer.extract(observation)
    assert rows.for_param("code-value-quantity$0") == (
        TokenRow("code-value-quantity$0", LOINC, "2339-0", "glucose", grp=1),
    )
    assert pairs(rows.for_param("code-value-quantity$1")) == {(6.3, 1)}
    assert pairs(rows.for_param("combo-code-value-quantity$1")) == {(6.3, 1)}
    assert rows.for_param("code-value-concept$0") == ()
    assert rows.for_param("code-value-date$0") == ()


def test_concept_and_date_components(indexer: Indexer) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": coded("883-9"),
        "valueCodeableConcept": coded("112144000", "Group A", "http://snomed.info/sct"),
    }
    rows = indexer.extract(observation)
    assert pairs(rows.for_param("code-value-concept$0")) == {("883-9", 1)}
    assert pairs(rows.for_param("code-value-concept$1")) == {("112144000", 1)}
    dated = {k: v for k, v in observation.items() if k != "valueCodeableConcept"}
    dated["valuePeriod"] = {"start": "2020-01-01"}
    (row,) = indexer.extract(dated).for_param("code-value-date$1")
    assert row.grp == 1 and row.param == "code-value-date$1"


def test_use_context_composites(indexer: Indexer) -> None:
    value_set = {
        "resourceType": "ValueSet",
        "status": "draft",
        "useContext": [
            {"code": {"code": "age"}, "valueRange": {"low": {"value": 18}, "high": {"value": 65}}},
            {"code": {"code": "focus"}, "valueCodeableConcept": coded("C1", system="urn:x")},
        ],
    }
    rows = indexer.extract(value_set)
    assert pairs(rows.for_param("context-type-quantity$0")) == {("age", 1)}
    assert pairs(rows.for_param("context-type-quantity$1")) == {(41.5, 1)}  # Range midpoint
    assert pairs(rows.for_param("context-type-value$0")) == {("focus", 2)}
    assert pairs(rows.for_param("context-type-value$1")) == {("C1", 2)}


def test_document_reference_relationship_uses_the_right_components(indexer: Indexer) -> None:
    # R4 gives relatesto (a reference) the expression "code": the indexer swaps it back.
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"url": "http://x/doc"}}],
        "relatesTo": [
            {"code": "replaces", "target": {"reference": "DocumentReference/a"}},
            {"code": "appends", "target": {"reference": "DocumentReference/b"}},
        ],
    }
    rows = indexer.extract(document)
    assert rows.for_param("relationship$0") == (
        ReferenceRow("relationship$0", "DocumentReference", "a", None, "DocumentReference/a", 1),
        ReferenceRow("relationship$0", "DocumentReference", "b", None, "DocumentReference/b", 2),
    )
    assert pairs(rows.for_param("relationship$1")) == {("replaces", 1), ("appends", 2)}


def test_molecular_sequence_components_from_the_resource_root(indexer: Indexer) -> None:
    sequence = orjson.loads((EXAMPLES / "sequence-example-fda.json").read_bytes())
    sequence["variant"].append({"start": 20000, "end": 20001})
    rows = indexer.extract(sequence)
    code = "referenceseqid-variant-coordinate"
    # %resource.referenceSeq.referenceSeqId: the same value for every variant.
    assert pairs(rows.for_param(f"{code}$0")) == {("NC_000001.11", 1), ("NC_000001.11", 2)}
    assert pairs(rows.for_param(f"{code}$1")) == {(13116.0, 1), (20000.0, 2)}
    assert pairs(rows.for_param(f"{code}$2")) == {(13117.0, 1), (20001.0, 2)}
    window = "referenceseqid-window-coordinate"
    assert pairs(rows.for_param(f"{window}$1")) == {(10453.0, 1)}


def test_group_characteristic_value(indexer: Indexer) -> None:
    group = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "characteristic": [
            {"code": {"text": "smoker"}, "valueBoolean": True, "exclude": False},
            {"code": coded("gender"), "valueCodeableConcept": coded("female"), "exclude": False},
            {"code": coded("weight"), "valueQuantity": {"value": 80}, "exclude": False},
        ],
    }
    rows = indexer.extract(group)
    assert pairs(rows.for_param("characteristic-value$0")) == {(None, 1), ("gender", 2)}
    assert pairs(rows.for_param("characteristic-value$1")) == {("true", 1), ("female", 2)}
    # A Quantity is no token: the third element has no rows.
    assert not [r for r in rows.all() if r.grp == 3]


def test_every_composite_compiles_for_every_type(indexer: Indexer) -> None:
    unsupported = {u.code for u in indexer.unsupported}
    composites = 0
    for resource_type in REGISTRY.resource_types:
        for param in REGISTRY.params_for(resource_type).values():
            if param.type != "composite":
                continue
            assert param.code not in unsupported
            assert param.expression is not None
            groups = compile_groups(
                param.expression,
                resource_type,
                REGISTRY.choice_elements,
                REGISTRY.resource_types,
                PARSE_REFERENCE,
            )
            assert groups, (resource_type, param.code)
            composites += 1
    assert composites >= 46


def test_component_expressions_compile_relative_to_the_element() -> None:
    args = (REGISTRY.choice_elements, REGISTRY.resource_types, PARSE_REFERENCE)
    (group,) = compile_groups("Observation.component", "Observation", *args)
    assert (group.plan.first_key, group.path) == ("component", "Observation.component")
    ((plan, on_resource),) = compile_component(
        "value.ofType(Quantity)", group.path, "Observation", *args
    )
    assert (plan.first_key, plan.hint, on_resource) == ("valueQuantity", "Quantity", False)
    ((plan, on_resource),) = compile_component(
        "%resource.referenceSeq.chromosome", "MolecularSequence.variant", "MolecularSequence", *args
    )
    assert (plan.first_key, on_resource) == ("referenceSeq", True)


# Tokens: :text and :of-type --------------------------------------------------------------------


def test_token_text_is_normalised(indexer: Indexer) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": LOINC, "code": "1", "display": "Glücose IN Blut"}],
            "text": "Blutzucker (Ärztin)",
        },
    }
    assert indexer.extract(observation).for_param("code") == (
        TokenRow("code", LOINC, "1", "glucose in blut"),
        TokenRow("code", None, None, "blutzucker (arztin)"),
    )


def test_identifier_of_type(indexer: Indexer) -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": V2_0203, "code": "MR"},
                        {"system": "urn:local", "code": "chart"},
                    ],
                    "text": "Medical Record",
                },
                "system": "urn:oid:1.2.3",
                "value": "A-0042x",
            },
            {"type": {"text": "no coding"}, "system": "urn:s", "value": "1"},
            {"system": "urn:s", "value": "2"},
        ],
        "telecom": [{"system": "phone", "value": "555"}],
    }
    rows = indexer.extract(patient)
    assert rows.for_param("identifier:of-type") == (
        TokenRow("identifier:of-type", V2_0203, "MR", "A-0042x"),  # value kept as is
        TokenRow("identifier:of-type", "urn:local", "chart", "A-0042x"),
    )
    assert TokenRow("identifier", "urn:oid:1.2.3", "A-0042x", "medical record") in rows.tokens
    assert not [r for r in rows.tokens if r.param.startswith("telecom:")]


def test_of_type_only_for_token_parameters(indexer: Indexer) -> None:
    identifier = {"type": coded("MR", system=V2_0203), "system": "urn:s", "value": "7"}
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"identifier": identifier},
        "identifier": [identifier],
    }
    rows = indexer.extract(observation)
    assert rows.for_param("subject:identifier") == (
        TokenRow("subject:identifier", "urn:s", "7", None),
    )
    assert {r.param for r in rows.tokens if r.param.endswith(":of-type")} == {"identifier:of-type"}


# _text and _content --------------------------------------------------------------------------


def test_narrative_text() -> None:
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p>Patient <b>Zoë</b> M&#252;ller,'
        "\n  H<sub>2</sub>O &amp; &lt;salt&gt;</p><table><tr><td>BP</td><td>120/80</td></tr>"
        "</table><br/>Done&nbsp;now</div>"
    )
    assert narrative_text(div) == "patient zoe muller, h2o & <salt> bp 120/80 done now"


def test_text_rows(indexer: Indexer) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p-id-1",
        "meta": {"versionId": "3", "tag": [{"code": "meta-tag"}]},
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jörg</div>',
        },
        "name": [{"family": "Straße", "given": ["Jörg", "  Ann\tMarie "]}],
        "photo": [{"contentType": "image/png", "data": "aGVsbG8="}],
        "managingOrganization": {"reference": "Organization/o1", "display": "Klinik Süd"},
        "extension": [{"url": "http://x/ext", "valueString": "Nested Text"}],
        "active": True,
        "multipleBirthInteger": 2,
    }
    rows = indexer.extract(patient)
    assert rows.for_param("_text") == (TextRow("_text", "jorg"),)
    (content,) = rows.for_param("_content")
    assert isinstance(content, TextRow)
    words = content.value.split(" ")
    assert sorted(words) == sorted(
        [
            "generated",
            "strasse",
            "jorg",
            "ann",
            "marie",
            "image/png",
            "klinik",
            "sud",
            "http://x/ext",
            "nested",
            "text",
        ]
    )
    assert "  " not in content.value  # whitespace collapsed


def test_text_rows_per_type(indexer: Indexer) -> None:
    # _text is a DomainResource parameter, _content one of every Resource.
    binary = {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="}
    assert indexer.extract(binary).texts == (TextRow("_content", "text/plain"),)
    empty = indexer.extract({"resourceType": "Patient", "text": {"div": "<div> </div>"}})
    assert empty.texts == ()


def test_content_includes_contained_resources_and_survives_depth(indexer: Indexer) -> None:
    nested: dict[str, Any] = {"url": "http://x", "valueString": "Leaf"}
    for _ in range(50_000):
        nested = {"url": "u", "extension": [nested]}
    patient = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Practitioner", "id": "c1", "name": [{"family": "Inner"}]}],
        "extension": [nested],
    }
    words = content_text(patient).split(" ")
    assert words.count("u") == 50_000 and {"leaf", "http://x", "inner"} <= set(words)
    assert "c1" not in words and "practitioner" not in words


def test_content_matches_a_reference_walk_on_the_examples() -> None:
    skipped = {"div", "reference", "data", "id", "meta", "resourceType"}

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in skipped:
                    yield from ([value] if isinstance(value, str) else strings(value))
        elif isinstance(node, list):
            for item in node:
                yield from ([item] if isinstance(item, str) else strings(item))

    for path in sorted(EXAMPLES.glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        expected = " ".join(reference_normalize(" ".join(strings(resource))).split())
        assert sorted(content_text(resource).split(" ")) == sorted(expected.split(" ")), path


def reference_normalize(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def test_long_non_ascii_text_normalises_like_short_text() -> None:
    text = "Ärztin Zoë Ångström, Straße; " * 40  # longer than the cached size
    assert len(text) > 1000
    assert normalize_string(text) == reference_normalize(text)


# Index value caps ------------------------------------------------------------------------------


def test_cap() -> None:
    short = "x" * INDEX_TEXT_MAX
    assert cap(short) is short
    assert cap("ä" * 2001) == "ä" * (INDEX_BYTES_MAX // 2)  # two bytes each in UTF-8
    assert cap("x" * 2001) == "x" * INDEX_TEXT_MAX
    assert INDEX_TEXT_MAX == 512


def long_values_patient(text: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "meta": {"profile": [f"http://example.org/{text}"]},
        "identifier": [
            {"type": coded("MR", system=V2_0203), "system": f"urn:{text}", "value": text}
        ],
        "name": [{"family": text}],
    }


def test_long_values_are_capped(indexer: Indexer) -> None:
    long = "Ä" + "b" * 2100
    rows = indexer.extract(long_values_patient(long))
    (family,) = rows.for_param("family")
    assert family == StringRow("family", ("a" + "b" * 2100)[:512], long[:512])
    (identifier,) = rows.for_param("identifier")
    assert identifier == TokenRow("identifier", f"urn:{long}"[:512], long[:512], None)
    (of_type,) = rows.for_param("identifier:of-type")
    assert of_type == TokenRow("identifier:of-type", V2_0203, "MR", long)  # text: not capped
    assert rows.for_param("_profile") == (UriRow("_profile", f"http://example.org/{long}"[:512]),)
    (content,) = rows.for_param("_content")
    assert isinstance(content, TextRow) and len(content.value) > 3 * 2100  # not capped


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    opened = SqlStore.open(database_url)
    yield opened
    opened.close()


def test_capped_rows_fit_the_database_indexes(indexer: Indexer, store: SqlStore) -> None:
    # 2100 characters of 2-byte UTF-8 would overflow a PostgreSQL btree entry uncapped.
    rows = indexer.extract(long_values_patient("é" * 2100))
    with store.unit_of_work() as uow:
        uow.put(NewVersion("Patient", "long", 1, 1_000, "PUT", b"{}", rows))
    assert store.read("Patient", "long") is not None


def test_worst_case_capped_token_fits_the_index(indexer: Indexer, store: SqlStore) -> None:
    cjk = "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(600))  # incompressible
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": f"urn:{cjk}", "code": cjk}]},
    }
    rows = indexer.extract(observation)
    with store.unit_of_work() as uow:
        uow.put(NewVersion("Observation", "cjk", 1, 1_000, "PUT", b"{}", rows))
    assert store.read("Observation", "cjk") is not None
