"""Query plans of searches on PostgreSQL: EXPLAIN (ANALYZE, BUFFERS) of the SQL a search runs.

https://www.postgresql.org/docs/15/sql-explain.html. The server's SQL is not visible from outside
its processes, so the search runs once more in this process, through the record core's in-process
port (``RecordCore.handle``) on the same schema, while a SQLAlchemy ``before_cursor_execute``
listener records each statement with its parameters; each SELECT is then explained with psycopg.
The plan shown is the statement with the longest execution time: the search's main SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa

from bench.databases import Database
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.auth_setup import keyring as master_keys
from medikus.config import Config

Statement = tuple[str, Any]
_EXECUTION = re.compile(r"Execution Time: ([0-9.]+) ms")


def plans(
    database: Database, searches: Sequence[tuple[str, str, list[tuple[str, str]]]]
) -> dict[str, str]:
    """For each ``(name, path, params)``, the plan of its slowest SELECT (or why there is none)."""
    out: dict[str, str] = {}
    # The server under test encrypts at rest: the same master keys (bench/server.ensure_keys).
    core = RecordCore.open(database.url, migrate=False, pool_size=1, keyring=master_keys(Config()))
    try:
        with psycopg.connect(database.psycopg_conninfo(), autocommit=True) as conn:
            for name, path, params in searches:
                out[name] = _plan(core, conn, path, params)
    finally:
        core.close()
    return out


def _plan(
    core: RecordCore, conn: psycopg.Connection[Any], path: str, params: list[tuple[str, str]]
) -> str:
    with _captured() as statements:
        response = core.handle(FhirRequest("GET", path, params, base="http://bench/fhir"))
    if response.status != 200:
        return f"(the search answered {response.status}: nothing to explain)"
    selects = [s for s in statements if _is_query(s[0])]
    if not selects:
        return "(the search ran no SELECT)"
    explained = [_explain(conn, statement, parameters) for statement, parameters in selects]
    slowest = max(explained, key=lambda e: e[0])
    return f"{len(selects)} SELECT(s); the slowest ({slowest[0]:.2f} ms):\n{slowest[1]}"


def _is_query(statement: str) -> bool:
    head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    return head in ("SELECT", "WITH")


def _explain(conn: psycopg.Connection[Any], statement: str, parameters: Any) -> tuple[float, str]:
    try:
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).fetchall()
    except psycopg.Error as exc:
        return -1.0, f"(EXPLAIN failed: {exc})\n{statement}"
    text = "\n".join(str(r[0]) for r in rows)
    found = _EXECUTION.search(text)
    return (float(found.group(1)) if found else 0.0), text


@contextmanager
def _captured() -> Iterator[list[Statement]]:
    statements: list[Statement] = []

    def listen(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, executemany: bool
    ) -> None:
        if not executemany:
            statements.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", listen)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", listen)
