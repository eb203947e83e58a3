"""TOTP second factor with replay protection (RFC 6238, https://www.rfc-editor.org/rfc/rfc6238).

30-second steps, 6 digits, HMAC-SHA1 (what authenticator apps implement), one step of clock drift
either way (§5.2). pyotp keeps no state, so a code could be used twice within its window; ASVS 5.0
6.5.1 and RFC 6238 §5.2 forbid that. :class:`UsedSteps` remembers the last accepted time step per
user and a code is accepted only for a later step, which also refuses an older code after a newer
one was used. BSI TR-03161-3 O.Auth_4 makes this second factor mandatory for staff.

The secret (:func:`new_secret`) is returned to the caller, which must store it encrypted
(it is the shared key; whoever reads it can produce codes).
"""

from __future__ import annotations

import base64
import hmac
import secrets
import threading
from collections.abc import Callable
from enum import Enum
from typing import Protocol

import pyotp

__all__ = [
    "DIGITS",
    "STEP_SECONDS",
    "Clock",
    "MemoryUsedSteps",
    "TotpResult",
    "TotpVerifier",
    "UsedSteps",
    "code_at",
    "new_secret",
    "provisioning_uri",
]

Clock = Callable[[], int]
"""Current time in epoch microseconds (the record core's clock)."""

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA1 key length RFC 4226 §4 recommends


class TotpResult(Enum):
    ACCEPTED = "accepted"
    INVALID = "invalid"
    REPLAYED = "replayed"  # right code, but its time step (or a later one) was already used

    @property
    def ok(self) -> bool:
        return self is TotpResult.ACCEPTED


class UsedSteps(Protocol):
    """The last accepted TOTP time step per user; implemented by the record core's database."""

    def advance(self, user_id: str, step: int) -> bool:
        """Atomically record ``step`` if it is later than the user's last accepted step.

        Returns False (and changes nothing) when ``step`` is not later. In SQL:
        ``UPDATE … SET step = :step WHERE user_id = :u AND step < :step`` (insert if absent).
        """
        ...


class MemoryUsedSteps:
    """Dict-backed :class:`UsedSteps` for a single process and for tests."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def advance(self, user_id: str, step: int) -> bool:
        with self._lock:
            if self._last.get(user_id, -1) >= step:
                return False
            self._last[user_id] = step
            return True


def new_secret() -> str:
    """A fresh random base32 secret (160 bits) to enrol an authenticator app."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def provisioning_uri(secret: str, account_name: str, issuer: str = "Medi-KUS") -> str:
    """The ``otpauth://totp/…`` URI an authenticator app scans as a QR code."""
    return _totp(secret).provisioning_uri(name=account_name, issuer_name=issuer)


def code_at(secret: str, micros: int) -> str:
    """The code valid at ``micros`` (epoch microseconds)."""
    return _totp(secret).generate_otp(_step(micros))


class TotpVerifier:
    """Checks a user's code against their secret, at most once per time step."""

    def __init__(self, used: UsedSteps, clock: Clock) -> None:
        self._used = used
        self._clock = clock

    def verify(self, user_id: str, secret: str, code: str) -> TotpResult:
        """Accept ``code`` (spaces allowed, as apps display "123 456") if valid and unused.

        Failed results must be counted by the login throttle: six digits and three accepted steps
        leave 3 in 10^6 per guess.
        """
        candidate = code.replace(" ", "")
        if len(candidate) != DIGITS or not candidate.isascii() or not candidate.isdigit():
            return TotpResult.INVALID
        totp = _totp(secret)
        now_step = _step(self._clock())
        matched: int | None = None
        # Compare with every step of the window, without stopping early, in constant time.
        for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
            expected = totp.generate_otp(step)
            if hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii")):
                matched = step
        if matched is None:
            return TotpResult.INVALID
        if not self._used.advance(user_id, matched):
            return TotpResult.REPLAYED
        return TotpResult.ACCEPTED


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)


def _step(micros: int) -> int:
    return micros // 1_000_000 // STEP_SECONDS
