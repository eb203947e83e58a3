"""SMART client registration: public apps and confidential backend services.

A **public** app (a browser or native app that cannot keep a secret) registers its exact
redirect URIs (OWASP ASVS 5.0 10.4.1): https, http on a loopback address, or a private-use
scheme for native apps (RFC 8252 §7.1, §7.3); it uses the authorization code grant with PKCE.
A **confidential** client registers the public keys of its JWKS and authenticates with a signed
JWT (RS384 or ES384, SMART "client-confidential-asymmetric"); backend services (the pilot-centre
station) use it for client credentials. Medi-KUS's own admin client (``medikus admin token``) is
**internal**: it never authenticates at the token endpoint. A client may be granted at most the
scopes it was registered with.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from compliance._sqlstore import AuthStore, Duplicate
from compliance.auth_events import Events
from compliance.auth_records import ClientKind, ClientRecord
from compliance.identity import JOIN_CLIENT_ID
from compliance.scopes import Level, parse_scopes

__all__ = ["ADMIN_CLIENT_ID", "ClientRegistry"]

ADMIN_CLIENT_ID = "medikus-admin"
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{2,127}", re.ASCII)
_RESERVED = frozenset({ADMIN_CLIENT_ID, JOIN_CLIENT_ID, "medikus-internal"})
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})
_JWK_SHAPES = {"ES384": ("EC", "P-384"), "RS384": ("RSA", None)}


class ClientRegistry:
    """Registers clients in the auth store (``medikus admin create-client``)."""

    def __init__(self, store: AuthStore, clock: Callable[[], int], events: Events) -> None:
        self._store = store
        self._clock = clock
        self._events = events

    def register(
        self,
        client_id: str,
        *,
        name: str,
        scopes: str,
        redirect_uris: tuple[str, ...] = (),
        jwks: Mapping[str, Any] | None = None,
    ) -> ClientRecord:
        """Registers a public app (redirect URIs) or a confidential client (JWKS); raises
        ValueError (or scopes.ScopeError) with the reason."""
        if _CLIENT_ID.fullmatch(client_id) is None or client_id in _RESERVED:
            raise ValueError(f"client id {client_id!r} is not allowed")
        parsed = parse_scopes(scopes)
        for uri in redirect_uris:
            check_redirect_uri(uri)
        if jwks is not None:
            check_jwks(jwks)
        elif not redirect_uris:
            raise ValueError("a client needs redirect URIs (app) or a JWKS (backend service)")
        elif any(s.level is Level.SYSTEM for s in parsed.resource):
            raise ValueError("system/ scopes need a confidential client with a JWKS")
        record = ClientRecord(
            client_id=client_id,
            name=name,
            kind=ClientKind.CONFIDENTIAL if jwks is not None else ClientKind.PUBLIC,
            scopes=str(parsed),
            created_at=self._clock(),
            redirect_uris=tuple(redirect_uris),
            jwks=None if jwks is None else dict(jwks),
        )
        try:
            self._store.insert_client(record)
        except Duplicate as exc:
            raise ValueError(f"client {client_id!r} exists already") from exc
        self._events.emit("client-registered", client=client_id, kind=record.kind.value)
        return record

    def internal(self) -> ClientRecord:
        """The admin client, created on first use; ValueError if it was disabled."""
        if self._store.client(ADMIN_CLIENT_ID) is None:
            admin = ClientRecord(
                ADMIN_CLIENT_ID,
                "medikus admin",
                ClientKind.INTERNAL,
                "system/*.cruds",
                self._clock(),
            )
            with contextlib.suppress(Duplicate):  # created concurrently
                self._store.insert_client(admin)
        client = self._store.client(ADMIN_CLIENT_ID)
        if client is None or client.disabled:
            raise ValueError("the admin client is disabled")
        return client


def check_redirect_uri(uri: str) -> None:
    """https, http on a loopback host (RFC 8252 §7.3) or a private-use scheme with a dot (§7.1);
    absolute, without fragment (RFC 6749 §3.1.2)."""
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise ValueError(f"redirect URI {uri!r} must not have a fragment")
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return
    if "." in parts.scheme and parts.scheme not in ("http", "https"):
        return
    raise ValueError(
        f"redirect URI {uri!r} must be https, http on a loopback address, or a private-use scheme"
    )


def check_jwks(jwks: Mapping[str, Any]) -> None:
    """Public ES384 (P-384) or RS384 keys, each with a kid; the key material itself is checked
    when an assertion is verified (tokens.py: RSA at least 2048 bits)."""
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError("the JWKS needs a non-empty 'keys' array")
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
            raise ValueError("every key of the JWKS needs a kid")
        if _PRIVATE_JWK_MEMBERS & key.keys():
            raise ValueError(f"key {key['kid']!r} holds private key material: register public keys")
        shapes = [
            alg
            for alg, (kty, crv) in _JWK_SHAPES.items()
            if key.get("kty") == kty and (crv is None or key.get("crv") == crv)
        ]
        alg = key.get("alg")
        if not shapes or (alg is not None and alg not in shapes):
            raise ValueError(f"key {key['kid']!r} must be an ES384 (P-384) or RS384 key")
