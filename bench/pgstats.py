"""Index use on PostgreSQL: sequential vs index scans per table of one schema, before and after.

Reads the cumulative statistics views ``pg_stat_user_tables`` and ``pg_stat_user_indexes``
(https://www.postgresql.org/docs/15/monitoring-stats.html). Server backends publish their counts
at most once a second while busy and within 10 s once idle (PGSTAT_IDLE_INTERVAL), so a snapshot
taken right after a burst of searches can miss them: callers wait ``settle`` seconds first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench.databases import PG_DSN, Database

SETTLE_SECONDS = 11.0


@dataclass(frozen=True)
class ScanCounts:
    tables: dict[str, tuple[int, int, int]]  # table -> (seq_scan, seq_tup_read, idx_scan)
    indexes: dict[str, int]  # index -> idx_scan


@dataclass(frozen=True)
class IndexUse:
    """Scans between two snapshots; only tables and indexes that were scanned at all."""

    seq_scans: dict[str, tuple[int, int]]  # table -> (sequential scans, rows they read)
    index_scans: dict[str, int]  # index -> scans

    def text(self) -> str:
        # A sequential scan of an empty table (say, an idle outbox) costs nothing: counted apart.
        seq = ", ".join(
            f"{t} {n}x/{rows:,} rows" for t, (n, rows) in self.seq_scans.items() if rows
        )
        empty = sum(n for n, rows in self.seq_scans.values() if not rows)
        seq += f"{', ' if seq else ''}{empty}x of empty tables" if empty else ""
        top = sorted(self.index_scans.items(), key=lambda kv: -kv[1])
        idx = ", ".join(f"{name} {n}" for name, n in top)
        return f"seq scans: {seq or 'none'} | index scans: {idx or 'none'}"


def snapshot(database: Database, settle: float = SETTLE_SECONDS) -> ScanCounts:
    time.sleep(settle)
    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
        tables = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read, COALESCE(idx_scan, 0)"
            " FROM pg_stat_user_tables WHERE schemaname = %s",
            (database.schema,),
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE schemaname = %s",
            (database.schema,),
        ).fetchall()
    return ScanCounts(
        {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in tables},
        {str(r[0]): int(r[1]) for r in indexes},
    )


def difference(before: ScanCounts, after: ScanCounts) -> IndexUse:
    seq: dict[str, tuple[int, int]] = {}
    for table, (scans, rows, _) in sorted(after.tables.items()):
        old = before.tables.get(table, (0, 0, 0))
        if scans > old[0]:
            seq[table] = (scans - old[0], rows - old[1])
    idx = {
        name: scans - before.indexes.get(name, 0)
        for name, scans in sorted(after.indexes.items())
        if scans > before.indexes.get(name, 0)
    }
    return IndexUse(seq, idx)


def analyze(database: Database) -> None:
    """ANALYZE every table of the schema, as autovacuum would within a minute of a bulk load."""
    schema = database.schema
    assert schema is not None
    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
        # Table by table: a bare ANALYZE would also analyse every other schema in the database.
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
