"""What the authorization server grants: never more than asked, than the client may have, or
than the account's role can use (grants.grant_user_scope, grants.scope_within); property-based."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.accounts import Account
from compliance.grants import grant_user_scope, scope_within
from compliance.principal import Role
from compliance.scopes import Level, ScopeError, parse_scope, parse_scopes

TYPES = ("*", "Patient", "Observation", "Appointment")
LEVELS = ("patient", "user", "system")
PERMISSIONS = ("c", "r", "rs", "cruds", "s", "ud")
QUERIES = (
    "",
    "?category=vital-signs",
    "?category=laboratory",
    "?status=final&category=vital-signs",
)
EXTRAS = ("launch/patient", "online_access", "offline_access", "openid", "fhirUser", "launch")

resource_scope = st.builds(
    lambda level, type_, perms, query: f"{level}/{type_}.{perms}{query}",
    st.sampled_from(LEVELS),
    st.sampled_from(TYPES),
    st.sampled_from(PERMISSIONS),
    st.sampled_from(QUERIES),
)
scope_text = st.lists(
    st.one_of(resource_scope, st.sampled_from(EXTRAS)), min_size=1, max_size=6
).map(" ".join)

PATIENT = Account(
    "a1", "erika", "Erika", frozenset({Role.PATIENT}), None, "Patient/p1", False, False
)
DOCTOR = Account("a2", "dr", "Dr", frozenset({Role.DOCTOR}), "mvz", "Practitioner/x", False, True)


@given(requested=scope_text, allowed=scope_text, patient=st.booleans())
def test_granted_is_within_request_client_and_role(
    requested: str, allowed: str, patient: bool
) -> None:
    account = PATIENT if patient else DOCTOR
    try:
        granted = parse_scopes(grant_user_scope(requested, allowed, account))
    except ScopeError as exc:
        assert exc.error == "invalid_scope"
        return
    wanted, client = parse_scopes(requested, ignore_unknown=True), parse_scopes(allowed)
    assert granted.resource, "a grant always holds a resource scope"
    for scope in granted.resource:
        assert scope in wanted.resource
        assert scope.level is (Level.PATIENT if patient else Level.USER)
        assert any(scope_within(scope, a) for a in client.resource)
    assert granted.other <= wanted.other & client.other
    assert granted.other <= ({"launch/patient", "online_access"} if patient else {"online_access"})


@given(scope=resource_scope)
def test_a_scope_is_within_itself(scope: str) -> None:
    parsed = parse_scope(scope)
    assert scope_within(parsed, parsed)


@pytest.mark.parametrize(
    ("requested", "allowed", "within"),
    [
        ("patient/Observation.rs", "patient/*.cruds", True),
        ("patient/*.rs", "patient/Observation.rs", False),
        ("patient/Observation.rs?category=vital-signs", "patient/Observation.rs", True),
        ("patient/Observation.rs", "patient/Observation.rs?category=vital-signs", False),
        ("patient/Observation.cruds", "patient/Observation.rs", False),
        ("user/Observation.rs", "patient/Observation.rs", False),
    ],
)
def test_scope_within_examples(requested: str, allowed: str, within: bool) -> None:
    assert scope_within(parse_scope(requested), parse_scope(allowed)) is within
