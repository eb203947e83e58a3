"""PKCE S256 (RFC 7636): appendix B example, format checks, plain refused, mismatches."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from compliance import pkce

# RFC 7636 Appendix B
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

verifiers = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"),
    min_size=43,
    max_size=128,
)


def test_rfc_example() -> None:
    assert pkce.challenge_s256(RFC_VERIFIER) == RFC_CHALLENGE
    pkce.check_challenge(RFC_CHALLENGE, "S256")
    pkce.verify(RFC_VERIFIER, RFC_CHALLENGE)


def test_only_s256_is_advertised() -> None:
    assert pkce.CODE_CHALLENGE_METHODS == ("S256",)


@pytest.mark.parametrize("method", ["plain", None, "s256", "S512", ""])
def test_authorize_refuses_other_methods(method: str | None) -> None:
    with pytest.raises(pkce.PkceError) as info:
        pkce.check_challenge(RFC_CHALLENGE, method)
    assert info.value.error == "invalid_request"


def test_token_endpoint_refuses_plain() -> None:
    # plain would compare verifier == challenge; must not succeed even when they are equal.
    with pytest.raises(pkce.PkceError) as info:
        pkce.verify(RFC_VERIFIER, RFC_VERIFIER, "plain")
    assert info.value.error == "invalid_grant"


@pytest.mark.parametrize(
    "challenge",
    [None, "", "short", RFC_CHALLENGE + "A", RFC_CHALLENGE[:-1] + "=", RFC_CHALLENGE[:-1] + "+"],
)
def test_malformed_challenge(challenge: str | None) -> None:
    with pytest.raises(pkce.PkceError):
        pkce.check_challenge(challenge, "S256")


@pytest.mark.parametrize(
    "verifier",
    [
        "a" * 42,  # too short
        "a" * 129,  # too long
        "a" * 42 + " ",  # space is not unreserved
        "a" * 42 + "+",
        "a" * 42 + "/",
        "a" * 42 + "=",
        "a" * 42 + "ä",
    ],
)
def test_malformed_verifier(verifier: str) -> None:
    with pytest.raises(pkce.PkceError) as info:
        pkce.verify(verifier, RFC_CHALLENGE)
    assert info.value.error == "invalid_grant"


def test_missing_verifier() -> None:
    with pytest.raises(pkce.PkceError, match="required"):
        pkce.verify(None, RFC_CHALLENGE)


def test_wrong_verifier() -> None:
    with pytest.raises(pkce.PkceError, match="does not match"):
        pkce.verify("x" * 43, RFC_CHALLENGE)


@given(verifiers)
def test_every_valid_verifier_round_trips(verifier: str) -> None:
    challenge = pkce.challenge_s256(verifier)
    pkce.check_challenge(challenge, "S256")
    pkce.verify(verifier, challenge)


@given(verifiers, verifiers)
def test_other_verifier_is_refused(a: str, b: str) -> None:
    assume(a != b)
    with pytest.raises(pkce.PkceError):
        pkce.verify(b, pkce.challenge_s256(a))
