"""The OAuth 2 authorization server of SMART App Launch v2 (https://hl7.org/fhir/smart-app-launch/).

Framework-free: compliance/_http.py binds it to HTTP. Implemented:

- ``/.well-known/smart-configuration`` (:meth:`AuthorizationServer.smart_configuration`);
- the authorization code grant with PKCE S256 only (RFC 6749 §4.1, RFC 7636; SMART forbids
  ``plain``), exact redirect URIs (ASVS 5.0 10.4.1), ``state`` and ``aud`` (= the FHIR base URL)
  required, the ``iss`` response parameter (RFC 9207). A code is single-use and lives 60 s; a
  second use revokes everything issued from it (RFC 6749 §4.1.2: "SHOULD revoke");
- refresh tokens only with ``online_access``, bound to the login session (they end with it),
  rotated on every use; presenting a rotated token again revokes the whole grant and its session
  (OAuth 2.0 Security BCP, RFC 9700 §4.14.2);
- client credentials for backend services authenticated by a signed JWT assertion
  (tokens.ClientAssertions: RS384/ES384 from the registered JWKS, aud = token URL, exp ≤ 5 min,
  ``jti`` replay refused);
- revocation (RFC 7009) of refresh tokens and of users' access tokens (by ending their session).

Which scopes are granted: grants.py (a patient's own record is the patient in context of
every token). Which clients exist: clients.py. Not implemented (and so not advertised): EHR
launch, OpenID Connect (``openid``/``fhirUser`` are dropped from requests), ``offline_access``,
a patient picker for staff, client secrets. Errors are RFC 6749 §5.2 JSON bodies
(:class:`OAuthError`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from compliance import pkce
from compliance._sqlstore import AuthStore
from compliance.accounts import Account, Identity, Login
from compliance.auth_events import Events
from compliance.auth_records import ClientKind, ClientRecord, CodeRecord, RefreshRecord
from compliance.clients import ADMIN_CLIENT_ID, ClientRegistry
from compliance.grants import grant_user_scope, narrowed, scope_within
from compliance.scopes import Level, ScopeError, parse_scopes
from compliance.signing import SigningKeyManager
from compliance.tokens import (
    CLIENT_ASSERTION_ALGORITHMS,
    MAX_ACCESS_TOKEN_LIFETIME_S,
    AccessTokenClaims,
    ClientAssertions,
    TokenError,
)

__all__ = [
    "CODE_TTL_S",
    "AuthUrls",
    "AuthorizationRequest",
    "AuthorizationServer",
    "AuthorizeError",
    "OAuthError",
]

CODE_TTL_S = 60
_SECOND = 1_000_000
_TOKEN_TYPE = "Bearer"  # nosec B105 # the OAuth token type (RFC 6750), not a secret


@dataclass(frozen=True, slots=True)
class AuthUrls:
    """The public URLs, from the public base URL (``https://medikus.example``)."""

    base: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(
                f"the public base URL must be http(s)://host[:port], not {self.base!r}"
            )
        object.__setattr__(self, "base", self.base.rstrip("/"))

    @property
    def issuer(self) -> str:
        return self.base

    @property
    def fhir(self) -> str:
        return self.base + "/fhir"

    @property
    def authorize(self) -> str:
        return self.base + "/auth/authorize"

    @property
    def token(self) -> str:
        return self.base + "/auth/token"

    @property
    def revoke(self) -> str:
        return self.base + "/auth/revoke"

    @property
    def jwks(self) -> str:
        return self.base + "/auth/jwks"


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: ``error`` code, English ``description``, HTTP ``status``;
    ``reason`` is for the audit trail."""

    def __init__(
        self, error: str, description: str, *, status: int = 400, reason: str | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.reason = reason or error

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class AuthorizeError(OAuthError):
    """An error of the authorization endpoint. Without ``redirect_uri`` (unknown client,
    unregistered redirect URI) the user agent must NOT be redirected (RFC 6749 §4.1.2.1): the
    server shows an error page. Otherwise the error goes back to the client's redirect URI."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(error, description)
        self.redirect_uri = redirect_uri
        self.state = state

    def location(self, issuer: str) -> str:
        assert self.redirect_uri is not None  # nosec B101 # invariant: callers check redirect_uri
        params = {"error": self.error, "error_description": self.description, "iss": issuer}
        if self.state is not None:
            params["state"] = self.state
        return _with_query(self.redirect_uri, params)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked authorization request, waiting for the user to log in."""

    client: ClientRecord
    redirect_uri: str
    state: str
    scope: str  # as requested; narrowed when granted
    code_challenge: str


class AuthorizationServer:
    """Authorization and token endpoints on the auth store."""

    def __init__(
        self,
        store: AuthStore,
        identity: Identity,
        signing: SigningKeyManager,
        urls: AuthUrls,
        *,
        events: Events | None = None,
        access_lifetime_s: int = MAX_ACCESS_TOKEN_LIFETIME_S,
    ) -> None:
        self.store = store
        self.identity = identity
        self.signing = signing
        self.urls = urls
        self.events = events or identity.events
        self._clock = identity.clock
        self._lifetime_s = access_lifetime_s
        self._assertions = ClientAssertions(store, store.jti, urls.token, identity.clock)
        self.clients = ClientRegistry(store, identity.clock, self.events)

    # --- discovery ---

    def smart_configuration(self) -> dict[str, Any]:
        """https://hl7.org/fhir/smart-app-launch/conformance.html#metadata"""
        return {
            "issuer": self.urls.issuer,
            "authorization_endpoint": self.urls.authorize,
            "token_endpoint": self.urls.token,
            "jwks_uri": self.urls.jwks,
            "revocation_endpoint": self.urls.revoke,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": list(pkce.CODE_CHALLENGE_METHODS),
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGORITHMS),
            "scopes_supported": [
                "launch/patient",
                "online_access",
                "patient/*.cruds",
                "patient/*.rs",
                "user/*.cruds",
                "user/*.rs",
                "system/*.cruds",
                "system/*.rs",
            ],
            "capabilities": [
                "launch-standalone",
                "client-public",
                "client-confidential-asymmetric",
                "context-standalone-patient",
                "permission-v2",
                "permission-patient",
                "permission-user",
                "permission-online",
            ],
            "authorization_response_iss_parameter_supported": True,
        }

    def jwks(self) -> dict[str, Any]:
        return self.signing.jwks()

    # --- authorization endpoint ---

    def check_authorization_request(self, params: Mapping[str, str]) -> AuthorizationRequest:
        """Checks the request of ``GET /auth/authorize`` before showing the login form."""
        client_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        client = self.store.client(client_id) if client_id else None
        if client is None or client.disabled or not client.redirect_uris:
            raise AuthorizeError("invalid_request", "unknown client_id")
        if redirect_uri is None or redirect_uri not in client.redirect_uris:
            raise AuthorizeError(
                "invalid_request", "redirect_uri is not registered for this client"
            )
        state = params.get("state")

        def refuse(error: str, description: str) -> AuthorizeError:
            return AuthorizeError(error, description, redirect_uri=redirect_uri, state=state)

        if params.get("response_type") != "code":
            raise refuse("unsupported_response_type", "response_type must be code")
        if not state:
            raise refuse("invalid_request", "state is required")
        try:
            pkce.check_challenge(params.get("code_challenge"), params.get("code_challenge_method"))
        except pkce.PkceError as exc:
            raise refuse(exc.error, str(exc)) from None
        if (params.get("aud") or "").rstrip("/") != self.urls.fhir:
            raise refuse("invalid_request", f"aud must be the FHIR base URL {self.urls.fhir}")
        scope = params.get("scope") or ""
        try:
            parse_scopes(scope, ignore_unknown=True)
        except ScopeError as exc:
            raise refuse("invalid_scope", str(exc)) from None
        challenge = params["code_challenge"]
        return AuthorizationRequest(client, redirect_uri, state, scope, challenge)

    def authorize(self, request: AuthorizationRequest, login: Login) -> str:
        """The redirect (with code, state and iss) after ``login`` approved ``request``.

        Raises :class:`AuthorizeError` (with redirect) if nothing of the requested scope can be
        granted to this account; the session just opened is then ended again.
        """
        account = login.account
        try:
            scope = grant_user_scope(request.scope, request.client.scopes, account)
        except ScopeError as exc:
            self.identity.logout(login.session.id)
            raise AuthorizeError(
                exc.error, str(exc), redirect_uri=request.redirect_uri, state=request.state
            ) from None
        code = secrets.token_urlsafe(32)
        now = self._clock()
        self.store.insert_code(
            CodeRecord(
                code_hash=_sha256(code),
                family_id=secrets.token_hex(16),
                client_id=request.client.client_id,
                account_id=account.id,
                session_id=login.session.id,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                scope=scope,
                expires_at=now + CODE_TTL_S * _SECOND,
                patient=account.patient,
            )
        )
        params = {"code": code, "state": request.state, "iss": self.urls.issuer}
        return _with_query(request.redirect_uri, params)

    # --- token endpoint ---

    def token(self, form: Mapping[str, str], address: str | None = None) -> dict[str, Any]:
        """The JSON answer of ``POST /auth/token``; raises :class:`OAuthError`."""
        grant_type = form.get("grant_type")
        client_hint = form.get("client_id")
        try:
            if grant_type == "authorization_code":
                return self._authorization_code(form)
            if grant_type == "refresh_token":
                return self._refresh(form)
            if grant_type == "client_credentials":
                return self._client_credentials(form)
            raise OAuthError("unsupported_grant_type", "grant_type is not supported")
        except OAuthError as exc:
            self.events.emit(
                "token-refused",
                grant_type=grant_type,
                client=client_hint,
                error=exc.error,
                reason=exc.reason,
                address=address,
            )
            raise

    def _authorization_code(self, form: Mapping[str, str]) -> dict[str, Any]:
        client = self._client(form)
        code = _required(form, "code")
        code_hash = _sha256(code)
        record = self.store.code(code_hash)
        if record is None:
            raise OAuthError("invalid_grant", "unknown authorization code")
        if record.used_at is not None:
            self._replayed(record.family_id, record.session_id, "code-replayed")
        now = self._clock()
        if now >= record.expires_at:
            raise OAuthError("invalid_grant", "authorization code expired", reason="expired")
        if record.client_id != client.client_id:
            raise OAuthError("invalid_grant", "code was issued to another client", reason="client")
        if form.get("redirect_uri") != record.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match", reason="redirect")
        try:
            pkce.verify(form.get("code_verifier"), record.code_challenge)
        except pkce.PkceError as exc:
            raise OAuthError(exc.error, str(exc), reason="pkce") from None
        if not self.store.use_code(code_hash, now):
            self._replayed(record.family_id, record.session_id, "code-replayed")
        live = self.identity.live_session(record.session_id)
        if live is None:
            raise OAuthError("invalid_grant", "the login session has ended", reason="session")
        session, account = live
        refresh = None
        if "online_access" in record.scope.split():
            refresh = self._new_refresh(
                record.family_id,
                session.id,
                client.client_id,
                record.scope,
                record.patient,
                session.expires_at,
            )
            self.store.insert_refresh(refresh[1])
        return self._user_token(
            account,
            session.id,
            client.client_id,
            record.scope,
            record.patient,
            refresh,
            "authorization_code",
        )

    def _refresh(self, form: Mapping[str, str]) -> dict[str, Any]:
        client = self._client(form)
        token_hash = _sha256(_required(form, "refresh_token"))
        record = self.store.refresh(token_hash)
        if record is None or record.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if record.revoked_at is not None:
            raise OAuthError("invalid_grant", "refresh token revoked", reason="revoked")
        if record.rotated_at is not None:
            self._replayed(record.family_id, record.session_id, "refresh-replayed")
        now = self._clock()
        if now >= record.expires_at:
            raise OAuthError("invalid_grant", "refresh token expired", reason="expired")
        live = self.identity.live_session(record.session_id)
        if live is None:
            raise OAuthError("invalid_grant", "the login session has ended", reason="session")
        session, account = live
        try:
            scope = narrowed(record.scope, form.get("scope"))
        except ScopeError as exc:
            raise OAuthError(exc.error, str(exc)) from None
        new = self._new_refresh(
            record.family_id,
            session.id,
            client.client_id,
            scope,
            record.patient,
            record.expires_at,
        )
        if not self.store.rotate_refresh(token_hash, now, new[1]):
            self._replayed(record.family_id, record.session_id, "refresh-replayed")
        return self._user_token(
            account, session.id, client.client_id, scope, record.patient, new, "refresh_token"
        )

    def _client_credentials(self, form: Mapping[str, str]) -> dict[str, Any]:
        client = self._client(form)
        if client.kind is not ClientKind.CONFIDENTIAL:
            raise OAuthError(
                "unauthorized_client", "client_credentials needs a confidential client"
            )
        requested = _required(form, "scope")
        try:
            wanted = parse_scopes(requested, ignore_unknown=True)
            allowed = parse_scopes(client.scopes)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        granted = [
            s
            for s in wanted.resource
            if s.level is Level.SYSTEM and any(scope_within(s, a) for a in allowed.resource)
        ]
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes may be granted")
        scope = " ".join(str(s) for s in granted)
        token, claims = self.signing.tokens(self._lifetime_s).issue(
            subject=client.client_id, client_id=client.client_id, scope=scope
        )
        self.events.emit(
            "token-issued",
            grant_type="client_credentials",
            client=client.client_id,
            subject=client.client_id,
            scope=scope,
            jti=claims.jti,
        )
        return _token_answer(token, claims, scope)

    def _user_token(
        self,
        account: Account,
        session_id: str,
        client_id: str,
        scope: str,
        patient: str | None,
        refresh: tuple[str, RefreshRecord] | None,
        grant_type: str,
    ) -> dict[str, Any]:
        token, claims = self.signing.tokens(self._lifetime_s).issue(
            subject=account.id,
            client_id=client_id,
            scope=scope,
            patient=patient,
            fhir_user=account.fhir_user,
            sid=session_id,
        )
        self.events.emit(
            "token-issued",
            grant_type=grant_type,
            client=client_id,
            subject=account.id,
            session=session_id,
            scope=scope,
            jti=claims.jti,
        )
        answer = _token_answer(token, claims, scope)
        if patient is not None:
            answer["patient"] = patient
        if refresh is not None:
            answer["refresh_token"] = refresh[0]
        return answer

    def _new_refresh(
        self,
        family_id: str,
        session_id: str,
        client_id: str,
        scope: str,
        patient: str | None,
        expires_at: int,
    ) -> tuple[str, RefreshRecord]:
        token = secrets.token_urlsafe(32)
        record = RefreshRecord(
            token_hash=_sha256(token),
            family_id=family_id,
            session_id=session_id,
            client_id=client_id,
            scope=scope,
            created_at=self._clock(),
            expires_at=expires_at,
            patient=patient,
        )
        return token, record

    def _replayed(self, family_id: str, session_id: str, reason: str) -> None:
        """A used code or rotated refresh token came again: someone holds a copy. End the grant
        and its session, then refuse."""
        self.store.revoke_grant(family_id, session_id, self._clock())
        self.identity.logout(session_id)
        self.events.emit("grant-revoked", reason=reason, grant=family_id, session=session_id)
        raise OAuthError("invalid_grant", "grant revoked: token used twice", reason=reason)

    def _client(self, form: Mapping[str, str]) -> ClientRecord:
        """The client of a token or revocation request (RFC 6749 §2.3, RFC 7523 §2.2)."""
        assertion = form.get("client_assertion")
        if assertion is not None:
            try:
                verified = self._assertions.verify(
                    assertion, form.get("client_assertion_type"), form.get("client_id")
                )
            except TokenError as exc:
                raise OAuthError(
                    "invalid_client", str(exc), status=401, reason=exc.reason.value
                ) from None
            record = self.store.client(verified.client_id)
            assert record is not None  # nosec B101 # invariant: its JWKS was just found
            return record
        client_id = form.get("client_id")
        record = self.store.client(client_id) if client_id else None
        if record is None or record.disabled or record.kind is not ClientKind.PUBLIC:
            raise OAuthError(
                "invalid_client", "unknown client or client authentication missing", status=401
            )
        return record

    # --- revocation endpoint ---

    def revoke(self, form: Mapping[str, str], address: str | None = None) -> None:
        """RFC 7009: ends the grant of a refresh token, or the session of a user's access token.
        Unknown or invalid tokens are no error (§2.2)."""
        client = self._client(form)
        token = _required(form, "token")
        record = self.store.refresh(_sha256(token))
        if record is not None:
            if record.client_id != client.client_id:
                raise OAuthError("unauthorized_client", "token was issued to another client")
            self.store.revoke_grant(record.family_id, record.session_id, self._clock())
            self.identity.logout(record.session_id, address)
            self.events.emit("token-revoked", client=client.client_id, kind="refresh_token")
            return
        try:
            claims = self.signing.verify(token)
        except TokenError:
            return
        if claims.client_id != client.client_id:
            raise OAuthError("unauthorized_client", "token was issued to another client")
        if claims.sid is None:
            # Stateless backend tokens (≤ 300 s) cannot be revoked one by one.
            raise OAuthError("unsupported_token_type", "backend service tokens expire on their own")
        self.identity.logout(claims.sid, address)
        self.events.emit("token-revoked", client=client.client_id, kind="access_token")

    # --- administration ---

    def register_client(
        self,
        client_id: str,
        *,
        name: str,
        scopes: str,
        redirect_uris: tuple[str, ...] = (),
        jwks: Mapping[str, Any] | None = None,
    ) -> ClientRecord:
        """See clients.ClientRegistry.register."""
        return self.clients.register(
            client_id, name=name, scopes=scopes, redirect_uris=redirect_uris, jwks=jwks
        )

    def internal_token(
        self, scope: str, lifetime_s: int = MAX_ACCESS_TOKEN_LIFETIME_S
    ) -> tuple[str, int]:
        """A system token of Medi-KUS's own admin client for scripts (``medikus admin token``):
        the token and its expiry (epoch seconds). Only ``system/`` scopes."""
        parsed = parse_scopes(scope)
        if not parsed.resource or any(s.level is not Level.SYSTEM for s in parsed.resource):
            raise ValueError("an admin token takes system/ scopes only")
        self.clients.internal()
        token, claims = self.signing.tokens(lifetime_s).issue(
            subject=ADMIN_CLIENT_ID, client_id=ADMIN_CLIENT_ID, scope=str(parsed)
        )
        self.events.emit(
            "token-issued",
            grant_type="internal",
            client=ADMIN_CLIENT_ID,
            scope=str(parsed),
            jti=claims.jti,
        )
        return token, claims.exp


# --- helpers ---------------------------------------------------------------------------------


def _token_answer(token: str, claims: AccessTokenClaims, scope: str) -> dict[str, Any]:
    """RFC 6749 §5.1 (``expires_in`` from the token itself, so they cannot disagree)."""
    return {
        "access_token": token,
        "token_type": _TOKEN_TYPE,
        "expires_in": claims.exp - claims.iat,
        "scope": scope,
    }


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise OAuthError("invalid_request", f"{name} is required")
    return value


def _sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    separator = "&" if urlsplit(uri).query else "?"
    return uri + separator + urlencode(params)
