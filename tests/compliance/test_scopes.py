"""SMART v2 scopes: parsing (v2 and v1 forms), refusal of malformed scopes, and decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.scopes import (
    Decision,
    Grant,
    Interaction,
    Level,
    ResourceScope,
    ScopeContext,
    ScopeError,
    allows,
    parse_scope,
    parse_scopes,
)

C, R, U, D, S = (
    Interaction.CREATE,
    Interaction.READ,
    Interaction.UPDATE,
    Interaction.DELETE,
    Interaction.SEARCH,
)
VITALS = (("category", "vital-signs"),)


def test_parse_v2_with_query() -> None:
    scope = parse_scope("patient/Observation.rs?category=vital-signs")
    assert scope == ResourceScope(Level.PATIENT, "Observation", frozenset({R, S}), VITALS)
    assert str(scope) == "patient/Observation.rs?category=vital-signs"


def test_parse_spec_examples() -> None:
    assert parse_scope("user/*.cruds").interactions == frozenset(Interaction)
    lab = parse_scope(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    )
    assert lab.criteria == (
        ("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
    )
    assert str(lab).endswith("observation-category|laboratory")
    multi = parse_scope("system/Observation.s?category=laboratory&code=http://loinc.org|2345-7")
    assert multi.criteria == (("category", "laboratory"), ("code", "http://loinc.org|2345-7"))


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("user/*.write", "user/*.cud"),
        ("system/Patient.*", "system/Patient.cruds"),
        ("user/*.*", "user/*.cruds"),
    ],
)
def test_v1_maps_to_v2(v1: str, v2: str) -> None:
    assert parse_scope(v1) == parse_scope(v2)
    assert str(parse_scope(v1)) == v2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "patient/Observation",  # no permissions
        "patient/Observation.",
        "patient/Observation.sr",  # out of order
        "patient/Observation.rr",  # repeated
        "patient/Observation.x",
        "patient/Observation.rsx",
        "practitioner/Observation.rs",  # unknown level
        "Patient/Observation.rs",
        "patient/observation.rs",  # type names start upper-case
        "patient/Obs-ervation.rs",
        "patient/**.rs",
        "patient/Observation.rs?",  # empty query
        "patient/Observation.rs?category",  # no value
        "patient/Observation.rs?category=",  # empty value
        "patient/Observation.rs?=x",
        "patient/Observation.rs?1abc=x",
        "patient/Observation.rs?_include=Observation:subject",  # result parameter
        "patient/Observation.rs?_count=1000",
        "patient/Observation.rs?_sort=date",
        "patient/Observation.read?category=vital-signs",  # v1 has no query
        'patient/Observation.rs?code="x"',  # '"' is not a scope character (RFC 6749 §3.3)
        "patient/Observation.rs?code=\\x",
        "patient/Observation.rs?code=ä",
        " patient/Observation.rs",
    ],
)
def test_malformed_is_refused(text: str) -> None:
    with pytest.raises(ScopeError) as info:
        parse_scope(text)
    assert info.value.error == "invalid_scope"


def test_parse_scopes_with_identity_and_launch_scopes() -> None:
    scopes = parse_scopes(
        "openid fhirUser launch/patient patient/*.rs offline_access  user/Patient.r"
    )
    assert scopes.other == {"openid", "fhirUser", "launch/patient", "offline_access"}
    assert [str(s) for s in scopes.resource] == ["patient/*.rs", "user/Patient.r"]
    assert parse_scopes(str(scopes)) == scopes


def test_unknown_scopes() -> None:
    with pytest.raises(ScopeError, match="unknown scope"):
        parse_scopes("openid admin")
    assert parse_scopes("openid admin", ignore_unknown=True).other == {"openid"}
    with pytest.raises(ScopeError):  # a malformed resource scope is never ignored
        parse_scopes("patient/Observation.sr", ignore_unknown=True)


def test_duplicates_collapse() -> None:
    assert len(parse_scopes("patient/*.rs patient/*.read").resource) == 1


# --- property-based round trips ----------------------------------------------------------------

type_names = st.one_of(st.just("*"), st.from_regex(r"[A-Z][A-Za-z]{0,20}", fullmatch=True))
permission_sets = st.sets(st.sampled_from(list(Interaction)), min_size=1).map(frozenset)
param_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-.:]{0,15}", fullmatch=True)
param_values = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)  # no surrogates
criteria = st.lists(st.tuples(param_names, param_values), max_size=3).map(tuple)
resource_scopes = st.builds(
    ResourceScope, st.sampled_from(list(Level)), type_names, permission_sets, criteria
)


@given(resource_scopes)
def test_render_then_parse_is_identity(scope: ResourceScope) -> None:
    text = str(scope)
    assert " " not in text
    assert parse_scope(text) == scope


@given(st.lists(resource_scopes, max_size=5))
def test_scope_lists_round_trip(items: list[ResourceScope]) -> None:
    text = " ".join(str(s) for s in items)
    parsed = parse_scopes(text)
    assert list(parsed.resource) == list(dict.fromkeys(items))
    assert parse_scopes(str(parsed)) == parsed


scope_chars = st.sampled_from([chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\'])


# Near-grammatical tokens: values may hold '&', '=', '%' or '+', which parse_qsl decodes.
grammar_like = st.from_regex(
    r"(patient|user|system)/(\*|[A-Z][A-Za-z]{0,10})\.(c?r?u?d?s?|read|write|\*)"
    r"(\?[A-Za-z_][A-Za-z0-9]{0,5}=[!#-\[\]-~]{0,10}(&[A-Za-z][A-Za-z0-9]{0,5}=[!#-\[\]-~]{1,10})*)?",
    fullmatch=True,
)


@given(st.one_of(st.text(scope_chars, min_size=1, max_size=60), grammar_like))
def test_parsing_arbitrary_tokens_refuses_or_normalises(text: str) -> None:
    # Any token either is refused with ScopeError or parses to a scope whose rendering is stable.
    try:
        scope = parse_scope(text)
    except ScopeError:
        return
    assert parse_scope(str(scope)) == scope


@given(
    st.sampled_from(["patient", "user", "system"]),
    type_names,
    st.sampled_from(["read", "write", "*"]),
)
def test_v1_suffixes_equal_their_v2_forms(level: str, type_name: str, v1: str) -> None:
    v2 = {"read": "rs", "write": "cud", "*": "cruds"}[v1]
    assert parse_scope(f"{level}/{type_name}.{v1}") == parse_scope(f"{level}/{type_name}.{v2}")


# --- decisions ---------------------------------------------------------------------------------

PATIENT_A = ScopeContext(patient="a")


def decide(
    scope_text: str, interaction: Interaction, resource_type: str, context: ScopeContext = PATIENT_A
) -> Decision:
    return allows(parse_scopes(scope_text), context, interaction, resource_type)


def test_granular_scope_returns_its_criteria_and_patient() -> None:
    decision = decide("patient/Observation.rs?category=vital-signs", S, "Observation")
    assert decision == Decision(True, (Grant(Level.PATIENT, "a", VITALS),))
    assert not decision.unrestricted


@pytest.mark.parametrize("interaction", [C, U, D])
def test_interactions_outside_the_permissions_are_denied(interaction: Interaction) -> None:
    assert not decide("patient/Observation.rs", interaction, "Observation").allowed


def test_other_type_denied_wildcard_allowed() -> None:
    assert not decide("patient/Observation.rs", R, "Condition").allowed
    assert decide("patient/*.rs", R, "Condition").grants == (Grant(Level.PATIENT, "a", ()),)


def test_patient_scope_without_patient_context_grants_nothing() -> None:
    decision = decide("patient/*.cruds", R, "Observation", ScopeContext())
    assert decision == Decision(False, ())


def test_user_and_system_scopes_are_not_bound_to_a_patient() -> None:
    assert decide("user/Observation.r", R, "Observation").grants == (Grant(Level.USER, None, ()),)
    system = decide("system/*.rs", S, "Observation", ScopeContext())
    assert system.allowed and system.unrestricted


def test_union_of_granular_scopes() -> None:
    decision = decide(
        "patient/Observation.rs?category=vital-signs patient/Observation.rs?category=laboratory",
        S,
        "Observation",
    )
    assert set(decision.grants) == {
        Grant(Level.PATIENT, "a", VITALS),
        Grant(Level.PATIENT, "a", (("category", "laboratory"),)),
    }


def test_broader_scope_subsumes_narrower() -> None:
    decision = decide("patient/Observation.rs?category=vital-signs patient/*.rs", S, "Observation")
    assert decision.grants == (Grant(Level.PATIENT, "a", ()),)


def test_criteria_do_not_leak_into_other_interactions() -> None:
    decision = decide(
        "patient/Observation.r patient/Observation.s?category=vital-signs", R, "Observation"
    )
    assert decision.grants == (Grant(Level.PATIENT, "a", ()),)
    decision = decide(
        "patient/Observation.r patient/Observation.s?category=vital-signs", S, "Observation"
    )
    assert decision.grants == (Grant(Level.PATIENT, "a", VITALS),)


def test_no_scopes_deny() -> None:
    assert decide("openid fhirUser", R, "Patient") == Decision(False, ())


@given(
    resource_scopes, st.sampled_from(list(Interaction)), st.sampled_from(["Observation", "Patient"])
)
def test_decision_matches_scope(
    scope: ResourceScope, interaction: Interaction, resource_type: str
) -> None:
    decision = allows([scope], PATIENT_A, interaction, resource_type)
    expected = interaction in scope.interactions and scope.resource_type in ("*", resource_type)
    assert decision.allowed == expected
    if expected:
        (grant,) = decision.grants
        assert grant.criteria == scope.criteria
        assert grant.patient == ("a" if scope.level is Level.PATIENT else None)


@given(st.lists(resource_scopes, max_size=4), st.sampled_from(list(Interaction)))
def test_adding_scopes_never_removes_permission(
    items: list[ResourceScope], interaction: Interaction
) -> None:
    base = allows(items[:1], PATIENT_A, interaction, "Observation")
    more = allows(items, PATIENT_A, interaction, "Observation")
    assert more.allowed or not base.allowed
