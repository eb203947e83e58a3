"""The ``medikus`` command line as real processes: serve, load, help (click, https://click.palletsprojects.com).

``serve`` must come up on SQLite and PostgreSQL, with one or several workers, on the default SQLite
file in the data directory, and refuse an unreachable database at once with one line on stderr.
``load`` posts Synthea bundles as transactions (https://hl7.org/fhir/R4/http.html#transaction).
About 60 s on both databases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from medikus.auth_setup import SystemTokens
from medikus.loader import read_bundle, synthea_bundles
from tests.conftest import ServerProcess, _pg_schema_url, free_port

# The console script pyproject.toml installs, next to the interpreter running the tests.
MEDIKUS = Path(sys.executable).with_name("medikus")
FHIR = {"Content-Type": "application/fhir+json"}


def medikus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MEDIKUS), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def assert_healthy(base: str) -> None:
    health = httpx.get(f"{base}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["database"] == "ok"


def create_patient(base: str, family: str, auth: httpx.Auth) -> str:
    body = orjson.dumps({"resourceType": "Patient", "name": [{"family": family}]})
    response = httpx.post(f"{base}/fhir/Patient", content=body, headers=FHIR, timeout=30, auth=auth)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def patient_total(base: str, auth: httpx.Auth) -> int:
    response = httpx.get(f"{base}/fhir/Patient", params={"_count": "0"}, timeout=30, auth=auth)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def test_help() -> None:
    top = medikus("--help")
    assert top.returncode == 0, top.stderr
    assert all(command in top.stdout for command in ("serve", "load", "demo"))
    serve = medikus("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    assert all(option in serve.stdout for option in ("--port", "--workers", "--database-url"))
    load = medikus("load", "--help")
    assert load.returncode == 0 and "--url" in load.stdout


def test_serve_on_sqlite(tmp_path: Path) -> None:
    database = tmp_path / "serve.sqlite3"
    server = ServerProcess(f"sqlite:///{database}").start()
    try:
        assert_healthy(server.base)
        id = create_patient(server.base, "Sqlite", server.auth)
        read = httpx.get(f"{server.base}/fhir/Patient/{id}", timeout=10, auth=server.auth)
        assert read.status_code == 200
        # Without a token: 401 with the RFC 6750 challenge.
        anonymous = httpx.get(f"{server.base}/fhir/Patient/{id}", timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
    finally:
        server.stop()
    assert database.stat().st_size > 0


@pytest.fixture
def pg_url(pg_dsn: str) -> Iterator[str]:
    yield from _pg_schema_url(pg_dsn)


@pytest.mark.postgres
def test_serve_on_postgresql_uses_the_given_schema(pg_url: str, pg_dsn: str) -> None:
    server = ServerProcess(pg_url).start()
    try:
        assert_healthy(server.base)
        create_patient(server.base, "Postgres", server.auth)
    finally:
        server.stop()
    schema = pg_url.rsplit("%3D", 1)[1]  # options=-csearch_path%3D<schema>
    with psycopg.connect(pg_dsn) as conn:
        # Patients only: the audit trail keeps its AuditEvents as resources too.
        row = conn.execute(
            f"SELECT count(*) FROM {schema}.resource WHERE res_type = 'Patient'"
        ).fetchone()
    assert row == (1,)


def _worker_processes(parent: int) -> int:
    """Children of ``parent`` that are multiprocessing workers (Linux /proc)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            count += 1
    return count


def test_serve_with_two_workers(database_url: str) -> None:
    server = ServerProcess(database_url, workers=2).start()
    try:
        assert server.process is not None
        deadline = time.monotonic() + 30
        while _worker_processes(server.process.pid) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _worker_processes(server.process.pid) == 2
        assert_healthy(server.base)
        with ThreadPoolExecutor(max_workers=4) as pool:  # both workers write at once
            ids = list(
                pool.map(
                    lambda n: create_patient(server.base, f"Worker{n}", server.auth), range(20)
                )
            )
        assert len(set(ids)) == 20
        assert patient_total(server.base, server.auth) == 20
    finally:
        server.stop()


@contextmanager
def serving_without_database_url(env: dict[str, str], log: Path, port: int) -> Iterator[str]:
    """``medikus serve`` with no --database-url (ServerProcess always passes one)."""
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MEDIKUS), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_default_database_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "medikus-data"
    env = {k: v for k, v in os.environ.items() if k != "MEDIKUS_DATABASE_URL"}
    env["MEDIKUS_DATA_DIR"] = str(data_dir)
    port = free_port()
    env["MEDIKUS_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    auth = SystemTokens.for_server(
        f"sqlite:///{data_dir / 'medikus.sqlite3'}", env["MEDIKUS_PUBLIC_URL"]
    )
    with serving_without_database_url(env, tmp_path / "serve.log", port) as base:
        assert_healthy(base)
        create_patient(base, "Default", auth)
        assert (data_dir / "medikus.sqlite3").is_file()
    # The data survives a restart on the same default file.
    with serving_without_database_url(env, tmp_path / "serve-again.log", port) as base:
        assert patient_total(base, auth) == 1


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://127.0.0.1:1/x",  # nothing listens on port 1
        "sqlite:////nonexistent-directory/x.sqlite3",
        "not-a-database-url",
    ],
)
def test_unusable_database_exits_at_once_with_one_line(url: str) -> None:
    started = time.monotonic()
    result = medikus("serve", "--port", str(free_port()), "--database-url", url)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database unreachable" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_load_synthea_bundles(server: ServerProcess) -> None:
    paths = synthea_bundles()[:2]
    token = server.auth.value()
    result = medikus("load", *map(str, paths), "--url", f"{server.base}/fhir", "--token", token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert patient_total(server.base, server.auth) == 2
    for path in paths:
        patient = next(
            e["resource"]
            for e in read_bundle(path)["entry"]
            if e["resource"]["resourceType"] == "Patient"
        )
        identifier = patient["identifier"][0]
        found = httpx.get(
            f"{server.base}/fhir/Patient",
            params={"identifier": f"{identifier['system']}|{identifier['value']}"},
            timeout=30,
            auth=server.auth,
        ).json()
        assert found["total"] == 1
        assert found["entry"][0]["resource"]["name"] == patient["name"]


def test_load_into_an_unreachable_server_exits_with_one_line() -> None:
    path = str(synthea_bundles()[0])
    url = f"http://127.0.0.1:{free_port()}/fhir"
    result = medikus("load", path, "--url", url, "--token", "unused")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
