"""TOTP (RFC 6238): test vectors, ±1 step window, replay refusal (ASVS 6.5.1), provisioning URI."""

from __future__ import annotations

import base64
import threading
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance import totp
from compliance.totp import MemoryUsedSteps, TotpResult, TotpVerifier
from tests.compliance.clock import START, ManualClock

# RFC 6238 Appendix B, SHA-1 secret "12345678901234567890", 8-digit values; the last six digits
# are the 6-digit code.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
]


@pytest.fixture
def verifier(clock: ManualClock) -> TotpVerifier:
    return TotpVerifier(MemoryUsedSteps(), clock)


@pytest.mark.parametrize(("seconds", "eight_digits"), RFC_VECTORS)
def test_rfc_6238_vectors(seconds: int, eight_digits: str) -> None:
    assert totp.code_at(RFC_SECRET, seconds * 1_000_000) == eight_digits[-6:]


def test_new_secret_is_160_bit_base32() -> None:
    secret = totp.new_secret()
    assert len(base64.b32decode(secret)) == 20
    assert secret != totp.new_secret()


def test_provisioning_uri() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "erika.mustermann@praxis-kusel.de")
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Medi-KUS"]
    assert "erika.mustermann" in parts.path
    # the URI round-trips through pyotp as an authenticator app would read it
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.now() == pyotp.TOTP(secret).now()


def test_accepts_current_code_once(verifier: TotpVerifier, clock: ManualClock) -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, clock())
    assert verifier.verify("u1", secret, code) is TotpResult.ACCEPTED
    assert verifier.verify("u1", secret, code) is TotpResult.REPLAYED
    clock.advance(29)
    assert verifier.verify("u1", secret, code) is TotpResult.REPLAYED


def test_replay_is_per_user(verifier: TotpVerifier, clock: ManualClock) -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, clock())
    assert verifier.verify("u1", secret, code).ok
    assert verifier.verify("u2", secret, code).ok


def test_window_is_one_step_each_way(verifier: TotpVerifier, clock: ManualClock) -> None:
    # A fixed secret and time, so the five codes are known to differ (no chance collision).
    codes = [totp.code_at(RFC_SECRET, clock() + d * 30_000_000) for d in (-2, -1, 0, 1, 2)]
    assert len(set(codes)) == 5
    too_old, previous, _, following, too_new = codes
    assert verifier.verify("a", RFC_SECRET, previous).ok
    assert verifier.verify("b", RFC_SECRET, following).ok
    assert verifier.verify("c", RFC_SECRET, too_old) is TotpResult.INVALID
    assert verifier.verify("d", RFC_SECRET, too_new) is TotpResult.INVALID


def test_older_code_after_newer_is_refused(verifier: TotpVerifier, clock: ManualClock) -> None:
    newer = totp.code_at(RFC_SECRET, clock())
    older = totp.code_at(RFC_SECRET, clock() - 30_000_000)
    assert older != newer
    assert verifier.verify("u", RFC_SECRET, newer).ok
    assert verifier.verify("u", RFC_SECRET, older) is TotpResult.REPLAYED


def test_next_step_code_accepted_after_use(verifier: TotpVerifier, clock: ManualClock) -> None:
    secret = totp.new_secret()
    assert verifier.verify("u", secret, totp.code_at(secret, clock())).ok
    clock.advance(30)
    assert verifier.verify("u", secret, totp.code_at(secret, clock())).ok


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "12345\n"])
def test_malformed_codes(verifier: TotpVerifier, code: str) -> None:
    assert verifier.verify("u", totp.new_secret(), code) is TotpResult.INVALID


def test_spaces_are_ignored(verifier: TotpVerifier, clock: ManualClock) -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, clock())
    assert verifier.verify("u", secret, f"{code[:3]} {code[3:]}").ok


def test_wrong_secret(verifier: TotpVerifier, clock: ManualClock) -> None:
    other = base64.b32encode(b"another secret of 20").decode()
    code = totp.code_at(RFC_SECRET, clock())
    assert code not in {totp.code_at(other, clock() + d * 30_000_000) for d in (-1, 0, 1)}
    assert verifier.verify("u", other, code) is TotpResult.INVALID


def test_concurrent_use_accepts_exactly_once(clock: ManualClock) -> None:
    verifier = TotpVerifier(MemoryUsedSteps(), clock)
    secret = totp.new_secret()
    code = totp.code_at(secret, clock())
    results: list[TotpResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(verifier.verify("u", secret, code)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(TotpResult.ACCEPTED) == 1
    assert results.count(TotpResult.REPLAYED) == 7


@given(offset=st.integers(min_value=0, max_value=10**9))
def test_code_of_any_time_verifies_then_replays(offset: int) -> None:
    clock = ManualClock(START + offset * 1_000)
    verifier = TotpVerifier(MemoryUsedSteps(), clock)
    code = totp.code_at(RFC_SECRET, clock())
    assert verifier.verify("u", RFC_SECRET, code) is TotpResult.ACCEPTED
    assert verifier.verify("u", RFC_SECRET, code) is TotpResult.REPLAYED
