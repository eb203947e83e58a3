"""Subscriptions (https://hl7.org/fhir/R4/subscription.html#channels): rest-hook and websocket.

Every committed matching version reaches a real HTTP subscriber at least once and in order per
resource, also across a SIGKILL of the server; rolled-back and non-matching writes notify nobody;
a failing endpoint is retried with back-off, and repeated failure sets status error (active again
after a success); ``off`` stops delivery; invalid Subscriptions are refused. Real server processes,
a real HTTP subscriber (http.server on a free port) and a real websocket client; only the time of
the in-process dispatcher is controlled (the ``clock`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from compliance.keyring import Keyring
from compliance.principal import Principal
from compliance.scopes import parse_scopes
from fhir_server.context import Settings
from fhir_server.core import RecordCore
from fhir_server.errors import Category, FhirError
from fhir_server.notifications import DeliverySettings, Dispatcher
from fhir_server.request import FhirRequest
from fhir_server.subscription_owner import OWNER_URL, owner_extension
from fhir_server.subscriptions import accept
from tests.conftest import Clock, ServerProcess

FHIR_JSON = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
WATCHED = "29463-7"  # body weight: the code the subscriptions watch
OTHER = "8302-2"  # body height: never watched
CRITERIA = f"Observation?code={LOINC}|{WATCHED}"


@dataclass(frozen=True)
class Hit:
    """One request the subscriber got."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    status: int
    at: float  # time.monotonic()

    def version(self) -> tuple[str, int]:
        """(resource id, version) of a payload notification (PUT [base]/Observation/[id])."""
        resource = orjson.loads(self.body)
        assert self.path.endswith(f"/Observation/{resource['id']}"), self.path
        return resource["id"], int(resource["meta"]["versionId"])


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a dispatcher killed mid-request leaves a broken pipe: expected here


class Subscriber:
    """A rest-hook endpoint: records every request (when it arrives); answers 500 to the next
    ``failing`` ones. ``hold_at``: the n-th request is answered only ``hold`` seconds after
    ``holding`` is set, so a test can kill the server while that notification is in flight."""

    def __init__(self, delay: float = 0.0, hold_at: int | None = None, hold: float = 0.0) -> None:
        self.hits: list[Hit] = []
        self.failing = 0
        self.changed = threading.Condition()
        self.holding = threading.Event()
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                subscriber.handle(self)

            def do_PUT(self) -> None:
                subscriber.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.delay, self.hold_at, self.hold = delay, hold_at, hold
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length") or 0))
        with self.changed:
            status = 500 if self.failing > 0 else 200
            self.failing -= status == 500
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.hits.append(
                Hit(request.command, request.path, body, headers, status, time.monotonic())
            )
            held = len(self.hits) == self.hold_at
            self.changed.notify_all()
        if held:
            self.holding.set()
        time.sleep(self.hold if held else self.delay)
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def wait_until(self, done: Callable[[list[Hit]], bool], timeout: float) -> list[Hit]:
        with self.changed:
            assert self.changed.wait_for(lambda: done(self.hits), timeout), self.hits
            return list(self.hits)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    endpoint = Subscriber()
    yield endpoint
    endpoint.close()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


# The subscriber listens on 127.0.0.1: endpoints on private addresses must be allowed.
PRIVATE_ENDPOINTS = {"MEDIKUS_ALLOW_PRIVATE_ENDPOINTS": "true"}


@pytest.fixture
def record(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[RecordCore]:
    """The in-process record core (as tests/conftest.py's) with private endpoints allowed."""
    settings = Settings(max_body_bytes=2 * 1024 * 1024, allow_private_endpoints=True)
    core = RecordCore.open(database_url, clock=clock, settings=settings, keyring=keyring)
    yield core
    core.close()


def start(servers: list[ServerProcess], database_url: str, workers: int = 1) -> ServerProcess:
    server = ServerProcess(database_url, workers=workers, env=PRIVATE_ENDPOINTS).start()
    servers.append(server)
    return server


def subscription(endpoint: str | None, **changes: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "payload": "application/fhir+json"}
    if endpoint is not None:
        channel["endpoint"] = endpoint
    resource = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": CRITERIA,
        "channel": channel,
    }
    resource.update(changes)
    return resource


def observation(code: str, id: str | None = None, value: float = 70.0) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": "kg"},
    }
    if id is not None:
        resource["id"] = id
    return resource


def post(client: httpx.Client, path: str, resource: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, content=orjson.dumps(resource), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def put(client: httpx.Client, resource: dict[str, Any]) -> int:
    path = f"{resource['resourceType']}/{resource['id']}"
    response = client.put(path, content=orjson.dumps(resource), headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.text
    return int(response.json()["meta"]["versionId"])


def fhir_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.base}/fhir/", timeout=30, headers=FHIR_JSON, auth=server.auth
    )


def first_receipts(hits: list[Hit]) -> dict[str, list[int]]:
    """Per resource, its versions in the order they first arrived."""
    seen: dict[str, list[int]] = {}
    for hit in hits:
        id, version = hit.version()
        if version not in seen.setdefault(id, []):
            seen[id].append(version)
    return seen


# --- rest-hook across a kill -------------------------------------------------------------------


@dataclass
class Writer:
    """Updates a few watched Observations (and unwatched ones) until told to stop; survives the
    server's death by retrying against whatever server is current."""

    server: ServerProcess
    ids: tuple[str, ...] = tuple(f"watched-{k}" for k in range(4))
    answered: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            watched = observation(WATCHED, self.ids[n % len(self.ids)], value=n)
            unwatched = observation(OTHER, f"unwatched-{n % 2}", value=n)
            try:
                server = self.server
                with httpx.Client(
                    base_url=f"{server.base}/fhir/", timeout=10, auth=server.auth
                ) as client:
                    put(client, watched)
                    put(client, unwatched)
            except httpx.TransportError:
                time.sleep(0.05)  # killed: the outcome of this write is unknown
                continue
            with self.lock:
                self.answered += 1

    def wait_for(self, answered: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.answered >= answered:
                    return
            time.sleep(0.02)
        raise AssertionError(f"only {self.answered} writes answered")


def test_every_committed_version_arrives_in_order_across_a_kill(
    database_url: str, servers: list[ServerProcess]
) -> None:
    # Slow enough that notifications queue up; the 8th is in flight when the server is killed.
    subscriber = Subscriber(delay=0.02, hold_at=8, hold=2.0)
    try:
        server = start(servers, database_url, workers=2)
        with fhir_client(server) as client:
            created = post(client, "Subscription", subscription(subscriber.url))
        assert created["status"] == "active"

        writer = Writer(server)
        thread = threading.Thread(target=writer.run)
        thread.start()
        try:
            assert subscriber.holding.wait(30), "the notifications did not come"
            server.kill()  # SIGKILL to every process: no graceful shutdown
            in_flight = subscriber.hits[7].version()
            server = start(servers, database_url, workers=2)
            writer.server = server
            writer.wait_for(writer.answered + 10, timeout=30)
        finally:
            writer.stop.set()
            thread.join()

        with fhir_client(server) as client:
            committed = {
                id: sorted(
                    int(e["resource"]["meta"]["versionId"])
                    for e in client.get(f"Observation/{id}/_history").json()["entry"]
                )
                for id in writer.ids
            }
        total = sum(len(v) for v in committed.values())
        hits = subscriber.wait_until(
            lambda h: sum(len(v) for v in first_receipts(h).values()) >= total, timeout=30
        )
        # Every committed version at least once, each resource's versions in order, and nothing
        # about the unwatched Observations.
        assert first_receipts(hits) == committed
        # The notification in flight at the kill was never acknowledged: it came again.
        assert [h.version() for h in hits].count(in_flight) >= 2
    finally:
        subscriber.close()


# --- nothing for what did not commit or does not match -----------------------------------------


def transaction(*entries: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                for r in entries
            ],
        }
    )


def test_rolled_back_and_non_matching_writes_notify_nobody(
    database_url: str, servers: list[ServerProcess], subscriber: Subscriber
) -> None:
    server = start(servers, database_url)
    with fhir_client(server) as client:
        post(client, "Subscription", subscription(subscriber.url))
        # Fails inside the unit of work, after the Observations were written: a reference to a
        # Patient that does not exist (422) rolls the whole transaction back.
        dangling = {**observation(WATCHED), "subject": {"reference": "Patient/missing"}}
        response = client.post(
            "", content=transaction(observation(WATCHED), observation(WATCHED), dangling)
        )
        assert response.status_code == 422, response.text
        # Fails while the entries are checked (an invalid last entry).
        invalid = {**observation(WATCHED), "status": 7}
        response = client.post("", content=transaction(observation(WATCHED), invalid))
        assert response.status_code in (400, 422), response.text
        post(client, "Observation", observation(OTHER))  # another code
        post(client, "Patient", {"resourceType": "Patient"})  # another type
        sentinel = post(client, "Observation", observation(WATCHED))
    # Delivery is in write order: had any earlier write notified, it would arrive first.
    hits = subscriber.wait_until(lambda h: len(h) >= 1, timeout=20)
    assert [h.version() for h in hits] == [(sentinel["id"], 1)]
    assert hits[0].method == "PUT"
    assert orjson.loads(hits[0].body) == sentinel


def test_a_failing_endpoint_is_retried_with_growing_delays(
    database_url: str, servers: list[ServerProcess], subscriber: Subscriber
) -> None:
    subscriber.failing = 2
    server = start(servers, database_url)
    with fhir_client(server) as client:
        post(client, "Subscription", subscription(subscriber.url))
        created = post(client, "Observation", observation(WATCHED))
    hits = subscriber.wait_until(lambda h: any(x.status == 200 for x in h), timeout=25)
    assert [h.status for h in hits] == [500, 500, 200]
    assert {h.version() for h in hits} == {(created["id"], 1)}
    defaults = DeliverySettings()
    # Real time, so only lower bounds: the first retry after retry_base, the next after twice that.
    assert hits[1].at - hits[0].at >= defaults.retry_base * 0.95
    assert hits[2].at - hits[1].at >= 2 * defaults.retry_base * 0.95


# --- back-off and status with a controlled clock -----------------------------------------------


def write(record: RecordCore, method: str, path: str, resource: dict[str, Any]) -> dict[str, Any]:
    request = FhirRequest(
        method=method,
        path=path,
        headers={"content-type": "application/fhir+json", "prefer": "return=representation"},
        body=orjson.dumps(resource),
    )
    response = record.handle(request)
    assert response.status in (200, 201), response.body
    body: dict[str, Any] = orjson.loads(response.body)
    return body


def read(record: RecordCore, path: str) -> dict[str, Any]:
    response = record.handle(FhirRequest(method="GET", path=path))
    assert response.status == 200, response.body
    body: dict[str, Any] = orjson.loads(response.body)
    return body


@pytest.fixture
def dispatcher(record: RecordCore) -> Iterator[Dispatcher]:
    assert record.subscriptions is not None
    settings = DeliverySettings(retry_base=1.0, retry_max=4.0, error_after=3)
    driven = Dispatcher(record.ctx, record.subscriptions, settings)
    driven.open()
    yield driven
    driven.close()


SECOND = 1_000_000


def test_back_off_doubles_and_repeated_failure_sets_status_error(
    record: RecordCore, clock: Clock, dispatcher: Dispatcher, subscriber: Subscriber
) -> None:
    headers = ["Authorization: Bearer secret-token", "X-Trace: 1"]
    sub = write(
        record,
        "POST",
        "Subscription",
        subscription(
            subscriber.url,
            channel={"type": "rest-hook", "endpoint": subscriber.url, "header": headers},
        ),
    )
    subscriber.failing = 10**6

    def attempts_after(seconds: float) -> int:
        clock.now += int(seconds * SECOND)
        dispatcher.step(wait=True)
        return len(subscriber.hits)

    assert attempts_after(0) == 0  # nothing written yet
    write(record, "POST", "Observation", observation(WATCHED))
    assert attempts_after(0) == 1  # fails: the next attempt after 1 s
    assert attempts_after(0.9) == 1
    assert attempts_after(0.2) == 2  # fails again: next after 2 s
    assert attempts_after(1.8) == 2
    assert attempts_after(0.3) == 3  # third failure in a row: status error
    stored = read(record, f"Subscription/{sub['id']}")
    assert stored["status"] == "error"
    assert "3 times" in stored["error"] and "HTTP 500" in stored["error"]
    assert attempts_after(3.8) == 3  # 4 s now (retry_max), still retried while in error
    assert attempts_after(0.3) == 4
    assert attempts_after(3.8) == 4
    assert attempts_after(0.3) == 5  # capped at retry_max: 4 s again

    subscriber.failing = 0
    assert attempts_after(4.1) == 6  # delivered
    assert read(record, f"Subscription/{sub['id']}")["status"] == "active"
    assert "error" not in read(record, f"Subscription/{sub['id']}")
    assert attempts_after(10) == 6  # nothing left to deliver
    # Without payload: POST to the endpoint, no body, with the channel's headers.
    assert {(h.method, h.path, h.body) for h in subscriber.hits} == {("POST", "/hook", b"")}
    assert subscriber.hits[-1].headers["authorization"] == "Bearer secret-token"
    assert subscriber.hits[-1].headers["x-trace"] == "1"


def test_a_client_update_restarts_delivery_at_once(
    record: RecordCore, clock: Clock, dispatcher: Dispatcher, subscriber: Subscriber
) -> None:
    sub = write(record, "POST", "Subscription", subscription("http://127.0.0.1:9/down"))
    write(record, "POST", "Observation", observation(WATCHED))
    for _ in range(3):
        clock.now += 10 * SECOND
        dispatcher.step(wait=True)
    assert read(record, f"Subscription/{sub['id']}")["status"] == "error"
    # The client fixes the endpoint and submits the subscription again (requested).
    fixed = {**read(record, f"Subscription/{sub['id']}"), "status": "requested"}
    fixed["channel"] = {**fixed["channel"], "endpoint": subscriber.url}
    updated = write(record, "PUT", f"Subscription/{sub['id']}", fixed)
    assert updated["status"] == "active" and "error" not in updated
    dispatcher.step(wait=True)  # no back-off left over from the old endpoint
    assert [h.status for h in subscriber.hits] == [200]


def test_off_stops_delivery(
    record: RecordCore, dispatcher: Dispatcher, subscriber: Subscriber
) -> None:
    sub = write(record, "POST", "Subscription", subscription(subscriber.url))
    first = write(record, "POST", "Observation", observation(WATCHED))
    write(record, "PUT", f"Subscription/{sub['id']}", {**sub, "status": "off"})
    write(record, "POST", "Observation", observation(WATCHED))
    dispatcher.step(wait=True)
    assert subscriber.hits == []
    assert read(record, f"Subscription/{sub['id']}")["status"] == "off"
    # Active again: only what is written from now on.
    write(record, "PUT", f"Subscription/{sub['id']}", {**sub, "status": "requested"})
    latest = write(record, "POST", "Observation", observation(WATCHED))
    dispatcher.step(wait=True)
    assert [h.version()[0] for h in subscriber.hits] == [latest["id"]]
    assert first["id"] != latest["id"]


def test_the_server_turns_a_subscription_off_at_its_end(
    record: RecordCore, clock: Clock, dispatcher: Dispatcher, subscriber: Subscriber
) -> None:
    sub = write(
        record,
        "POST",
        "Subscription",
        {**subscription(subscriber.url), "end": "2026-01-01T00:01:00Z"},
    )  # the clock: 00:00
    write(record, "POST", "Observation", observation(WATCHED))
    dispatcher.step(wait=True)
    assert len(subscriber.hits) == 1
    clock.now += 60 * SECOND
    write(record, "POST", "Observation", observation(WATCHED))
    dispatcher.step(wait=True)
    assert len(subscriber.hits) == 1
    assert read(record, f"Subscription/{sub['id']}")["status"] == "off"


# --- websocket ---------------------------------------------------------------------------------


def test_websocket_bind_and_ping(database_url: str, servers: list[ServerProcess]) -> None:
    server = start(servers, database_url, workers=2)
    with fhir_client(server) as client:
        sub = post(client, "Subscription", subscription(None, channel={"type": "websocket"}))
        url = server.base.replace("http://", "ws://") + "/fhir/ws"
        headers = server.auth.header()
        with (
            connect(url, additional_headers=headers) as a,
            connect(url, additional_headers=headers) as b,
        ):
            a.send(f"bind {sub['id']}")
            assert a.recv(timeout=10) == f"bound {sub['id']}"
            b.send("subscribe me")
            assert str(b.recv(timeout=10)).startswith("error unknown command")
            b.send("bind no-such-subscription")
            assert str(b.recv(timeout=10)).startswith("error no-such-subscription")
            b.send(f"bind {sub['id']}")
            assert b.recv(timeout=10) == f"bound {sub['id']}"

            post(client, "Observation", observation(OTHER))  # does not match
            post(client, "Observation", observation(WATCHED))
            for socket in (a, b):
                assert socket.recv(timeout=15) == f"ping {sub['id']}"
            post(client, "Observation", observation(WATCHED))
            for socket in (a, b):
                assert socket.recv(timeout=15) == f"ping {sub['id']}"
                # One ping per matching write: the unmatched one sent none.
                with pytest.raises(TimeoutError):
                    socket.recv(timeout=1)


# --- what is refused -----------------------------------------------------------------------


REST_HOOK = {"type": "rest-hook", "endpoint": "https://example.org/hook"}


@pytest.mark.parametrize(
    ("changes", "element"),
    [
        ({"channel": {"type": "email", "endpoint": "mailto:a@example.org"}}, "channel.type"),
        ({"channel": {"type": "message", "endpoint": "https://e.org"}}, "channel.type"),
        ({"channel": {"type": "rest-hook"}}, "channel.endpoint"),
        ({"channel": {"type": "rest-hook", "endpoint": "ftp://example.org/x"}}, "channel.endpoint"),
        ({"channel": {"type": "rest-hook", "endpoint": "example.org/hook"}}, "channel.endpoint"),
        ({"channel": {**REST_HOOK, "payload": "application/fhir+xml"}}, "channel.payload"),
        ({"channel": {**REST_HOOK, "header": ["no colon here"]}}, "channel.header[0]"),
        ({"criteria": "Observation?no-such-parameter=1"}, "criteria"),
        ({"criteria": "NoSuchType?code=1"}, "criteria"),
        ({"criteria": "https://other.org/fhir/Observation?code=1"}, "criteria"),
        ({"criteria": "Observation?date=not-a-date"}, "criteria"),
        ({"status": "error"}, "status"),
    ],
)
def test_invalid_subscriptions_are_refused(
    client: TestClient, changes: dict[str, Any], element: str
) -> None:
    body = subscription(None, channel=REST_HOOK)
    body.update(changes)
    response = client.post("/fhir/Subscription", content=orjson.dumps(body), headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [f"Subscription.{element}"]
    assert client.get("/fhir/Subscription").json()["total"] == 0


def test_requested_becomes_active_and_the_rules_hold_in_transactions(client: TestClient) -> None:
    body = subscription(None, channel=REST_HOOK, error="left over")
    created = client.post("/fhir/Subscription", content=orjson.dumps(body), headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active" and "error" not in created.json()
    off = {**created.json(), "status": "off"}
    updated = client.put(
        f"/fhir/Subscription/{off['id']}", content=orjson.dumps(off), headers=FHIR_JSON
    )
    assert updated.json()["status"] == "off"

    bad = subscription(None, channel={"type": "sms", "endpoint": "tel:+49"})
    bundle = transaction(subscription(None, channel=REST_HOOK), bad)
    response = client.post("/fhir", content=bundle, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    assert client.get("/fhir/Subscription").json()["total"] == 1


# --- whose subscription it is, and where it may send -------------------------------------------


def as_principal(
    record: RecordCore, principal: Principal, method: str, path: str, resource: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    request = FhirRequest(
        method=method,
        path=path,
        headers={"content-type": "application/fhir+json", "prefer": "return=representation"},
        body=orjson.dumps(resource),
        principal=principal,
    )
    response = record.handle(request)
    return response.status, orjson.loads(response.body)


def backend(scope: str) -> Principal:
    return Principal(subject="station", client_id="station", scopes=parse_scopes(scope))


def categorised(category: str) -> dict[str, Any]:
    system = "http://terminology.hl7.org/CodeSystem/observation-category"
    return {
        **observation(WATCHED),
        "category": [{"coding": [{"system": system, "code": category}]}],
    }


def test_notifications_stay_within_the_owners_reach(
    record: RecordCore, dispatcher: Dispatcher, subscriber: Subscriber
) -> None:
    """The creator's access is recorded with the Subscription (a claimed owner in the body is
    replaced) and bounds what is delivered; criteria beyond it are refused."""
    station = backend("system/Subscription.cruds system/Observation.rs?category=laboratory")
    forged = {"url": OWNER_URL, "extension": [{"url": "system", "valueBoolean": True}]}
    body = {**subscription(subscriber.url), "criteria": "Observation", "extension": [forged]}
    status, created = as_principal(record, station, "POST", "Subscription", body)
    assert status == 201, created
    owner = [e for e in created["extension"] if e["url"] == OWNER_URL]
    assert owner == [owner_extension(station)]
    assert {"url": "client", "valueString": "station"} in owner[0]["extension"]

    write(record, "POST", "Observation", categorised("vital-signs"))
    lab = write(record, "POST", "Observation", categorised("laboratory"))
    dispatcher.step(wait=True)
    assert [h.version()[0] for h in subscriber.hits] == [lab["id"]]

    # Criteria on a type the creator may not search at all: refused.
    status, _ = as_principal(
        record, station, "POST", "Subscription", {**body, "criteria": "Condition"}
    )
    assert status == 403
    # An in-process update by the system (the dispatcher's status changes) keeps the owner.
    off = write(record, "PUT", f"Subscription/{created['id']}", {**created, "status": "off"})
    assert [e for e in off["extension"] if e["url"] == OWNER_URL] == owner


def test_private_endpoints_are_refused_unless_allowed(
    record: RecordCore, subscriber: Subscriber
) -> None:
    strict = replace(record.ctx, settings=Settings())
    for endpoint in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/fhir",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
    ):
        with pytest.raises(FhirError) as refused:
            accept(strict, subscription(endpoint))
        assert refused.value.category is Category.UNPROCESSABLE, endpoint
    accept(strict, subscription("https://hook.example.org/fhir"))
    # Accepted under other settings: not served under these (status error, nothing sent).
    sub = write(record, "POST", "Subscription", subscription(subscriber.url))
    assert record.subscriptions is not None
    strict_dispatcher = Dispatcher(strict, record.subscriptions, DeliverySettings())
    strict_dispatcher.open()
    try:
        write(record, "POST", "Observation", observation(WATCHED))
        strict_dispatcher.step(wait=True)
    finally:
        strict_dispatcher.close()
    assert subscriber.hits == []
    stored = read(record, f"Subscription/{sub['id']}")
    assert stored["status"] == "error" and "private network" in stored["error"]
