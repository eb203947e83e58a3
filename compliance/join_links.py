"""Single-use, expiring join grants for patients without an account (issue 4 "Identity").

Two forms of the same grant:

- a **link** carrying a 256-bit URL-safe random token (ASVS 5.0 7.2.3 asks for >= 128 bits);
  only its SHA-256 is stored, so a copy of the database cannot be turned into working links;
- a short **numeric code** (8 digits) that care staff read out on the phone. Eight digits are
  guessable, so a code is short-lived, bound to its grant id (the join page knows it, e.g. from
  the room link or the station's screen) and burnt after a few wrong attempts.

Each grant is redeemed at most once (the store marks it used atomically); comparisons of secrets
run in constant time. Time comes from an injected clock, storage is a :class:`JoinGrantStore`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

__all__ = [
    "CODE_DIGITS",
    "Clock",
    "IssuedCode",
    "IssuedLink",
    "JoinGrant",
    "JoinGrantStore",
    "JoinLinks",
    "JoinRefused",
    "Kind",
    "MemoryJoinGrantStore",
    "Refusal",
]

Clock = Callable[[], int]
"""Current time in epoch microseconds (the record core's clock)."""

_SECOND = 1_000_000
TOKEN_BYTES = 32
CODE_DIGITS = 8
DEFAULT_LINK_TTL_S = 24 * 3600
DEFAULT_CODE_TTL_S = 10 * 60
DEFAULT_CODE_ATTEMPTS = 5


class Kind(Enum):
    LINK = "link"
    CODE = "code"


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What a redeemed link or code lets its holder do (``purpose``, e.g. ``Appointment/123``)
    on behalf of ``subject`` (e.g. ``Patient/abc``)."""

    grant_id: str
    kind: Kind
    secret_hash: bytes  # SHA-256 of the token (link) or of grant id and code (code)
    subject: str
    purpose: str
    created_at: int
    expires_at: int
    max_attempts: int = 0  # codes only
    attempts: int = 0
    used_at: int | None = None


@dataclass(frozen=True, slots=True)
class IssuedLink:
    grant: JoinGrant
    token: str  # put into the URL; never stored


@dataclass(frozen=True, slots=True)
class IssuedCode:
    grant: JoinGrant
    code: str  # read out to the patient; never stored


class Refusal(Enum):
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"
    WRONG_CODE = "wrong-code"
    TOO_MANY_ATTEMPTS = "too-many-attempts"


class JoinRefused(Exception):
    """The link or code does not grant access. The reason is for the audit log; the patient
    should see one message for all reasons."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(f"join refused: {reason.value}")
        self.reason = reason


class JoinGrantStore(Protocol):
    """Join grants; implemented by the record core's database."""

    def add(self, grant: JoinGrant) -> None: ...

    def find_link(self, secret_hash: bytes) -> JoinGrant | None:
        """The link grant with this token hash (an indexed lookup; the hash is not secret)."""
        ...

    def count_attempt(self, grant_id: str) -> JoinGrant | None:
        """Atomically add one to ``attempts`` and return the updated grant (None if unknown)."""
        ...

    def mark_used(self, grant_id: str, at: int) -> bool:
        """Atomically set ``used_at`` if still unset; False if it was already used."""
        ...

    def revoke(self, grant_id: str) -> None:
        """Remove the grant (the appointment was cancelled, the link was sent to the wrong person)."""
        ...


class MemoryJoinGrantStore:
    """Dict-backed :class:`JoinGrantStore` for a single process and for tests."""

    def __init__(self) -> None:
        self._grants: dict[str, JoinGrant] = {}
        self._lock = threading.Lock()

    def add(self, grant: JoinGrant) -> None:
        with self._lock:
            if grant.grant_id in self._grants:
                raise ValueError(f"duplicate grant id {grant.grant_id}")
            self._grants[grant.grant_id] = grant

    def find_link(self, secret_hash: bytes) -> JoinGrant | None:
        with self._lock:
            for grant in self._grants.values():
                if grant.kind is Kind.LINK and hmac.compare_digest(grant.secret_hash, secret_hash):
                    return grant
            return None

    def count_attempt(self, grant_id: str) -> JoinGrant | None:
        with self._lock:
            grant = self._grants.get(grant_id)
            if grant is None:
                return None
            grant = replace(grant, attempts=grant.attempts + 1)
            self._grants[grant_id] = grant
            return grant

    def mark_used(self, grant_id: str, at: int) -> bool:
        with self._lock:
            grant = self._grants.get(grant_id)
            if grant is None or grant.used_at is not None:
                return False
            self._grants[grant_id] = replace(grant, used_at=at)
            return True

    def revoke(self, grant_id: str) -> None:
        with self._lock:
            self._grants.pop(grant_id, None)


class JoinLinks:
    """Issues and redeems join links and codes."""

    def __init__(
        self,
        store: JoinGrantStore,
        clock: Clock,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._store = store
        self._clock = clock
        self._random = random_bytes

    def issue_link(self, subject: str, purpose: str, ttl_s: int = DEFAULT_LINK_TTL_S) -> IssuedLink:
        token = _b64url(self._random(TOKEN_BYTES))
        grant = self._new_grant(Kind.LINK, _sha256(token), subject, purpose, ttl_s, 0)
        self._store.add(grant)
        return IssuedLink(grant, token)

    def issue_code(
        self,
        subject: str,
        purpose: str,
        ttl_s: int = DEFAULT_CODE_TTL_S,
        max_attempts: int = DEFAULT_CODE_ATTEMPTS,
    ) -> IssuedCode:
        grant_id = self._new_id()
        code = str(_uniform_below(self._random, 10**CODE_DIGITS)).zfill(CODE_DIGITS)
        grant = self._new_grant(
            Kind.CODE, _code_hash(grant_id, code), subject, purpose, ttl_s, max_attempts, grant_id
        )
        self._store.add(grant)
        return IssuedCode(grant, code)

    def redeem_link(self, token: str) -> JoinGrant:
        """The grant of ``token``, marked used; raises :class:`JoinRefused` otherwise."""
        grant = self._store.find_link(_sha256(token))
        if grant is None:
            raise JoinRefused(Refusal.UNKNOWN)
        return self._use(grant)

    def redeem_code(self, grant_id: str, code: str) -> JoinGrant:
        """The grant ``grant_id`` if ``code`` is its code, marked used; else :class:`JoinRefused`.

        The attempt is counted before the comparison, so parallel guesses cannot exceed the limit.
        """
        grant = self._store.count_attempt(grant_id)
        if grant is None or grant.kind is not Kind.CODE:
            raise JoinRefused(Refusal.UNKNOWN)
        if grant.attempts > grant.max_attempts:
            raise JoinRefused(Refusal.TOO_MANY_ATTEMPTS)
        candidate = code.replace(" ", "").replace("-", "")
        if not hmac.compare_digest(_code_hash(grant_id, candidate), grant.secret_hash):
            raise JoinRefused(Refusal.WRONG_CODE)
        return self._use(grant)

    def revoke(self, grant_id: str) -> None:
        self._store.revoke(grant_id)

    def _use(self, grant: JoinGrant) -> JoinGrant:
        now = self._clock()
        if grant.used_at is not None:
            raise JoinRefused(Refusal.USED)
        if now >= grant.expires_at:
            raise JoinRefused(Refusal.EXPIRED)
        if not self._store.mark_used(grant.grant_id, now):
            raise JoinRefused(Refusal.USED)  # a concurrent redemption won
        return replace(grant, used_at=now)

    def _new_grant(
        self,
        kind: Kind,
        secret_hash: bytes,
        subject: str,
        purpose: str,
        ttl_s: int,
        max_attempts: int,
        grant_id: str | None = None,
    ) -> JoinGrant:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        now = self._clock()
        return JoinGrant(
            grant_id=grant_id or self._new_id(),
            kind=kind,
            secret_hash=secret_hash,
            subject=subject,
            purpose=purpose,
            created_at=now,
            expires_at=now + ttl_s * _SECOND,
            max_attempts=max_attempts,
        )

    def _new_id(self) -> str:
        return _b64url(self._random(16))


def _uniform_below(random_bytes: Callable[[int], bytes], bound: int) -> int:
    """A uniform integer in [0, bound) by rejection sampling (no modulo bias)."""
    limit = (1 << 32) // bound * bound
    while True:
        value = int.from_bytes(random_bytes(4), "big")
        if value < limit:
            return value % bound


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _code_hash(grant_id: str, code: str) -> bytes:
    # The grant id salts the hash so equal codes of different grants differ in the store.
    return hashlib.sha256(f"{grant_id}:{code}".encode()).digest()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
