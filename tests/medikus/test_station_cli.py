"""``medikus station init|status|review|check-in`` and the configuration's error messages."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result

from devices.outbox import Outbox, State, open_database
from devices.reading import Reading
from medikus.cli import main

CONFIG = """station_id = "pilotzentrum-test"
record_core = "http://127.0.0.1:9/fhir"
key_file = "station.jwk"
state_dir = "state"

[[devices]]
address = "a0:b1:c2:d3:e4:01"
kind = "blood-pressure"
"""


def station(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["station", *args, "--config", str(tmp_path / "station.toml")])


def test_init_creates_a_private_key_and_says_how_to_register(tmp_path: Path) -> None:
    (tmp_path / "station.toml").write_text(CONFIG)
    done = station(tmp_path, "init")
    assert done.exit_code == 0, done.output
    key = tmp_path / "station.jwk"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    jwks = json.loads((tmp_path / "station.jwks.json").read_text())
    assert [k["kty"] for k in jwks["keys"]] == ["EC"] and "d" not in jwks["keys"][0]
    assert "medikus admin create-client pilot-station --jwks" in done.output
    again = station(tmp_path, "init")  # never overwrites a key
    assert again.exit_code == 1 and "existiert schon" in again.output


def test_review_queue_lists_and_assigns(tmp_path: Path) -> None:
    (tmp_path / "station.toml").write_text(CONFIG)
    database = open_database(tmp_path / "state" / "station.sqlite3")
    outbox = Outbox(database, lambda: datetime.now(UTC))
    reading = Reading(
        "A0:B1:C2:D3:E4:01",
        "00002a35-0000-1000-8000-00805f9b34fb",
        bytes.fromhex("1e7800"),
        datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    )
    item = outbox.append(reading)
    assert item is not None
    outbox.mark_review(item, "Messwert nicht lesbar / unreadable reading")
    database.close()

    listed = station(tmp_path, "review")
    assert listed.exit_code == 0, listed.output
    assert f"{item}\t2026-03-02T09:00:00+00:00\tA0:B1:C2:D3:E4:01\t1e7800" in listed.output
    assert "1 zur Prüfung / waiting for review" in listed.output
    status = json.loads(station(tmp_path, "status").output)
    assert status["review"] == 1 and status["uploaded"] == 0

    assigned = station(tmp_path, "review", "--assign", str(item), "pat-1")
    assert assigned.exit_code == 0, assigned.output
    database = open_database(tmp_path / "state" / "station.sqlite3")
    try:
        back = Outbox(database, lambda: datetime.now(UTC)).get(item)
    finally:
        database.close()
    assert back is not None and back.state is State.RECEIVED and back.patient_id == "pat-1"


def test_configuration_errors_name_the_place(tmp_path: Path) -> None:
    (tmp_path / "station.toml").write_text(CONFIG.replace("blood-pressure", "toaster"))
    done = station(tmp_path, "status")
    assert done.exit_code == 1 and "devices.0.kind" in done.output
    (tmp_path / "station.toml").write_text("station_id = [")
    assert "kein gültiges TOML / not valid TOML" in station(tmp_path, "status").output
    missing = CliRunner().invoke(main, ["station", "status", "--config", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "nicht lesbar / not readable" in missing.output


def test_check_in_at_an_unconfigured_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "station.toml").write_text(CONFIG)
    done = station(tmp_path, "check-in", "--device", "A0:B1:C2:D3:E4:99", "--kvnr", "A123456789")
    assert done.exit_code == 1 and "nicht konfiguriert / not configured" in done.output
