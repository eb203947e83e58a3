"""Throw-away databases for one benchmark run: a fresh PostgreSQL schema or a fresh SQLite file.

The server stores FHIR resources (https://hl7.org/fhir/R4/http.html) in either; every database made
here is dropped or deleted again when its context ends, also on errors and Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

PG_DSN = os.environ.get("MEDIKUS_BENCH_PG", "postgresql://127.0.0.1:5432/test")
KINDS = ("postgresql", "sqlite")


@dataclass(frozen=True)
class Database:
    """Where one run writes: ``url`` for ``medikus serve``; ``app_name`` tags PostgreSQL sessions."""

    kind: str
    url: str
    schema: str | None = None
    path: Path | None = None
    app_name: str | None = None

    def psycopg_conninfo(self) -> str:
        """The same schema for a plain psycopg connection (raw inserts, CPU accounting)."""
        assert self.schema is not None
        return f"{PG_DSN}?options=-csearch_path%3D{self.schema}"


@contextmanager
def fresh(kind: str) -> Iterator[Database]:
    if kind == "postgresql":
        with _pg_schema() as database:
            yield database
    elif kind == "sqlite":
        with _sqlite_file() as database:
            yield database
    else:
        raise ValueError(f"unknown database kind {kind!r}")


@contextmanager
def _pg_schema() -> Iterator[Database]:
    schema = f"bench_{secrets.token_hex(6)}"
    # The application name lets us find the server's own backends in pg_stat_activity.
    app_name = f"medikus-{schema}"
    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        url = f"{PG_DSN}?application_name={app_name}&options=-csearch_path%3D{schema}"
        yield Database("postgresql", url, schema=schema, app_name=app_name)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def _sqlite_file() -> Iterator[Database]:
    with tempfile.TemporaryDirectory(prefix="medikus-bench-") as folder:
        path = Path(folder) / "bench.sqlite3"
        yield Database("sqlite", f"sqlite:///{path}", path=path)


def backend_pids(database: Database) -> list[int]:
    """PostgreSQL backend processes serving the server's connections (empty for SQLite)."""
    if database.app_name is None:
        return []
    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (database.app_name,)
        ).fetchall()
    return [int(r[0]) for r in rows]
