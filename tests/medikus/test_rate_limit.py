"""Rate limits (OWASP API4:2023; BSI TR-03161 O.Auth_9): medikus/rate_limit.py.

The app in process (TestClient) with a manual clock; the real Redis at 127.0.0.1:6379 shared by
two app instances and by the two uvicorn workers of a real ``medikus serve``; a dead Redis (a port
nobody listens on) as the injected fault. The GCRA is checked against a plain token bucket, and
the Lua script against the in-process buckets, on random request sequences (hypothesis).

Redis must be there in CI (CI=true): there a missing server fails the run; elsewhere the Redis
tests are skipped with a loud reason in the summary (like PostgreSQL in tests/conftest.py).
Every app here switches the limits on explicitly, whatever MEDIKUS_RATE_LIMIT says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import WebSocketDenialResponse

from fhir_server.core import RecordCore
from medikus.app import create_app
from medikus.config import Config
from medikus.rate_limit import (
    DEFAULT_POLICY,
    Bucket,
    Limit,
    MemoryBuckets,
    Policy,
    RateLimit,
    RedisBuckets,
    admit,
)
from medikus.security_headers import Message, Scope
from tests.compliance.clock import ManualClock
from tests.conftest import IN_CI, ServerProcess, free_port

REDIS_URL = os.environ.get("MEDIKUS_TEST_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = "medikus:rl:"
API = DEFAULT_POLICY.api  # 20/s, burst 100


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI but not reachable at {REDIS_URL}: {exc}")
        pytest.skip(
            f"!! Redis at {REDIS_URL} is NOT reachable: Redis rate-limit tests SKIPPED ({exc}). "
            "Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''"
        )
    return REDIS_URL


@pytest.fixture
def address() -> str:
    """A client address of its own per test (TEST-NET-2), so tests never share Redis buckets."""
    return str(ipaddress.IPv4Address(0xC6336400 + secrets.randbelow(256)))  # 198.51.100.x


@pytest.fixture
def own_redis_keys(redis_url: str, address: str) -> Iterator[redis.Redis]:
    """A Redis connection; the test's buckets (by its address) are removed before and after."""
    db = redis.Redis.from_url(redis_url)

    def clean() -> None:
        for key in db.scan_iter(f"{PREFIX}*{address}*"):
            db.delete(key)

    clean()
    yield db
    clean()
    db.close()


def sqlite_record(directory: Path) -> RecordCore:
    return RecordCore.open(f"sqlite:///{directory / 'medikus.sqlite3'}")


def app_client(
    tmp_path: Path, clock: ManualClock, address: str, config: Config | None = None
) -> TestClient:
    app = create_app(
        config or Config(rate_limit=True, redis_url=None), sqlite_record(tmp_path), clock=clock
    )
    return TestClient(app, base_url="http://testserver", client=(address, 50000))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def exhaust(client: TestClient, count: int, headers: dict[str, str] | None = None) -> None:
    """``count`` admitted requests (the path does not exist: the cheapest answer, 404)."""
    for i in range(count):
        response = client.get("/no/such/page", headers=headers)
        assert response.status_code == 404, f"request {i + 1} of {count}"


def assert_throttled(response: httpx.Response, retry_after: int) -> None:
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert response.headers["retry-after"] == str(retry_after)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("error", "throttled")
    assert issue["diagnostics"].startswith(f"Zu viele Anfragen: bitte in {retry_after} s")
    # Inside the security headers: a 429 is a response like any other.
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]


# --- the GCRA is a token bucket ---------------------------------------------------------------


class ReferenceBucket:
    """A plain token bucket in integer microseconds of credit: refill by elapsed time up to
    the capacity, a request costs one interval."""

    def __init__(self, limit: Limit, now: int) -> None:
        self.limit, self.credit, self.at = limit, limit.capacity, now

    def refill(self, now: int) -> None:
        self.credit = min(self.limit.capacity, self.credit + now - self.at)
        self.at = now

    def wait(self) -> int:
        return max(0, self.limit.interval - self.credit)


LIMITS = st.builds(
    Limit, st.sampled_from([0.5, 1, 2, 4, 5, 8, 10, 20, 50, 100]), st.integers(1, 12)
)
STEPS = st.lists(
    st.tuples(st.integers(0, 3_000_000), st.lists(st.integers(0, 2), min_size=1, max_size=3)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(limits=st.lists(LIMITS, min_size=3, max_size=3), steps=STEPS)
def test_gcra_admits_exactly_what_a_token_bucket_admits(
    limits: list[Limit], steps: list[tuple[int, list[int]]]
) -> None:
    now = 1_767_225_600_000_000
    buckets = [Bucket(f"b{i}", limit) for i, limit in enumerate(limits)]
    reference = [ReferenceBucket(limit, now) for limit in limits]
    tats: dict[str, int] = {}
    for advance, chosen in steps:
        now += advance
        taken = [buckets[i] for i in dict.fromkeys(chosen)]
        refs = [reference[i] for i in dict.fromkeys(chosen)]
        for ref in reference:
            ref.refill(now)
        expected = max(ref.wait() for ref in refs)
        wait, new = admit([tats.get(b.id) for b in taken], taken, now)
        assert wait == expected
        if expected == 0:  # all or nothing
            for ref in refs:
                ref.credit -= ref.limit.interval
            tats.update((b.id, tat) for b, tat in zip(taken, new, strict=True))
        else:
            assert new == []


def test_default_limits() -> None:
    assert (API.interval, API.burst) == (50_000, 100)
    login = DEFAULT_POLICY.login
    assert (login.interval, login.burst) == (6_000_000, 20)  # 10 per minute
    assert DEFAULT_POLICY.address.rate >= 10 * API.rate
    with pytest.raises(ValueError, match="invalid rate limit"):
        Limit(0, 1)
    with pytest.raises(ValueError, match="invalid rate limit"):
        Limit(1, 0)


def test_which_buckets_a_request_takes_from() -> None:
    policy = DEFAULT_POLICY
    anonymous = policy.buckets("GET", "/fhir/Patient", None, "192.0.2.1")
    assert [b.id for b in anonymous] == ["api:address:192.0.2.1", "address:192.0.2.1"]
    with_token = policy.buckets("GET", "/fhir/Patient", b"eyJ.a.b", "192.0.2.1")
    assert with_token[0].id.startswith("api:token:")
    assert "eyJ" not in with_token[0].id  # only a hash of the token is kept
    assert with_token[1].id == "address:192.0.2.1"
    login = policy.buckets("POST", "/auth/login", b"eyJ.a.b", "192.0.2.1")
    assert [(b.id, b.limit) for b in login] == [
        ("login:192.0.2.1", policy.login),
        ("address:192.0.2.1", policy.address),
    ]
    assert policy.buckets("GET", "/auth/authorize", None, "192.0.2.1")[0].limit == API
    assert policy.buckets("GET", "/healthz", None, "192.0.2.1") == ()
    assert policy.buckets("GET", "/readyz", None, "192.0.2.1") == ()


def test_memory_buckets_forget_full_buckets() -> None:
    memory = MemoryBuckets()
    limit = Limit(1000, 1)  # full again 1 ms after a request
    now = 1_767_225_600_000_000
    for i in range(5000):
        assert memory.take_now([Bucket(f"api:token:{i}", limit)], now + i * 10) == 0
    assert len(memory) <= 1024  # swept as it grew: only the last ms of clients is kept
    assert memory.take_now([Bucket("api:token:4999", limit)], now + 49_990) > 0  # not forgotten


# --- the app in process -------------------------------------------------------------------------


def test_a_client_gets_its_burst_then_429_with_retry_after(tmp_path: Path, address: str) -> None:
    clock = ManualClock()
    with app_client(tmp_path, clock, address) as client:
        exhaust(client, API.burst)
        assert_throttled(client.get("/fhir/metadata"), retry_after=1)
        # A refused request takes nothing: waiting one interval is enough for one more.
        clock.advance(0.05)
        assert client.get("/fhir/metadata").status_code == 200
        assert_throttled(client.get("/fhir/Patient"), retry_after=1)
        clock.advance(1)
        exhaust(client, 20)  # 20 per second sustained
        assert client.get("/fhir/metadata").status_code == 429
        # Health probes are never limited.
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_buckets_per_token_and_per_address(tmp_path: Path, address: str) -> None:
    clock = ManualClock()
    with app_client(tmp_path, clock, address) as client:
        exhaust(client, API.burst, bearer("token-a"))
        assert client.get("/no/such/page", headers=bearer("token-a")).status_code == 429
        # Another token from the same address, and the same address without a token, go on.
        exhaust(client, 10, bearer("token-b"))
        exhaust(client, 10)
        # The same token from elsewhere is the same client.
        other = TestClient(client.app, base_url="http://testserver", client=("192.0.2.7", 1))
        assert other.get("/no/such/page", headers=bearer("token-a")).status_code == 429
        assert other.get("/no/such/page").status_code == 404


def test_login_endpoints_are_limited_per_address_much_stricter(
    tmp_path: Path, address: str
) -> None:
    clock = ManualClock()
    with app_client(tmp_path, clock, address) as client:
        for _ in range(DEFAULT_POLICY.login.burst):
            # The limit applies before routing and before the form is read.
            assert client.post("/auth/token", data={"grant_type": "x"}).status_code != 429
        assert_throttled(client.post("/auth/login", data={}), retry_after=6)
        # A token does not help (login POSTs count per address); reading pages still works.
        assert client.post("/auth/token", headers=bearer("t")).status_code == 429
        assert client.get("/auth/authorize").status_code != 429
        assert client.get("/fhir/metadata").status_code == 200
        clock.advance(6)
        assert client.post("/auth/token", data={}).status_code != 429
        assert client.post("/auth/token", data={}).status_code == 429


def test_websocket_handshakes_are_limited(tmp_path: Path, address: str) -> None:
    clock = ManualClock()
    with app_client(tmp_path, clock, address) as client:
        exhaust(client, API.burst)
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/fhir/ws"):
            pass
        assert denied.value.status_code == 429
        assert denied.value.headers["retry-after"] == "1"
        assert denied.value.json()["issue"][0]["code"] == "throttled"
        clock.advance(0.05)
        with client.websocket_connect("/fhir/ws") as socket:
            socket.send_text("bind no-such-subscription")
            assert socket.receive_text().startswith("error no-such-subscription")


def test_rate_limits_can_be_switched_off(tmp_path: Path, address: str) -> None:
    config = Config(rate_limit=False)
    with app_client(tmp_path, ManualClock(), address, config) as client:
        exhaust(client, API.burst + 50)


# --- the middleware on its own (pure ASGI) ------------------------------------------------------


def asgi_call(
    limiter: RateLimit,
    *,
    kind: str = "http",
    token: str = "",
    client: str = "2001:db8:1:2:3:4:5:6",
) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope: Scope = {
        "type": kind,
        "method": "GET",
        "path": "/fhir/Patient",
        "headers": headers,
        "client": (client, 443),
    }
    asyncio.run(limiter(scope, receive, send))
    return sent


async def answer(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
    else:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_fresh_made_up_tokens_meet_the_address_ceiling() -> None:
    clock = ManualClock()
    limiter = RateLimit(answer, clock=clock)
    ceiling = DEFAULT_POLICY.address.burst
    for i in range(ceiling):
        assert asgi_call(limiter, token=f"forged-{i}")[0]["status"] == 204
    [start, body] = asgi_call(limiter, token="forged-new")
    assert start["status"] == 429
    assert body["body"].startswith(b'{"resourceType":"OperationOutcome"')
    # IPv6 clients count by their /64: a neighbour in the same prefix is the same client ...
    assert asgi_call(limiter, token="x", client="2001:db8:1:2:ffff::1")[0]["status"] == 429
    # ... one in another /64 is not.
    assert asgi_call(limiter, token="x", client="2001:db8:1:3::1")[0]["status"] == 204


def test_without_the_asgi_denial_extension_a_websocket_handshake_is_closed() -> None:
    limiter = RateLimit(answer, policy=Policy(api=Limit(1, 1)), clock=ManualClock())
    assert asgi_call(limiter, kind="websocket")[0]["type"] == "websocket.accept"
    assert asgi_call(limiter, kind="websocket") == [{"type": "websocket.close", "code": 1008}]


def test_lifespan_and_other_scopes_pass_through() -> None:
    limiter = RateLimit(answer, policy=Policy(api=Limit(1, 1)), clock=ManualClock())
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    limiter.app = app
    for _ in range(3):
        asgi_call(limiter, kind="lifespan")
    assert seen == ["lifespan"] * 3


# --- Redis: shared by app instances and workers --------------------------------------------------


def test_two_app_instances_share_the_limit_through_redis(
    tmp_path: Path,
    address: str,
    own_redis_keys: redis.Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    config = Config(rate_limit=True, redis_url=redis_url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    token = bearer(f"token-{secrets.token_hex(8)}")  # its bucket is this test's alone
    with (
        app_client(tmp_path / "a", clock, address, config) as first,
        app_client(tmp_path / "b", clock, address, config) as second,
    ):
        exhaust(first, 60, token)
        exhaust(second, 40, token)
        assert_throttled(first.get("/fhir/metadata", headers=token), 1)
        assert_throttled(second.get("/fhir/metadata", headers=token), 1)
        clock.advance(0.1)  # two intervals: two more, on either instance
        exhaust(first, 1, token)
        exhaust(second, 1, token)
        assert second.get("/no/such/page", headers=token).status_code == 429
        # The state is in Redis, with an expiry: idle clients leave nothing behind.
        keys = list(own_redis_keys.scan_iter(f"{PREFIX}*{address}*"))
        assert [k.decode() for k in keys] == [f"{PREFIX}address:{address}"]
        # (A minute past the moment the bucket is full again, so clock skew cannot refill it.)
        assert 0 < own_redis_keys.pttl(keys[0]) <= DEFAULT_POLICY.address.capacity // 1000 + 60_000
    assert limiter_warnings(caplog) == []  # Redis answered every time


def test_redis_losing_the_script_cache_is_harmless(
    tmp_path: Path,
    address: str,
    own_redis_keys: redis.Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    with app_client(
        tmp_path, clock, address, Config(rate_limit=True, redis_url=redis_url)
    ) as client:
        exhaust(client, 50)
        own_redis_keys.script_flush()  # as after a Redis restart: EVALSHA fails, EVAL follows
        exhaust(client, 50)
        assert client.get("/fhir/metadata").status_code == 429
    assert limiter_warnings(caplog) == []


def test_without_redis_the_limits_hold_per_process(
    tmp_path: Path, address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="medikus.rate_limit")
    clock = ManualClock()
    dead = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nobody listens there
    with app_client(tmp_path, clock, address, Config(rate_limit=True, redis_url=dead)) as client:
        exhaust(client, API.burst)
        assert_throttled(client.get("/fhir/metadata"), retry_after=1)
        assert len(limiter_warnings(caplog)) == 1  # once per retry period, not per request
        assert "rate-limit Redis unavailable" in limiter_warnings(caplog)[0]
        assert "s3cret-pw" not in caplog.text
        clock.advance(5)  # Redis is tried again (still dead); the process buckets refilled
        exhaust(client, API.burst)
        assert client.get("/fhir/metadata").status_code == 429
        assert len(limiter_warnings(caplog)) == 2


def limiter_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "medikus.rate_limit"]


async def run_sequence(
    buckets: MemoryBuckets | RedisBuckets,
    limits: Sequence[Limit],
    steps: list[tuple[int, list[int]]],
    ids: Sequence[str],
) -> list[int]:
    now, waits = 1_767_225_600_000_000, []
    try:
        for advance, chosen in steps:
            now += advance
            taken = [Bucket(ids[i], limits[i]) for i in dict.fromkeys(chosen)]
            waits.append(await buckets.take(taken, now))
    finally:
        await buckets.aclose()
    return waits


@settings(max_examples=40, deadline=None)
@given(limits=st.lists(LIMITS, min_size=3, max_size=3), steps=STEPS)
def test_the_lua_script_decides_like_the_process_buckets(
    redis_url: str, limits: list[Limit], steps: list[tuple[int, list[int]]]
) -> None:
    prefix = f"medikus:test:{secrets.token_hex(6)}:"
    ids = [f"b{i}:198.51.100.{i}" for i in range(3)]
    shared = RedisBuckets(redis_url, prefix=prefix)
    try:
        in_redis = asyncio.run(run_sequence(shared, limits, steps, ids))
    finally:
        db = redis.Redis.from_url(redis_url)
        db.delete(*(prefix + i for i in ids))
        db.close()
    assert in_redis == asyncio.run(run_sequence(MemoryBuckets(), limits, steps, ids))


def test_the_workers_of_a_real_server_share_the_limit_in_redis(
    tmp_path: Path, own_redis_keys: redis.Redis, redis_url: str
) -> None:
    # All requests come from 127.0.0.1: its buckets are cleaned here, not by the fixture.
    for key in own_redis_keys.scan_iter(f"{PREFIX}*127.0.0.1"):
        own_redis_keys.delete(key)
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'medikus.sqlite3'}",
        workers=2,
        env={"MEDIKUS_REDIS_URL": redis_url, "MEDIKUS_RATE_LIMIT": "true"},
    ).start()
    try:
        # A new connection per request, so both workers take requests; eight at a time, so the
        # requests outpace the sustained rate even on a slow machine.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=server.base, limits=limits) as http:

            def get(_: int) -> httpx.Response:
                return http.get("/no/such/page")

            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(get, range(320)))
            elapsed = time.monotonic() - started
        statuses = [r.status_code for r in responses]
        admitted = statuses.count(404)
        assert statuses.count(429) == len(statuses) - admitted > 0
        # Per-worker buckets would admit up to twice as many.
        assert API.burst <= admitted <= API.burst + API.rate * elapsed + 1
        assert_throttled(next(r for r in responses if r.status_code == 429), retry_after=1)
        assert own_redis_keys.exists(f"{PREFIX}api:address:127.0.0.1")
    finally:
        server.stop()
        for key in own_redis_keys.scan_iter(f"{PREFIX}*127.0.0.1"):
            own_redis_keys.delete(key)
