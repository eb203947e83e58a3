"""The raw insert floor: the same resources as plain JSON rows, no validation, no search index.

Rows go into a table built from the store's own ``resource_version`` definition (same columns,
keys and index), one bundle per transaction, with the driver's ``executemany`` — the statement
the server uses too. What the server adds on top is FHIR: validation, search index rows, the
``resource`` table and reference checks (https://hl7.org/fhir/R4/http.html#transaction).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa

from bench.databases import Database
from bench.ingest import Payload
from fhir_server._sqlstore import resource_version

Row = tuple[str, str, int, int, str, bool, bytes]
_COLUMNS = ("res_type", "res_id", "version", "last_updated", "method", "deleted", "content")
# The server's SQLite connections use exactly these (fhir_server/_sqlstore.py, _sqlite_connect).
_SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=60000")


def rows(payloads: Sequence[Payload]) -> list[list[Row]]:
    """Per bundle, one version row per entry, with an id and meta as the server would store."""
    now = time.time_ns() // 1000
    out = []
    for payload in payloads:
        bundle: dict[str, Any] = orjson.loads(payload.body)
        out.append([_row(entry["resource"], now) for entry in bundle.get("entry") or []])
    return out


def _row(resource: dict[str, Any], now: int) -> Row:
    id = str(uuid.uuid4())
    meta = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    content = orjson.dumps({**resource, "id": id, "meta": meta})
    return (resource["resourceType"], id, 1, now, "POST", False, content)


def insert(database: Database, bundles: Sequence[Sequence[Row]]) -> float:
    """Seconds to insert every bundle in its own transaction, into an empty ``database``."""
    if database.kind == "postgresql":
        return _insert_postgresql(database, bundles)
    assert database.path is not None
    return _insert_sqlite(str(database.path), bundles)


def _dialect(name: str) -> sa.engine.Dialect:
    return sa.engine.make_url(f"{name}://").get_dialect()()


def _ddl(dialect: sa.engine.Dialect) -> list[str]:
    statements = [str(sa.schema.CreateTable(resource_version).compile(dialect=dialect))]
    statements += [
        str(sa.schema.CreateIndex(index).compile(dialect=dialect))
        for index in resource_version.indexes
    ]
    return statements


def _insert_sql(placeholder: str) -> str:
    values = ", ".join([placeholder] * len(_COLUMNS))
    return f"INSERT INTO resource_version ({', '.join(_COLUMNS)}) VALUES ({values})"


def _insert_postgresql(database: Database, bundles: Sequence[Sequence[Row]]) -> float:
    statement = _insert_sql("%s")
    with psycopg.connect(database.psycopg_conninfo(), autocommit=True) as conn:
        for ddl in _ddl(_dialect("postgresql+psycopg")):
            conn.execute(ddl)
        started = time.perf_counter()
        with conn.cursor() as cursor:
            for bundle in bundles:
                with conn.transaction():
                    cursor.executemany(statement, bundle)
        return time.perf_counter() - started


def _insert_sqlite(path: str, bundles: Sequence[Sequence[Row]]) -> float:
    statement = _insert_sql("?")
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for pragma in _SQLITE_PRAGMAS:
            conn.execute(f"PRAGMA {pragma}")
        for ddl in _ddl(_dialect("sqlite")):
            conn.execute(ddl)
        started = time.perf_counter()
        for bundle in bundles:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(statement, bundle)
            conn.execute("COMMIT")
        return time.perf_counter() - started
