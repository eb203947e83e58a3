"""Encrypted backups on SQLite and PostgreSQL: round trip through the CLI while the server's
record core is open, and refusal of tampered, truncated or foreign archives (medikus/backup.py)."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.keyring import Keyring
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.backup import BackupError, Header, create_backup, read_archive, restore_backup
from medikus.backup import write_archive as seal
from medikus.cli import main

FAMILY = "Brombeerstrauch-Oyelaran"
KEYS = Keyring({1: bytes(range(32))}, 1)


def add_patient(core: RecordCore) -> str:
    body = orjson.dumps({"resourceType": "Patient", "name": [{"family": FAMILY}]})
    headers = {"content-type": "application/fhir+json"}
    response = core.handle(FhirRequest("POST", "Patient", headers=headers, body=body))
    assert response.status == 201, response.body
    return str(orjson.loads(response.body)["id"])


def patients(core: RecordCore) -> set[str]:
    response = core.handle(FhirRequest("GET", "Patient", query=[("name", "brombeer")]))
    assert response.status == 200, response.body
    return {e["resource"]["id"] for e in orjson.loads(response.body).get("entry", [])}


def drop_database(database_url: str) -> None:
    """The disaster: the database is gone (SQLite file and WAL; PostgreSQL: an empty schema)."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            part.unlink(missing_ok=True)
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None and schema[0].startswith("t_")
        conn.execute(f"DROP SCHEMA {schema[0]} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema[0]}")


def is_empty(database_url: str) -> bool:
    if database_url.startswith("sqlite"):
        return not Path(database_url.removeprefix("sqlite:///")).exists()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = "
            "split_part(current_setting('search_path'), ',', 1)"
        ).fetchone()
    return row == (0,)


@pytest.fixture
def core(database_url: str, keyring: Keyring) -> Iterator[RecordCore]:
    opened = RecordCore.open(database_url, keyring=keyring)
    yield opened
    opened.close()


def test_backup_and_restore_round_trip_through_the_cli(
    database_url: str, core: RecordCore, keyring: Keyring, tmp_path: Path
) -> None:
    anna = add_patient(core)
    archive = tmp_path / "medikus.backup"
    runner = CliRunner()
    # The record core stays open and writable: an online backup.
    made = runner.invoke(main, ["backup", str(archive), "--database-url", database_url])
    assert made.exit_code == 0, made.output
    later = add_patient(core)  # after the backup: not in it
    core.close()
    data = archive.read_bytes()
    assert FAMILY.encode() not in data and b"resource_version" not in data
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    refused = runner.invoke(main, ["backup", str(archive), "--database-url", database_url])
    assert refused.exit_code != 0 and "never overwrites" in refused.output

    not_empty = runner.invoke(main, ["restore", str(archive), "--database-url", database_url])
    assert not_empty.exit_code != 0 and "empty target" in not_empty.output
    drop_database(database_url)
    restored = runner.invoke(main, ["restore", str(archive), "--database-url", database_url])
    assert restored.exit_code == 0, restored.output
    reopened = RecordCore.open(database_url, keyring=keyring)
    try:
        assert patients(reopened) == {anna}  # decrypts with the same keys, searches by token
        assert later not in patients(reopened)
        assert add_patient(reopened)  # and takes writes again
    finally:
        reopened.close()


def _archive(database_url: str, core: RecordCore, keyring: Keyring, tmp_path: Path) -> Path:
    add_patient(core)
    core.close()
    archive = tmp_path / "medikus.backup"
    create_backup(database_url, archive, keyring)
    drop_database(database_url)
    return archive


@pytest.mark.parametrize(
    "damage",
    ["flip a byte", "cut the end", "cut the final chunk", "append", "header", "magic"],
)
def test_a_damaged_archive_is_refused_and_nothing_restored(
    database_url: str, core: RecordCore, keyring: Keyring, tmp_path: Path, damage: str
) -> None:
    archive = _archive(database_url, core, keyring, tmp_path)
    data = bytearray(archive.read_bytes())
    header_end = 16 + 4 + int.from_bytes(data[16:20], "big")
    if damage == "flip a byte":
        data[(header_end + len(data)) // 2] ^= 0x01
    elif damage == "cut the end":
        del data[-100:]
    elif damage == "cut the final chunk":
        del data[header_end:]  # one chunk (the final one): the header alone remains
    elif damage == "append":
        data += b"\x00\x00\x00\x00"
    elif damage == "header":
        data[header_end - 3] ^= 0x01  # inside the JSON header: every chunk's AAD changes
    else:
        data[0:4] = b"NOPE"
    archive.write_bytes(bytes(data))
    with pytest.raises(BackupError):
        restore_backup(archive, database_url, keyring)
    assert is_empty(database_url)


def test_an_archive_under_another_key_is_refused(
    database_url: str, core: RecordCore, keyring: Keyring, tmp_path: Path
) -> None:
    archive = _archive(database_url, core, keyring, tmp_path)
    other = Keyring({keyring.current_version: os.urandom(32)}, keyring.current_version)
    with pytest.raises(BackupError, match="does not authenticate"):
        restore_backup(archive, database_url, other)
    missing = Keyring({keyring.current_version + 1: os.urandom(32)}, keyring.current_version + 1)
    with pytest.raises(BackupError, match="does not hold"):
        restore_backup(archive, database_url, missing)
    assert is_empty(database_url)


# -- the archive format, property-based ------------------------------------------------------------


def sealed(data: bytes, chunk_size: int) -> bytes:
    out = io.BytesIO()
    header = Header("sqlite", None, "2026-01-01T00:00:00+00:00", 1, b"s" * 32, chunk_size)
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]  # any chunking of the input
    seal(out, KEYS, header, pieces)
    return out.getvalue()


def opened(archive: bytes) -> bytes:
    _, chunks = read_archive(io.BytesIO(archive), KEYS)
    return b"".join(chunks)


def chunk_spans(archive: bytes) -> list[tuple[int, int]]:
    position = 16 + 4 + int.from_bytes(archive[16:20], "big")
    spans = []
    while position < len(archive):
        length = int.from_bytes(archive[position : position + 4], "big")
        spans.append((position, position + 4 + length))
        position += 4 + length
    return spans


@settings(max_examples=200)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_data_round_trips(data: bytes, chunk_size: int) -> None:
    assert opened(sealed(data, chunk_size)) == data


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=200), st.integers(1, 32), st.data())
def test_any_change_truncation_or_reordering_is_refused(
    data: bytes, chunk_size: int, draw: Any
) -> None:
    archive = bytearray(sealed(data, chunk_size))
    spans = chunk_spans(bytes(archive))
    kind = draw.draw(st.sampled_from(["flip", "truncate", "swap", "drop", "repeat", "append"]))
    if kind == "flip":
        position = draw.draw(st.integers(0, len(archive) - 1))
        archive[position] ^= 1 << draw.draw(st.integers(0, 7))
    elif kind == "truncate":
        del archive[draw.draw(st.integers(0, len(archive) - 1)) :]
    elif kind == "append":
        archive += draw.draw(st.binary(min_size=1, max_size=40))
    else:
        chunks = [bytes(archive[a:b]) for a, b in spans]
        head = bytes(archive[: spans[0][0]])
        if kind == "swap" and len(chunks) >= 2:
            i = draw.draw(st.integers(0, len(chunks) - 2))
            if chunks[i] == chunks[i + 1]:
                return  # equal ciphertexts cannot be (distinct nonces): nothing swapped
            chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
        elif kind == "drop":
            del chunks[draw.draw(st.integers(0, len(chunks) - 1))]
        else:
            i = draw.draw(st.integers(0, len(chunks) - 1))
            chunks.insert(i, chunks[i])
        archive = bytearray(head + b"".join(chunks))
        if len(spans) == 1 and kind == "swap":
            archive += b"x"  # nothing to swap: extend instead
    with pytest.raises(BackupError):
        opened(bytes(archive))
