"""Failed-login throttling (BSI TR-03161-3 O.Auth_9): back-off per account and per address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.throttle import (
    ACCOUNT_POLICY,
    BackoffPolicy,
    LoginThrottle,
    MemoryFailureStore,
    address_key,
)
from tests.compliance.clock import ManualClock


@pytest.fixture
def throttle(clock: ManualClock) -> LoginThrottle:
    return LoginThrottle(MemoryFailureStore(), clock)


def fail(
    throttle: LoginThrottle, times: int, account: str = "erika", address: str = "192.0.2.1"
) -> None:
    for _ in range(times):
        throttle.failed(account, address)


def test_free_attempts_then_exponential_backoff(
    throttle: LoginThrottle, clock: ManualClock
) -> None:
    fail(throttle, ACCOUNT_POLICY.free)
    assert throttle.check("erika", "192.0.2.1").allowed
    waits = []
    for _ in range(4):
        throttle.failed("erika", "192.0.2.1")
        verdict = throttle.check("erika", "192.0.2.1")
        assert not verdict.allowed
        waits.append(verdict.retry_after_s)
        clock.advance(verdict.retry_after_s - 0.001)
        assert not throttle.check("erika", "192.0.2.1").allowed
        clock.advance(0.001)
        assert throttle.check("erika", "192.0.2.1").allowed
    assert waits == [1, 2, 4, 8]


def test_backoff_is_capped(throttle: LoginThrottle) -> None:
    fail(throttle, ACCOUNT_POLICY.free + 200)
    verdict = throttle.check("erika", "192.0.2.1")
    assert verdict.retry_after_s == ACCOUNT_POLICY.cap_s


def test_success_clears_account_not_address(clock: ManualClock) -> None:
    policy = BackoffPolicy(free=2, base_s=10, cap_s=60, forget_after_s=3600)
    throttle = LoginThrottle(
        MemoryFailureStore(), clock, account_policy=policy, address_policy=policy
    )
    fail(throttle, 3, account="erika")
    assert not throttle.check("erika", "192.0.2.1").allowed
    clock.advance(10)
    throttle.succeeded("erika", "192.0.2.1")
    assert throttle.check("erika", "198.51.100.7").allowed  # account cleared
    throttle.failed("max", "192.0.2.1")  # the address still remembers its three failures
    assert not throttle.check("max", "192.0.2.1").allowed


def test_account_throttled_from_any_address(throttle: LoginThrottle) -> None:
    for i in range(ACCOUNT_POLICY.free + 1):
        throttle.failed("erika", f"192.0.2.{i}")
    assert not throttle.check("erika", "203.0.113.9").allowed
    assert throttle.check("max", "203.0.113.9").allowed


def test_address_throttled_across_accounts(clock: ManualClock) -> None:
    address_policy = BackoffPolicy(free=3, base_s=5, cap_s=60, forget_after_s=3600)
    throttle = LoginThrottle(MemoryFailureStore(), clock, address_policy=address_policy)
    for i in range(4):
        throttle.failed(f"user{i}", "192.0.2.1")
    verdict = throttle.check("somebody-new", "192.0.2.1")
    assert (verdict.allowed, verdict.retry_after_s) == (False, 5)
    assert throttle.check("somebody-new", "192.0.2.2").allowed


def test_account_name_is_case_insensitive(throttle: LoginThrottle) -> None:
    fail(throttle, ACCOUNT_POLICY.free + 1, account="Erika@Praxis.de ")
    assert not throttle.check("erika@praxis.de", "203.0.113.1").allowed


def test_unknown_accounts_are_throttled_alike(throttle: LoginThrottle) -> None:
    # No existence check: the same answer whether or not the account exists.
    fail(throttle, ACCOUNT_POLICY.free + 1, account="does-not-exist")
    assert not throttle.check("does-not-exist", "203.0.113.1").allowed


def test_failures_are_forgotten_after_quiet_window(clock: ManualClock) -> None:
    policy = BackoffPolicy(free=1, base_s=1, cap_s=900, forget_after_s=600)
    throttle = LoginThrottle(MemoryFailureStore(), clock, account_policy=policy)
    fail(throttle, 6)  # would wait 16 s
    clock.advance(601)
    assert throttle.check("erika", "192.0.2.1").allowed
    throttle.failed("erika", "192.0.2.1")  # counting restarts at one: within the free allowance
    assert throttle.check("erika", "192.0.2.1").allowed


def test_refused_checks_do_not_extend_the_wait(throttle: LoginThrottle, clock: ManualClock) -> None:
    fail(throttle, ACCOUNT_POLICY.free + 1)
    for _ in range(100):
        assert not throttle.check("erika", "192.0.2.1").allowed
    clock.advance(1)
    assert throttle.check("erika", "192.0.2.1").allowed


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("testclient", "testclient"),
    ],
)
def test_address_key(address: str, key: str) -> None:
    assert address_key(address) == key


def test_ipv6_neighbours_share_a_budget(clock: ManualClock) -> None:
    address_policy = BackoffPolicy(free=2, base_s=1, cap_s=60, forget_after_s=3600)
    throttle = LoginThrottle(MemoryFailureStore(), clock, address_policy=address_policy)
    for i in range(3):
        throttle.failed(f"u{i}", f"2001:db8:0:1::{i + 1}")
    assert not throttle.check("other", "2001:db8:0:1::99").allowed
    assert throttle.check("other", "2001:db8:0:2::1").allowed


@given(count=st.integers(min_value=0, max_value=10_000))
def test_wait_is_monotonic_and_bounded(count: int) -> None:
    policy = ACCOUNT_POLICY
    wait = policy.blocked_for(count)
    assert 0 <= wait <= policy.cap_s * 1_000_000
    assert policy.blocked_for(count + 1) >= wait
    assert (wait == 0) == (count <= policy.free)
