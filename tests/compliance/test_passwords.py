"""argon2id hashing (ASVS 5.0 App. C parameters, rehash signal) and the password policy."""

from __future__ import annotations

import argon2
import pytest

from compliance import passwords
from compliance.passwords import HashParameters, PasswordHasher, Verification


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher()


def test_hash_is_argon2id_with_at_least_asvs_parameters(hasher: PasswordHasher) -> None:
    stored = hasher.hash("korrekt Pferd Batterie")
    params = argon2.extract_parameters(stored)
    assert stored.startswith("$argon2id$")
    assert params.type is argon2.Type.ID
    assert params.time_cost >= 1
    assert params.memory_cost >= 46 * 1024
    assert params.parallelism >= 1
    assert params.salt_len >= 16


def test_verify(hasher: PasswordHasher) -> None:
    stored = hasher.hash("korrekt Pferd Batterie")
    assert hasher.verify(stored, "korrekt Pferd Batterie") is Verification.VALID
    assert hasher.verify(stored, "korrekt Pferd Batteri") is Verification.INVALID
    assert not hasher.verify(stored, "").ok


def test_salted(hasher: PasswordHasher) -> None:
    assert hasher.hash("same password here") != hasher.hash("same password here")


def test_unicode_normalisation(hasher: PasswordHasher) -> None:
    composed = "Grüße aus Kusel"  # ü as one code point
    decomposed = "Gru\u0308ße aus Kusel"  # u + combining diaeresis
    assert hasher.verify(hasher.hash(composed), decomposed) is Verification.VALID


def test_weaker_stored_hash_asks_for_rehash(hasher: PasswordHasher) -> None:
    old = argon2.PasswordHasher(time_cost=1, memory_cost=47104, parallelism=1).hash("alt aber gut!")
    result = hasher.verify(old, "alt aber gut!")
    assert result is Verification.VALID_NEEDS_REHASH
    assert result.ok
    new = hasher.hash("alt aber gut!")
    assert hasher.verify(new, "alt aber gut!") is Verification.VALID


def test_other_argon2_type_does_not_verify(hasher: PasswordHasher) -> None:
    argon2i = argon2.PasswordHasher(memory_cost=47104, type=argon2.Type.I).hash(
        "irgendein Passwort"
    )
    assert hasher.verify(argon2i, "falsches Passwort") is Verification.INVALID


def test_corrupt_hash_is_an_error(hasher: PasswordHasher) -> None:
    with pytest.raises(passwords.PasswordStorageError):
        hasher.verify("$2b$12$notargon", "whatever password")


def test_unknown_user_fails(hasher: PasswordHasher) -> None:
    assert hasher.verify_unknown_user("medikus-dummy-password") is Verification.INVALID


@pytest.mark.parametrize(("t", "m", "p"), [(0, 65536, 1), (1, 46 * 1024 - 1, 1), (1, 65536, 0)])
def test_parameters_below_asvs_floor_are_refused(t: int, m: int, p: int) -> None:
    with pytest.raises(ValueError, match="ASVS"):
        HashParameters(t, m, p)


# --- policy ------------------------------------------------------------------------------------


def codes(password: str, personal: tuple[str, ...] = ()) -> set[str]:
    return {v.code for v in passwords.check_password(password, personal=personal)}


@pytest.mark.parametrize(
    "password",
    [
        "korrekt Pferd Batterie",
        "Wk7#pLm2!qZx",
        "Heute scheint in Kusel die Sonne",
        "Ä" * 3 + "bcD9!xyzUvw",
    ],
)
def test_acceptable(password: str) -> None:
    assert passwords.check_password(password) == ()


def test_too_short_counts_characters_not_bytes() -> None:
    assert codes("Wk7#pLm2!qZ") == {"too-short"}
    assert codes("üüüüüxyzäöß") == {"too-short"}  # 11 characters, more bytes


def test_too_long() -> None:
    assert codes("x" * 257) == {"too-long"}
    assert "too-long" not in codes("Ab1!" * 16)  # 64 characters must be allowed (ASVS 6.2.9)


@pytest.mark.parametrize(
    "password",
    [
        "password1234",
        "PASSWORT12345",
        "Passwort2025!",
        "!!Medikus123456",
        "ichliebedich",
        "Sommer2025!!",
    ],
)
def test_common(password: str) -> None:
    assert "common" in codes(password)


@pytest.mark.parametrize(
    "password", ["aaaaaaaaaaaa", "abcabcabcabc", "abcdefghijklm", "zyxwvutsrqpon"]
)
def test_repetitive(password: str) -> None:
    assert "repetitive" in codes(password)


def test_digits_only_is_common() -> None:
    assert "common" in codes("839201746512")


def test_personal_words() -> None:
    personal = ("Dr. Erika Mustermann", "e.beispiel@praxis-kusel.de")
    assert "personal" in codes("ErikasSicheresPasswort", personal)
    assert "personal" in codes("mein beispiel passwort", personal)
    assert "personal" not in codes("korrekt Pferd Batterie", personal)
    # short parts ("Dr", "de") are ignored
    assert "personal" not in codes("Drachen über Deutschland", ("Dr de",))


def test_messages_in_german_and_english() -> None:
    (violation,) = passwords.check_password("kurz")
    assert "mindestens 12 Zeichen" in violation.de
    assert "at least 12 characters" in violation.en


def test_enforce() -> None:
    passwords.enforce_password_policy("korrekt Pferd Batterie")
    with pytest.raises(passwords.PasswordPolicyError) as info:
        passwords.enforce_password_policy("passwort1234")
    assert [v.code for v in info.value.violations] == ["common"]
