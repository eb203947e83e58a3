"""Failed-login throttling per account and per client address (BSI TR-03161-3 O.Auth_9, ASVS 5.0 6.3.1).

After a number of free failures, each further failure doubles the wait before the next attempt,
up to a cap; failures are forgotten after a quiet window. A capped back-off rather than a hard
lockout keeps an attacker from locking a doctor out for good (ASVS 6.3.1 asks for protection that
does not enable account denial of service). The account key uses the login name as typed, whether
the account exists or not, so throttling does not reveal which accounts exist.

The client address key uses the whole IPv4 address and the /64 prefix of an IPv6 address (one
subscriber usually holds a whole /64). Its allowance is larger because the pilot centre and
care homes put many people behind one address.

Pure logic: time comes from an injected clock, counts from a :class:`FailureStore`.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ACCOUNT_POLICY",
    "ADDRESS_POLICY",
    "BackoffPolicy",
    "Clock",
    "FailureStore",
    "Failures",
    "LoginThrottle",
    "MemoryFailureStore",
    "Verdict",
    "address_key",
]

Clock = Callable[[], int]
"""Current time in epoch microseconds (the record core's clock)."""

_SECOND = 1_000_000


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """``free`` failures pass; the n-th failure beyond them blocks for base·2^(n-1), at most ``cap``.

    Failures older than ``forget_after_s`` (counted from the last failure) no longer count.
    """

    free: int
    base_s: int
    cap_s: int
    forget_after_s: int

    def blocked_for(self, count: int) -> int:
        """Microseconds to wait after the ``count``-th consecutive failure."""
        over = count - self.free
        if over <= 0:
            return 0
        # Exponent capped so huge counts cannot overflow into a float infinity.
        return min(self.base_s << min(over - 1, 62), self.cap_s) * _SECOND


ACCOUNT_POLICY = BackoffPolicy(free=5, base_s=1, cap_s=15 * 60, forget_after_s=24 * 3600)
ADDRESS_POLICY = BackoffPolicy(free=50, base_s=1, cap_s=15 * 60, forget_after_s=3600)


@dataclass(frozen=True, slots=True)
class Failures:
    count: int
    last_at: int  # epoch microseconds


class FailureStore(Protocol):
    """Consecutive failures per key; implemented by the record core's database."""

    def get(self, key: str) -> Failures | None: ...

    def add_failure(self, key: str, at: int, forget_before: int) -> Failures:
        """Atomically count one failure at ``at`` and return the new state.

        A record whose last failure is before ``forget_before`` restarts at count 1.
        """
        ...

    def clear(self, key: str) -> None: ...


class MemoryFailureStore:
    """Dict-backed :class:`FailureStore` for a single process and for tests."""

    def __init__(self) -> None:
        self._data: dict[str, Failures] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Failures | None:
        with self._lock:
            return self._data.get(key)

    def add_failure(self, key: str, at: int, forget_before: int) -> Failures:
        with self._lock:
            old = self._data.get(key)
            count = 1 if old is None or old.last_at < forget_before else old.count + 1
            new = Failures(count, at)
            self._data[key] = new
            return new

    def clear(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0  # for the Retry-After header; 0 when allowed


def address_key(address: str) -> str:
    """The throttling key of a client address: IPv4 as is, IPv6 by its /64 prefix."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (e.g. a test client name): throttle it by its text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class LoginThrottle:
    """Ask :meth:`check` before verifying credentials; report the outcome with :meth:`failed` or
    :meth:`succeeded`. A refused check does not count as a failure, so waiting it out works."""

    def __init__(
        self,
        store: FailureStore,
        clock: Clock,
        *,
        account_policy: BackoffPolicy = ACCOUNT_POLICY,
        address_policy: BackoffPolicy = ADDRESS_POLICY,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policies = {"account": account_policy, "address": address_policy}

    def check(self, account: str, address: str) -> Verdict:
        now = self._clock()
        wait = max(self._wait(kind, key, now) for kind, key in self._keys(account, address))
        if wait <= 0:
            return Verdict(True)
        return Verdict(False, math.ceil(wait / _SECOND))

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        for kind, key in self._keys(account, address):
            policy = self._policies[kind]
            self._store.add_failure(key, now, now - policy.forget_after_s * _SECOND)

    def succeeded(self, account: str, address: str) -> None:
        # Only the account is cleared: one valid account must not reset an address that is
        # guessing passwords for many accounts.
        self._store.clear(self._account_key(account))

    def _wait(self, kind: str, key: str, now: int) -> int:
        failures = self._store.get(key)
        policy = self._policies[kind]
        if failures is None or failures.last_at < now - policy.forget_after_s * _SECOND:
            return 0
        return failures.last_at + policy.blocked_for(failures.count) - now

    def _keys(self, account: str, address: str) -> tuple[tuple[str, str], ...]:
        return (
            ("account", self._account_key(account)),
            ("address", "addr:" + address_key(address)),
        )

    @staticmethod
    def _account_key(account: str) -> str:
        return "acct:" + account.strip().casefold()
