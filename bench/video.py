"""``python -m bench video``: admit-to-first-frame latency and signalling capacity (issue 6).

Signalling protocol: design_video.md (WebSocket ``/video/ws``); media: WebRTC
(https://www.w3.org/TR/webrtc/), the first frame seen through ``requestVideoFrameCallback``
(https://wicg.github.io/video-rvfc/) and ``getStats`` (https://www.w3.org/TR/webrtc-stats/).

*Admit* (target p95 ≤ 1 s on loopback): a real ``medikus serve``, headless Chromium with fake
media; per sample a new Appointment, a new doctor page and a new patient page. Timed in the
doctor's page with ``performance.now()``: t0 = the capture-phase click on "Hereinholen" (before
the app's own handler), t1 = the first ``requestVideoFrameCallback`` of a <video> showing a remote
track (first frame presented) and, separately, the first ``getStats`` poll (every 10 ms, in the
page) with inbound ``framesDecoded > 0``.

*Signalling* (target ≥ 1,000 rooms, p99 relay ≤ 100 ms): N rooms, each a host and a guest
websocket (one doctor, participant of every Appointment; join-link tokens per room), every
connection sends offer/answer/candidate at ``--rate`` per second carrying its send time; the
receiver's delay is the relay latency (one process, one clock). Churn: every ``--churn-every``
seconds a fraction of guests leaves and joins again (hello → waiting → admit → admitted).

    python -m bench video [--only admit|signalling] [--samples 20] [--rooms 1000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.databases import KINDS, fresh
from bench.reads import percentile
from bench.server import Server, cpu_seconds, load_average
from compliance.auth import AuthServices, system_clock
from compliance.principal import Role
from compliance.totp import code_at
from medikus.auth_setup import open_auth
from medikus.config import Config

Say = Callable[[str], None]
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--mute-audio",
]
REDIS = os.environ.get("MEDIKUS_BENCH_REDIS", "redis://127.0.0.1:6379/0")
ADMIT_TARGET_S = 1.0
RELAY_TARGET_MS = 100.0
ROOMS_TARGET = 1000
PASSWORD = "Sonnenblume-Wiese-42"
TIMEOUT_S = 30.0

# Installed before the app's scripts: local tracks (getUserMedia), the click on "Hereinholen",
# then per <video> the first presented frame of a remote track, and a 10 ms getStats poll.
PROBE = """(() => {
  const b = { t0: null, rvfc: null, stats: null, local: new Set() };
  window.__bench = b;
  const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (c) => {
    const s = await gum(c);
    s.getTracks().forEach((t) => b.local.add(t.id));
    return s;
  };
  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button");
    if (b.t0 === null && button && /hereinholen/i.test(button.textContent + button.ariaLabel)) {
      b.t0 = performance.now();
      poll();
    }
  }, true);
  const seen = new WeakSet();
  const watch = () => {
    for (const v of document.querySelectorAll("video")) {
      const s = v.srcObject;
      if (seen.has(v) || !s || !v.requestVideoFrameCallback) continue;
      const track = s.getVideoTracks()[0];
      if (!track || b.local.has(track.id)) continue;
      seen.add(v);
      v.requestVideoFrameCallback((now) => { if (b.rvfc === null && b.t0 !== null) b.rvfc = now; });
    }
    if (b.rvfc === null) requestAnimationFrame(watch);
  };
  requestAnimationFrame(watch);
  async function poll() {
    while (b.stats === null) {
      const call = window.medikusCall;
      if (call) {
        for (const id of call.peers()) {
          const stats = await call.connection(id).getStats();
          stats.forEach((r) => {
            if (r.type === "inbound-rtp" && r.kind === "video" && r.framesDecoded > 0
                && b.stats === null) b.stats = performance.now();
          });
        }
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }
})();"""


# --- figures -------------------------------------------------------------------------------------


def _ms(values: Sequence[float], q: int) -> float:
    return percentile(sorted(values), q) * 1000


@dataclass(frozen=True)
class Admit:
    """Seconds from the click on "Hereinholen" per sample."""

    presented: tuple[float, ...]  # first remote frame presented (requestVideoFrameCallback)
    decoded: tuple[float, ...]  # first getStats poll with framesDecoded > 0
    failed: int

    @property
    def met(self) -> bool:
        return not self.failed and bool(self.decoded) and _ms(self.decoded, 95) <= 1000


@dataclass(frozen=True)
class Signalling:
    workers: int
    rooms: int
    connected: int  # connections that reached the call
    window_s: float
    messages: int  # relayed messages received in the window
    relay: tuple[float, ...]  # seconds, sender → receiver
    setup_joins: tuple[float, ...]  # guest hello → admitted, while the rooms fill
    churn_joins: tuple[float, ...]  # the same for the guests that left and came back
    errors: int
    error_kinds: dict[str, int]
    server_cpu: float  # share of one core
    client_cpu: float
    load: float

    @property
    def hard_errors(self) -> int:
        """Errors but ``unknown-peer``: a signal racing a guest's leave is churn, not a fault."""
        return self.errors - self.error_kinds.get("unknown-peer", 0)

    @property
    def met(self) -> bool:
        return (
            self.connected == 2 * self.rooms
            and self.hard_errors == 0
            and bool(self.relay)
            and _ms(self.relay, 99) <= RELAY_TARGET_MS
        )

    def limit(self) -> str:
        if self.met:
            return ""
        if self.connected < 2 * self.rooms or self.hard_errors:
            return "connections refused or failed (see errors)"
        if self.client_cpu >= 0.85:
            return "the client's CPU (one asyncio process) is saturated"
        if self.server_cpu >= 0.85 * min(self.workers, os.cpu_count() or 1):
            return "server CPU"
        return "machine CPU shared by client and server (load average)"


# --- the record: server, tokens, appointments ----------------------------------------------------


@dataclass
class World:
    server: Server
    auth: AuthServices
    practitioner: str
    patient: str
    doctor: str  # the doctor's access token

    def appointments(self, count: int) -> list[str]:
        """``count`` new Appointments (doctor and patient), in transactions of 200."""
        ids: list[str] = []
        with httpx.Client(auth=self.server.auth, timeout=120) as http:
            while len(ids) < count:
                batch = min(200, count - len(ids))
                entry = [
                    {
                        "resource": self._appointment(),
                        "request": {"method": "POST", "url": "Appointment"},
                    }
                    for _ in range(batch)
                ]
                bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entry}
                answer = http.post(f"{self.server.base}/fhir", json=bundle)
                answer.raise_for_status()
                for e in answer.json()["entry"]:
                    ids.append(_id_of(e["response"]["location"]))
        return ids

    def _appointment(self) -> dict[str, Any]:
        return {
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [
                {"actor": {"reference": f"Practitioner/{self.practitioner}"}, "status": "accepted"},
                {"actor": {"reference": f"Patient/{self.patient}"}, "status": "accepted"},
            ],
        }

    def link(self, appointment: str) -> str:
        """A join link (not redeemed: the patient page redeems it)."""
        return self.auth.join.issue_link(
            f"Patient/{self.patient}", f"Appointment/{appointment}"
        ).token

    def guest_token(self, appointment: str) -> str:
        token, _ = self.auth.redeem_join_link(self.link(appointment))
        return token


def _id_of(location: str) -> str:
    """``[base/]Appointment/<id>[/_history/<v>]`` → ``<id>``."""
    parts = location.split("/")
    return parts[parts.index("Appointment") + 1]


def _create(server: Server, resource: dict[str, Any]) -> str:
    answer = httpx.post(
        f"{server.base}/fhir/{resource['resourceType']}",
        json=resource,
        auth=server.auth,
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


def _doctor_token(auth: AuthServices, practitioner: str) -> str:
    username = f"dr.bench.{secrets.token_hex(3)}"
    account, secret = auth.identity.create_account(
        username,
        PASSWORD,
        display_name="Dr. Bench",
        roles=[Role.DOCTOR],
        organization="mvz-1",
        fhir_user=f"Practitioner/{practitioner}",
    )
    assert secret is not None
    login = auth.identity.login(username, PASSWORD, code_at(secret, system_clock()), None)
    token, _ = auth.signing.tokens().issue(
        subject=account.id,
        client_id="medikus-app",
        scope="user/Appointment.rs",
        fhir_user=f"Practitioner/{practitioner}",
        sid=login.session.id,
    )
    return token


@contextmanager
def world(kind: str, workers: int, redis: bool = False) -> Iterator[World]:
    saved = os.environ.get("MEDIKUS_REDIS_URL")
    if redis:
        os.environ["MEDIKUS_REDIS_URL"] = REDIS
    try:
        with fresh(kind) as database, Server(database.url, workers) as server:
            practitioner = _create(
                server, {"resourceType": "Practitioner", "name": [{"family": "Bench"}]}
            )
            patient = _create(server, {"resourceType": "Patient", "name": [{"family": "Bench"}]})
            config = Config(public_url=server.base)
            with closing(open_auth(config, database_url=database.url)) as auth:
                yield World(server, auth, practitioner, patient, _doctor_token(auth, practitioner))
    finally:
        if saved is None:
            os.environ.pop("MEDIKUS_REDIS_URL", None)
        else:
            os.environ["MEDIKUS_REDIS_URL"] = saved


# --- 1. admit → first frame ----------------------------------------------------------------------


async def measure_admit(w: World, samples: int, say: Say) -> Admit:
    from playwright.async_api import async_playwright, expect

    presented: list[float] = []
    decoded: list[float] = []
    failed = 0
    base = w.server.base
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            for n in range(samples):
                (room,) = w.appointments(1)
                link = w.link(room)
                doc_context = await browser.new_context(locale="de-DE")
                pat_context = await browser.new_context(locale="de-DE")
                try:
                    await doc_context.add_init_script(
                        f"sessionStorage.setItem('medikus.token', {json.dumps(w.doctor)});" + PROBE
                    )
                    doc = await doc_context.new_page()
                    await doc.goto(f"{base}/app/consult.html?room={room}")
                    pat = await pat_context.new_page()
                    await pat.goto(f"{base}/app/join.html#link={link}&room={room}&name=Erika")
                    proceed = pat.get_by_role("button", name="Weiter zum Warteraum")
                    await expect(proceed).to_be_enabled(timeout=20_000)
                    await proceed.click()
                    admit = doc.get_by_role("button", name="Hereinholen").first
                    await expect(admit).to_be_visible(timeout=20_000)
                    await admit.click()
                    await doc.wait_for_function(
                        "() => __bench.rvfc !== null && __bench.stats !== null", timeout=20_000
                    )
                    b = await doc.evaluate("() => [__bench.t0, __bench.rvfc, __bench.stats]")
                    presented.append((b[1] - b[0]) / 1000)
                    decoded.append((b[2] - b[0]) / 1000)
                    say(
                        f"admit sample {n + 1}/{samples}: {presented[-1] * 1000:.0f} ms presented, "
                        f"{decoded[-1] * 1000:.0f} ms decoded (getStats)"
                    )
                except Exception as error:  # a failed sample is a figure
                    failed += 1
                    say(f"admit sample {n + 1} failed: {error!r:.200}")
                finally:
                    await doc_context.close()
                    await pat_context.close()
        finally:
            await browser.close()
    return Admit(tuple(presented), tuple(decoded), failed)


# --- 2. signalling capacity ----------------------------------------------------------------------


@dataclass
class Tally:
    counting: bool = False
    relay: list[float] = field(default_factory=list)
    messages: int = 0
    setup_joins: list[float] = field(default_factory=list)
    churn_joins: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


KINDS_SENT = ("offer", "answer", "candidate")


def _signal(kind: str, to: str) -> str:
    stamp = repr(time.perf_counter())
    if kind == "candidate":
        body: dict[str, Any] = {
            "candidate": {"candidate": stamp, "sdpMid": "0", "sdpMLineIndex": 0}
        }
    else:
        body = {"sdp": stamp}
    return json.dumps({"type": kind, "to": to, **body})


def _stamp(frame: dict[str, Any]) -> float | None:
    if frame.get("type") in ("offer", "answer"):
        return float(frame["sdp"])
    if frame.get("type") == "candidate":
        return float(frame["candidate"]["candidate"])
    return None


class Party:
    """One websocket of a room: a reader that records relays (and, as host, admits guests) and
    a sender of stamped signals to the other party of the room."""

    def __init__(self, url: str, room: str, token: str, tally: Tally, host: bool) -> None:
        self.url, self.room, self.token, self.tally, self.host = url, room, token, tally, host
        self.ws: ClientConnection | None = None
        self.me = ""
        self.peer: str | None = None
        self.admitted = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def join(self, rate: float, churn: bool = False) -> None:
        started = time.perf_counter()
        self.ws = await connect(self.url, max_queue=None, open_timeout=TIMEOUT_S)
        await self.ws.send(json.dumps({"type": "hello", "room": self.room, "token": self.token}))
        welcome = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"{welcome.get('type')}: {welcome.get('code')}")
        self.me = welcome["you"]["id"]
        others = [p["id"] for p in welcome.get("participants", []) if p["id"] != self.me]
        if self.host or welcome.get("state") == "in-call":
            self.admitted.set()
        self.peer = others[0] if others and not self.host else self.peer
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._send(rate))]
        if not self.host:
            await asyncio.wait_for(self.admitted.wait(), TIMEOUT_S)
            joins = self.tally.churn_joins if churn else self.tally.setup_joins
            joins.append(time.perf_counter() - started)

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            stamp = _stamp(frame)
            if stamp is not None:
                if self.tally.counting:
                    self.tally.relay.append(time.perf_counter() - stamp)
                    self.tally.messages += 1
            elif kind == "waiting" and self.host:
                await self.ws.send(
                    json.dumps({"type": "admit", "participant": frame["participant"]["id"]})
                )
            elif kind == "joined" and self.host:
                self.peer = frame["participant"]["id"]
            elif kind == "admitted":
                peers = frame.get("peers", [])
                self.peer = peers[0]["id"] if peers else None
                self.admitted.set()
            elif kind == "left" and self.host:
                self.peer = None
            elif kind == "error":
                self.tally.error(str(frame.get("code")))

    async def _send(self, rate: float) -> None:
        assert self.ws is not None
        await asyncio.sleep(random.random() / rate)  # spread the rooms over the second
        while True:
            if self.peer is not None and self.admitted.is_set():
                await self.ws.send(_signal(random.choice(KINDS_SENT), self.peer))
            await asyncio.sleep(1 / rate)

    async def leave(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.ws is not None:
            try:
                await self.ws.send(json.dumps({"type": "leave"}))
            finally:
                await self.ws.close()


@dataclass(frozen=True)
class Load:
    rooms: int = 1000
    rate: float = 1.0  # signals per second and connection
    duration_s: float = 60.0
    churn_every_s: float = 5.0
    churn_fraction: float = 0.05
    connect_concurrency: int = 50


async def _guarded(tally: Tally, kind: str, work: Any) -> bool:
    try:
        await work
        return True
    except Exception as error:  # counted, the run goes on
        tally.error(f"{kind}: {type(error).__name__}")
        return False


async def measure_signalling(w: World, load: Load, workers: int, say: Say) -> Signalling:
    rooms = w.appointments(load.rooms)
    say(f"{len(rooms)} Appointments created; minting join tokens …")
    guests_tokens = [w.guest_token(room) for room in rooms]
    url = w.server.base.replace("http", "ws") + "/video/ws"
    tally = Tally()
    hosts = [Party(url, room, w.doctor, tally, host=True) for room in rooms]
    guests = [
        Party(url, room, t, tally, host=False) for room, t in zip(rooms, guests_tokens, strict=True)
    ]
    gate = asyncio.Semaphore(load.connect_concurrency)

    async def fill(host: Party, guest: Party) -> int:
        async with gate:
            ok = await _guarded(tally, "host join", host.join(load.rate))
            return ok + (ok and await _guarded(tally, "guest join", guest.join(load.rate)))

    connected = sum(await asyncio.gather(*(fill(h, g) for h, g in zip(hosts, guests, strict=True))))
    say(f"{connected} connections in {len(rooms)} rooms; measuring {load.duration_s:.0f} s …")
    churner = asyncio.create_task(_churn(guests, load, tally))
    pids = w.server.group_pids()
    server_before, client_before = sum(cpu_seconds(pids).values()), _own_cpu()
    tally.counting = True
    started = time.monotonic()
    await asyncio.sleep(load.duration_s)
    tally.counting = False
    window = time.monotonic() - started
    server_cpu = (sum(cpu_seconds(pids).values()) - server_before) / window
    client_cpu = (_own_cpu() - client_before) / window
    churner.cancel()
    await asyncio.gather(*(p.leave() for p in [*hosts, *guests]), return_exceptions=True)
    return Signalling(
        workers,
        len(rooms),
        connected,
        window,
        tally.messages,
        tuple(tally.relay),
        tuple(tally.setup_joins),
        tuple(tally.churn_joins),
        tally.errors,
        dict(tally.error_kinds),
        server_cpu,
        client_cpu,
        load_average(),
    )


async def _churn(guests: list[Party], load: Load, tally: Tally) -> None:
    count = max(1, round(len(guests) * load.churn_fraction))
    while True:
        await asyncio.sleep(load.churn_every_s)
        for i in random.sample(range(len(guests)), count):
            old = guests[i]
            await _guarded(tally, "leave", old.leave())
            guests[i] = Party(old.url, old.room, old.token, tally, host=False)
        await asyncio.gather(
            *(
                _guarded(tally, "re-join", g.join(load.rate, churn=True))
                for g in guests
                if g.ws is None
            )
        )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- report --------------------------------------------------------------------------------------


def admit_lines(a: Admit) -> list[str]:
    lines = [
        f"admit → first remote video frame in the doctor's page, {len(a.decoded)} samples"
        + (f", {a.failed} FAILED" if a.failed else ""),
        f"  {'(in-page performance.now)':34s} {'p50':>8s} {'p95':>8s} {'max':>8s}  (ms)",
    ]
    for label, values in (
        ("first frame presented (rVFC)", a.presented),
        ("framesDecoded > 0 (getStats/10 ms)", a.decoded),
    ):
        lines.append(f"  {label:34s} " + " ".join(f"{_ms(values, q):8.0f}" for q in (50, 95, 100)))
    verdict = "ok" if a.met else "MISSED"
    lines.append(
        f"  target p95 ≤ {ADMIT_TARGET_S * 1000:.0f} ms (decoded): {_ms(a.decoded, 95):.0f} ms {verdict}"
    )
    return lines


def signalling_lines(s: Signalling) -> list[str]:
    verdict = "ok" if s.met else "MISSED"
    return [
        f"signalling, {s.workers} worker(s){' + Redis' if s.workers > 1 else ''}: {s.rooms} rooms, "
        f"{s.connected} connections, {s.window_s:.0f} s window (load average {s.load:.2f} after)",
        f"  relayed {s.messages / s.window_s:8.0f} msg/s; relay p50 {_ms(s.relay, 50):.1f} ms, "
        f"p99 {_ms(s.relay, 99):.1f} ms, max {_ms(s.relay, 100):.1f} ms",
        f"  join (hello → admitted) p99: filling {_ms(s.setup_joins, 99):.0f} ms, "
        f"churn {_ms(s.churn_joins, 99):.0f} ms ({len(s.churn_joins)} re-joins)",
        f"  CPU, share of one core: server {s.server_cpu:.0%}, client {s.client_cpu:.0%}; "
        f"errors {s.errors} {s.error_kinds or ''}",
        f"  target ≥ {ROOMS_TARGET} rooms, p99 ≤ {RELAY_TARGET_MS:.0f} ms: {verdict}"
        + (f" (limit: {s.limit()})" if not s.met else ""),
    ]


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench video", description=__doc__.splitlines()[0]
    )
    defaults = Load()
    parser.add_argument("--db", choices=KINDS, default="sqlite")
    parser.add_argument("--only", choices=("admit", "signalling"), default=None)
    parser.add_argument("--samples", type=int, default=20, help="admit samples")
    parser.add_argument("--rooms", type=int, default=defaults.rooms)
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="signals/s per connection"
    )
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="window, s")
    parser.add_argument("--churn-every", type=float, default=defaults.churn_every_s)
    parser.add_argument("--churn-fraction", type=float, default=defaults.churn_fraction)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    return parser.parse_args(list(argv))


def main(argv: Sequence[str], say: Say) -> int:
    args = parse_args(argv)
    _raise_file_limit()
    failed = False
    say(f"load average {load_average():.2f}, {os.cpu_count()} cores")
    if args.only in (None, "admit"):
        with world(args.db, 1) as w:
            admit = asyncio.run(measure_admit(w, args.samples, say))
        print("\n".join(admit_lines(admit)))
        failed |= not admit.met
    if args.only in (None, "signalling"):
        load = Load(args.rooms, args.rate, args.duration, args.churn_every, args.churn_fraction)
        for workers in args.workers:
            with world(args.db, workers, redis=workers > 1) as w:
                result = asyncio.run(measure_signalling(w, load, workers, say))
            print("\n".join(signalling_lines(result)), flush=True)
            failed |= not result.met
    return 1 if failed else 0


def _raise_file_limit() -> None:
    # Two sockets per room in this process and in the server (which inherits the limit).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], _say))
