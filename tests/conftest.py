"""Shared fixtures: real SQLite and PostgreSQL databases, the app in process, a server process.

PostgreSQL tests must run in CI (CI=true): there a missing server fails the run. Elsewhere they
are skipped with a loud warning at the end of the session.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import settings

from compliance.keyring import ENV_KEYS, Keyring, generate_key_file
from fhir_server.context import Settings
from fhir_server.core import RecordCore
from medikus.app import create_app
from medikus.auth_setup import SystemTokens
from medikus.auth_setup import keyring as master_keys
from medikus.config import Config

PG_DSN = os.environ.get("MEDIKUS_TEST_PG", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
# Rate limits have their own tests (tests/medikus/test_rate_limit.py switches them on); the
# other tests send bursts a real client would spread out.
os.environ.setdefault("MEDIKUS_RATE_LIMIT", "false")
ROOT = Path(__file__).resolve().parent.parent
_pg_missing: list[str] = []

# CI explores the same examples on every run (a red CI is then a real regression, reproducible
# locally with HYPOTHESIS_PROFILE=ci); local runs keep exploring new random examples.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if IN_CI or os.environ.get("HYPOTHESIS_PROFILE") == "ci":
    settings.load_profile("ci")


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError as exc:
        if not _pg_missing:
            _pg_missing.append(str(exc).strip())
        return False


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _pg_missing:
        terminalreporter.write_line(
            "\n"
            + "!" * 78
            + f"\n!! PostgreSQL at {PG_DSN} is NOT reachable: the PostgreSQL tests were SKIPPED.\n"
            f"!! ({_pg_missing[0]})\n!! Start it: pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start\n" + "!" * 78,
            red=True,
            bold=True,
        )


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    if not pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but not reachable at {PG_DSN}")
        pytest.skip("PostgreSQL not reachable (see the warning at the end)")
    return PG_DSN


def _pg_schema_url(dsn: str) -> Iterator[str]:
    """A fresh schema per use, so tests never see each other's rows."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{dsn}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test runs once on a new SQLite file and once on a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
    else:
        yield from _pg_schema_url(request.getfixturevalue("pg_dsn"))


class Clock:
    """A controllable clock (epoch microseconds) that advances 1 ms per reading."""

    def __init__(self, start: int = 1_767_225_600_000_000) -> None:  # 2026-01-01T00:00:00Z
        self.now = start

    def __call__(self) -> int:
        self.now += 1000
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session", autouse=True)
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyring]:
    """The master keys of this test session (encryption at rest), in a key file outside the
    repository; server processes find it through MEDIKUS_KEY_FILE (unless keys are given)."""
    if os.environ.get("MEDIKUS_KEY_FILE") or os.environ.get(ENV_KEYS):
        yield master_keys(Config())
        return
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    os.environ["MEDIKUS_KEY_FILE"] = str(path)
    try:
        yield generate_key_file(path)
    finally:
        os.environ.pop("MEDIKUS_KEY_FILE", None)


@pytest.fixture
def record(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[RecordCore]:
    core = RecordCore.open(
        database_url,
        clock=clock,
        settings=Settings(max_body_bytes=2 * 1024 * 1024),
        keyring=keyring,
    )
    yield core
    core.close()


@pytest.fixture
def client(record: RecordCore) -> Iterator[TestClient]:
    with TestClient(create_app(record=record), base_url="http://testserver") as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``medikus serve`` as a real process (uvicorn workers), for crash and client tests.
    ``auth`` signs requests with a system token (``httpx.Client(auth=server.auth)``)."""

    def __init__(
        self, database_url: str, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.workers = workers
        # The tokens' issuer and audience are the server's public address.
        self.env = {**os.environ, "MEDIKUS_PUBLIC_URL": self.base, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.auth = SystemTokens.for_server(database_url, self.base)

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medikus",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--database-url",
                self.database_url,
            ],
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "server exited during start"
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def kill(self) -> None:
        """SIGKILL to the whole process group: no graceful shutdown of any worker."""
        assert self.process is not None
        os.killpg(self.process.pid, 9)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server(database_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(database_url).start()
    yield process
    process.stop()
