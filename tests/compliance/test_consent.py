"""Consent evaluation (compliance/consent.py): examples and properties (hypothesis)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance import consent as consents
from compliance.consent import Kind, Verdict, build, evaluate, grants, revoke

A, B, C = "Organization/a", "Organization/b", "Organization/c"
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def decide(
    items: list[dict[str, Any]],
    actor: str = A,
    rtype: str = "Observation",
    *,
    purpose: str | None = "TREAT",
    at: datetime = NOW,
    kind: Kind = "network-sharing",
) -> Verdict:
    return evaluate(items, actor=actor, resource_type=rtype, purpose=purpose, at=at, kind=kind)


def with_id(resource: dict[str, Any], id: str) -> dict[str, Any]:
    return {**resource, "id": id}


# --- examples ---------------------------------------------------------------------------------


def test_opt_in_permits_only_the_named_actors() -> None:
    c = with_id(build("Patient/p", "network-sharing", actors=[A]), "c1")
    assert decide([c], A) == Verdict(True, ("c1",), None)
    assert not decide([c], B).permit
    assert decide([c], B).basis == ("c1",)  # denied by the root


def test_opt_out_permits_everyone_but_the_named_actor() -> None:
    c = build("Patient/p", "network-sharing", mode="opt-out", actors=[C])
    assert decide([c], A).permit and decide([c], B).permit
    assert not decide([c], C).permit


def test_opt_in_restricted_to_types() -> None:
    c = build("Patient/p", "network-sharing", actors=[A], types=["Observation", "Condition"])
    assert decide([c], A, "Observation").permit
    assert not decide([c], A, "MedicationRequest").permit


def test_no_consent_no_permit() -> None:
    assert decide([], A) == Verdict(False, (), None)


def test_period_bounds_the_permit_and_until_names_the_end() -> None:
    c = build("Patient/p", "network-sharing", actors=[A], start="2025-06-01", end="2026-03-31")
    verdict = decide([c], A)
    assert verdict.permit
    assert verdict.until == datetime(2026, 4, 1, tzinfo=UTC)  # end inclusive at day precision
    assert decide([c], A, at=datetime(2026, 3, 31, 23, 59, tzinfo=UTC)).permit
    assert not decide([c], A, at=datetime(2026, 4, 1, tzinfo=UTC)).permit
    early = decide([c], A, at=datetime(2025, 5, 31, tzinfo=UTC))
    assert not early.permit and early.until == datetime(2025, 6, 1, tzinfo=UTC)


def test_inactive_and_other_statuses_never_permit() -> None:
    c = build("Patient/p", "network-sharing", actors=[A])
    for status in ("draft", "proposed", "rejected", "inactive", "entered-in-error"):
        assert not decide([{**c, "status": status}], A).permit


def test_kind_is_taken_from_scope_and_category() -> None:
    tele = build("Patient/p", "telemonitoring", actors=[A])
    assert decide([tele], A, kind="telemonitoring").permit
    assert not decide([tele], A, kind="network-sharing").permit
    sharing = build("Patient/p", "network-sharing", actors=[A])
    assert not decide([sharing], A, kind="telemonitoring").permit
    # A generic LOINC privacy consent (no Medi-KUS kind) is about network sharing.
    generic = copy.deepcopy(sharing)
    generic["category"] = [{"coding": [{"system": consents.LOINC, "code": "59284-0"}]}]
    assert decide([generic], A).permit
    research = copy.deepcopy(sharing)
    research["scope"] = {"coding": [{"system": consents.SCOPE_SYSTEM, "code": "research"}]}
    assert not decide([research], A).permit
    # Telemonitoring consents may also be filed under the treatment scope.
    treatment = copy.deepcopy(tele)
    treatment["scope"] = {"coding": [{"system": consents.SCOPE_SYSTEM, "code": "treatment"}]}
    assert decide([treatment], A, kind="telemonitoring").permit


def test_purpose_must_match_a_permit() -> None:
    c = build("Patient/p", "network-sharing", actors=[A], purposes=["TREAT"])
    assert decide([c], A, purpose="TREAT").permit
    assert not decide([c], A, purpose="HRESCH").permit
    assert not decide([c], A, purpose=None).permit  # unknown purpose: share less


def test_a_later_consent_adds_an_actor_to_an_opt_in() -> None:
    first = with_id(build("Patient/p", "network-sharing", actors=[A]), "first")
    second = with_id(build("Patient/p", "network-sharing", actors=[B]), "second")
    assert decide([first, second], A) == Verdict(True, ("first",), None)
    assert decide([first, second], B) == Verdict(True, ("second",), None)
    assert not decide([first, second], C).permit


def test_deny_wins_over_permit_at_the_same_depth() -> None:
    permit = with_id(build("Patient/p", "network-sharing", actors=[A]), "permit")
    deny = with_id(build("Patient/p", "network-sharing", mode="opt-out", actors=[A]), "deny")
    verdict = decide([permit, deny], A)
    assert verdict == Verdict(False, ("deny",), None)


def test_nested_exception_inside_an_exception() -> None:
    # Org A may see everything but Observations, except vital signs purpose-of-use TREAT… here:
    # permit A, but deny A's Observations, but permit A's Observations during 2026.
    c = build("Patient/p", "network-sharing", actors=[A])
    c["provision"]["provision"][0]["provision"] = [
        {
            "type": "deny",
            "class": [{"system": consents.RESOURCE_TYPES, "code": "Observation"}],
            "provision": [{"type": "permit", "period": {"start": "2026", "end": "2026"}}],
        }
    ]
    assert decide([c], A, "Condition").permit
    assert decide([c], A, "Observation").permit
    assert not decide([c], A, "Observation", at=datetime(2027, 1, 2, tzinfo=UTC)).permit


def test_unjudgeable_criteria_share_less() -> None:
    # A permit naming single resources cannot grant a whole type; a deny naming them blocks it.
    permit = build("Patient/p", "network-sharing", actors=[A])
    permit["provision"]["provision"][0]["data"] = [
        {"meaning": "instance", "reference": {"reference": "Observation/1"}}
    ]
    assert not decide([permit], A).permit
    deny = build("Patient/p", "network-sharing", mode="opt-out", actors=[A])
    deny["provision"]["provision"][0]["securityLabel"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    ]
    assert not decide([deny], A).permit
    assert decide([deny], B).permit
    # An actor given by identifier only: a permit does not fire, a deny does.
    by_identifier = build("Patient/p", "network-sharing", actors=[A])
    by_identifier["provision"]["provision"][0]["actor"] = [
        {"role": {"text": "x"}, "reference": {"identifier": {"value": "123"}}}
    ]
    assert not decide([by_identifier], A).permit


def rule(code: str) -> dict[str, Any]:
    return {"coding": [{"system": consents.POLICY_RULE_SYSTEM, "code": code}]}


def test_policy_rule_is_the_default_of_an_untyped_root() -> None:
    c = build("Patient/p", "network-sharing", mode="opt-out", actors=[C])
    del c["provision"]["type"]
    assert not decide([c], A).permit  # no rule: deny
    c["policyRule"] = rule("OPTINR")  # assent with restrictions (opted-out actor C)
    assert decide([c], A).permit and not decide([c], C).permit
    c["policyRule"] = rule("OPTOUT")  # dissent
    assert not decide([c], A).permit


def test_absolute_and_versioned_actor_references_match() -> None:
    c = build("Patient/p", "network-sharing", actors=["https://x.example/fhir/Organization/a"])
    assert decide([c], A).permit
    c = build("Patient/p", "network-sharing", actors=["Organization/a/_history/3"])
    assert decide([c], A).permit


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide([], A, at=datetime(2026, 1, 1))


def test_revoke_sets_inactive_and_keeps_the_provisions() -> None:
    c = with_id(build("Patient/p", "network-sharing", actors=[A]), "c")
    revoked = revoke(c)
    assert revoked["status"] == "inactive"
    assert revoked["provision"] == c["provision"] and c["status"] == "active"
    assert not decide([revoked], A).permit
    assert revoke({**c, "status": "proposed"})["status"] == "rejected"
    assert revoke(revoked) == revoked
    with pytest.raises(ValueError):
        revoke({**c, "status": "entered-in-error"})


def test_grants_flatten_opt_out_with_period() -> None:
    c = build("Patient/p", "network-sharing", mode="opt-out", actors=[C], end="2026-06-30")
    flat = grants([c], NOW)
    assert flat == [
        consents.Grant(None, None, NOW, datetime(2026, 7, 1, tzinfo=UTC), frozenset({C}))
    ]
    assert grants([c], datetime(2026, 7, 1, tzinfo=UTC)) == []


def test_grants_of_opt_in_with_types_and_telemonitoring() -> None:
    c = build("Patient/p", "telemonitoring", actors=[A], types=["Observation"])
    assert grants([c], NOW, kind="network-sharing") == []
    assert grants([c], NOW, kind="telemonitoring") == [
        consents.Grant(A, frozenset({"Observation"}), NOW, None)
    ]


# --- properties -------------------------------------------------------------------------------

ACTORS = [A, B, C]
TYPES = ["Observation", "Condition", "Patient"]
DATES = ["2025", "2025-07-01", "2026-01-01", "2026-01-01T12:00:00Z", "2026-06", "2027"]
INSTANTS = st.sampled_from(
    [
        datetime(2024, 12, 31, tzinfo=UTC),
        datetime(2025, 7, 1, 6, tzinfo=UTC),
        NOW - timedelta(seconds=1),
        NOW,
        datetime(2026, 6, 15, tzinfo=UTC),
        datetime(2027, 12, 31, 23, tzinfo=UTC),
        datetime(2028, 1, 1, tzinfo=UTC),
    ]
)


def _criteria() -> st.SearchStrategy[dict[str, Any]]:
    period = st.fixed_dictionaries(
        {}, optional={"start": st.sampled_from(DATES), "end": st.sampled_from(DATES)}
    )
    actor = st.lists(st.sampled_from(ACTORS), min_size=1, max_size=2).map(
        lambda refs: [{"reference": {"reference": r}} for r in refs]
    )
    classes = st.lists(st.sampled_from(TYPES), min_size=1, max_size=2).map(
        lambda types: [{"system": consents.RESOURCE_TYPES, "code": t} for t in types]
    )
    purpose = st.lists(st.sampled_from(["TREAT", "HRESCH"]), min_size=1, max_size=2).map(
        lambda codes: [{"system": consents.PURPOSE_SYSTEM, "code": c} for c in codes]
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["permit", "deny"]),
            "period": period,
            "actor": actor,
            "class": classes,
            "purpose": purpose,
        },
    )


provisions = st.recursive(
    _criteria(),
    lambda children: st.tuples(_criteria(), st.lists(children, max_size=3)).map(
        lambda pair: {**pair[0], "provision": pair[1]} if pair[1] else pair[0]
    ),
    max_leaves=8,
)


@st.composite
def consent_resources(draw: st.DrawFn) -> dict[str, Any]:
    kind: Kind = draw(st.sampled_from(consents.KINDS))
    base = build("Patient/p", kind)
    base["status"] = draw(st.sampled_from(["active", "active", "active", "inactive", "draft"]))
    base["provision"] = draw(provisions)
    if draw(st.booleans()):
        base["policyRule"] = rule(draw(st.sampled_from(["OPTIN", "OPTINR", "OPTOUT", "OPTOUTE"])))
    base["id"] = f"c{draw(st.integers(0, 10_000))}"
    return base


consent_lists = st.lists(consent_resources(), max_size=4)
requests = st.tuples(
    st.sampled_from([*ACTORS, "Organization/unnamed"]),
    st.sampled_from([*TYPES, "MedicationRequest"]),
    st.sampled_from(["TREAT", "HRESCH", None]),
    INSTANTS,
    st.sampled_from(consents.KINDS),
)


def _ask(items: list[dict[str, Any]], request: tuple[Any, ...]) -> Verdict:
    actor, rtype, purpose, at, kind = request
    return decide(items, actor, rtype, purpose=purpose, at=at, kind=kind)


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("provision", []):
        out.extend(_nodes(child))
    return out


@settings(max_examples=300)
@given(consent_lists, requests, st.data())
def test_adding_a_nested_deny_never_turns_a_deny_into_a_permit(
    items: list[dict[str, Any]], request: tuple[Any, ...], data: st.DataObject
) -> None:
    if not items:
        return
    before = _ask(items, request)
    changed = copy.deepcopy(items)
    target = data.draw(st.sampled_from(changed))
    node = data.draw(st.sampled_from(_nodes(target["provision"])))
    deny: dict[str, Any] = {"type": "deny", "actor": [{"reference": {"reference": request[0]}}]}
    deny.update(data.draw(_criteria().map(lambda c: {k: v for k, v in c.items() if k != "type"})))
    node.setdefault("provision", []).append(deny)
    after = _ask(changed, request)
    assert after.permit <= before.permit


@settings(max_examples=300)
@given(consent_lists, requests, st.data())
def test_adding_a_nested_permit_never_turns_a_permit_into_a_deny(
    items: list[dict[str, Any]], request: tuple[Any, ...], data: st.DataObject
) -> None:
    if not items:
        return
    before = _ask(items, request)
    changed = copy.deepcopy(items)
    node = data.draw(st.sampled_from(_nodes(data.draw(st.sampled_from(changed))["provision"])))
    node.setdefault("provision", []).append({**data.draw(_criteria()), "type": "permit"})
    assert _ask(changed, request).permit >= before.permit


@settings(max_examples=200)
@given(consent_lists, requests)
def test_inactive_consents_never_permit(
    items: list[dict[str, Any]], request: tuple[Any, ...]
) -> None:
    revoked = [revoke(c) if c["status"] == "active" else c for c in items]
    assert not _ask(revoked, request).permit
    assert not _ask([{**c, "status": "inactive"} for c in items], request).permit


@settings(max_examples=200)
@given(consent_resources(), requests)
def test_a_root_period_that_excludes_the_instant_never_permits(
    item: dict[str, Any], request: tuple[Any, ...]
) -> None:
    at = request[3]
    item["provision"]["period"] = {"end": (at - timedelta(days=1)).strftime("%Y-%m-%d")}
    assert not _ask([item], request).permit
    item["provision"]["period"] = {"start": (at + timedelta(seconds=1)).isoformat()}
    assert not _ask([item], request).permit


@settings(max_examples=200)
@given(consent_lists, requests)
def test_permits_rest_on_active_consents_of_the_kind(
    items: list[dict[str, Any]], request: tuple[Any, ...]
) -> None:
    verdict = _ask(items, request)
    kind = request[4]
    basis = {c["id"] for c in items if consents.is_applicable(c, kind)}
    assert set(verdict.basis) <= basis
    assert not verdict.permit or verdict.basis
    # The verdict holds until ``until``: just before it nothing has changed.
    if verdict.until is not None:
        later = (*request[:3], verdict.until - timedelta(microseconds=1), kind)
        assert _ask(items, later).permit == verdict.permit


@settings(max_examples=150, deadline=None)
@given(consent_lists, st.data())
def test_grants_agree_with_evaluate_at_every_instant(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    kind: Kind = data.draw(st.sampled_from(consents.KINDS))
    since = datetime(2025, 3, 1, tzinfo=UTC)
    flat = grants(items, since, kind=kind)
    for _ in range(10):
        actor = data.draw(st.sampled_from([*ACTORS, "Organization/unnamed"]))
        rtype = data.draw(st.sampled_from([*TYPES, "MedicationRequest"]))
        at = data.draw(INSTANTS.filter(lambda t: t >= since))
        expected = decide(items, actor, rtype, purpose="TREAT", at=at, kind=kind).permit
        assert any(g.allows(actor, rtype, at) for g in flat) == expected


def test_built_consents_and_the_code_system_are_valid_r4() -> None:
    from fhir.resources.R4B.codesystem import CodeSystem
    from fhir.resources.R4B.consent import Consent

    for kind in consents.KINDS:
        for mode in ("opt-in", "opt-out"):
            Consent.model_validate(
                build(
                    "Patient/p",
                    kind,
                    mode=mode,
                    actors=[A],
                    types=["Observation"],
                    start="2026-01-01",
                    end="2026-12-31",
                    purposes=["TREAT"],
                )
            )
    Consent.model_validate(revoke(build("Patient/p", "telemonitoring")))
    CodeSystem.model_validate(consents.code_system())


def test_the_kind_code_system_defines_every_kind() -> None:
    system = consents.code_system()
    assert system["url"] == consents.KIND_SYSTEM
    assert [c["code"] for c in system["concept"]] == list(consents.KINDS)
