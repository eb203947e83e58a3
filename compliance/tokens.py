"""Signed JWT access tokens and SMART backend-services client assertions.

Access tokens follow the JWT profile for OAuth 2 access tokens (RFC 9068,
https://www.rfc-editor.org/rfc/rfc9068): header ``typ: at+jwt``, claims iss, aud, sub, client_id,
scope, jti, iat, exp, plus SMART's ``patient`` and ``fhirUser`` and, for users, ``sid`` (the
login session, OpenID Connect's claim name, so a resource server can refuse ended sessions); at
most 300 s long (https://hl7.org/fhir/smart-app-launch/backend-services.html). They are signed with ES256 or
Ed25519 (RFC 9864's fully specified name for EdDSA over Ed25519; joserfc flags the polymorphic
``EdDSA`` as deprecated) by a :class:`SigningKeys` of current and previous keys, identified by ``kid``
(RFC 7638 thumbprints); :meth:`SigningKeys.jwks` publishes only the public halves.

Client assertions (RFC 7523 §3, SMART backend services "authenticating to the token endpoint"):
RS384 or ES384; iss = sub = client_id; aud = the token URL; exp at most five minutes ahead;
``jti`` not seen before (:class:`JtiStore`); the key comes from the client's registered JWKS,
never from ``jku``/``jwk``/``x5u`` headers.

Verification allow-lists the algorithm before looking at a key (so ``alg: none`` and HS256 signed
with a public key never reach a verifier: RFC 8725 §3.1–3.2), requires the key's algorithm to be
the header's, and checks every claim with a clear :class:`TokenError` (BSI TR-03161-3 O.Auth_20/21,
ASVS 5.0 9.1–9.2). Time comes from an injected clock in epoch microseconds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, Key, KeyParameters, OKPKey, RSAKey, import_key

__all__ = [
    "ACCESS_TOKEN_ALGORITHMS",
    "ACCESS_TOKEN_TYPE",
    "CLIENT_ASSERTION_ALGORITHMS",
    "CLIENT_ASSERTION_TYPE",
    "MAX_ACCESS_TOKEN_LIFETIME_S",
    "MAX_ASSERTION_LIFETIME_S",
    "AccessTokenClaims",
    "AccessTokens",
    "ClientAssertions",
    "ClientKeys",
    "Clock",
    "JtiStore",
    "MemoryJtiStore",
    "Reason",
    "SigningKey",
    "SigningKeys",
    "TokenError",
    "VerifiedAssertion",
]

Clock = Callable[[], int]
"""Current time in epoch microseconds (the record core's clock)."""

ACCESS_TOKEN_ALGORITHMS: tuple[str, ...] = ("ES256", "Ed25519")
CLIENT_ASSERTION_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
ACCESS_TOKEN_TYPE = "at+jwt"  # nosec B105 # the JWT typ of access tokens (RFC 9068), not a secret
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ACCESS_TOKEN_LIFETIME_S = 300
MAX_ASSERTION_LIFETIME_S = 300
MAX_TOKEN_BYTES = 16 * 1024
MIN_RSA_BITS = 2048

_SECOND = 1_000_000
_ALG_KEY: dict[str, tuple[str, str | None]] = {  # alg → (kty, curve)
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "Ed25519": ("OKP", "Ed25519"),
    "RS384": ("RSA", None),
}
# Python's decoders skip characters outside the alphabet and accept "+" and "/": check first.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# Headers that name or carry a key: a token must not choose its own verification key.
_KEY_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "crit"})


class Reason(Enum):
    MALFORMED = "malformed"
    ALGORITHM = "algorithm"
    TYPE = "type"
    HEADER = "header"
    UNKNOWN_KEY = "unknown-key"
    UNKNOWN_CLIENT = "unknown-client"
    SIGNATURE = "signature"
    ISSUER = "issuer"
    AUDIENCE = "audience"
    SUBJECT = "subject"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    LIFETIME = "lifetime"
    CLAIMS = "claims"
    REPLAYED = "replayed"


class TokenError(Exception):
    """A token or assertion is refused.

    ``reason`` is for logs and audit; ``error`` is the OAuth 2 code to answer with
    (``invalid_token`` for access tokens, RFC 6750 §3.1; ``invalid_client`` for client
    assertions, RFC 7523 §3.2).
    """

    def __init__(self, reason: Reason, message: str, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.reason = reason
        self.error = error


# --- our signing keys --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private signing key with its ``kid`` and algorithm (ES256 or Ed25519)."""

    kid: str
    alg: str
    key: ECKey | OKPKey = field(repr=False)

    @classmethod
    def generate(cls, alg: Literal["ES256", "Ed25519"] = "ES256") -> SigningKey:
        params: KeyParameters = {"alg": alg, "use": "sig"}
        key: ECKey | OKPKey
        if alg == "ES256":
            key = ECKey.generate_key("P-256", params, private=True, auto_kid=True)
        elif alg == "Ed25519":
            key = OKPKey.generate_key("Ed25519", params, private=True, auto_kid=True)
        else:
            raise ValueError(f"signing algorithm must be one of {ACCESS_TOKEN_ALGORITHMS}")
        assert key.kid is not None  # nosec B101 # invariant: auto_kid sets the RFC 7638 thumbprint
        return cls(key.kid, alg, key)

    @classmethod
    def from_private_jwk(cls, data: Mapping[str, Any]) -> SigningKey:
        """Load a key saved with :meth:`private_jwk` (the caller decrypts it first)."""
        alg = data.get("alg")
        if alg not in ACCESS_TOKEN_ALGORITHMS:
            raise ValueError(f"signing algorithm must be one of {ACCESS_TOKEN_ALGORITHMS}")
        key = _import_for_alg(dict(data), alg)
        if not isinstance(key, ECKey | OKPKey) or not key.is_private:
            raise ValueError("a signing key must be a private EC or OKP key")
        key.ensure_kid()
        assert key.kid is not None  # nosec B101 # invariant: ensure_kid() has just set it
        return cls(key.kid, alg, key)

    def private_jwk(self) -> dict[str, Any]:
        """The private JWK, for the caller to store encrypted (never publish this)."""
        return dict(self.key.as_dict(private=True))

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False))


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The current signing key and the previous one, still accepted until its tokens expired.

    Rotate, then keep the previous key for at least the token lifetime (and resource servers'
    JWKS cache time) before :meth:`retire_previous`.
    """

    current: SigningKey
    previous: SigningKey | None = None

    def rotate(self, new: SigningKey) -> SigningKeys:
        if new.kid == self.current.kid:
            raise ValueError("the new key must differ from the current one")
        return SigningKeys(new, self.current)

    def retire_previous(self) -> SigningKeys:
        return SigningKeys(self.current)

    def find(self, kid: str) -> SigningKey | None:
        for key in (self.current, self.previous):
            if key is not None and key.kid == kid:
                return key
        return None

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set to publish: public keys only."""
        keys = [k.public_jwk() for k in (self.current, self.previous) if k is not None]
        return {"keys": keys}


# --- access tokens -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessTokenClaims:
    iss: str
    aud: str
    sub: str
    client_id: str
    scope: str
    jti: str
    iat: int  # epoch seconds
    exp: int
    patient: str | None = None
    fhir_user: str | None = None
    sid: str | None = None  # the login session (users only): logout and password change end it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "iss": self.iss,
            "aud": self.aud,
            "sub": self.sub,
            "client_id": self.client_id,
            "scope": self.scope,
            "jti": self.jti,
            "iat": self.iat,
            "exp": self.exp,
        }
        if self.patient is not None:
            out["patient"] = self.patient
        if self.fhir_user is not None:
            out["fhirUser"] = self.fhir_user
        if self.sid is not None:
            out["sid"] = self.sid
        return out


def _random_jti() -> str:
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class AccessTokens:
    """Issues and verifies our access tokens. Rotate with ``dataclasses.replace(t, keys=…)``."""

    keys: SigningKeys
    issuer: str
    audience: str  # the FHIR base URL
    clock: Clock
    lifetime_s: int = MAX_ACCESS_TOKEN_LIFETIME_S
    leeway_s: int = 0  # clock skew allowed when a separate resource server verifies
    new_jti: Callable[[], str] = _random_jti

    def __post_init__(self) -> None:
        if not 0 < self.lifetime_s <= MAX_ACCESS_TOKEN_LIFETIME_S:
            raise ValueError(f"access token lifetime must be 1..{MAX_ACCESS_TOKEN_LIFETIME_S} s")
        if not 0 <= self.leeway_s <= 60:
            raise ValueError("leeway must be 0..60 s")

    def issue(
        self,
        *,
        subject: str,
        client_id: str,
        scope: str,
        patient: str | None = None,
        fhir_user: str | None = None,
        sid: str | None = None,
    ) -> tuple[str, AccessTokenClaims]:
        """A signed token and its claims (``expires_in`` = exp - iat)."""
        now = self.clock() // _SECOND
        claims = AccessTokenClaims(
            iss=self.issuer,
            aud=self.audience,
            sub=subject,
            client_id=client_id,
            scope=scope,
            jti=self.new_jti(),
            iat=now,
            exp=now + self.lifetime_s,
            patient=patient,
            fhir_user=fhir_user,
            sid=sid,
        )
        key = self.keys.current
        header = {"alg": key.alg, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        token = jwt.encode(header, claims.to_json(), key.key, algorithms=[key.alg])
        return token, claims

    def verify(self, token: str) -> AccessTokenClaims:
        """The claims of a valid token; raises :class:`TokenError` otherwise."""
        header = _header(token)
        alg = _allowed_alg(header, ACCESS_TOKEN_ALGORITHMS)
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in (
            ACCESS_TOKEN_TYPE,
            "application/" + ACCESS_TOKEN_TYPE,
        ):
            raise TokenError(Reason.TYPE, f"token type must be {ACCESS_TOKEN_TYPE}")
        signing = self.keys.find(_kid(header))
        if signing is None:
            raise TokenError(Reason.UNKNOWN_KEY, "token signed with an unknown key")
        if signing.alg != alg:
            raise TokenError(Reason.ALGORITHM, "token algorithm does not match its key")
        claims = _verified_claims(token, signing.key, alg)
        now = self.clock()
        _check_equal(claims, "iss", self.issuer, Reason.ISSUER)
        _check_audience(claims, self.audience)
        exp, iat = _check_times(claims, now, self.leeway_s)
        if iat is None:
            raise TokenError(Reason.CLAIMS, "token has no iat")
        if exp - iat > MAX_ACCESS_TOKEN_LIFETIME_S:
            raise TokenError(Reason.LIFETIME, "token lifetime exceeds 300 s")
        patient = claims.get("patient")
        fhir_user = claims.get("fhirUser")
        sid = claims.get("sid")
        if not all(value is None or isinstance(value, str) for value in (patient, fhir_user, sid)):
            raise TokenError(Reason.CLAIMS, "patient, fhirUser and sid must be strings")
        return AccessTokenClaims(
            iss=self.issuer,
            aud=self.audience,
            sub=_string(claims, "sub"),
            client_id=_string(claims, "client_id"),
            scope=_string(claims, "scope", allow_empty=True),
            jti=_string(claims, "jti"),
            iat=iat,
            exp=exp,
            patient=patient,
            fhir_user=fhir_user,
            sid=sid,
        )


# --- client assertions (backend services) ------------------------------------------------------


class ClientKeys(Protocol):
    """Registered SMART clients; implemented by the record core's client registry."""

    def jwks(self, client_id: str) -> Mapping[str, Any] | None:
        """The client's registered JWKS (``{"keys": [...]}``), or None for an unknown client."""
        ...


class JtiStore(Protocol):
    """Seen assertion ids; implemented by the record core's database."""

    def remember(self, issuer: str, jti: str, expires_at: int) -> bool:
        """Atomically record (issuer, jti) until ``expires_at`` (epoch seconds).

        Returns False if it was already recorded (a replay). Entries may be purged once expired:
        an expired assertion is refused before its jti is looked at. In SQL an
        ``INSERT … ON CONFLICT DO NOTHING`` with a unique key on (issuer, jti).
        """
        ...


class MemoryJtiStore:
    """Dict-backed :class:`JtiStore` for a single process and for tests; purges expired ids."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def remember(self, issuer: str, jti: str, expires_at: int) -> bool:
        now_s = self._clock() // _SECOND
        with self._lock:
            self._seen = {k: exp for k, exp in self._seen.items() if exp >= now_s}
            if (issuer, jti) in self._seen:
                return False
            self._seen[(issuer, jti)] = expires_at
            return True


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    exp: int  # epoch seconds
    kid: str
    alg: str


@dataclass(frozen=True)
class ClientAssertions:
    """Verifies ``client_assertion`` JWTs at the token endpoint (SMART backend services)."""

    clients: ClientKeys
    replay: JtiStore
    token_url: str
    clock: Clock
    algorithms: tuple[str, ...] = CLIENT_ASSERTION_ALGORITHMS
    leeway_s: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.algorithms) - set(_ALG_KEY)
        if unknown or not self.algorithms:
            raise ValueError(f"unsupported client assertion algorithms: {sorted(unknown)}")

    def verify(
        self, assertion: str, assertion_type: str | None, client_id: str | None = None
    ) -> VerifiedAssertion:
        """The authenticated client; raises :class:`TokenError` with ``error="invalid_client"``.

        ``assertion_type`` and ``client_id`` are the token request's ``client_assertion_type``
        and (optional) ``client_id`` parameters.
        """
        try:
            return self._verify(assertion, assertion_type, client_id)
        except TokenError as exc:
            raise TokenError(exc.reason, str(exc), "invalid_client") from None

    def _verify(
        self, assertion: str, assertion_type: str | None, client_id: str | None
    ) -> VerifiedAssertion:
        if assertion_type != CLIENT_ASSERTION_TYPE:
            raise TokenError(Reason.TYPE, f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        header = _header(assertion)
        alg = _allowed_alg(header, self.algorithms)
        kid = _kid(header)
        issuer = _unverified_issuer(assertion)
        if client_id is not None and client_id != issuer:
            raise TokenError(Reason.ISSUER, "assertion iss does not match client_id")
        jwks = self.clients.jwks(issuer)
        if jwks is None:
            raise TokenError(Reason.UNKNOWN_CLIENT, "unknown client")
        key = _client_key(jwks, kid, alg)
        claims = _verified_claims(assertion, key, alg)
        now = self.clock()
        _check_equal(claims, "iss", issuer, Reason.ISSUER)
        _check_equal(claims, "sub", issuer, Reason.SUBJECT)
        _check_audience(claims, self.token_url)
        exp, _ = _check_times(claims, now, self.leeway_s)
        if exp * _SECOND > now + (MAX_ASSERTION_LIFETIME_S + self.leeway_s) * _SECOND:
            raise TokenError(Reason.LIFETIME, "assertion exp is more than 5 minutes ahead")
        jti = _string(claims, "jti")
        # Last, so only authentic assertions take space in the replay store.
        if not self.replay.remember(issuer, jti, exp):
            raise TokenError(Reason.REPLAYED, "assertion jti was already used")
        return VerifiedAssertion(issuer, jti, exp, kid, alg)


# --- shared checks -----------------------------------------------------------------------------


def _b64decode(part: str) -> bytes:
    if _BASE64URL.fullmatch(part) is None:
        raise TokenError(Reason.MALFORMED, "token is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError(Reason.MALFORMED, "token is not base64url") from exc


def _segments(token: str) -> list[str]:
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise TokenError(Reason.MALFORMED, "token is too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenError(Reason.MALFORMED, "token is not a compact JWS (header.payload.signature)")
    if not all(_BASE64URL.fullmatch(p) for p in parts):
        raise TokenError(Reason.MALFORMED, "token is not base64url")
    return parts


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenError(Reason.MALFORMED, f"token {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenError(Reason.MALFORMED, f"token {what} is not a JSON object")
    return value


def _header(token: str) -> dict[str, Any]:
    header = _json_object(_b64decode(_segments(token)[0]), "header")
    present = _KEY_HEADERS & header.keys()
    if present:
        raise TokenError(Reason.HEADER, f"header parameters not accepted: {sorted(present)}")
    return header


def _unverified_issuer(token: str) -> str:
    """Only to find the client's registered keys; trusted after the signature check."""
    claims = _json_object(_b64decode(_segments(token)[1]), "payload")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise TokenError(Reason.ISSUER, "assertion has no iss")
    return iss


def _allowed_alg(header: Mapping[str, Any], allowed: tuple[str, ...]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise TokenError(Reason.ALGORITHM, f"algorithm {alg!r} is not allowed")
    return alg


def _kid(header: Mapping[str, Any]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError(Reason.HEADER, "token header has no kid")
    return kid


def _import_for_alg(data: dict[str, Any], alg: str) -> Key:
    kty, curve = _ALG_KEY[alg]
    if data.get("kty") != kty or (curve is not None and data.get("crv") != curve):
        raise ValueError(f"key does not fit algorithm {alg}")
    if kty == "RSA":
        n = data.get("n")
        # Checked before import (joserfc only warns); bit_length ignores leading zero bytes.
        bits = int.from_bytes(_b64decode(n), "big").bit_length() if isinstance(n, str) else 0
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    try:
        return import_key(data)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"invalid key: {exc}") from exc


def _client_key(jwks: Mapping[str, Any], kid: str, alg: str) -> Key:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise TokenError(Reason.UNKNOWN_KEY, "client has no usable JWKS")
    for data in keys:
        if not isinstance(data, dict) or data.get("kid") != kid:
            continue
        if data.get("use", "sig") != "sig" or data.get("alg", alg) != alg:
            raise TokenError(Reason.ALGORITHM, "client key is not registered for this algorithm")
        try:
            key = _import_for_alg(data, alg)
        except ValueError as exc:
            raise TokenError(Reason.ALGORITHM, str(exc)) from None
        if isinstance(key, RSAKey | ECKey | OKPKey):
            return key
    raise TokenError(Reason.UNKNOWN_KEY, f"no registered client key with kid {kid!r}")


def _verified_claims(token: str, key: Key, alg: str) -> dict[str, Any]:
    try:
        decoded = jwt.decode(token, key, algorithms=[alg])
    except BadSignatureError:
        raise TokenError(Reason.SIGNATURE, "token signature is invalid") from None
    except JoseError as exc:
        raise TokenError(Reason.MALFORMED, f"token is malformed: {exc}") from None
    return decoded.claims


def _string(claims: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise TokenError(Reason.CLAIMS, f"claim {name!r} missing or not a string")
    return value


def _check_equal(claims: Mapping[str, Any], name: str, expected: str, reason: Reason) -> None:
    if claims.get(name) != expected:
        raise TokenError(reason, f"claim {name!r} does not match")


def _check_audience(claims: Mapping[str, Any], expected: str) -> None:
    aud = claims.get("aud")
    ok = aud == expected or (isinstance(aud, list) and expected in aud)
    if not ok:
        raise TokenError(Reason.AUDIENCE, "token is not meant for this audience")


def _numeric(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    # JSON numbers only: bool is an int in Python, floats are truncated (RFC 7519 NumericDate).
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise TokenError(Reason.CLAIMS, f"claim {name!r} is not a NumericDate")
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        raise TokenError(Reason.CLAIMS, f"claim {name!r} is not a NumericDate")
    return int(value)


def _check_times(claims: Mapping[str, Any], now: int, leeway_s: int) -> tuple[int, int | None]:
    """(exp, iat); exp is required; nbf and iat may not lie in the future (beyond leeway)."""
    exp = _numeric(claims, "exp")
    if exp is None:
        raise TokenError(Reason.CLAIMS, "token has no exp")
    leeway = leeway_s * _SECOND
    if now - leeway >= exp * _SECOND:
        raise TokenError(Reason.EXPIRED, "token has expired")
    for name in ("nbf", "iat"):
        value = _numeric(claims, name)
        if value is not None and value * _SECOND > now + leeway:
            raise TokenError(Reason.NOT_YET_VALID, f"token {name} lies in the future")
    return exp, _numeric(claims, "iat")
