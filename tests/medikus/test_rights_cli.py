"""``medikus retention …``, ``export-patient`` and ``research-export`` as real processes, on
SQLite and PostgreSQL (the data is written in process with a clock set back to 2014)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from compliance._sqlstore import join_grant
from compliance.keyring import Keyring
from compliance.principal import system_principal
from fhir_server._time import to_micros
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.auth_setup import open_auth
from medikus.cli import main
from medikus.config import Config
from tests.conftest import Clock

MEDIKUS = Path(sys.executable).with_name("medikus")


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def medikus(url: str, *args: str) -> Ran:
    """The command in process (click's runner: real database, real files; one interpreter start
    instead of one per command)."""
    result = CliRunner().invoke(main, list(args), env={"MEDIKUS_DATABASE_URL": url})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def medikus_process(
    url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script as a real process."""
    env = {**os.environ, "MEDIKUS_DATABASE_URL": url}
    return subprocess.run(
        [str(MEDIKUS), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
        input=stdin,
    )


class Seeder:
    def __init__(self, url: str, keyring: Keyring) -> None:
        self.clock = Clock(to_micros(datetime(2014, 3, 1, tzinfo=UTC)))
        self.core = RecordCore.open(url, clock=self.clock, keyring=keyring)

    def create(self, body: dict[str, Any]) -> str:
        request = FhirRequest(
            "POST",
            body["resourceType"],
            headers={"content-type": "application/fhir+json"},
            body=orjson.dumps(body),
            principal=system_principal(),
        )
        response = self.core.handle(request)
        assert response.status == 201, response.body
        return str(orjson.loads(response.body)["id"])

    def patient(self, family: str) -> str:
        patient = self.create(
            {"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1948-05-01"}
        )
        self.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": f"Patient/{patient}"},
                "effectiveDateTime": "2014-02-27T08:00:00Z",
                "valueQuantity": {"value": 71.5, "unit": "kg"},
                "note": [{"text": f"{family} wirkt erschöpft"}],
            }
        )
        return patient

    def exists(self, patient: str) -> bool:
        return self.core.ctx.store.read("Patient", patient) is not None


@pytest.fixture
def seeded(database_url: str, keyring: Keyring) -> Iterator[tuple[Seeder, dict[str, str]]]:
    seeder = Seeder(database_url, keyring)
    ids = {name: seeder.patient(name) for name in ("Altmann", "Haltmeier", "Neumann")}
    try:
        yield seeder, ids
    finally:
        seeder.core.close()


def test_retention_commands(database_url: str, seeded: tuple[Seeder, dict[str, str]]) -> None:
    seeder, ids = seeded
    old, held = ids["Altmann"], ids["Haltmeier"]
    added = medikus(
        database_url, "retention", "hold", "add", held, "--reason", "Klage 3 O 12/25", "--by", "dpo"
    )
    assert added.returncode == 0, added.stderr
    listed = medikus(database_url, "retention", "hold", "list")
    assert held in listed.stdout and "Klage 3 O 12/25" in listed.stdout and "dpo" in listed.stdout

    dry = medikus_process(database_url, "retention", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"Patient/{old}: würde gelöscht" in dry.stdout
    assert f"Patient/{held}: fällig, aber gesperrt" in dry.stdout
    assert seeder.exists(old)  # a dry run changes nothing

    # The patient's account and video join link live in the identity store: they go too.
    account = medikus_process(
        database_url,
        *("admin", "create-user", "altmann", "--role", "patient", "--name", "E. Altmann"),
        *("--patient", old, "--password-stdin"),
        stdin="Kuseler-Bergland-2014!",
    )
    assert account.returncode == 0, account.stderr
    with closing(open_auth(Config(), database_url=database_url)) as auth:
        auth.join.issue_link(f"Patient/{old}", "Appointment/a1")
        auth.join.issue_link(f"Patient/{held}", "Appointment/a2")

    run = medikus(database_url, "retention", "run")
    assert run.returncode == 0, run.stderr
    assert f"Patient/{old}: gelöscht" in run.stdout and "Observation 1" in run.stdout
    assert not seeder.exists(old) and seeder.exists(held)
    with closing(open_auth(Config(), database_url=database_url)) as auth:
        assert auth.identity.account("altmann") is None
        with auth.store._read() as c:
            subjects = set(c.execute(sa.select(join_grant.c.subject)).scalars())
    assert f"Patient/{old}" not in subjects and f"Patient/{held}" in subjects

    removed = medikus(
        database_url, "retention", "hold", "remove", held, "--reason", "Verfahren beendet"
    )
    assert removed.returncode == 0, removed.stderr
    again = medikus(database_url, "retention", "hold", "remove", held, "--reason", "x")
    assert again.returncode == 1 and "keine Sperre" in again.stderr
    assert "aufgehoben" in medikus(database_url, "retention", "hold", "list", "--all").stdout
    assert medikus(database_url, "retention", "run").returncode == 0
    assert not seeder.exists(held)
    runs = medikus(database_url, "retention", "runs").stdout.splitlines()
    assert len(runs) == 3 and "Probelauf" in runs[-1]

    unknown = medikus(database_url, "retention", "hold", "add", "nope", "--reason", "x")
    assert unknown.returncode == 1 and "not on record" in unknown.stderr


def test_export_commands(
    database_url: str, seeded: tuple[Seeder, dict[str, str]], tmp_path: Path
) -> None:
    _, ids = seeded
    out = tmp_path / "akte.json"
    exported = medikus(database_url, "export-patient", ids["Neumann"], str(out))
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bundle = orjson.loads(out.read_bytes())
    assert bundle["type"] == "collection"
    types = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert types == ["Observation", "Patient"]
    missing = medikus(database_url, "export-patient", "nope", str(tmp_path / "x.json"))
    assert missing.returncode == 1 and "nope" in missing.stderr
    assert not (tmp_path / "x.json").exists()

    extract = tmp_path / "studie.ndjson"
    research = medikus(
        database_url,
        "research-export",
        "--study",
        "hf-2026",
        "--types",
        "Patient,Observation",
        str(extract),
    )
    assert research.returncode == 0, research.stderr
    assert "3 Patienten" in research.stdout
    lines = [orjson.loads(line) for line in extract.read_bytes().splitlines()]
    assert len(lines) == 6
    text = extract.read_text()
    assert all(name not in text for name in ("Altmann", "Haltmeier", "Neumann", "erschöpft"))
    assert all(pid not in text for pid in ids.values())
    refused = medikus(
        database_url, "research-export", "--study", "s", "--types", "AuditEvent", str(extract)
    )
    assert refused.returncode == 1 and "AuditEvent" in refused.stderr
