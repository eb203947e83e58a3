"""Who is calling: a bearer access token turned into a Principal (RFC 6750, SMART App Launch v2).

:class:`Authenticator` verifies the JWT (tokens.AccessTokens: algorithm allow-list, typ, iss,
aud, exp, signature by one of our current or previous keys) and then looks up, server-side,
what the token must not carry (BSI TR-03161-3 O.Auth_19): for a user, the account's roles,
organisation and fhirUser and whether the session (``sid``) is still live, so logout, password
change, disabling and role changes act at once; for a backend service, whether the client is
still enabled. The session and account are cached per ``sid`` for at most ``cache_s`` (2 s), so
an ended session is refused by every worker within 2 s, and at once by the worker that ended it.

Patients without an account join with a single-use link or phone code (join_links.py);
:class:`JoinAccess` redeems it for a short-lived token limited to the grant's purpose.

Re-exports the account API of accounts.py, so ``compliance.identity`` is the one import.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from compliance._sqlstore import AuthStore
from compliance.accounts import (
    Account,
    AccountError,
    Identity,
    IdentityError,
    Login,
    LoginFailed,
    PasswordRejected,
    Session,
    SessionPolicy,
    normalize_username,
)
from compliance.auth_events import Events
from compliance.auth_records import ClientKind
from compliance.join_links import (
    DEFAULT_CODE_TTL_S,
    DEFAULT_LINK_TTL_S,
    IssuedCode,
    IssuedLink,
    JoinGrant,
    JoinLinks,
    JoinRefused,
)
from compliance.principal import Principal, Role
from compliance.scopes import Level, ScopeError, Scopes, parse_scopes
from compliance.signing import SigningKeyManager
from compliance.throttle import Failures, FailureStore, LoginThrottle, address_key
from compliance.tokens import AccessTokenClaims, TokenError

__all__ = [
    "JOIN_CLIENT_ID",
    "Account",
    "AccountError",
    "AuthenticationFailed",
    "Authenticator",
    "Identity",
    "IdentityError",
    "JoinAccess",
    "JoinRefused",
    "JoinThrottled",
    "Joined",
    "Login",
    "LoginFailed",
    "PasswordRejected",
    "Session",
    "SessionPolicy",
    "normalize_username",
    "purpose_scope",
]

JOIN_CLIENT_ID = "medikus-join"
# Not longer than every other access token (tokens.py refuses to issue or accept more than
# 300 s, and signing.py holds a rotated-out key only that long): a join token has no session to
# end, so its lifetime is the only way it stops. The device check (camera, microphone, speaker)
# needs no token; the join page redeems the link when the patient is ready, not before.
JOIN_TOKEN_LIFETIME_S = 300
_SECOND = 1_000_000
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE | re.ASCII)
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")  # RFC 6750 §3 error_description
_REFERENCE = re.compile(r"([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})", re.ASCII)
_MAX_CACHE = 50_000


class AuthenticationFailed(Exception):
    """The request's credentials are missing or not acceptable.

    ``error`` is the RFC 6750 §3.1 code: None when no credentials came at all (§3.1: then no
    error code), ``invalid_request`` for a malformed Authorization header, ``invalid_token``
    otherwise. ``reason`` is for the audit trail (a tokens.Reason value or "session-revoked",
    "session-idle", "session-expired", "account-disabled", "client-disabled", …).
    """

    def __init__(self, error: str | None, description: str, reason: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason

    @property
    def status(self) -> int:
        return 400 if self.error == "invalid_request" else 401

    def www_authenticate(self, realm: str = "Medi-KUS") -> str:
        """The ``WWW-Authenticate`` header value of the 401/400 answer."""
        value = f'Bearer realm="{realm}"'
        if self.error is not None:
            description = _DESCRIPTION_UNSAFE.sub("?", self.description)
            value += f', error="{self.error}", error_description="{description}"'
        return value


@dataclass(frozen=True, slots=True)
class _Entry:
    fetched_at: int
    session: Session
    account: Account


@lru_cache(maxsize=4096)
def _scopes(text: str) -> Scopes:
    return parse_scopes(text)


class Authenticator:
    """``authenticate(authorization, address) -> Principal`` for the FHIR endpoint."""

    def __init__(
        self,
        identity: Identity,
        signing: SigningKeyManager,
        store: AuthStore,
        *,
        cache_s: float = 2.0,
    ) -> None:
        self._identity = identity
        self._signing = signing
        self._store = store
        self._clock = identity.clock
        self._policy = identity.policy
        self._cache_us = int(cache_s * _SECOND)
        self._sessions: dict[str, _Entry] = {}
        self._clients: dict[str, tuple[int, bool]] = {}  # client id → (fetched at, usable)
        # verified tokens: token → (key generation, claims, scopes)
        self._tokens: dict[str, tuple[int, AccessTokenClaims, Scopes]] = {}
        self._lock = threading.Lock()
        identity.on_revocation(self.invalidate)

    def authenticate(self, authorization: str | None, address: str | None) -> Principal:
        """The caller of a request with this ``Authorization`` header, or
        :class:`AuthenticationFailed`."""
        token = _bearer(authorization)
        claims, scopes = self._verified_token(token)
        if claims.sid is not None:
            return self._user(claims, scopes, address)
        if claims.client_id == JOIN_CLIENT_ID:
            return _join_principal(claims, scopes, address)
        return self._system(claims, scopes, address)

    def _verified_token(self, token: str) -> tuple[AccessTokenClaims, Scopes]:
        """The token's claims; a token seen before (the same bytes) skips the signature check,
        which is most of the cost, until it expires or the signing keys change."""
        generation = self._signing.generation
        known = self._tokens.get(token)
        if known is not None and known[0] == generation and self._clock() < known[1].exp * _SECOND:
            return known[1], known[2]
        try:
            claims = self._signing.verify(token)
            scopes = _scopes(claims.scope)
        except TokenError as exc:
            raise AuthenticationFailed("invalid_token", str(exc), exc.reason.value) from None
        except ScopeError:
            raise AuthenticationFailed("invalid_token", "malformed scope", "claims") from None
        with self._lock:
            if len(self._tokens) >= _MAX_CACHE:
                self._tokens.clear()
            self._tokens[token] = (self._signing.generation, claims, scopes)
        return claims, scopes

    def invalidate(self, session_id: str | None = None, account_id: str | None = None) -> None:
        """Forgets cached sessions (one, or all of an account) after they were ended here."""
        with self._lock:
            if session_id is not None:
                self._sessions.pop(session_id, None)
            if account_id is not None:
                for sid in [s for s, e in self._sessions.items() if e.account.id == account_id]:
                    del self._sessions[sid]

    def _user(self, claims: AccessTokenClaims, scopes: Scopes, address: str | None) -> Principal:
        sid = claims.sid
        assert sid is not None  # nosec B101 # invariant: the caller checked it
        now = self._clock()
        entry = self._sessions.get(sid)
        if entry is None or now - entry.fetched_at > self._cache_us:
            entry = self._load(sid, now)
        refusal = entry.session.refusal(now, self._policy)
        if refusal == "idle" and entry.fetched_at != now:
            # Another worker may have seen activity since this copy was cached.
            entry = self._load(sid, now)
            refusal = entry.session.refusal(now, self._policy)
        if refusal is not None:
            raise AuthenticationFailed("invalid_token", f"session {refusal}", f"session-{refusal}")
        account = entry.account
        if account.disabled:
            raise AuthenticationFailed("invalid_token", "account disabled", "account-disabled")
        if account.id != claims.sub:
            raise AuthenticationFailed("invalid_token", "token subject mismatch", "subject")
        if now - entry.session.last_seen >= self._policy.touch_interval_s * _SECOND:
            self._store.touch_session(sid, now)
            self._remember(sid, _touched(entry, now))
        return Principal(
            subject=account.id,
            client_id=claims.client_id,
            scopes=scopes,
            roles=account.roles,
            patient=account.patient or claims.patient,
            fhir_user=account.fhir_user,
            organization=account.organization,
            issuer=claims.iss,
            token_id=claims.jti,
            session_id=sid,
            address=address,
            name=account.display_name,
        )

    def _load(self, sid: str, now: int) -> _Entry:
        found = self._store.session_with_account(sid)
        if found is None:
            raise AuthenticationFailed("invalid_token", "unknown session", "session-unknown")
        entry = _Entry(now, Session.of(found[0]), Account.of(found[1]))
        self._remember(sid, entry)
        return entry

    def _remember(self, sid: str, entry: _Entry) -> None:
        with self._lock:
            if len(self._sessions) >= _MAX_CACHE and sid not in self._sessions:
                self._sessions.clear()  # bounded memory; the next requests reload
            self._sessions[sid] = entry

    def _system(self, claims: AccessTokenClaims, scopes: Scopes, address: str | None) -> Principal:
        if claims.sub != claims.client_id:
            raise AuthenticationFailed("invalid_token", "token subject mismatch", "subject")
        if any(s.level is not Level.SYSTEM for s in scopes.resource):
            raise AuthenticationFailed("invalid_token", "client token with user scopes", "claims")
        if not self._client_usable(claims.client_id):
            raise AuthenticationFailed("invalid_token", "client disabled", "client-disabled")
        return Principal(
            subject=claims.client_id,
            client_id=claims.client_id,
            scopes=scopes,
            issuer=claims.iss,
            token_id=claims.jti,
            address=address,
        )

    def _client_usable(self, client_id: str) -> bool:
        now = self._clock()
        cached = self._clients.get(client_id)
        if cached is not None and now - cached[0] <= self._cache_us:
            return cached[1]
        record = self._store.client(client_id)
        usable = (
            record is not None
            and not record.disabled
            and record.kind in (ClientKind.CONFIDENTIAL, ClientKind.INTERNAL)
        )
        if len(self._clients) >= _MAX_CACHE:
            self._clients.clear()
        self._clients[client_id] = (now, usable)
        return usable


def _touched(entry: _Entry, now: int) -> _Entry:
    s = entry.session
    session = Session(s.id, s.account_id, s.created_at, now, s.expires_at, s.client_id, None)
    return _Entry(entry.fetched_at, session, entry.account)


def _bearer(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthenticationFailed(None, "authentication required", "no-token")
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise AuthenticationFailed(
            "invalid_request", "Authorization must be 'Bearer <token>'", "malformed"
        )
    return match.group(1)


def _join_principal(claims: AccessTokenClaims, scopes: Scopes, address: str | None) -> Principal:
    if not claims.sub.startswith("join:") or claims.patient is None:
        raise AuthenticationFailed("invalid_token", "malformed join token", "claims")
    if any(s.level is not Level.PATIENT for s in scopes.resource):
        raise AuthenticationFailed("invalid_token", "join token with wide scopes", "claims")
    return Principal(
        subject=claims.sub,
        client_id=claims.client_id,
        scopes=scopes,
        roles=frozenset({Role.PATIENT}),
        patient=claims.patient,
        fhir_user=claims.fhir_user,
        issuer=claims.iss,
        token_id=claims.jti,
        address=address,
        extra={"join_grant": claims.sub.removeprefix("join:")},
    )


# --- join links ---------------------------------------------------------------------------------


def purpose_scope(purpose: str) -> str:
    """The scope a join grant for ``purpose`` (``Type/id``) allows: reading that one resource."""
    match = _REFERENCE.fullmatch(purpose)
    if match is None:
        raise ValueError(f"a join purpose is a reference Type/id, not {purpose!r}")
    scope = f"patient/{match[1]}.r?_id={match[2]}"
    parse_scopes(scope)  # a type name the scope grammar refuses fails here, at issue time
    return scope


@dataclass(frozen=True, slots=True)
class Joined:
    """A redeemed join grant: the access token, its claims, and what it is for."""

    token: str
    claims: AccessTokenClaims
    purpose: str  # e.g. Appointment/123
    patient: str  # the patient's id (without "Patient/")


class JoinThrottled(Exception):
    """Too many refused join attempts from this address (or for this code) lately; try again
    after ``retry_after_s``. Not counted as a further failure, so waiting it out works."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"join attempts throttled; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class PrefixedFailures:
    """A :class:`~compliance.throttle.FailureStore` view whose keys carry a prefix, so the join
    attempts of an address are counted apart from its password logins (a care home's patients
    reloading used links must not slow down its staff's logins, nor the other way round)."""

    def __init__(self, store: FailureStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    def get(self, key: str) -> Failures | None:
        return self._store.get(self._prefix + key)

    def add_failure(self, key: str, at: int, forget_before: int) -> Failures:
        return self._store.add_failure(self._prefix + key, at, forget_before)

    def clear(self, key: str) -> None:
        self._store.clear(self._prefix + key)


class JoinAccess:
    """Issues join links and phone codes and redeems them for a short-lived patient token.

    With a ``throttle``, refused redemptions back off (throttle.py) per client address and per
    code grant (the code's own attempt limit stays the hard stop) or, for links, per address:
    a 256-bit link cannot be guessed, but probing should still be slow and visible.
    """

    def __init__(
        self,
        links: JoinLinks,
        signing: SigningKeyManager,
        events: Events,
        *,
        lifetime_s: int = JOIN_TOKEN_LIFETIME_S,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._links = links
        self._signing = signing
        self._events = events
        self._lifetime_s = lifetime_s
        self._throttle = throttle

    def issue_link(self, subject: str, purpose: str, ttl_s: int = DEFAULT_LINK_TTL_S) -> IssuedLink:
        """A link for ``subject`` (``Patient/<id>``) to do ``purpose`` (e.g. ``Appointment/1``)."""
        _check_grant(subject, purpose)
        issued = self._links.issue_link(subject, purpose, ttl_s)
        self._events.emit("join-link-issued", grant=issued.grant.grant_id, subject=subject)
        return issued

    def issue_code(self, subject: str, purpose: str, ttl_s: int = DEFAULT_CODE_TTL_S) -> IssuedCode:
        _check_grant(subject, purpose)
        issued = self._links.issue_code(subject, purpose, ttl_s)
        self._events.emit("join-code-issued", grant=issued.grant.grant_id, subject=subject)
        return issued

    def redeem_link(self, token: str, address: str | None = None) -> tuple[str, AccessTokenClaims]:
        """The access token of a join link (single use); raises :class:`JoinRefused` or
        :class:`JoinThrottled`."""
        joined = self.join_by_link(token, address)
        return joined.token, joined.claims

    def redeem_code(
        self, grant_id: str, code: str, address: str | None = None
    ) -> tuple[str, AccessTokenClaims]:
        """The access token of a phone code for grant ``grant_id``; raises :class:`JoinRefused`
        (also after the grant's attempts are used up) or :class:`JoinThrottled`."""
        joined = self.join_by_code(grant_id, code, address)
        return joined.token, joined.claims

    def join_by_link(self, token: str, address: str | None = None) -> Joined:
        """:meth:`redeem_link` with the grant's purpose (for the join endpoint's answer)."""
        key = "link:" + address_key(address or "unknown")
        return self._redeem(lambda: self._links.redeem_link(token), address, key)

    def join_by_code(self, grant_id: str, code: str, address: str | None = None) -> Joined:
        """:meth:`redeem_code` with the grant's purpose (for the join endpoint's answer)."""
        key = "code:" + grant_id
        return self._redeem(lambda: self._links.redeem_code(grant_id, code), address, key)

    def revoke(self, grant_id: str) -> None:
        self._links.revoke(grant_id)
        self._events.emit("join-grant-revoked", grant=grant_id)

    def _redeem(self, redeem: Callable[[], JoinGrant], address: str | None, key: str) -> Joined:
        where = address or "unknown"
        if self._throttle is not None:
            verdict = self._throttle.check(key, where)
            if not verdict.allowed:
                self._events.emit(
                    "join-refused",
                    reason="throttled",
                    address=address,
                    retry_after_s=str(verdict.retry_after_s),
                )
                raise JoinThrottled(verdict.retry_after_s)
        try:
            grant = redeem()
        except JoinRefused as exc:
            if self._throttle is not None:
                self._throttle.failed(key, where)
            self._events.emit("join-refused", reason=exc.reason.value, address=address)
            raise
        if self._throttle is not None:
            self._throttle.succeeded(key, where)
        patient = grant.subject.removeprefix("Patient/")
        token, claims = self._signing.tokens(self._lifetime_s).issue(
            subject=f"join:{grant.grant_id}",
            client_id=JOIN_CLIENT_ID,
            scope=purpose_scope(grant.purpose),
            patient=patient,
            fhir_user=grant.subject,
        )
        self._events.emit(
            "join-redeemed",
            grant=grant.grant_id,
            subject=grant.subject,
            purpose=grant.purpose,
            address=address,
            jti=claims.jti,
        )
        return Joined(token, claims, grant.purpose, patient)


def _check_grant(subject: str, purpose: str) -> None:
    match = _REFERENCE.fullmatch(subject)
    if match is None or match[1] != "Patient":
        raise ValueError(f"a join grant's subject is Patient/<id>, not {subject!r}")
    purpose_scope(purpose)
