"""Access tokens (RFC 9068 shape, SMART lifetimes) and backend-services client assertions.

Refusal cases from RFC 8725 and BSI TR-03161-3 O.Auth_20/21: alg none, HS256 signed with our
public key, tampered header/payload/signature, expired, not yet valid, wrong audience and issuer,
replayed jti, unknown keys, keys that do not fit the algorithm.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from compliance.tokens import (
    CLIENT_ASSERTION_TYPE,
    AccessTokens,
    ClientAssertions,
    MemoryJtiStore,
    Reason,
    SigningKey,
    SigningKeys,
    TokenError,
)
from tests.compliance.clock import START, ManualClock

NOW_S = START // 1_000_000
ISSUER = "https://kusel.medikus.example/auth"
AUDIENCE = "https://kusel.medikus.example/fhir"
TOKEN_URL = "https://kusel.medikus.example/auth/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def refused(reason: Reason, call: Any, *args: Any, **kwargs: Any) -> TokenError:
    with pytest.raises(TokenError) as info:
        call(*args, **kwargs)
    assert info.value.reason is reason, str(info.value)
    return info.value


@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return SigningKey.generate("Ed25519")


@pytest.fixture
def tokens(es_key: SigningKey, clock: ManualClock) -> AccessTokens:
    return AccessTokens(SigningKeys(es_key), issuer=ISSUER, audience=AUDIENCE, clock=clock)


def issue(tokens: AccessTokens, **extra: str) -> str:
    token, _ = tokens.issue(subject="Practitioner/7", client_id="app", scope="user/*.rs", **extra)
    return token


def base_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "Practitioner/7",
        "client_id": "app",
        "scope": "user/*.rs",
        "jti": "j1",
        "iat": NOW_S,
        "exp": NOW_S + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    full = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **header}
    return jwt.encode(full, claims, key.key, algorithms=[full["alg"]])


# --- issuing and verifying ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_round_trip(alg: str, clock: ManualClock) -> None:
    key = SigningKey.generate("ES256" if alg == "ES256" else "Ed25519")
    tokens = AccessTokens(SigningKeys(key), issuer=ISSUER, audience=AUDIENCE, clock=clock)
    token, claims = tokens.issue(
        subject="Patient/a",
        client_id="app",
        scope="patient/*.rs",
        patient="a",
        fhir_user="Patient/a",
    )
    header = json.loads(unb64(token.split(".")[0]))
    assert header == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
    payload = json.loads(unb64(token.split(".")[1]))
    assert set(payload) == {
        "iss",
        "aud",
        "sub",
        "client_id",
        "scope",
        "jti",
        "iat",
        "exp",
        "patient",
        "fhirUser",
    }
    assert payload["exp"] - payload["iat"] == 300
    verified = tokens.verify(token)
    assert verified == claims
    assert (verified.patient, verified.fhir_user, verified.iat) == ("a", "Patient/a", NOW_S)


def test_optional_claims_absent(tokens: AccessTokens) -> None:
    claims = tokens.verify(issue(tokens))
    assert claims.patient is None and claims.fhir_user is None


def test_jti_is_unique_or_injected(
    es_key: SigningKey, clock: ManualClock, tokens: AccessTokens
) -> None:
    assert tokens.verify(issue(tokens)).jti != tokens.verify(issue(tokens)).jti
    fixed = AccessTokens(
        SigningKeys(es_key), issuer=ISSUER, audience=AUDIENCE, clock=clock, new_jti=lambda: "j-42"
    )
    assert fixed.verify(issue(fixed)).jti == "j-42"


@pytest.mark.parametrize("lifetime", [0, 301, 3600])
def test_lifetime_is_at_most_300_s(es_key: SigningKey, clock: ManualClock, lifetime: int) -> None:
    with pytest.raises(ValueError):
        AccessTokens(
            SigningKeys(es_key), issuer=ISSUER, audience=AUDIENCE, clock=clock, lifetime_s=lifetime
        )


def test_expiry(tokens: AccessTokens, clock: ManualClock) -> None:
    token = issue(tokens)
    clock.advance(299.999)
    tokens.verify(token)
    clock.advance(0.001)
    error = refused(Reason.EXPIRED, tokens.verify, token)
    assert error.error == "invalid_token"


def test_leeway(es_key: SigningKey, clock: ManualClock) -> None:
    tokens = AccessTokens(
        SigningKeys(es_key), issuer=ISSUER, audience=AUDIENCE, clock=clock, leeway_s=30
    )
    token = issue(tokens)
    clock.advance(329)
    tokens.verify(token)
    clock.advance(1)
    refused(Reason.EXPIRED, tokens.verify, token)


def test_not_yet_valid(tokens: AccessTokens, clock: ManualClock) -> None:
    clock.advance(60)
    token = issue(tokens)
    clock.advance(-60)
    refused(Reason.NOT_YET_VALID, tokens.verify, token)


def test_nbf_in_future(tokens: AccessTokens, es_key: SigningKey) -> None:
    refused(Reason.NOT_YET_VALID, tokens.verify, sign(es_key, base_claims(nbf=NOW_S + 10)))


def test_wrong_audience_and_issuer(tokens: AccessTokens) -> None:
    token = issue(tokens)
    other_aud = dataclasses.replace(tokens, audience="https://other.example/fhir")
    refused(Reason.AUDIENCE, other_aud.verify, token)
    other_iss = dataclasses.replace(tokens, issuer="https://evil.example")
    refused(Reason.ISSUER, other_iss.verify, token)


def test_audience_list(tokens: AccessTokens, es_key: SigningKey) -> None:
    tokens.verify(sign(es_key, base_claims(aud=["https://x.example", AUDIENCE])))
    refused(Reason.AUDIENCE, tokens.verify, sign(es_key, base_claims(aud=["https://x.example"])))


def test_lifetime_over_300_s_refused_even_if_signed(
    tokens: AccessTokens, es_key: SigningKey
) -> None:
    refused(Reason.LIFETIME, tokens.verify, sign(es_key, base_claims(exp=NOW_S + 3600)))


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": None},
        {"client_id": None},
        {"jti": None},
        {"scope": None},
        {"iat": None},
        {"sub": 7},
        {"jti": ""},
        {"patient": 5},
    ],
)
def test_missing_or_mistyped_claims(
    tokens: AccessTokens, es_key: SigningKey, overrides: dict[str, Any]
) -> None:
    refused(Reason.CLAIMS, tokens.verify, sign(es_key, base_claims(**overrides)))


@pytest.mark.parametrize("exp", [None, True, "1767225900", float("nan")])
def test_exp_must_be_a_number(tokens: AccessTokens, es_key: SigningKey, exp: Any) -> None:
    claims = base_claims()
    claims["exp"] = exp
    if exp is None:
        del claims["exp"]
    refused(Reason.CLAIMS, tokens.verify, sign(es_key, claims))


# --- refusals: algorithm and key confusion, tampering ------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(tokens: AccessTokens, es_key: SigningKey, alg: str) -> None:
    header = {"alg": alg, "kid": es_key.kid, "typ": "at+jwt"}
    unsigned = f"{b64json(header)}.{b64json(base_claims())}."
    refused(Reason.ALGORITHM, tokens.verify, unsigned)
    # and with the signature of a real token kept
    real_sig = issue(tokens).split(".")[2]
    refused(Reason.ALGORITHM, tokens.verify, unsigned + real_sig)


def hs256_token(secret: bytes, kid: str, alg: str = "HS256") -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64json({'alg': alg, 'kid': kid, 'typ': 'at+jwt'})}.{b64json(base_claims())}"
    sig = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_as_secret(tokens: AccessTokens, es_key: SigningKey, alg: str) -> None:
    # The classic confusion attack: the public key (as PEM, or as published JWK) used as HMAC key.
    for secret in (
        es_key.key.as_pem(private=False),
        json.dumps(es_key.public_jwk()).encode(),
        json.dumps(tokens.keys.jwks()).encode(),
    ):
        refused(Reason.ALGORITHM, tokens.verify, hs256_token(secret, es_key.kid, alg))


def test_algorithm_must_match_the_key(
    es_key: SigningKey, ed_key: SigningKey, clock: ManualClock
) -> None:
    ring = SigningKeys(es_key).rotate(ed_key)  # both keys known
    tokens = AccessTokens(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    # Ed25519 signature claimed to be ES256 under the EC key's kid, and the other way round
    forged = sign(ed_key, base_claims(), kid=es_key.kid)
    header = {"alg": "ES256", "kid": ed_key.kid, "typ": "at+jwt"}
    swapped = f"{b64json(header)}.{b64json(base_claims())}.{forged.split('.')[2]}"
    refused(Reason.ALGORITHM, tokens.verify, forged)
    refused(Reason.ALGORITHM, tokens.verify, swapped)


@pytest.mark.parametrize("alg", ["ES384", "RS256", "RS384", "PS256", "EdDSA", "ES256K"])
def test_algorithms_outside_the_allow_list(
    tokens: AccessTokens, es_key: SigningKey, alg: str
) -> None:
    header = {"alg": alg, "kid": es_key.kid, "typ": "at+jwt"}
    token = f"{b64json(header)}.{b64json(base_claims())}.{issue(tokens).split('.')[2]}"
    refused(Reason.ALGORITHM, tokens.verify, token)


def test_tampered_payload(tokens: AccessTokens) -> None:
    header, payload, sig = issue(tokens).split(".")
    claims = json.loads(unb64(payload))
    claims["scope"] = "user/*.cruds"
    refused(Reason.SIGNATURE, tokens.verify, f"{header}.{b64json(claims)}.{sig}")


def test_tampered_signature(tokens: AccessTokens) -> None:
    header, payload, sig = issue(tokens).split(".")
    raw = bytearray(unb64(sig))
    raw[10] ^= 0x01
    refused(Reason.SIGNATURE, tokens.verify, f"{header}.{payload}.{b64(bytes(raw))}")
    refused(Reason.SIGNATURE, tokens.verify, f"{header}.{payload}.")


def test_signed_by_a_stranger_with_our_kid(tokens: AccessTokens, es_key: SigningKey) -> None:
    stranger = SigningKey.generate("ES256")
    refused(Reason.SIGNATURE, tokens.verify, sign(stranger, base_claims(), kid=es_key.kid))


def test_unknown_and_missing_kid(tokens: AccessTokens) -> None:
    stranger = SigningKey.generate("ES256")
    refused(Reason.UNKNOWN_KEY, tokens.verify, sign(stranger, base_claims()))
    header = {"alg": "ES256", "typ": "at+jwt"}
    refused(Reason.HEADER, tokens.verify, f"{b64json(header)}.{b64json(base_claims())}.AAAA")


@pytest.mark.parametrize("name", ["jku", "jwk", "x5u", "x5c", "crit"])
def test_key_carrying_headers(tokens: AccessTokens, es_key: SigningKey, name: str) -> None:
    header = {"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt", name: "https://evil.example/jwks"}
    refused(Reason.HEADER, tokens.verify, f"{b64json(header)}.{b64json(base_claims())}.AAAA")


@pytest.mark.parametrize("typ", [None, "JWT", "id_token", "jwt"])
def test_type_must_be_at_jwt(tokens: AccessTokens, es_key: SigningKey, typ: str | None) -> None:
    # Other JWTs we sign (e.g. ID tokens) must not pass as access tokens.
    header = {"alg": "ES256", "kid": es_key.kid}
    if typ is not None:
        header["typ"] = typ
    token = jwt.encode(header, base_claims(), es_key.key, algorithms=["ES256"], default_type=None)
    refused(Reason.TYPE, tokens.verify, token)
    tokens.verify(sign(es_key, base_claims(), typ="application/at+jwt"))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "!!!.b.c",
        f"{b64(b'not json')}.{b64json({})}.AAAA",
        f"{b64json([1, 2])}.{b64json({})}.AAAA",
        "ä.b.c",
        "a" * 20_000,
    ],
)
def test_malformed(tokens: AccessTokens, token: str) -> None:
    refused(Reason.MALFORMED, tokens.verify, token)


def test_payload_not_an_object(tokens: AccessTokens, es_key: SigningKey) -> None:
    header = {"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt"}
    token = jws.serialize_compact(
        header, b'["not", "an", "object"]', es_key.key, algorithms=["ES256"]
    )
    refused(Reason.MALFORMED, tokens.verify, token)


def test_base64_must_be_strict(tokens: AccessTokens) -> None:
    header, payload, sig = issue(tokens).split(".")
    refused(Reason.MALFORMED, tokens.verify, f"{header[:5]}!{header[5:]}.{payload}.{sig}")
    # "+" and "/" are standard base64, not base64url; a valid signature stays valid otherwise
    refused(Reason.MALFORMED, tokens.verify, f"{header}.{payload}.{sig[:-4]}+{sig[-3:]}")
    refused(Reason.MALFORMED, tokens.verify, f"{header}.{payload}.{sig}=")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_bit_flip_is_refused(tokens: AccessTokens, data: st.DataObject) -> None:
    token = issue(tokens)
    parts = token.split(".")
    segment = data.draw(st.integers(0, 2), label="segment")
    raw = bytearray(unb64(parts[segment]))
    index = data.draw(st.integers(0, len(raw) - 1), label="byte")
    raw[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    parts[segment] = b64(bytes(raw))
    with pytest.raises(TokenError):
        tokens.verify(".".join(parts))


# --- key ring: rotation and JWKS ---------------------------------------------------------------


def test_rotation_keeps_previous_key_until_retired(es_key: SigningKey, clock: ManualClock) -> None:
    tokens = AccessTokens(SigningKeys(es_key), issuer=ISSUER, audience=AUDIENCE, clock=clock)
    old_token = issue(tokens)
    new_key = SigningKey.generate("Ed25519")
    rotated = dataclasses.replace(tokens, keys=tokens.keys.rotate(new_key))
    new_token = issue(rotated)
    assert json.loads(unb64(new_token.split(".")[0]))["kid"] == new_key.kid
    rotated.verify(old_token)
    rotated.verify(new_token)
    retired = dataclasses.replace(rotated, keys=rotated.keys.retire_previous())
    refused(Reason.UNKNOWN_KEY, retired.verify, old_token)
    retired.verify(new_token)
    with pytest.raises(ValueError):
        rotated.keys.rotate(new_key)


def test_jwks_publishes_public_keys_only(es_key: SigningKey, ed_key: SigningKey) -> None:
    jwks = SigningKeys(es_key).rotate(ed_key).jwks()
    assert [k["kid"] for k in jwks["keys"]] == [ed_key.kid, es_key.kid]
    for published in jwks["keys"]:
        assert "d" not in published  # the private scalar of EC and OKP keys
        assert published["use"] == "sig"
        assert published["alg"] in ("ES256", "Ed25519")
    assert "d" in es_key.private_jwk()


def test_published_jwks_verifies_tokens(es_key: SigningKey, tokens: AccessTokens) -> None:
    # A resource server with only the published JWKS can check our signature.
    token = issue(tokens)
    (published,) = tokens.keys.jwks()["keys"]
    public = ECKey.import_key(published)
    assert not public.is_private
    assert jwt.decode(token, public, algorithms=["ES256"]).claims["iss"] == ISSUER


def test_private_jwk_round_trip(es_key: SigningKey, ed_key: SigningKey, clock: ManualClock) -> None:
    for key in (es_key, ed_key):
        loaded = SigningKey.from_private_jwk(key.private_jwk())
        assert (loaded.kid, loaded.alg) == (key.kid, key.alg)
        tokens = AccessTokens(SigningKeys(loaded), issuer=ISSUER, audience=AUDIENCE, clock=clock)
        AccessTokens(SigningKeys(key), issuer=ISSUER, audience=AUDIENCE, clock=clock).verify(
            issue(tokens)
        )
    assert es_key.private_jwk()["d"] not in repr(es_key)  # logs never show the private key


def test_from_private_jwk_refusals(es_key: SigningKey) -> None:
    with pytest.raises(ValueError):
        SigningKey.from_private_jwk(es_key.public_jwk())  # public half only
    with pytest.raises(ValueError):
        SigningKey.from_private_jwk({**es_key.private_jwk(), "alg": "HS256"})
    with pytest.raises(ValueError):
        SigningKey.from_private_jwk({**es_key.private_jwk(), "alg": "Ed25519"})  # EC key, OKP alg


# --- client assertions (SMART backend services) ------------------------------------------------


class Registry:
    """Registered clients and their JWKS, as the record core's client table will provide."""

    def __init__(self) -> None:
        self.clients: dict[str, dict[str, Any]] = {}

    def jwks(self, client_id: str) -> dict[str, Any] | None:
        return self.clients.get(client_id)


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, {"kid": "rsa-1"}, private=True)


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", {"kid": "ec-1"}, private=True)


@pytest.fixture
def registry(rsa_key: RSAKey, ec_key: ECKey) -> Registry:
    registry = Registry()
    registry.clients["station-1"] = {
        "keys": [rsa_key.as_dict(private=False), {**ec_key.as_dict(private=False), "alg": "ES384"}]
    }
    return registry


@pytest.fixture
def assertions(registry: Registry, clock: ManualClock) -> ClientAssertions:
    return ClientAssertions(registry, MemoryJtiStore(clock), TOKEN_URL, clock)


def assertion_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "station-1",
        "sub": "station-1",
        "aud": TOKEN_URL,
        "exp": NOW_S + 300,
        "jti": "a-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def make_assertion(key: Key, alg: str = "ES384", kid: str | None = "ec-1", **overrides: Any) -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, assertion_claims(**overrides), key, algorithms=[alg])


def test_valid_assertions(assertions: ClientAssertions, rsa_key: RSAKey, ec_key: ECKey) -> None:
    ok = assertions.verify(make_assertion(ec_key), CLIENT_ASSERTION_TYPE)
    assert (ok.client_id, ok.jti, ok.exp, ok.kid, ok.alg) == (
        "station-1",
        "a-1",
        NOW_S + 300,
        "ec-1",
        "ES384",
    )
    ok = assertions.verify(
        make_assertion(rsa_key, "RS384", "rsa-1", jti="a-2"), CLIENT_ASSERTION_TYPE, "station-1"
    )
    assert ok.alg == "RS384"


def test_replayed_assertion(
    assertions: ClientAssertions, ec_key: ECKey, clock: ManualClock
) -> None:
    assertion = make_assertion(ec_key)
    assertions.verify(assertion, CLIENT_ASSERTION_TYPE)
    error = refused(Reason.REPLAYED, assertions.verify, assertion, CLIENT_ASSERTION_TYPE)
    assert error.error == "invalid_client"
    # a fresh assertion reusing the jti is a replay too
    clock.advance(10)
    refused(
        Reason.REPLAYED,
        assertions.verify,
        make_assertion(ec_key, exp=NOW_S + 200),
        CLIENT_ASSERTION_TYPE,
    )
    # once expired, the replayed assertion is refused as expired (the jti may be forgotten)
    clock.advance(300)
    refused(Reason.EXPIRED, assertions.verify, assertion, CLIENT_ASSERTION_TYPE)


def test_jti_is_per_client(registry: Registry, assertions: ClientAssertions, ec_key: ECKey) -> None:
    registry.clients["station-2"] = registry.clients["station-1"]
    assertions.verify(make_assertion(ec_key), CLIENT_ASSERTION_TYPE)
    assertions.verify(
        make_assertion(ec_key, iss="station-2", sub="station-2"), CLIENT_ASSERTION_TYPE
    )


def test_concurrent_replay_accepts_once(assertions: ClientAssertions, ec_key: ECKey) -> None:
    assertion = make_assertion(ec_key)
    outcomes: list[str] = []

    def verify() -> None:
        try:
            assertions.verify(assertion, CLIENT_ASSERTION_TYPE)
            outcomes.append("ok")
        except TokenError as exc:
            outcomes.append(exc.reason.value)

    threads = [threading.Thread(target=verify) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["replayed"] * 7


def test_exp_at_most_five_minutes_ahead(assertions: ClientAssertions, ec_key: ECKey) -> None:
    refused(
        Reason.LIFETIME,
        assertions.verify,
        make_assertion(ec_key, exp=NOW_S + 301),
        CLIENT_ASSERTION_TYPE,
    )
    assertions.verify(make_assertion(ec_key, exp=NOW_S + 300), CLIENT_ASSERTION_TYPE)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": NOW_S}, Reason.EXPIRED),
        ({"exp": None}, Reason.CLAIMS),
        ({"jti": None}, Reason.CLAIMS),
        ({"nbf": NOW_S + 60}, Reason.NOT_YET_VALID),
        ({"iat": NOW_S + 60}, Reason.NOT_YET_VALID),
        ({"sub": "station-2"}, Reason.SUBJECT),
        ({"sub": None}, Reason.SUBJECT),
        ({"aud": "https://kusel.medikus.example/fhir"}, Reason.AUDIENCE),
        ({"aud": None}, Reason.AUDIENCE),
        ({"iss": "unknown-client", "sub": "unknown-client"}, Reason.UNKNOWN_CLIENT),
        ({"iss": None}, Reason.ISSUER),
    ],
)
def test_claim_refusals(
    assertions: ClientAssertions, ec_key: ECKey, overrides: dict[str, Any], reason: Reason
) -> None:
    error = refused(
        reason, assertions.verify, make_assertion(ec_key, **overrides), CLIENT_ASSERTION_TYPE
    )
    assert error.error == "invalid_client"


def test_audience_list_with_token_url(assertions: ClientAssertions, ec_key: ECKey) -> None:
    assertions.verify(
        make_assertion(ec_key, aud=[TOKEN_URL, "https://x.example"]), CLIENT_ASSERTION_TYPE
    )


def test_client_id_parameter_must_match(assertions: ClientAssertions, ec_key: ECKey) -> None:
    refused(
        Reason.ISSUER, assertions.verify, make_assertion(ec_key), CLIENT_ASSERTION_TYPE, "station-2"
    )


@pytest.mark.parametrize(
    "assertion_type", [None, "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"]
)
def test_assertion_type(
    assertions: ClientAssertions, ec_key: ECKey, assertion_type: str | None
) -> None:
    refused(Reason.TYPE, assertions.verify, make_assertion(ec_key), assertion_type)


def test_signed_by_unregistered_key(assertions: ClientAssertions) -> None:
    stranger = ECKey.generate_key("P-384", private=True)
    refused(Reason.SIGNATURE, assertions.verify, make_assertion(stranger), CLIENT_ASSERTION_TYPE)


def test_kid_required_and_known(assertions: ClientAssertions, ec_key: ECKey) -> None:
    refused(
        Reason.HEADER, assertions.verify, make_assertion(ec_key, kid=None), CLIENT_ASSERTION_TYPE
    )
    refused(
        Reason.UNKNOWN_KEY,
        assertions.verify,
        make_assertion(ec_key, kid="ec-2"),
        CLIENT_ASSERTION_TYPE,
    )


def test_jku_is_not_followed(assertions: ClientAssertions, ec_key: ECKey) -> None:
    header = {"alg": "ES384", "kid": "ec-1", "jku": "https://evil.example/jwks.json"}
    token = f"{b64json(header)}.{b64json(assertion_claims())}.AAAA"
    refused(Reason.HEADER, assertions.verify, token, CLIENT_ASSERTION_TYPE)


@pytest.mark.parametrize("alg", ["none", "HS256", "HS384", "RS256", "ES256", "PS384", "EdDSA"])
def test_assertion_algorithms_outside_the_allow_list(
    assertions: ClientAssertions, rsa_key: RSAKey, alg: str
) -> None:
    # HS384 keyed with the client's public key is the confusion attack on assertions.
    header = b64json({"alg": alg, "kid": "rsa-1"})
    payload = b64json(assertion_claims())
    secret = rsa_key.as_pem(private=False)
    sig = b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha384).digest())
    refused(Reason.ALGORITHM, assertions.verify, f"{header}.{payload}.{sig}", CLIENT_ASSERTION_TYPE)


def test_key_must_fit_algorithm(
    assertions: ClientAssertions, registry: Registry, rsa_key: RSAKey, ec_key: ECKey
) -> None:
    # The EC P-384 key's kid with RS384, and the RSA key's kid with ES384.
    refused(
        Reason.ALGORITHM,
        assertions.verify,
        make_assertion(rsa_key, "RS384", "ec-1"),
        CLIENT_ASSERTION_TYPE,
    )
    refused(
        Reason.ALGORITHM,
        assertions.verify,
        make_assertion(ec_key, "ES384", "rsa-1"),
        CLIENT_ASSERTION_TYPE,
    )
    # a key registered for another algorithm
    registry.clients["station-1"]["keys"][0]["alg"] = "RS256"
    refused(
        Reason.ALGORITHM,
        assertions.verify,
        make_assertion(rsa_key, "RS384", "rsa-1"),
        CLIENT_ASSERTION_TYPE,
    )


def test_encryption_keys_are_not_signing_keys(
    registry: Registry, assertions: ClientAssertions, ec_key: ECKey
) -> None:
    registry.clients["station-1"]["keys"][1]["use"] = "enc"
    refused(Reason.ALGORITHM, assertions.verify, make_assertion(ec_key), CLIENT_ASSERTION_TYPE)


def test_short_rsa_keys_are_refused(registry: Registry, assertions: ClientAssertions) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = weak.public_key().public_numbers()
    registry.clients["weak"] = {
        "keys": [
            {
                "kty": "RSA",
                "kid": "weak-1",
                "n": b64(numbers.n.to_bytes(128, "big")),
                "e": b64(numbers.e.to_bytes(3, "big")),
            }
        ]
    }
    header = b64json({"alg": "RS384", "kid": "weak-1"})
    payload = b64json(assertion_claims(iss="weak", sub="weak"))
    sig = weak.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA384())
    error = refused(
        Reason.ALGORITHM, assertions.verify, f"{header}.{payload}.{b64(sig)}", CLIENT_ASSERTION_TYPE
    )
    assert "2048" in str(error)


def test_unusable_jwks(registry: Registry, assertions: ClientAssertions, ec_key: ECKey) -> None:
    registry.clients["station-1"] = {"keys": "nope"}
    refused(Reason.UNKNOWN_KEY, assertions.verify, make_assertion(ec_key), CLIENT_ASSERTION_TYPE)


def test_assertion_algorithm_configuration(registry: Registry, clock: ManualClock) -> None:
    with pytest.raises(ValueError):
        ClientAssertions(registry, MemoryJtiStore(clock), TOKEN_URL, clock, algorithms=("HS256",))
    with pytest.raises(ValueError):
        ClientAssertions(registry, MemoryJtiStore(clock), TOKEN_URL, clock, algorithms=())


def test_okp_client_keys_when_allowed(registry: Registry, clock: ManualClock) -> None:
    okp = OKPKey.generate_key("Ed25519", {"kid": "ed-1"}, private=True)
    registry.clients["station-1"]["keys"].append(okp.as_dict(private=False))
    assertions = ClientAssertions(
        registry, MemoryJtiStore(clock), TOKEN_URL, clock, algorithms=("ES384", "Ed25519")
    )
    assertions.verify(make_assertion(okp, "Ed25519", "ed-1"), CLIENT_ASSERTION_TYPE)
