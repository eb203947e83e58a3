"""The rows of compliance's own tables as values: accounts, sessions, OAuth grants, clients, keys.

Plain frozen dataclasses, so identity.py and oauth.py never see SQLAlchemy; ``_sqlstore.py``
turns them into rows and back. Times are epoch microseconds (the record core's clock) unless a
name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from compliance.principal import Role

__all__ = [
    "AccountRecord",
    "ClientKind",
    "ClientRecord",
    "CodeRecord",
    "RefreshRecord",
    "SessionRecord",
    "SigningKeyRecord",
]


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    username: str  # case-folded
    display_name: str
    roles: frozenset[Role]
    password_hash: str = field(repr=False)
    password_changed_at: int
    created_at: int
    organization: str | None = None  # Organization id (staff)
    fhir_user: str | None = None  # "Practitioner/<id>" or "Patient/<id>"
    totp_secret: bytes | None = field(default=None, repr=False)  # sealed (envelope.py)
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A login session: what one login at the authorize endpoint opened."""

    id: str
    account_id: str
    created_at: int
    last_seen: int
    expires_at: int  # absolute time-out
    client_id: str | None = None
    revoked_at: int | None = None
    cookie_hash: bytes | None = field(default=None, repr=False)  # SHA-256 of the cookie value


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """An authorization code (only its SHA-256 is stored)."""

    code_hash: bytes
    family_id: str  # the grant: refresh tokens issued from this code share it
    client_id: str
    account_id: str
    session_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    expires_at: int
    patient: str | None = None
    used_at: int | None = None


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A refresh token (only its SHA-256 is stored); rotated on every use."""

    token_hash: bytes
    family_id: str
    session_id: str
    client_id: str
    scope: str
    created_at: int
    expires_at: int
    patient: str | None = None
    rotated_at: int | None = None
    revoked_at: int | None = None


class ClientKind(StrEnum):
    PUBLIC = "public"  # authorization code + PKCE, no client authentication
    CONFIDENTIAL = "confidential-assertion"  # private_key_jwt with a registered JWKS
    INTERNAL = "internal"  # Medi-KUS's own tools (medikus admin token); never at the token endpoint


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    name: str
    kind: ClientKind
    scopes: str  # the scopes it may be granted at most
    created_at: int
    redirect_uris: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    kid: str
    alg: str
    sealed_jwk: bytes = field(repr=False)  # the private JWK, encrypted (envelope.py)
    state: str  # "current" or "previous"
    created_at: int
    demoted_at: int | None = None  # when it stopped being current
