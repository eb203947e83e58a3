"""``medikus serve`` as a real process group for the benchmark, and CPU accounting from /proc.

The server under test speaks the FHIR RESTful API (https://hl7.org/fhir/R4/http.html); it runs in
its own session so that stopping it reaches every uvicorn worker, and so that Ctrl-C in the
terminal reaches only the benchmark, which then stops the server itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from compliance.keyring import ENV_KEYS, generate_key_file
from medikus.auth_setup import SystemTokens

_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_keys() -> None:
    """Master keys for the server under test and its tokens: the environment's, else a new key
    file of this run (outside the repository, which the keyring refuses)."""
    if os.environ.get("MEDIKUS_KEY_FILE") or os.environ.get(ENV_KEYS):
        return
    path = Path(tempfile.mkdtemp(prefix="medikus-bench-keys-")) / "keys.json"
    generate_key_file(path)
    os.environ["MEDIKUS_KEY_FILE"] = str(path)


class Server:
    """A ``medikus serve --workers N`` process group; a context manager that always stops it."""

    def __init__(self, database_url: str, workers: int, ready_timeout: float = 90) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        ensure_keys()
        # Requests carry a system token of the server's own admin client (its issuer and
        # audience: this server's address).
        self.auth = SystemTokens.for_server(database_url, self.base)
        self.database_url = database_url
        self.workers = workers
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self) -> None:
        command = [sys.executable, "-m", "medikus", "serve", "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--database-url", self.database_url]
        # The rate limits would throttle the benchmark's own bursts (they have their own tests).
        env = {**os.environ, "MEDIKUS_PUBLIC_URL": self.base, "MEDIKUS_RATE_LIMIT": "false"}
        self.process = subprocess.Popen(command, start_new_session=True, env=env)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited during start ({self.process.returncode})")
            if self._ready():
                self._wait_for_workers(deadline)
                return
            time.sleep(0.2)
        raise TimeoutError("the server did not become ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_for_workers(self, deadline: float) -> None:
        # /readyz answers as soon as one worker is up; the others may still be importing, and
        # that start-up CPU must not be counted as work of the benchmark.
        while time.monotonic() < deadline and len(self.worker_pids()) < self.workers:
            time.sleep(0.2)
        time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 20 s; safe to call twice."""
        stop_group(self.process)

    def group_pids(self) -> list[int]:
        """Every live process of the server's process group (the master and its workers)."""
        if self.process is None:
            return []
        return [pid for pid, stat in _all_stats() if _field(stat, 2) == self.process.pid]

    def worker_pids(self) -> list[int]:
        """The uvicorn workers (spawned children of the master, not its resource tracker)."""
        assert self.process is not None
        master = self.process.pid
        if self.workers == 1:  # uvicorn serves in the master process itself
            return [master] if self.process.poll() is None else []
        return [
            pid
            for pid in self.group_pids()
            if pid != master and _parent(pid) == master and b"spawn_main" in _cmdline(pid)
        ]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds per process (processes that are gone are left out)."""
    out: dict[int, float] = {}
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            out[pid] = (_field(stat, 11) + _field(stat, 12)) / _TICK
    return out


def machine_busy_seconds() -> float:
    """CPU seconds spent busy on all cores since boot (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


def load_average() -> float:
    return os.getloadavg()[0]


def _all_stats() -> list[tuple[int, str]]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                out.append((int(name), stat))
    return out


def _stat(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: fields start after the last ')'.
    return text.rsplit(")", 1)[1]


def _field(stat: str, index: int) -> int:
    """Numeric field ``index`` after the command name (1 = ppid, 2 = pgrp, 11 = utime, 12 = stime)."""
    return int(stat.split()[index])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else _field(stat, 1)


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to a process group started with ``start_new_session``, SIGKILL after 20 s."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
