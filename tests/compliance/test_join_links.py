"""Patient join links and phone codes: single use, expiry, attempt limit, hash-only storage."""

from __future__ import annotations

import base64
import hashlib
import random
import threading

import pytest

from compliance.join_links import (
    CODE_DIGITS,
    JoinLinks,
    JoinRefused,
    Kind,
    MemoryJoinGrantStore,
    Refusal,
)
from tests.compliance.clock import ManualClock


@pytest.fixture
def store() -> MemoryJoinGrantStore:
    return MemoryJoinGrantStore()


@pytest.fixture
def links(store: MemoryJoinGrantStore, clock: ManualClock) -> JoinLinks:
    return JoinLinks(store, clock)


def refusal(call: object) -> Refusal:
    assert callable(call)
    with pytest.raises(JoinRefused) as info:
        call()
    return info.value.reason


def test_link_token_is_url_safe_and_at_least_128_bit(links: JoinLinks) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1")
    token = issued.token
    assert all(c.isalnum() or c in "-_" for c in token)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 128
    assert token != links.issue_link("Patient/a", "Appointment/1").token


def test_only_the_hash_is_stored(links: JoinLinks, store: MemoryJoinGrantStore) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1")
    assert issued.grant.secret_hash == hashlib.sha256(issued.token.encode()).digest()
    assert issued.token not in repr(vars(store))
    assert issued.token not in repr(issued.grant)


def test_link_redeems_once(links: JoinLinks, clock: ManualClock) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1")
    grant = links.redeem_link(issued.token)
    assert (grant.subject, grant.purpose, grant.used_at) == ("Patient/a", "Appointment/1", clock())
    assert refusal(lambda: links.redeem_link(issued.token)) is Refusal.USED


def test_link_expires(links: JoinLinks, clock: ManualClock) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1", ttl_s=60)
    clock.advance(60)
    assert refusal(lambda: links.redeem_link(issued.token)) is Refusal.EXPIRED


def test_link_valid_until_expiry(links: JoinLinks, clock: ManualClock) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1", ttl_s=60)
    clock.advance(59.999)
    assert links.redeem_link(issued.token).grant_id == issued.grant.grant_id


def test_unknown_and_tampered_links(links: JoinLinks) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1")
    flipped = ("A" if issued.token[0] != "A" else "B") + issued.token[1:]
    assert refusal(lambda: links.redeem_link(flipped)) is Refusal.UNKNOWN
    assert refusal(lambda: links.redeem_link("")) is Refusal.UNKNOWN


def test_revoked_link(links: JoinLinks) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1")
    links.revoke(issued.grant.grant_id)
    assert refusal(lambda: links.redeem_link(issued.token)) is Refusal.UNKNOWN


def test_concurrent_redemption_succeeds_once(links: JoinLinks) -> None:
    issued = links.issue_link("Patient/a", "Appointment/1")
    outcomes: list[str] = []

    def redeem() -> None:
        try:
            links.redeem_link(issued.token)
            outcomes.append("ok")
        except JoinRefused as exc:
            outcomes.append(exc.reason.value)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1
    assert outcomes.count("used") == 7


# --- phone codes -------------------------------------------------------------------------------


def test_code_has_eight_digits(links: JoinLinks) -> None:
    issued = links.issue_code("Patient/a", "Appointment/1")
    assert len(issued.code) == CODE_DIGITS and issued.code.isdigit()
    assert issued.grant.kind is Kind.CODE
    assert issued.code not in repr(issued.grant)


def test_code_redeems_once(links: JoinLinks) -> None:
    issued = links.issue_code("Patient/a", "Appointment/1")
    grant_id = issued.grant.grant_id
    spoken = f"{issued.code[:4]} {issued.code[4:]}"  # as read out on the phone
    assert links.redeem_code(grant_id, spoken).subject == "Patient/a"
    assert refusal(lambda: links.redeem_code(grant_id, issued.code)) is Refusal.USED


def test_code_attempts_are_limited(links: JoinLinks) -> None:
    issued = links.issue_code("Patient/a", "Appointment/1", max_attempts=3)
    grant_id = issued.grant.grant_id
    wrong = str((int(issued.code) + 1) % 10**CODE_DIGITS).zfill(CODE_DIGITS)
    for _ in range(3):
        assert refusal(lambda: links.redeem_code(grant_id, wrong)) is Refusal.WRONG_CODE
    # the right code no longer works once the attempts are spent
    assert refusal(lambda: links.redeem_code(grant_id, issued.code)) is Refusal.TOO_MANY_ATTEMPTS


def test_right_code_within_attempts(links: JoinLinks) -> None:
    issued = links.issue_code("Patient/a", "Appointment/1", max_attempts=3)
    grant_id = issued.grant.grant_id
    wrong = str((int(issued.code) + 1) % 10**CODE_DIGITS).zfill(CODE_DIGITS)
    for _ in range(2):
        assert refusal(lambda: links.redeem_code(grant_id, wrong)) is Refusal.WRONG_CODE
    assert links.redeem_code(grant_id, issued.code).grant_id == grant_id


def test_code_expires(links: JoinLinks, clock: ManualClock) -> None:
    issued = links.issue_code("Patient/a", "Appointment/1")
    clock.advance(10 * 60)
    assert refusal(lambda: links.redeem_code(issued.grant.grant_id, issued.code)) is Refusal.EXPIRED


def test_code_is_bound_to_its_grant(store: MemoryJoinGrantStore, clock: ManualClock) -> None:
    links = JoinLinks(store, clock, random_bytes=random.Random(7).randbytes)  # reproducible codes
    first = links.issue_code("Patient/a", "Appointment/1")
    second = links.issue_code("Patient/b", "Appointment/2")
    assert first.code != second.code
    assert (
        refusal(lambda: links.redeem_code(second.grant.grant_id, first.code)) is Refusal.WRONG_CODE
    )
    assert refusal(lambda: links.redeem_code("no-such-grant", first.code)) is Refusal.UNKNOWN


def test_link_and_code_do_not_mix(links: JoinLinks) -> None:
    link = links.issue_link("Patient/a", "Appointment/1")
    code = links.issue_code("Patient/a", "Appointment/1")
    assert refusal(lambda: links.redeem_code(link.grant.grant_id, code.code)) is Refusal.UNKNOWN


def test_code_generation_is_uniform_and_zero_padded(
    store: MemoryJoinGrantStore, clock: ManualClock
) -> None:
    # Injected randomness: 0 gives "00000000"; values at or above the rejection limit are redrawn.
    draws = iter([b"\xff\xff\xff\xff", (0).to_bytes(4, "big")])

    def random_bytes(n: int) -> bytes:
        return next(draws) if n == 4 else bytes(n)

    links = JoinLinks(store, clock, random_bytes=random_bytes)
    assert links.issue_code("Patient/a", "Appointment/1").code == "00000000"


def test_ttl_must_be_positive(links: JoinLinks) -> None:
    with pytest.raises(ValueError):
        links.issue_link("Patient/a", "Appointment/1", ttl_s=0)
