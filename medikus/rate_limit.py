"""Rate limits per client (OWASP API4:2023 unrestricted resource consumption; BSI TR-03161 O.Auth_9).

A pure ASGI middleware (like security_headers.py, no framework import). Each request takes one
token from every bucket that applies to it, all or nothing:

- ``api``: per bearer token (its hash: only who holds a token can drain its bucket), else per
  client address — the FHIR API and everything else that is not exempt;
- ``login``: per client address, much stricter, for the credential-checking POSTs under ``/auth/``
  (login, second factor, token endpoint); per-account back-off is compliance/throttle.py's job;
- ``address``: a ceiling per client address whatever the token, so a client cannot escape its
  limit by sending a fresh made-up token with every request.

Addresses are compared as compliance.throttle.address_key does (IPv6 by its /64). Behind the TLS
proxy uvicorn (``proxy_headers``) puts the forwarded client address into the scope.

The buckets are token buckets in their GCRA form (ITU-T I.371's generic cell rate algorithm,
as redis-cell and Brandur's throttled use it): one integer per bucket, the "theoretical arrival
time" (TAT); a bucket with capacity ``burst`` refilling at ``rate`` admits a request at ``now``
iff ``max(TAT, now) + interval - burst·interval <= now``. With ``MEDIKUS_REDIS_URL`` the TATs live
in Redis and one Lua script checks and takes all buckets of a request atomically, so all uvicorn
workers (and hosts) share the limits; otherwise they live in the process. If Redis fails, the
process falls back to its own buckets for a few seconds (protected per worker, never open) and
logs that once.

A refused request gets 429 with ``Retry-After`` and a FHIR OperationOutcome (issue code
``throttled``); a refused websocket handshake gets 429 where the server supports the ASGI
``websocket.http.response`` extension, else the handshake is closed (403).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Protocol

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from compliance.throttle import address_key
from medikus.security_headers import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_POLICY",
    "Bucket",
    "Buckets",
    "Limit",
    "MemoryBuckets",
    "Policy",
    "RateLimit",
    "RedisBuckets",
    "admit",
]

Clock = Callable[[], int]
"""Current time in epoch microseconds (shared by all workers; the record core's convention)."""

_SECOND: Final = 1_000_000
_log = logging.getLogger(__name__)


def _wall_clock() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` requests per second on average, up to ``burst`` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"invalid rate limit {self.rate}/s, burst {self.burst}")

    @classmethod
    def per_minute(cls, count: float, *, burst: int) -> Limit:
        return cls(count / 60, burst)

    @property
    def interval(self) -> int:
        """Microseconds between two requests at the sustained rate."""
        return max(1, round(_SECOND / self.rate))

    @property
    def capacity(self) -> int:
        """The bucket's size in microseconds of credit."""
        return self.interval * self.burst


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket a request takes a token from: ``id`` names limit kind and client."""

    id: str
    limit: Limit


# Shift change in a care home: 20 logins at once, then one every 6 s. Guessing is bounded per
# account by compliance/throttle.py, and staff accounts need TOTP as well.
LOGIN: Final = Limit.per_minute(10, burst=20)


@dataclass(frozen=True, slots=True)
class Policy:
    """Which buckets a request takes from."""

    api: Limit = Limit(20, 100)
    # A whole care home or the pilot centre may sit behind one address (compliance/throttle.py).
    address: Limit = Limit(200, 1000)
    login: Limit = LOGIN
    login_prefix: str = "/auth/"
    # Load balancer and orchestrator probes come often and from one address.
    exempt: frozenset[str] = frozenset({"/healthz", "/readyz"})

    def buckets(
        self, method: str, path: str, token: bytes | None, address: str
    ) -> tuple[Bucket, ...]:
        if path in self.exempt:
            return ()
        ceiling = Bucket(f"address:{address}", self.address)
        if method == "POST" and path.startswith(self.login_prefix):
            return (Bucket(f"login:{address}", self.login), ceiling)
        client = f"token:{_token_hash(token)}" if token else f"address:{address}"
        return (Bucket(f"api:{client}", self.api), ceiling)


DEFAULT_POLICY: Final = Policy()


def _token_hash(token: bytes) -> str:
    # Never the token itself: keys are visible in Redis and in memory dumps.
    return hashlib.blake2b(token, digest_size=16).hexdigest()


def admit(tats: Sequence[int | None], buckets: Sequence[Bucket], now: int) -> tuple[int, list[int]]:
    """GCRA over several buckets at once: ``(0, new TATs)`` if every bucket admits the request,
    else ``(microseconds to wait, [])`` and nothing is taken. ``_SCRIPT`` is the same in Lua."""
    wait, new = 0, []
    for tat, bucket in zip(tats, buckets, strict=True):
        next_tat = (now if tat is None else max(tat, now)) + bucket.limit.interval
        wait = max(wait, next_tat - bucket.limit.capacity - now)
        new.append(next_tat)
    return (wait, []) if wait > 0 else (0, new)


class Buckets(Protocol):
    """Where the TATs live; ``take`` returns 0 (admitted) or the microseconds to wait."""

    async def take(self, buckets: Sequence[Bucket], now: int) -> int: ...

    async def aclose(self) -> None: ...


class MemoryBuckets:
    """The TATs of this process. Entries whose bucket is full again are swept out now and then,
    so memory stays bounded by the clients active within one refill period."""

    def __init__(self) -> None:
        self._tats: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sweep_at = 1024

    async def take(self, buckets: Sequence[Bucket], now: int) -> int:
        return self.take_now(buckets, now)

    def take_now(self, buckets: Sequence[Bucket], now: int) -> int:
        with self._lock:
            wait, new = admit([self._tats.get(b.id) for b in buckets], buckets, now)
            if not wait:
                self._tats.update(zip((b.id for b in buckets), new, strict=True))
            if len(self._tats) >= self._sweep_at:
                self._sweep(now)
            return wait

    def _sweep(self, now: int) -> None:
        # A TAT at or before now means a full bucket: the same as no entry.
        self._tats = {k: t for k, t in self._tats.items() if t > now}
        self._sweep_at = max(1024, 2 * len(self._tats))

    def __len__(self) -> int:
        return len(self._tats)

    async def aclose(self) -> None:
        pass


# KEYS: bucket keys; ARGV: now, then interval and capacity per key (all integer microseconds).
# Lua numbers are doubles: epoch microseconds (~2^51) are exact; '%.0f' keeps them integral.
# The expiry only collects idle keys (an expired key is a full bucket, as is a TAT in the past);
# it runs a minute past the TAT, so clocks that differ between hosts cannot refill early.
_SCRIPT: Final = """
local now = tonumber(ARGV[1])
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local capacity = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat + interval
  if tats[i] - capacity - now > wait then wait = tats[i] - capacity - now end
end
if wait > 0 then return string.format('%.0f', wait) end
for i, key in ipairs(KEYS) do
  local ttl = math.ceil((tats[i] - now) / 1000) + 60000
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
end
return '0'
"""


class RedisBuckets:
    """The TATs in Redis, shared by every process using the same ``url`` and ``prefix``.

    One client per event loop (redis.asyncio connections belong to the loop that opened them);
    :meth:`aclose` closes the current loop's client, the middleware calls it at lifespan end.
    While Redis fails, ``fallback`` answers for ``retry_after_s`` seconds before Redis is tried
    again, so a dead Redis costs one timeout per period, not one per request."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "medikus:rl:",
        timeout_s: float = 1.0,
        retry_after_s: float = 5.0,
        connections: int = 16,
        fallback: MemoryBuckets | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.connections = connections
        self.retry_after = int(retry_after_s * _SECOND)
        self.fallback = fallback or MemoryBuckets()
        self._scripts: dict[asyncio.AbstractEventLoop, AsyncScript] = {}
        self._down_until = 0

    def _script(self) -> AsyncScript:
        loop = asyncio.get_running_loop()
        script = self._scripts.get(loop)
        if script is None:
            # A bounded pool: a flood of concurrent requests waits for a connection (at most the
            # timeout) instead of opening thousands towards Redis.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.connections,
                timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
            )
            client = aioredis.Redis.from_pool(pool)
            # EVALSHA, and EVAL when the server does not know the script (yet, or after a restart).
            script = self._scripts[loop] = client.register_script(_SCRIPT)
        return script

    async def take(self, buckets: Sequence[Bucket], now: int) -> int:
        if now < self._down_until:
            return self.fallback.take_now(buckets, now)
        keys = [self.prefix + b.id for b in buckets]
        args = [now]
        for b in buckets:
            args += [b.limit.interval, b.limit.capacity]
        try:
            result = await self._script()(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            if now >= self._down_until:  # once per period, not once per request in flight
                self._report(exc)
            self._down_until = now + self.retry_after
            return self.fallback.take_now(buckets, now)
        return int(result)

    def _report(self, exc: BaseException) -> None:
        # The URL may hold a password: only the error's type and text are logged.
        _log.warning(
            "Redis für Ratenbegrenzung nicht erreichbar, %d s prozesslokal / "
            "rate-limit Redis unavailable, per-process limits for %d s: %s: %s",
            self.retry_after // _SECOND,
            self.retry_after // _SECOND,
            type(exc).__name__,
            exc,
        )

    async def aclose(self) -> None:
        script = self._scripts.pop(asyncio.get_running_loop(), None)
        if script is not None:
            await script.registered_client.aclose()


class RateLimit:
    """ASGI middleware: takes from the request's buckets, answers 429 when one is empty."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        buckets: Buckets | None = None,
        policy: Policy = DEFAULT_POLICY,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.buckets: Buckets = buckets if buckets is not None else MemoryBuckets()
        self.policy = policy
        self.clock = clock or _wall_clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                token = value[7:].strip()
        client = scope.get("client")
        address = _address(client[0] if client else "")
        method = scope.get("method", "GET")  # a websocket handshake is a GET
        buckets = self.policy.buckets(method, scope["path"], token, address)
        wait = await self.buckets.take(buckets, self.clock()) if buckets else 0
        if wait <= 0:
            await self.app(scope, receive, send)
        elif kind == "http":
            await _too_many_requests(send, wait)
        elif "websocket.http.response" in scope.get("extensions", {}):
            await _too_many_requests(send, wait, prefix="websocket.")
        else:
            await send({"type": "websocket.close", "code": 1008})

    def _closing(self, send: Send) -> Send:
        async def send_then_close(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.buckets.aclose()
            await send(message)

        return send_then_close


@lru_cache(maxsize=4096)
def _address(host: str) -> str:
    return address_key(host) if host else "unknown"


def retry_after_seconds(wait: int) -> int:
    """``Retry-After`` (RFC 9110 §10.2.3) in whole seconds, rounded up: waiting that long works."""
    return max(1, math.ceil(wait / _SECOND))


def _outcome(seconds: int) -> bytes:
    diagnostics = (
        f"Zu viele Anfragen: bitte in {seconds} s erneut versuchen / "
        f"too many requests: retry in {seconds} s."
    )
    issue = {"severity": "error", "code": "throttled", "diagnostics": diagnostics}
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})


async def _too_many_requests(send: Send, wait: int, prefix: str = "") -> None:
    seconds = retry_after_seconds(wait)
    body = _outcome(seconds)
    headers = [
        (b"content-type", b"application/fhir+json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(seconds).encode()),
    ]
    await send({"type": f"{prefix}http.response.start", "status": 429, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": body})
