"""Password hashing (argon2id) and a minimal password policy (OWASP ASVS 5.0 V6 and Appendix C).

https://github.com/OWASP/ASVS/blob/master/5.0/en/0x92-Appendix-C_Cryptography.md names argon2id
with t=1, m=46 MiB, p=1 as the floor; BSI TR-03161-3 O.Pass_5 asks for salted hashes. Hashes are
PHC strings (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``) that carry their own parameters, so
raising the cost later needs no migration: :meth:`PasswordHasher.verify` answers
``VALID_NEEDS_REHASH`` and the caller stores :meth:`PasswordHasher.hash` of the password it just
checked (rehash on login).

Passwords are NFC-normalised before hashing (RFC 8265 OpaqueString), so the same password typed
on a Mac and on Windows verifies.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "MAX_LENGTH",
    "MIN_LENGTH",
    "HashParameters",
    "PasswordHasher",
    "PasswordPolicyError",
    "PasswordStorageError",
    "Verification",
    "Violation",
    "check_password",
    "enforce_password_policy",
]

# ASVS 5.0 Appendix C minimum for argon2id.
_FLOOR_TIME_COST = 1
_FLOOR_MEMORY_KIB = 46 * 1024

MIN_LENGTH = 12
# ASVS 6.2.9 asks to permit at least 64 characters; the cap only stops absurd inputs.
MAX_LENGTH = 256


class PasswordStorageError(ValueError):
    """A stored hash is not an argon2 PHC string (corrupt or foreign data): fail loudly."""


class Verification(Enum):
    VALID = "valid"
    VALID_NEEDS_REHASH = "valid-needs-rehash"
    INVALID = "invalid"

    @property
    def ok(self) -> bool:
        return self is not Verification.INVALID


@dataclass(frozen=True, slots=True)
class HashParameters:
    """argon2id cost parameters; refused below the ASVS 5.0 floor."""

    time_cost: int = 1
    memory_kib: int = 64 * 1024
    parallelism: int = 1

    def __post_init__(self) -> None:
        if (
            self.time_cost < _FLOOR_TIME_COST
            or self.memory_kib < _FLOOR_MEMORY_KIB
            or self.parallelism < 1
        ):
            raise ValueError("argon2id parameters below ASVS 5.0 minimum (t>=1, m>=46 MiB, p>=1)")


class PasswordHasher:
    """argon2id hashing with a rehash signal when the stored parameters are outdated."""

    def __init__(self, parameters: HashParameters | None = None) -> None:
        p = parameters or HashParameters()
        self.parameters = p
        self._hasher = argon2.PasswordHasher(
            time_cost=p.time_cost,
            memory_cost=p.memory_kib,
            parallelism=p.parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        # Verified against when the account does not exist, so an unknown user name takes as
        # long as a wrong password (no account enumeration by timing).
        self._dummy = self._hasher.hash("medikus-dummy-password")

    def hash(self, password: str) -> str:
        return self._hasher.hash(_normalise(password))

    def verify(self, stored_hash: str, password: str) -> Verification:
        try:
            self._hasher.verify(stored_hash, _normalise(password))
        except VerifyMismatchError:
            return Verification.INVALID
        except InvalidHashError as exc:
            raise PasswordStorageError("stored password hash is not an argon2 hash") from exc
        except VerificationError:
            # e.g. a hash of another argon2 type (argon2i) that does not verify as argon2id
            return Verification.INVALID
        if self._hasher.check_needs_rehash(stored_hash):
            return Verification.VALID_NEEDS_REHASH
        return Verification.VALID

    def verify_unknown_user(self, password: str) -> Verification:
        """Spend the time of one verification and fail: call this when the account is unknown."""
        self.verify(self._dummy, password)
        return Verification.INVALID


# --- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken policy rule, with messages for the German UI and for English logs/APIs."""

    code: str
    de: str
    en: str


TOO_SHORT = Violation(
    "too-short",
    f"Das Passwort muss mindestens {MIN_LENGTH} Zeichen lang sein.",
    f"The password must be at least {MIN_LENGTH} characters long.",
)
TOO_LONG = Violation(
    "too-long",
    f"Das Passwort darf höchstens {MAX_LENGTH} Zeichen lang sein.",
    f"The password must be at most {MAX_LENGTH} characters long.",
)
COMMON = Violation(
    "common",
    "Dieses Passwort ist zu verbreitet und leicht zu erraten. Bitte wählen Sie ein anderes.",
    "This password is too common and easy to guess. Please choose another one.",
)
CONTAINS_PERSONAL = Violation(
    "personal",
    "Das Passwort darf weder Ihren Namen noch Ihren Benutzernamen oder Ihre E-Mail-Adresse enthalten.",
    "The password must not contain your name, user name or e-mail address.",
)
REPETITIVE = Violation(
    "repetitive",
    "Das Passwort besteht nur aus einer Wiederholung oder Zeichenfolge.",
    "The password consists only of a repetition or sequence.",
)


class PasswordPolicyError(ValueError):
    """Raised by callers that prefer an exception; carries all violations."""

    def __init__(self, violations: tuple[Violation, ...]) -> None:
        super().__init__("; ".join(v.en for v in violations))
        self.violations = violations


# Breach-list favourites of >= 12 characters (shorter ones already fail the length rule), English
# and German, compared case-insensitively.
_COMMON_PASSWORDS_TEXT = """
    123456789012 1234567890123 12345678901234 123456789123 1234567891011 111111111111
    000000000000 123123123123 qwertyuiopas qwertyuiop123 qwertzuiop123
    asdfghjkl123 1q2w3e4r5t6y 1qaz2wsx3edc qazwsxedcrfv zaq12wsxcde3
    password1234 password12345 password123456 passwort1234 passwort12345 passwort123456
    iloveyou1234 ichliebedich ichliebedich1 letmein12345 welcome12345 willkommen123
    administrator admin1234567 adminadmin123 changeme1234 sommer2024!! sommer2025!!
    winter2024!! winter2025!! frühling2025 fussball1234 schalke04schalke
    borussiadortmund bayernmünchen fcbayern1234 hallohallo12 hallo1234567 geheim123456
    passwortpasswort passwordpassword abcdefghijkl abc123abc123 mustermann12 mustermann123
    medikus12345 medikuskusel kuselkusel12 praxis123456 arztpraxis123 krankenhaus123
"""
_COMMON_PASSWORDS = frozenset(_COMMON_PASSWORDS_TEXT.split())
# Base words that may not make up a password with only digits or symbols added
# ("Passwort2025!", "Medikus123456").
_COMMON_BASES_TEXT = """
    password passwort qwertz qwerty qwertzuiop qwertyuiop asdfgh asdfghjkl letmein welcome
    willkommen iloveyou ichliebedich admin administrator geheim secret hallo hello sommer
    winter frühling herbst fussball football schalke bayern borussia dortmund mustermann
    medikus kusel praxis arztpraxis doktor doctor changeme test monkey dragon master
"""
_COMMON_BASES = frozenset(_COMMON_BASES_TEXT.split())
_AFFIXES = re.compile(r"^[\d\W_]*(.*?)[\d\W_]*$")
_SEQUENCES = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "qwertzuiopasdfghjklyxcvbnm")


def check_password(password: str, *, personal: tuple[str, ...] = ()) -> tuple[Violation, ...]:
    """All violations of the minimal password policy; empty when the password is acceptable.

    ``personal`` are context words (name, user name, e-mail) the password may not contain
    (ASVS 6.2.11); words shorter than 4 characters are ignored to avoid absurd refusals.
    """
    normalised = _normalise(password)
    length = len(normalised)
    if length < MIN_LENGTH:
        return (TOO_SHORT,)
    if length > MAX_LENGTH:
        return (TOO_LONG,)
    lowered = normalised.casefold()
    found: list[Violation] = []
    base = _AFFIXES.sub(r"\1", lowered)
    if lowered in _COMMON_PASSWORDS or base in _COMMON_BASES or base == "":
        found.append(COMMON)
    if _repetitive(lowered):
        found.append(REPETITIVE)
    if any(_contains_personal(lowered, word) for word in personal):
        found.append(CONTAINS_PERSONAL)
    return tuple(found)


def enforce_password_policy(password: str, *, personal: tuple[str, ...] = ()) -> None:
    """Raise :class:`PasswordPolicyError` with every violation, if there is any."""
    violations = check_password(password, personal=personal)
    if violations:
        raise PasswordPolicyError(violations)


def _contains_personal(lowered: str, word: str) -> bool:
    parts = {word.casefold()} | set(re.split(r"[@.\s_\-]+", word.casefold()))
    return any(len(part) >= 4 and part in lowered for part in parts)


def _repetitive(lowered: str) -> bool:
    """One unit repeated ("abcabcabcabc") or a run along the alphabet, digits or keyboard."""
    for size in range(1, len(lowered) // 2 + 1):
        if len(lowered) % size == 0 and lowered[:size] * (len(lowered) // size) == lowered:
            return True
    return any(lowered in seq or lowered in seq[::-1] for seq in _SEQUENCES)


def _normalise(password: str) -> str:
    return unicodedata.normalize("NFC", password)
