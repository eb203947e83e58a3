"""``medikus backup OUT`` / ``medikus restore IN``: encrypted backups (BSI TR-03161 O.Arch_4,
GDPR Art. 32(1)(c): quick restore).

Reference: compliance.md §3 "Encryption at rest" and §5 (restore drill). What is saved: SQLite,
the whole database through SQLite's online backup API (a consistent copy while the server runs
and writes); PostgreSQL, the schema of the database URL as ``pg_dump --format=custom`` (schema,
data, sequences; the tables of every component). Payloads inside are encrypted already; the
archive is encrypted as a whole on top, so no table, name or count is visible either.

Archive format 1::

    "MEDIKUS-BACKUP1\\n"                       16 bytes
    header length (4 bytes, big-endian), header (JSON: format, dialect, schema, created,
    key_version, salt, chunk_size)
    chunks: length (4 bytes) + AES-256-GCM(plaintext of at most chunk_size bytes)

The key is HKDF-SHA256 of ``keyring.subkey("backup", key_version)`` with the archive's random
salt (a new key per archive, so the nonce can be the chunk index). Every chunk's associated
data is the SHA-256 of magic and header, the chunk index and a final flag; the last chunk
carries the flag. So a changed header or chunk, chunks swapped, dropped or repeated, an archive
cut after any chunk (no final flag) and bytes after the final chunk are all refused. Restore
checks the whole archive while writing to a temporary file or into one PostgreSQL transaction,
and only then makes the database appear: a refused archive leaves nothing behind.

The master key version named in the header must still be in the keyring when restoring: keep
retired master keys as long as backups made under them are kept, and keep the key file apart
from the backups (a backup without its key file is unreadable, by design).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess  # nosec B404 # runs pg_dump / pg_restore with fixed arguments
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import click
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from compliance.keyring import Keyring, KeyringError
from medikus.auth_setup import keyring as master_keys
from medikus.config import Config

__all__ = ["BackupError", "backup", "create_backup", "restore", "restore_backup"]

MAGIC: Final = b"MEDIKUS-BACKUP1\n"
PURPOSE: Final = "backup"
FORMAT: Final = 1
CHUNK: Final = 1 << 20
_LENGTH: Final = struct.Struct(">I")
_MAX_HEADER: Final = 64 * 1024
_INFO: Final = b"medikus backup v1"


class BackupError(Exception):
    """A backup cannot be made, or an archive is refused (tampered, truncated, wrong key)."""


@dataclass(frozen=True, slots=True)
class Header:
    dialect: str
    schema: str | None
    created: str
    key_version: int
    salt: bytes
    chunk_size: int = CHUNK

    def encode(self) -> bytes:
        document = {
            "format": FORMAT,
            "dialect": self.dialect,
            "schema": self.schema,
            "created": self.created,
            "key_version": self.key_version,
            "salt": base64.b64encode(self.salt).decode(),
            "chunk_size": self.chunk_size,
        }
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def decode(cls, text: bytes) -> Header:
        try:
            document = json.loads(text)
            if document["format"] != FORMAT:
                raise BackupError(f"archive format {document['format']} is unknown")
            header = cls(
                str(document["dialect"]),
                document["schema"],
                str(document["created"]),
                int(document["key_version"]),
                base64.b64decode(document["salt"], validate=True),
                int(document["chunk_size"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError("the archive header is malformed") from exc
        if not 0 < header.chunk_size <= 64 * CHUNK or len(header.salt) != 32:
            raise BackupError("the archive header is malformed")
        return header


class _Cipher:
    """AES-GCM under the archive's key; nonce = chunk index, AAD = header digest, index, final."""

    def __init__(self, keyring: Keyring, header: Header, header_bytes: bytes) -> None:
        try:
            master = keyring.subkey(PURPOSE, header.key_version)
        except KeyringError as exc:
            raise BackupError(
                f"the archive is under master key version {header.key_version}, which the "
                f"keyring {keyring.versions} does not hold"
            ) from exc
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=_INFO)
        self._aead = AESGCM(hkdf.derive(master))
        self._bound = hashlib.sha256(MAGIC + header_bytes).digest()

    def _nonce_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        nonce = index.to_bytes(12, "big")
        return nonce, self._bound + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")

    def seal(self, index: int, plaintext: bytes, final: bool) -> bytes:
        nonce, aad = self._nonce_aad(index, final)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, index: int, sealed: bytes, final: bool) -> bytes:
        nonce, aad = self._nonce_aad(index, final)
        return self._aead.decrypt(nonce, sealed, aad)


# -- writing and reading archives ---------------------------------------------------------------


def write_archive(out: IO[bytes], keyring: Keyring, header: Header, data: Iterable[bytes]) -> None:
    """Seals ``data`` (any chunking) into ``out`` as archive format 1."""
    header_bytes = header.encode()
    cipher = _Cipher(keyring, header, header_bytes)
    out.write(MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes)
    pending, index = bytearray(), 0
    for piece in data:
        pending += piece
        while len(pending) > header.chunk_size:  # keep one back: the last chunk is the final one
            sealed = cipher.seal(index, bytes(pending[: header.chunk_size]), False)
            out.write(_LENGTH.pack(len(sealed)) + sealed)
            del pending[: header.chunk_size]
            index += 1
    sealed = cipher.seal(index, bytes(pending), True)
    out.write(_LENGTH.pack(len(sealed)) + sealed)


def read_archive(source: IO[bytes], keyring: Keyring) -> tuple[Header, Iterator[bytes]]:
    """The header and the verified plaintext chunks; BackupError (while iterating, too) on any
    change, truncation or extension."""
    if _read_exactly(source, len(MAGIC)) != MAGIC:
        raise BackupError("not a Medi-KUS backup archive")
    (length,) = _LENGTH.unpack(_read_exactly(source, _LENGTH.size))
    if length > _MAX_HEADER:
        raise BackupError("the archive header is malformed")
    header_bytes = _read_exactly(source, length)
    header = Header.decode(header_bytes)
    cipher = _Cipher(keyring, header, header_bytes)
    return header, _chunks(source, cipher, header.chunk_size)


def _chunks(source: IO[bytes], cipher: _Cipher, chunk_size: int) -> Iterator[bytes]:
    index = 0
    while True:
        prefix = source.read(_LENGTH.size)
        if len(prefix) < _LENGTH.size:
            raise BackupError(f"the archive ends before its final chunk (after {index}): truncated")
        (length,) = _LENGTH.unpack(prefix)
        if length > chunk_size + 16:
            raise BackupError(f"chunk {index} has an impossible length: the archive was altered")
        sealed = source.read(length)
        if len(sealed) < length:
            raise BackupError(f"the archive ends inside chunk {index}: truncated")
        for final in (False, True):
            try:
                plaintext = cipher.open(index, sealed, final)
            except InvalidTag:
                continue
            yield plaintext
            if final:
                if source.read(1):
                    raise BackupError("data follows the final chunk: the archive was altered")
                return
            break
        else:
            raise BackupError(
                f"chunk {index} does not authenticate: the archive was altered or another key"
            )
        index += 1


def _read_exactly(source: IO[bytes], size: int) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise BackupError("the archive is truncated or not a Medi-KUS backup")
    return data


# -- databases ------------------------------------------------------------------------------------


def create_backup(database_url: str, out: Path, keyring: Keyring) -> Header:
    """Writes an encrypted backup of the database to ``out`` (never overwritten)."""
    if out.exists():
        raise BackupError(f"{out} exists already; a backup never overwrites a file")
    created = datetime.now(UTC).isoformat(timespec="seconds")
    salt = os.urandom(32)
    with _staged(out) as (stream, stage):
        if _is_sqlite(database_url):
            header = Header("sqlite", None, created, keyring.current_version, salt)
            with _sqlite_copy(_sqlite_path(database_url), stage.parent) as copy:
                write_archive(stream, keyring, header, _file_chunks(copy))
        else:
            schema = _pg_schema(database_url)
            if schema is None:
                raise BackupError("the database URL names no existing schema")
            header = Header("postgresql", schema, created, keyring.current_version, salt)
            with _pg_dump(database_url, schema) as dump:
                write_archive(stream, keyring, header, dump)
    return header


def restore_backup(archive: Path, database_url: str, keyring: Keyring) -> Header:
    """Restores ``archive`` into an empty database; nothing is written if it is refused."""
    with archive.open("rb") as source:
        header, chunks = read_archive(source, keyring)
        target = "sqlite" if _is_sqlite(database_url) else "postgresql"
        if header.dialect != target:
            raise BackupError(f"the archive holds a {header.dialect} database, not {target}")
        if target == "postgresql":
            # Verified once completely before PostgreSQL sees a byte; restored in one transaction.
            for _ in chunks:
                pass
            source.seek(0)
            _, chunks = read_archive(source, keyring)
            _pg_restore(database_url, header, chunks)
        else:
            _sqlite_restore(_sqlite_path(database_url), chunks)
    return header


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_path(url: str) -> Path:
    path = url.split("://", 1)[1].removeprefix("/")
    if not path or path == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(path)


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file next to ``out`` (mode 600), moved into place only when complete."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    stage = Path(name)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream, stage
            stream.flush()
            os.fsync(stream.fileno())
        os.link(stage, out)  # fails if ``out`` appeared meanwhile: never overwritten
    finally:
        stage.unlink(missing_ok=True)


@contextlib.contextmanager
def _sqlite_copy(database: Path, directory: Path) -> Iterator[Path]:
    """A consistent copy by the online backup API (writers go on; WAL readers see a snapshot)."""
    if not database.exists():
        raise BackupError(f"the database {database} does not exist")
    fd, name = tempfile.mkstemp(dir=directory, prefix=".medikus-sqlite-")
    os.close(fd)
    copy = Path(name)
    try:
        source = sqlite3.connect(database)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        yield copy
    finally:
        for leftover in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
            leftover.unlink(missing_ok=True)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            yield block


def _sqlite_restore(database: Path, chunks: Iterator[bytes]) -> None:
    stale = [p for p in (database, Path(f"{database}-wal")) if p.exists()]
    if stale:
        raise BackupError(
            f"{stale[0]} exists: restore only into an empty target (move the database away first)"
        )
    database.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=database.parent, prefix=f".{database.name}.restore-")
    stage = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        check = sqlite3.connect(stage)
        try:
            result = check.execute("PRAGMA integrity_check").fetchone()
        finally:
            check.close()
        if result != ("ok",):
            raise BackupError(f"the restored database fails its integrity check: {result}")
        os.link(stage, database)
    finally:
        for leftover in (stage, Path(f"{stage}-wal"), Path(f"{stage}-shm")):
            leftover.unlink(missing_ok=True)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """Connection string for pg_dump/pg_restore without the password, which goes into the
    environment (argv is visible to every user of the machine)."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    params.pop("options", None)  # the schema is named explicitly
    return make_conninfo(**params), env


def _pg_schema(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
    return row[0] if row else None


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (postgresql-client of the server's version)")
    return found


@contextlib.contextmanager
def _pg_dump(url: str, schema: str) -> Iterator[Iterator[bytes]]:
    conninfo, env = _libpq(url)
    argv = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges"]
    argv += [f"--schema={schema}", f"--dbname={conninfo}"]
    process = subprocess.Popen(  # nosec B603 # fixed argv, no shell
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    stdout, stderr = process.stdout, process.stderr
    if stdout is None or stderr is None:  # never with PIPE; for the type checker
        raise BackupError("pg_dump could not be started")
    try:
        yield iter(lambda: stdout.read(CHUNK), b"")
        errors = stderr.read().decode(errors="replace").strip()
        if process.wait() != 0:
            raise BackupError(f"pg_dump failed: {errors}")
    except BaseException:
        process.kill()  # it may be blocked writing to a pipe nobody reads any more
        raise
    finally:
        process.wait()
        stdout.close()
        stderr.close()


def _pg_restore(url: str, header: Header, chunks: Iterator[bytes]) -> None:
    schema = header.schema
    if not schema:
        raise BackupError("the archive names no schema")
    with psycopg.connect(url, autocommit=True) as conn:
        wanted = _search_path_schema(conn)
        if wanted is not None and wanted != schema:
            raise BackupError(f"the archive holds schema {schema}; the database URL names {wanted}")
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchone()
        if tables and tables[0]:
            raise BackupError(f"schema {schema} holds tables: restore only into an empty target")
        if schema != "public":  # an empty schema of that name would collide with the dump's own
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(schema)))
    conninfo, env = _libpq(url)
    argv = [_tool("pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner"]
    argv += ["--no-privileges", f"--dbname={conninfo}"]
    process = subprocess.Popen(  # nosec B603 # fixed argv, no shell
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    stdin, stderr = process.stdin, process.stderr
    if stdin is None or stderr is None:  # never with PIPE; for the type checker
        raise BackupError("pg_restore could not be started")
    try:
        try:
            for chunk in chunks:
                stdin.write(chunk)
            stdin.close()
        except BrokenPipeError:
            pass  # pg_restore stopped at an error: reported below
        errors = stderr.read().decode(errors="replace").strip()
        if process.wait() != 0:
            raise BackupError(f"pg_restore failed: {errors}")
    except BaseException:
        process.kill()  # before its input ended: the single transaction never commits
        raise
    finally:
        process.wait()
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        stderr.close()


def _search_path_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SHOW search_path").fetchone()
    first = (row[0] if row else "").split(",")[0].strip().strip('"')
    return None if not first or first.startswith("$") else first


# -- commands ---------------------------------------------------------------------------------------


def _keyring(config: Config) -> Keyring:
    try:
        return master_keys(config)
    except KeyringError as exc:
        raise click.ClickException(
            f"{exc}\nSchlüssel anlegen mit / create keys with: medikus admin init-keys"
        ) from exc


@click.command("backup")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--database-url", default=None, help="default: MEDIKUS_DATABASE_URL")
def backup(out: Path, database_url: str | None) -> None:
    """Writes an encrypted backup of the database to OUT."""
    config = Config()
    url = database_url or config.resolved_database_url()
    try:
        header = create_backup(url, out, _keyring(config))
    except (BackupError, psycopg.Error, OSError) as exc:
        raise click.ClickException(f"Sicherung fehlgeschlagen / backup failed: {exc}") from exc
    click.echo(
        f"Sicherung geschrieben / backup written: {out} ({out.stat().st_size} bytes, "
        f"Schlüsselversion / key version {header.key_version})"
    )


@click.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--database-url", default=None, help="default: MEDIKUS_DATABASE_URL (empty)")
def restore(archive: Path, database_url: str | None) -> None:
    """Restores the encrypted backup ARCHIVE into an empty database."""
    config = Config()
    url = database_url or config.resolved_database_url()
    try:
        header = restore_backup(archive, url, _keyring(config))
    except (BackupError, psycopg.Error, OSError) as exc:
        raise click.ClickException(f"Wiederherstellung abgelehnt / restore refused: {exc}") from exc
    click.echo(f"Wiederhergestellt / restored: Sicherung vom / backup of {header.created}")
