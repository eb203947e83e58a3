"""``python -m bench station``: latency and throughput of one pilot-centre station (issue 5).

Everything is real but the radio: the simulated BlueZ (``devices.simulator``) on a private
dbus-daemon, the station as its own process (``medikus station run --config …``, unmodified bleak
inside) and a real ``medikus serve`` with the station registered as a SMART backend service
(https://hl7.org/fhir/smart-app-launch/backend-services.html). Two measurements:

*Latency* (target p99 ≤ 500 ms): one heart-rate belt sends one notification at a time, at least
``--spacing-ms`` apart and only after the previous one is readable. The clock starts just before
``Simulator.notify``; the Observation counts as readable when a search
(https://hl7.org/fhir/R4/search.html, ``Observation?subject=…&_summary=count``, polled every
5 ms on one keep-alive connection) returns a larger total: an upper bound, late by at most one
poll round trip plus the pause (both printed). Splits: the station's own receive stamp and
upload mark (its outbox rows, same machine clock), and when the reading was committed to the
outbox (``max(id)`` polled every 1 ms on a read-only connection to the station's SQLite file).

*Throughput* (target: 20 pulse oximeters in continuous mode at 1 Hz plus the other devices,
without backlog growth): 20 oximeters stream 2A5F at 1 Hz, a heart-rate belt at 1 Hz, a cuff and
a thermometer every 10 s, a scale every 30 s, and a glucose meter holds stored records and syncs
new ones every 20 s. After a warm-up, the outbox (``Outbox.statistics``) is sampled every second
for ``--duration`` seconds: readings in, items and Observations uploaded, the backlog (received +
ready) and its least-squares slope, CPU of the station process, the server (and its PostgreSQL
backends), the dbus-daemon and this process (simulator), from /proc.

    python -m bench station [--db sqlite|postgresql] [--samples 200] [--duration 60]

Every process, database and temporary file is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import math
import os
import random
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from bench.databases import KINDS, Database, backend_pids, fresh
from bench.reads import percentile
from bench.server import Server, cpu_seconds, load_average, stop_group
from devices.assignment import Assignments
from devices.credentials import StationKey
from devices.outbox import Outbox, State, open_database
from devices.record_client import STATION_SCOPES
from devices.simulator import DeviceConfig, PrivateBus, Simulator
from devices.simulator.payloads import glucose_measurement, sfloat

Say = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "pilot-station"
ZONE = "Europe/Berlin"  # the station's time_zone default: the devices' wall clocks
LATENCY_TARGET_MS = 500.0
GROWTH_TOLERANCE = 0.02  # a backlog slope above 2 % of the input rate counts as growing
TICK = os.sysconf("SC_CLK_TCK")
KIND = {  # simulator kind → station configuration kind
    "blood_pressure": "blood-pressure",
    "thermometer": "thermometer",
    "pulse_oximeter": "pulse-oximeter",
    "weight_scale": "weight-scale",
    "glucose_meter": "glucose",
    "heart_rate": "heart-rate",
}
HEART_RATE, PLX_CONTINUOUS, BLOOD_PRESSURE = "2a37", "2a5f", "2a35"
TEMPERATURE, WEIGHT, GLUCOSE = "2a1c", "2a9d", "2a18"
METER_PIN = "123456"


@dataclass(frozen=True)
class Options:
    samples: int = 200  # latency samples (after the warm-up ones)
    warm_up: int = 5  # latency samples not counted (token, Device resources, caches)
    spacing_s: float = 0.2  # at least this long from one notification to the next
    poll_s: float = 0.005  # pause between two searches in the record core
    oximeters: int = 20
    duration_s: float = 60.0  # throughput window
    warm_up_s: float = 5.0  # streams run this long before the window opens
    glucose_records: int = 100  # stored on the meter before the station connects
    glucose_sync_s: float = 20.0  # the meter syncs 5 new records this often
    workers: int = 2  # uvicorn workers
    seed: int = 0
    connect_timeout_s: float = 180.0  # until every device is connected and subscribed


# --- figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Seconds from ``notify`` per sample; ``missing`` samples never became readable."""

    received: tuple[float, ...]  # the station's receive stamp
    stored: tuple[float, ...]  # committed to the outbox (seen by a reader)
    uploaded: tuple[float, ...]  # the station marked it uploaded (after the answer)
    readable: tuple[float, ...]  # a search in the record core finds it
    poll_round_trip: tuple[float, ...]  # one search of the readable-probe
    missing: int
    poll_s: float

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.readable), 99) * 1000

    @property
    def met(self) -> bool:
        return not self.missing and bool(self.readable) and self.p99_ms <= LATENCY_TARGET_MS


@dataclass(frozen=True)
class Cpu:
    """Cumulative CPU seconds of each party at one moment (``wall`` from ``time.monotonic``)."""

    wall: float
    station: dict[int, float]
    server: dict[int, float]
    bus: dict[int, float]
    bench: dict[int, float]
    busy: float  # the machine: every core, not idle or iowait
    iowait: float


@dataclass(frozen=True)
class Sample:
    at: float  # seconds into the window
    backlog: int  # received + ready
    oldest_pending_s: float


@dataclass(frozen=True)
class Throughput:
    devices: int
    window_s: float
    offered_per_s: float  # notifications the streams' schedule sends (glucose syncs on top)
    stored_per_s: float  # readings appended to the outbox
    uploaded_per_s: float  # outbox items marked uploaded
    observations_per_s: float  # Observations the record core gained
    samples: tuple[Sample, ...]
    slope_per_s: float  # least squares of the backlog over the window
    drain_s: float  # after the streams stopped, until the backlog was empty
    lost: int  # sent but never stored (or not yet stored when the drain timed out)
    review: int  # readings parked for review (should be none)
    dropped: int  # notifications the simulator dropped (device not subscribed at that moment)
    cpu: dict[str, float]  # share of one core, per party; "machine" = share of all cores
    cores: int
    workers: int  # the server's: it can use at most min(workers, cores) cores

    def backlog(self, where: float) -> int:
        """The sample nearest ``where`` (0 = start, 0.5 = middle, 1 = end of the window)."""
        if not self.samples:
            return 0
        return self.samples[round(where * (len(self.samples) - 1))].backlog

    @property
    def sustained(self) -> bool:
        limit = GROWTH_TOLERANCE * max(self.stored_per_s, 1.0)
        return self.slope_per_s <= limit and self.lost == 0 and self.review == 0

    def limit(self) -> str:
        """The resource that ran out, when the target was missed."""
        if self.sustained:
            return ""
        if self.lost or self.review:
            return "readings lost or refused: see the station log"
        if self.cpu["machine"] >= 0.9:
            return "machine CPU: every core busy (station, server and simulator share them)"
        if self.cpu["station"] >= 0.85:
            return "station CPU: its one asyncio process is saturated"
        if self.cpu["server"] >= 0.85 * min(self.workers, self.cores):
            return "server CPU"
        if self.cpu["iowait"] >= 0.2:
            return "disk: fsyncs of the outbox (iowait)"
        return "no CPU saturated: the uploader's sequential round trips"


# --- the rig: record core, bus, station key ------------------------------------------------------


@dataclass
class Rig:
    database: Database
    server: Server
    bus: PrivateBus
    key: StationKey
    directory: Path
    patients: int = 0


def wall_clock() -> datetime:
    """The devices' clocks run on the station zone's wall time."""
    return datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None)


@contextmanager
def rig(kind: str, workers: int) -> Iterator[Rig]:
    with ExitStack() as stack:
        database = stack.enter_context(fresh(kind))
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medikus-st-")))
        server = stack.enter_context(Server(database.url, workers))
        bus = PrivateBus.start()
        stack.callback(bus.stop)
        key = StationKey.generate("bench-station")
        _register(server, key, directory)
        yield Rig(database, server, bus, key, directory)


def _register(server: Server, key: StationKey, directory: Path) -> None:
    """``medikus admin create-client`` with the station's public JWKS, as an operator does."""
    jwks = directory / "station.jwks.json"
    jwks.write_text(json.dumps(key.jwks()), encoding="utf-8")
    command = [sys.executable, "-m", "medikus", "admin", "--database-url", server.database_url]
    command += ["create-client", CLIENT_ID, "--scope", STATION_SCOPES, "--jwks", str(jwks)]
    env = {**os.environ, "MEDIKUS_PUBLIC_URL": server.base}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"create-client failed: {done.stderr.strip()}")


def create_patient(server: Server, family: str) -> str:
    patient = {"resourceType": "Patient", "name": [{"family": family, "given": ["Bench"]}]}
    response = httpx.post(f"{server.base}/fhir/Patient", json=patient, auth=server.auth, timeout=30)
    response.raise_for_status()
    return str(response.json()["id"])


def _config(
    name: str, server: str, key_file: Path, state_dir: Path, devices: Sequence[DeviceConfig]
) -> str:
    """The station's TOML configuration (devices/config.py)."""
    lines = [
        f'station_id = "bench-{name}"',
        f'record_core = "{server}/fhir"',
        f'client_id = "{CLIENT_ID}"',
        f'key_file = "{key_file}"',
        f'state_dir = "{state_dir}"',
        f'time_zone = "{ZONE}"',
        "max_backoff_s = 1.0",
    ]
    for device in devices:
        lines += ["[[devices]]", f'address = "{device.address}"', f'kind = "{KIND[device.kind]}"']
        lines += [f'pin = "{device.pin}"'] if device.pin else []
    return "\n".join(lines) + "\n"


def _utc() -> datetime:
    return datetime.now(UTC)


class StationProcess:
    """``medikus station run`` for ``devices``, each checked in for its own patient."""

    def __init__(self, rig: Rig, name: str, devices: Sequence[DeviceConfig]) -> None:
        self.directory = rig.directory / name
        self.state_dir = self.directory / "state"
        self.state_dir.mkdir(parents=True)
        self.log = self.directory / "station.log"
        self.config = self.directory / "station.toml"
        key_file = self.directory / "station.jwk"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(rig.key.to_json())
        self.config.write_text(
            _config(name, rig.server.base, key_file, self.state_dir, devices), encoding="utf-8"
        )
        self.patients = self._check_in(rig, devices)
        self.bus_address = rig.bus.address
        self.process: subprocess.Popen[bytes] | None = None
        self.bus_lost: asyncio.Future[None] | None = None  # set while the simulator runs

    def _check_in(self, rig: Rig, devices: Sequence[DeviceConfig]) -> dict[str, str]:
        """A new patient per device, checked in there; device address → patient id."""
        patients = {}
        database = open_database(self.database_path)
        try:
            assignments = Assignments(database)
            at = _utc() - timedelta(days=60)  # covers the meter's stored records
            for device in devices:
                rig.patients += 1
                patient = create_patient(rig.server, f"Station{rig.patients:04d}")
                assignments.check_in(patient, device.address, at=at)
                patients[device.address] = patient
        finally:
            database.close()
        return patients

    @property
    def database_path(self) -> Path:
        return self.state_dir / "station.sqlite3"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StationProcess]:
        command = [sys.executable, "-m", "medikus", "station", "run", "--config", str(self.config)]
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            yield self
        finally:
            # In a thread: the loop must keep serving the simulated BlueZ while the station
            # disconnects its devices, or the station waits for answers that never come.
            await asyncio.shield(asyncio.to_thread(self.stop))

    def stop(self) -> None:
        stop_group(self.process)

    def check(self) -> None:
        """Raises when the station process ended or the simulated BlueZ lost its bus."""
        if self.bus_lost is not None and self.bus_lost.done():
            raise RuntimeError("the simulated BlueZ lost its D-Bus connection")
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"the station exited ({self.process.returncode}):\n{tail}")

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []


async def _subscribed(
    sim: Simulator, station: StationProcess, wanted: Sequence[tuple[str, str]], timeout: float
) -> None:
    """Until the station has subscribed to every (device, characteristic)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [(a, c) for a, c in wanted if not sim.device(a).peripheral.subscribed(c)]
        if not missing:
            return
        station.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not subscribed after {timeout:.0f} s: {missing[:5]}")
        await asyncio.sleep(0.1)


# --- payloads (little-endian, https://www.bluetooth.com/specifications/gss/) ---------------------


def heart_rate(bpm: int) -> bytes:
    return bytes([0x00, bpm])  # flags 0: 8-bit value, no contact status


def plx_continuous(spo2: int, pulse: int) -> bytes:
    return bytes([0x00]) + sfloat(spo2, 0) + sfloat(pulse, 0)  # flags 0: SpO2PR-Normal only


def blood_pressure(systolic: int, diastolic: int, pulse: int) -> bytes:
    mean = diastolic + (systolic - diastolic) // 3
    values = (systolic, diastolic, mean, pulse)
    return bytes([0x04]) + b"".join(sfloat(v, 0) for v in values)  # mmHg, pulse rate present


def temperature(tenths_celsius: int) -> bytes:
    return bytes([0x00]) + tenths_celsius.to_bytes(3, "little") + bytes([0xFF])  # FLOAT, 10⁻¹


def weight(kilograms_x200: int) -> bytes:
    return bytes([0x00]) + struct.pack("<H", kilograms_x200)  # SI, 0.005 kg resolution


def glucose_records(first: int, count: int) -> list[bytes]:
    """``count`` stored records from sequence ``first``, a second apart, ending now."""
    end = wall_clock().replace(microsecond=0)
    return [
        glucose_measurement(first + i, end - timedelta(seconds=count - i), 90 + (first + i) % 60)
        for i in range(count)
    ]


# --- latency -------------------------------------------------------------------------------------


class RecordProbe:
    """The readable-probe: a patient's Observation total in the record core."""

    def __init__(self, http: httpx.AsyncClient, server: Server, patient: str) -> None:
        self._http = http
        self._server = server
        self._params = {"subject": f"Patient/{patient}", "_summary": "count"}
        self.round_trips: list[float] = []

    async def total(self) -> int:
        # Cached; a renewal (due a minute early) happens before the notification, untimed.
        headers = {"Authorization": f"Bearer {self._server.auth.value()}"}
        sent = time.perf_counter()
        response = await self._http.get("/fhir/Observation", params=self._params, headers=headers)
        self.round_trips.append(time.perf_counter() - sent)
        response.raise_for_status()
        return int(response.json()["total"])

    async def above(self, previous: int, pause: float, deadline: float) -> tuple[int, float]:
        """(new total, perf_counter when it was seen) once the total exceeds ``previous``."""
        while time.perf_counter() < deadline:
            total = await self.total()
            if total > previous:
                return total, time.perf_counter()
            await asyncio.sleep(pause)
        raise TimeoutError("not readable in time")


class OutboxProbe:
    """The stored-probe: the highest outbox item id, read from the station's SQLite file."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def last_id(self) -> int:
        row = self._connection.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()
        return int(row[0])

    async def above(self, previous: int, deadline: float) -> tuple[int, float]:
        while time.perf_counter() < deadline:
            last = self.last_id()
            if last > previous:
                return last, time.perf_counter()
            await asyncio.sleep(0.001)
        raise TimeoutError("not stored in time")

    def close(self) -> None:
        self._connection.close()


@dataclass
class _Timed:
    wall: float  # time.time() at notify
    stored_s: float
    readable_s: float
    item_id: int


class TeardownNoise(logging.Filter):
    """dbus-fast ends a bus connection when a write meets a full socket (EAGAIN, inherited from
    python-dbus-next, issue #153): at teardown, when the station disconnects every device at
    once, the simulator's burst of InterfacesRemoved signals can hit it. Only that failure is
    swallowed, only during teardown, and counted: the figures are measured before."""

    LOGGERS = ("dbus_fast.send_reply", "dbus_fast.aio.message_reader", "dbus_fast.message_bus")
    ERRNOS = (errno.EAGAIN, errno.EBADF)

    def __init__(self) -> None:
        super().__init__()
        self.swallowed = 0

    def matches(self, error: BaseException | None) -> bool:
        return isinstance(error, OSError) and error.errno in self.ERRNOS

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and self.matches(record.exc_info[1]):
            self.swallowed += 1
            return False
        return True

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if self.matches(context.get("exception")):
                self.swallowed += 1
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)  # stays: "never retrieved" comes at collection

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


@asynccontextmanager
async def _session(
    sim: Simulator,
    station: StationProcess,
    say: Say,
    prepare: Callable[[Simulator], None] = lambda _: None,
) -> AsyncIterator[None]:
    """The simulator, ``prepare``-d, then the station; down in the reverse order."""
    noise = TeardownNoise()
    try:
        async with sim:
            prepare(sim)
            station.bus_lost = asyncio.ensure_future(sim.closed())
            async with station.running():
                try:
                    yield
                finally:
                    noise.install(asyncio.get_running_loop())
                    station.bus_lost.cancel()
    finally:
        noise.remove()
        if noise.swallowed:
            say(f"teardown: the simulator's bus broke (dbus-fast EAGAIN, {noise.swallowed}×)")


async def measure_latency(rig: Rig, options: Options, say: Say) -> Latency:
    belt = DeviceConfig("heart_rate", "C0:FF:EE:20:00:01", name="Latenz-Gurt")
    station = StationProcess(rig, "latency", [belt])
    patient = station.patients[belt.address]
    sim = Simulator([belt], bus_address=rig.bus.address, clock=wall_clock)
    async with _session(sim, station, say):
        await _subscribed(sim, station, [(belt.address, HEART_RATE)], options.connect_timeout_s)
        say(f"latency: {options.warm_up} + {options.samples} notifications …")
        timed, missing, round_trips = await _latency_samples(
            sim, station, rig, (belt.address, patient), options
        )
        items = await _uploaded_items(station, [t.item_id for t in timed])
    received, uploaded = [], []
    for sample in timed:
        if sample.item_id in items:  # else the station never marked it: no split for it
            reading_at, uploaded_at = items[sample.item_id]
            received.append(reading_at.timestamp() - sample.wall)
            uploaded.append(uploaded_at.timestamp() - sample.wall)
    return Latency(
        received=tuple(received),
        stored=tuple(t.stored_s for t in timed),
        uploaded=tuple(uploaded),
        readable=tuple(t.readable_s for t in timed),
        poll_round_trip=tuple(round_trips),
        missing=missing,
        poll_s=options.poll_s,
    )


async def _latency_samples(
    sim: Simulator,
    station: StationProcess,
    rig: Rig,
    belt: tuple[str, str],
    options: Options,
) -> tuple[list[_Timed], int, list[float]]:
    """Timed samples, how many never became readable, the probe's search round trips."""
    address, patient = belt
    outbox = OutboxProbe(station.database_path)
    timed: list[_Timed] = []
    missing = 0
    try:
        async with httpx.AsyncClient(base_url=rig.server.base, timeout=30) as http:
            record = RecordProbe(http, rig.server, patient)
            total, last_id = await record.total(), outbox.last_id()
            next_at = time.perf_counter()
            for number in range(options.warm_up + options.samples):
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                if number == options.warm_up:
                    record.round_trips.clear()  # the warm-up's searches do not count
                rig.server.auth.value()  # a renewal, if due, outside the clock
                wall, start = time.time(), time.perf_counter()
                if not sim.notify(address, HEART_RATE, heart_rate(60 + number % 90)):
                    raise RuntimeError("the belt is no longer subscribed")
                next_at = start + options.spacing_s
                deadline = start + 10.0
                stored = asyncio.create_task(outbox.above(last_id, deadline))
                try:
                    total, readable_at = await record.above(total, options.poll_s, deadline)
                    last_id, stored_at = await stored
                except TimeoutError:
                    stored.cancel()
                    missing += number >= options.warm_up
                    station.check()
                    total, last_id = await record.total(), outbox.last_id()
                    continue
                if number >= options.warm_up:
                    timed.append(_Timed(wall, stored_at - start, readable_at - start, last_id))
            return timed, missing, record.round_trips
    finally:
        outbox.close()


async def _uploaded_items(
    station: StationProcess, ids: Sequence[int], timeout: float = 30.0
) -> dict[int, tuple[datetime, datetime]]:
    """(received_at, uploaded_at) of each item, once the station has marked them all uploaded
    (the mark follows the record core's answer, so the last one may lag the search)."""
    database = open_database(station.database_path)
    outbox = Outbox(database, _utc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            items = {i: outbox.get(i) for i in ids}
            done = {
                i: (item.reading.received_at, item.uploaded_at)
                for i, item in items.items()
                if item is not None and item.uploaded_at is not None
            }
            if len(done) == len(ids) or time.monotonic() > deadline:
                return done
            await asyncio.sleep(0.2)
    finally:
        database.close()


# --- throughput ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    address: str
    characteristic: str
    interval_s: float
    payloads: tuple[bytes, ...]
    phase_s: float  # offset of the first notification: the devices are not in step


@dataclass
class Counters:
    sent: int = 0
    dropped: int = 0
    glucose: int = 0  # stored records put on the meter


def throughput_devices(options: Options) -> tuple[list[DeviceConfig], DeviceConfig]:
    """The oximeters and one device of every other kind; the glucose meter separately."""
    devices = [
        DeviceConfig("pulse_oximeter", f"C0:FF:EE:30:00:{n:02X}", name=f"Oxi {n + 1}")
        for n in range(options.oximeters)
    ]
    devices += [
        DeviceConfig("blood_pressure", "C0:FF:EE:40:00:01", name="Cuff"),
        DeviceConfig("thermometer", "C0:FF:EE:40:00:02", name="Thermo"),
        DeviceConfig("weight_scale", "C0:FF:EE:40:00:03", name="Scale"),
        DeviceConfig("heart_rate", "C0:FF:EE:40:00:04", name="Belt"),
    ]
    meter = DeviceConfig("glucose_meter", "C0:FF:EE:40:00:05", name="Meter", pin=METER_PIN)
    return devices, meter


def streams(devices: Sequence[DeviceConfig], rng: random.Random) -> list[Stream]:
    out = []
    for number, device in enumerate(devices):
        characteristic, interval, payloads = _schedule(device.kind, number)
        out.append(
            Stream(device.address, characteristic, interval, payloads, rng.random() * interval)
        )
    return out


def _schedule(kind: str, n: int) -> tuple[str, float, tuple[bytes, ...]]:
    """(characteristic, interval, distinct payloads in a cycle) of one device kind."""
    if kind == "pulse_oximeter":
        cycle = [plx_continuous(90 + (n + k) % 10, 60 + (3 * n + k) % 40) for k in range(40)]
        return PLX_CONTINUOUS, 1.0, tuple(cycle)
    if kind == "heart_rate":
        return HEART_RATE, 1.0, tuple(heart_rate(60 + k % 60) for k in range(60))
    if kind == "blood_pressure":
        cycle = [blood_pressure(110 + k % 30, 70 + k % 20, 60 + k % 30) for k in range(30)]
        return BLOOD_PRESSURE, 10.0, tuple(cycle)
    if kind == "thermometer":
        return TEMPERATURE, 10.0, tuple(temperature(360 + k % 15) for k in range(15))
    if kind == "weight_scale":
        return WEIGHT, 30.0, tuple(weight(14000 + k) for k in range(20))
    raise ValueError(f"no stream for {kind}")


async def _stream(sim: Simulator, stream: Stream, counters: Counters, start: float) -> None:
    """Notifications on a fixed schedule (no drift), whatever the previous one cost."""
    loop = asyncio.get_running_loop()
    for k in range(sys.maxsize):
        await asyncio.sleep(max(0.0, start + stream.phase_s + k * stream.interval_s - loop.time()))
        payload = stream.payloads[k % len(stream.payloads)]
        if sim.notify(stream.address, stream.characteristic, payload):
            counters.sent += 1
        else:
            counters.dropped += 1


async def _glucose_syncs(
    sim: Simulator, meter: str, counters: Counters, every: float, first: int
) -> None:
    """The meter gains 5 records and ends its link (as meters do): the station reconnects and
    downloads the new ones."""
    sequence = first
    while True:
        await asyncio.sleep(every)
        sim.add_records(meter, glucose_records(sequence, 5))
        counters.glucose += 5
        sequence += 5
        sim.disconnect(meter)


@dataclass
class _Snapshot:
    counts: dict[State, int]
    observations: int
    cpu: Cpu


async def measure_throughput(rig: Rig, options: Options, say: Say) -> Throughput:
    devices, meter = throughput_devices(options)
    station = StationProcess(rig, "throughput", [*devices, meter])
    plan = streams(devices, random.Random(options.seed))
    counters = Counters()
    sim = Simulator([*devices, meter], bus_address=rig.bus.address, clock=wall_clock)
    # Stored before the station connects: downloaded during the connection and warm-up.
    records = glucose_records(1, options.glucose_records)
    counters.glucose = len(records)
    async with _session(sim, station, say, lambda s: s.add_records(meter.address, records)):
        wanted = [(s.address, s.characteristic) for s in plan] + [(meter.address, GLUCOSE)]
        say(f"throughput: connecting {len(devices) + 1} devices …")
        await _subscribed(sim, station, wanted, options.connect_timeout_s)
        database = open_database(station.database_path)
        try:
            return await _run_window(
                rig, station, sim, Outbox(database, _utc), plan, meter, counters, options, say
            )
        finally:
            database.close()


async def _run_window(
    rig: Rig,
    station: StationProcess,
    sim: Simulator,
    outbox: Outbox,
    plan: Sequence[Stream],
    meter: DeviceConfig,
    counters: Counters,
    options: Options,
    say: Say,
) -> Throughput:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    tasks = [loop.create_task(_stream(sim, s, counters, start)) for s in plan]
    first = options.glucose_records + 1
    tasks.append(
        loop.create_task(
            _glucose_syncs(sim, meter.address, counters, options.glucose_sync_s, first)
        )
    )
    async with httpx.AsyncClient(base_url=rig.server.base, timeout=30) as http:
        try:
            await asyncio.sleep(options.warm_up_s)
            say(f"throughput: {options.duration_s:.0f} s window …")
            before = await _snapshot(rig, station, outbox, http)
            samples = await _sample(station, outbox, options.duration_s)
            after = await _snapshot(rig, station, outbox, http)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        say("throughput: streams stopped, draining …")
        drain_s, final = await _drain(station, outbox, counters.sent + counters.glucose)
    seconds = after.cpu.wall - before.cpu.wall
    stored = sum(after.counts.values()) - sum(before.counts.values())
    uploaded = after.counts[State.UPLOADED] - before.counts[State.UPLOADED]
    return Throughput(
        devices=len(plan) + 1,
        window_s=seconds,
        offered_per_s=sum(1 / s.interval_s for s in plan),
        stored_per_s=stored / seconds,
        uploaded_per_s=uploaded / seconds,
        observations_per_s=(after.observations - before.observations) / seconds,
        samples=tuple(samples),
        slope_per_s=slope([(s.at, float(s.backlog)) for s in samples]),
        drain_s=drain_s,
        lost=counters.sent + counters.glucose - sum(final.values()),
        review=final[State.REVIEW],
        dropped=counters.dropped,
        cpu=_cpu_shares(before.cpu, after.cpu),
        cores=os.cpu_count() or 1,
        workers=options.workers,
    )


async def _snapshot(
    rig: Rig, station: StationProcess, outbox: Outbox, http: httpx.AsyncClient
) -> _Snapshot:
    headers = {"Authorization": f"Bearer {rig.server.auth.value()}"}
    response = await http.get("/fhir/Observation", params={"_summary": "count"}, headers=headers)
    response.raise_for_status()
    statistics = await asyncio.to_thread(outbox.statistics)
    cpu = await asyncio.to_thread(measure_cpu, rig, station)
    return _Snapshot(dict(statistics.counts), int(response.json()["total"]), cpu)


async def _sample(station: StationProcess, outbox: Outbox, duration: float) -> list[Sample]:
    """The backlog once a second for ``duration`` seconds."""
    samples = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(math.floor(duration) + 1):
        await asyncio.sleep(max(0.0, start + k - loop.time()))
        station.check()
        statistics = await asyncio.to_thread(outbox.statistics)
        counts = statistics.counts
        age = statistics.oldest_pending_age(_utc())
        samples.append(
            Sample(
                loop.time() - start,
                counts[State.RECEIVED] + counts[State.READY],
                0.0 if age is None else age.total_seconds(),
            )
        )
    return samples


async def _drain(
    station: StationProcess, outbox: Outbox, expected: int, timeout: float = 120.0
) -> tuple[float, dict[State, int]]:
    """Seconds until every sent reading is stored and none is pending; the final counts."""
    start = time.monotonic()
    while True:
        counts = dict((await asyncio.to_thread(outbox.statistics)).counts)
        pending = counts[State.RECEIVED] + counts[State.READY]
        if (sum(counts.values()) >= expected and pending == 0) or (
            time.monotonic() - start > timeout
        ):
            return time.monotonic() - start, counts
        station.check()
        await asyncio.sleep(0.1)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def measure_cpu(rig: Rig, station: StationProcess) -> Cpu:
    busy, iowait = _machine()
    return Cpu(
        wall=time.monotonic(),
        station=cpu_seconds(station.pids()),
        server=cpu_seconds(rig.server.group_pids() + backend_pids(rig.database)),
        bus=cpu_seconds([rig.bus.process.pid]),
        bench=cpu_seconds([os.getpid()]),
        busy=busy,
        iowait=iowait,
    )


def _machine() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK, fields[4] / TICK


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used in between by processes alive at the end (new ones count from zero)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _cpu_shares(before: Cpu, after: Cpu) -> dict[str, float]:
    """Share of one core per party; ``machine`` and ``iowait`` as a share of all cores."""
    seconds = after.wall - before.wall
    cores = os.cpu_count() or 1
    return {
        "station": _delta(before.station, after.station) / seconds,
        "server": _delta(before.server, after.server) / seconds,
        "dbus-daemon": _delta(before.bus, after.bus) / seconds,
        "simulator": _delta(before.bench, after.bench) / seconds,
        "machine": (after.busy - before.busy) / seconds / cores,
        "iowait": (after.iowait - before.iowait) / seconds / cores,
    }


# --- the run and its table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    kind: str
    workers: int
    load_before: float
    load_after: float
    latency: Latency | None
    throughput: Throughput | None

    @property
    def failed(self) -> bool:
        latency_missed = self.latency is not None and not self.latency.met
        throughput_missed = self.throughput is not None and not self.throughput.sustained
        return latency_missed or throughput_missed


def run(
    kind: str, options: Options, say: Say, *, phases: Sequence[str] = ("latency", "throughput")
) -> Result:
    load = load_average()
    with rig(kind, options.workers) as bench:
        say(f"{kind}: record core up (load average {load:.2f})")
        latency = asyncio.run(measure_latency(bench, options, say)) if "latency" in phases else None
        throughput = (
            asyncio.run(measure_throughput(bench, options, say)) if "throughput" in phases else None
        )
    return Result(kind, options.workers, load, load_average(), latency, throughput)


def table(result: Result) -> str:
    lines = [
        f"\nstation benchmark on {result.kind} ({result.workers} uvicorn workers; load average "
        f"{result.load_before:.2f} before, {result.load_after:.2f} after; {os.cpu_count()} cores)"
    ]
    if result.latency is not None:
        lines += _latency_lines(result.latency)
    if result.throughput is not None:
        lines += _throughput_lines(result.throughput)
    return "\n".join(lines)


def _latency_lines(latency: Latency) -> list[str]:
    lines = [
        f"latency: one heart-rate belt, {len(latency.readable)} notifications one at a time"
        + (f", {latency.missing} NEVER READABLE" if latency.missing else ""),
        f"  {'from notify to …':34s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s}  (ms)",
    ]
    rows = (
        ("received by the station (stamp)", latency.received),
        ("stored in the outbox (committed)", latency.stored),
        ("marked uploaded (station stamp)", latency.uploaded),
        ("readable in the record core", latency.readable),
        ("  (one search of the probe)", latency.poll_round_trip),
    )
    for label, values in rows:
        ordered = sorted(values)
        figures = [percentile(ordered, q) * 1000 for q in (50, 90, 99, 100)]
        lines.append(f"  {label:34s} " + " ".join(f"{f:8.1f}" for f in figures))
    verdict = "ok" if latency.met else "MISSED"
    lines.append(
        f"  target p99 ≤ {LATENCY_TARGET_MS:.0f} ms: {latency.p99_ms:.1f} ms {verdict} "
        f"('readable' is late by at most one search + {latency.poll_s * 1000:.0f} ms pause)"
    )
    return lines


def _throughput_lines(t: Throughput) -> list[str]:
    cpu = t.cpu
    verdict = "ok (no growth)" if t.sustained else "MISSED"
    return [
        f"throughput: {t.devices} devices, {t.window_s:.0f} s window",
        f"  offered (streams, without glucose syncs) {t.offered_per_s:8.1f} /s",
        f"  readings stored in the outbox            {t.stored_per_s:8.1f} /s",
        f"  readings uploaded                        {t.uploaded_per_s:8.1f} /s",
        f"  Observations created in the record core  {t.observations_per_s:8.1f} /s",
        f"  backlog start / middle / end             {t.backlog(0)} / {t.backlog(0.5)} / "
        f"{t.backlog(1)} (max {max((s.backlog for s in t.samples), default=0)}), "
        f"slope {t.slope_per_s:+.3f} /s: {verdict}",
        f"  oldest pending reading, max              "
        f"{max((s.oldest_pending_s for s in t.samples), default=0.0):8.2f} s",
        f"  after the streams stopped: drained in {t.drain_s:.1f} s; lost {t.lost}, "
        f"review {t.review}, dropped by the simulator {t.dropped}",
        f"  CPU, share of one core: station {cpu['station']:.0%}, server {cpu['server']:.0%}, "
        f"dbus-daemon {cpu['dbus-daemon']:.0%}, simulator {cpu['simulator']:.0%}; "
        f"machine {cpu['machine']:.0%} of {t.cores} cores busy, iowait {cpu['iowait']:.0%}",
        *([f"  limiting: {t.limit()}"] if not t.sustained else []),
    ]


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench station", description=__doc__.splitlines()[0]
    )
    defaults = Options()
    parser.add_argument("--db", choices=KINDS, default="sqlite")
    parser.add_argument("--only", choices=("latency", "throughput"), default=None)
    parser.add_argument("--samples", type=int, default=defaults.samples, help="latency samples")
    parser.add_argument(
        "--spacing-ms", type=float, default=defaults.spacing_s * 1000, help="min. gap, ms"
    )
    parser.add_argument("--oximeters", type=int, default=defaults.oximeters)
    parser.add_argument(
        "--duration", type=float, default=defaults.duration_s, help="throughput window, s"
    )
    parser.add_argument("--glucose-records", type=int, default=defaults.glucose_records)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="uvicorn workers")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str], say: Say) -> int:
    args = parse_args(argv)
    options = Options(
        samples=args.samples,
        spacing_s=args.spacing_ms / 1000,
        oximeters=args.oximeters,
        duration_s=args.duration,
        glucose_records=args.glucose_records,
        workers=args.workers,
        seed=args.seed,
    )
    phases = (args.only,) if args.only else ("latency", "throughput")
    result = run(args.db, options, say, phases=phases)
    print(table(result))
    return 1 if result.failed else 0


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], _say))
