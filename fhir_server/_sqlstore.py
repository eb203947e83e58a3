"""The SQL store: one schema for SQLite and PostgreSQL, written with SQLAlchemy Core.

https://hl7.org/fhir/R4/http.html#versioning — every version is a row of ``resource_version``;
``resource`` points at the current one. Search index rows (``ix_*``) are replaced in the same
transaction as the version they describe. The only module of the record core that imports
SQLAlchemy and Alembic.
"""

from __future__ import annotations

import fcntl
import hashlib
import operator
import re
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from fhir_server.search.sql import Statement
from fhir_server.store import (
    DeliveryState,
    HistoryQuery,
    NewVersion,
    Notification,
    OutboxEntry,
    StoredVersion,
    StoreUnavailable,
    VersionConflict,
)

metadata = sa.MetaData()
_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Index text is compared bytewise (UTF-8 order = code point order on both databases), so prefix
# searches run as index range scans.
_Text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
_Id = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")

resource_version = sa.Table(
    "resource_version",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("res_type", sa.String(64), nullable=False),
    sa.Column("res_id", _Id, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.BigInteger, nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=True),
    sa.UniqueConstraint("res_type", "res_id", "version", name="uq_resource_version"),
    sa.Index("ix_resource_version_type_seq", "res_type", "seq"),
)
resource = sa.Table(
    "resource",
    metadata,
    sa.Column("res_type", sa.String(64), primary_key=True),
    sa.Column("res_id", _Id, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.BigInteger, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
)


def _index_table(name: str, *columns: sa.Column[Any], lookup: Sequence[str]) -> sa.Table:
    # grp numbers the element a composite parameter's component rows came from.
    indexes = [sa.Index(f"{name}_resource", "res_type", "res_id", "param")]
    if lookup:
        indexes.append(sa.Index(f"{name}_lookup", "res_type", "param", *lookup))
    return sa.Table(
        name,
        metadata,
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", _Id, nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        *columns,
        sa.Column("grp", sa.Integer, nullable=False, server_default="0"),
        *indexes,
    )


ix_token = _index_table(
    "ix_token",
    sa.Column("system", _Text),
    sa.Column("code", _Text),
    sa.Column("text", _Text),
    lookup=("code", "system"),
)
ix_string = _index_table(
    "ix_string",
    sa.Column("value", _Text, nullable=False),
    sa.Column("exact", _Text, nullable=False),
    lookup=("value",),
)
ix_reference = _index_table(
    "ix_reference",
    sa.Column("target_type", sa.String(64)),
    sa.Column("target_id", _Id),
    sa.Column("version", sa.String(64)),
    sa.Column("url", _Text, nullable=False),
    lookup=("target_id", "target_type"),
)
ix_date = _index_table(
    "ix_date",
    sa.Column("low", sa.BigInteger, nullable=False),
    sa.Column("high", sa.BigInteger, nullable=False),
    lookup=("low", "high"),
)
ix_number = _index_table(
    "ix_number",
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    lookup=("value",),
)
ix_quantity = _index_table(
    "ix_quantity",
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    sa.Column("system", _Text),
    sa.Column("code", _Text),
    sa.Column("unit", _Text),
    lookup=("code", "value"),
)
ix_uri = _index_table("ix_uri", sa.Column("value", _Text, nullable=False), lookup=("value",))
ix_position = _index_table(
    "ix_position",
    sa.Column("latitude", sa.Float, nullable=False),
    sa.Column("longitude", sa.Float, nullable=False),
    lookup=("latitude", "longitude"),
)
# Narrative and whole-content text (_text, _content): searched by substring, so no value index.
ix_text = _index_table("ix_text", sa.Column("value", _Text, nullable=False), lookup=())

# IndexRows attribute -> its table; the table's columns after (res_type, res_id) are the row's fields.
_INDEX_TABLES: dict[str, sa.Table] = {
    "tokens": ix_token,
    "strings": ix_string,
    "references": ix_reference,
    "dates": ix_date,
    "numbers": ix_number,
    "quantities": ix_quantity,
    "uris": ix_uri,
    "positions": ix_position,
    "texts": ix_text,
}

_CURRENT_COLUMNS = (
    resource.c.res_type,
    resource.c.res_id,
    resource.c.version,
    resource.c.last_updated,
    resource.c.deleted,
    resource_version.c.method,
    resource_version.c.content,
    resource_version.c.seq,
)
_JOIN_CURRENT = resource.join(
    resource_version,
    sa.and_(
        resource_version.c.res_type == resource.c.res_type,
        resource_version.c.res_id == resource.c.res_id,
        resource_version.c.version == resource.c.version,
    ),
)


def normalize_url(url: str) -> str:
    """SQLAlchemy URL for a user-facing database URL (``postgresql://`` uses psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # hide_parameters: bound values (names, KVNRs searched for) never reach logged errors.
        engine = sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from pysqlite so writers can BEGIN IMMEDIATE (no upgrade deadlocks).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL + synchronous=FULL: a committed transaction survives a crash or power loss. The page
    # cache (default 2 MiB) is raised so index pages stay in memory as the database grows.
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "busy_timeout=60000",
        "foreign_keys=ON",
        "cache_size=-131072",
        "mmap_size=17179869184",
        "temp_store=MEMORY",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql(connection.info.pop("begin", "BEGIN"))


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest Alembic revision (idempotent; serialised on PostgreSQL)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("fhir_server") / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727100)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _version(row: Any) -> StoredVersion:
    content = row.content
    return StoredVersion(
        type=row.res_type,
        id=row.res_id,
        version=row.version,
        last_updated=row.last_updated,
        deleted=row.deleted,
        method=row.method,
        content=bytes(content) if content is not None else None,
        seq=row.seq,
    )


class _Translate:
    """Maps driver errors to the store's exceptions at the boundary."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, IntegrityError):
            raise VersionConflict(str(exc.orig)) from exc
        if isinstance(exc, OperationalError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        ):
            raise StoreUnavailable("The database is not available.") from exc


class SqlUnitOfWork:
    """Writes of one transaction; new resources are buffered and inserted in bulk."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._dialect = connection.dialect.name
        self._new_versions: list[tuple[Any, ...]] = []
        self._new_resources: list[tuple[Any, ...]] = []
        self._new_index: dict[str, list[tuple[Any, ...]]] = {k: [] for k in _INDEX_TABLES}
        # (type, id, version) of every version written: the subscriptions' outbox rows.
        self.outbox: list[tuple[str, str, int]] = []

    def current(self, type: str, id: str) -> StoredVersion | None:
        self.flush()
        query = (
            sa.select(*_CURRENT_COLUMNS)
            .select_from(_JOIN_CURRENT)
            .where(resource.c.res_type == type, resource.c.res_id == id)
        )
        if self._dialect == "postgresql":
            query = query.with_for_update(of=resource)
        row = self._conn.execute(query).first()
        return _version(row) if row else None

    def put(self, version: NewVersion) -> None:
        if version.prior is None:
            self._insert_resource(version)
        else:
            self._update_resource(version)
        self._new_versions.append(
            (
                version.type,
                version.id,
                version.version,
                version.last_updated,
                version.method,
                version.deleted,
                version.content,
            )
        )
        self._stage_index(version)
        self.outbox.append((version.type, version.id, version.version))

    def _insert_resource(self, version: NewVersion) -> None:
        row = (version.type, version.id, version.version, version.last_updated, version.deleted)
        if version.method == "POST":
            # Server-assigned ids cannot collide; insert in bulk at flush time.
            self._new_resources.append(row)
            return
        self.flush()
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        values = dict(zip(_BULK_COLUMNS["resource"][1], row, strict=True))
        # RETURNING, not rowcount: drivers report -1 for INSERT … ON CONFLICT DO NOTHING.
        statement = (
            insert(resource).values(**values).on_conflict_do_nothing().returning(resource.c.res_id)
        )
        if self._conn.execute(statement).first() is None:
            raise VersionConflict(f"{version.type}/{version.id} was created concurrently.")

    def _update_resource(self, version: NewVersion) -> None:
        self.flush()
        key = (resource.c.res_type == version.type, resource.c.res_id == version.id)
        result = self._conn.execute(
            resource.update()
            .where(*key, resource.c.version == version.prior)
            .values(
                version=version.version,
                last_updated=version.last_updated,
                deleted=version.deleted,
            )
        )
        if result.rowcount != 1:
            raise VersionConflict(f"{version.type}/{version.id} was changed concurrently.")
        for table in _INDEX_TABLES.values():
            self._conn.execute(
                table.delete().where(table.c.res_type == version.type, table.c.res_id == version.id)
            )

    def _stage_index(self, version: NewVersion) -> None:
        if version.deleted:
            return
        key = (version.type, version.id)
        for attr, staged in self._new_index.items():
            fields = _ROW_FIELDS[attr]
            staged.extend(key + fields(row) for row in getattr(version.index, attr))

    def flush(self) -> None:
        for key, rows in (
            ("resource", self._new_resources),
            ("resource_version", self._new_versions),
            *self._new_index.items(),
        ):
            if rows:
                self._bulk_insert(key, rows)
                rows.clear()

    def _bulk_insert(self, key: str, rows: list[tuple[Any, ...]]) -> None:
        # The SQL is fixed, so skip SQLAlchemy's per-row parameter processing: it would cost more
        # than the insert itself on the ingest path. PostgreSQL takes rows fastest through COPY.
        table, columns = _BULK_COLUMNS[key]
        if self._dialect != "postgresql":
            self._conn.exec_driver_sql(_insert_sql(table, columns, "?"), rows)
            return
        driver = self._conn.connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def existing(self, keys: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        self.flush()
        found: set[tuple[str, str]] = set()
        for type, ids in _by_type(keys):
            query = sa.select(resource.c.res_type, resource.c.res_id).where(
                resource.c.res_type == type,
                resource.c.res_id.in_(ids),
                resource.c.deleted.is_(False),
            )
            found.update((r.res_type, r.res_id) for r in self._conn.execute(query))
        return found

    def select(self, statement: Statement) -> list[tuple[Any, ...]]:
        self.flush()
        sql = _dialect_sql(statement.sql, self._dialect)
        return [tuple(r) for r in self._conn.execute(sa.text(sql), statement.params)]

    def lock(self, key: str) -> None:
        if self._dialect == "postgresql":
            digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            self._conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": digest})
        # SQLite: BEGIN IMMEDIATE already serialises all writers.


_INDEX_HINT = re.compile(r" /\*\+(INDEXED BY \w+)\*/")


def _dialect_sql(sql: str, dialect: str) -> str:
    """Index hints of the search SQL (``/*+INDEXED BY ix_token_lookup*/``) become SQLite's
    ``INDEXED BY``; PostgreSQL plans from its statistics and sees only a comment."""
    return _INDEX_HINT.sub(r" \1", sql) if dialect == "sqlite" else sql


def _by_type(keys: Collection[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Keys grouped by type, in chunks: ``res_type = ? AND res_id IN (…)`` uses the primary key on
    both databases, where SQLite answers a row-value ``(res_type, res_id) IN (…)`` with a full
    scan (measured: a fetch of 50 resources read all 250,000 rows)."""
    grouped: dict[str, list[str]] = {}
    for type, id in keys:
        grouped.setdefault(type, []).append(id)
    for type, ids in grouped.items():
        for start in range(0, len(ids), 500):
            yield type, ids[start : start + 500]


def _insert_sql(table: str, columns: Sequence[str], placeholder: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([placeholder] * len(columns))})"  # nosec B608 # table and columns from _BULK_COLUMNS, values bound


# Staging key -> (table, columns) of the rows buffered for bulk insertion.
# resource_version's seq is assigned by the database.
_BULK_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    key: (table.name, tuple(c.name for c in table.columns if c.name != "seq"))
    for key, table in (
        ("resource", resource),
        ("resource_version", resource_version),
        *_INDEX_TABLES.items(),
    )
}
# Index columns after (res_type, res_id) are the row's fields, in order.
_ROW_FIELDS = {
    attr: operator.attrgetter(*[c.name for c in table.columns][2:])
    for attr, table in _INDEX_TABLES.items()
}


class SqlStore:
    """The Store port on SQLAlchemy (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        database = engine.url.database if self.dialect == "sqlite" else None
        self._writer_lock = (
            f"{database}.writer-lock" if database and database != ":memory:" else None
        )
        self._slot = threading.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def open(cls, url: str, *, pool_size: int = 10, migrate_schema: bool = True) -> SqlStore:
        engine = create_engine(url, pool_size=pool_size)
        if migrate_schema:
            with _Translate():
                migrate(engine)
        return cls(engine)

    @contextmanager
    def unit_of_work(self) -> Iterator[SqlUnitOfWork]:
        with self._one_writer(), _Translate(), self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection.info["begin"] = "BEGIN IMMEDIATE"
            with connection.begin():
                uow = SqlUnitOfWork(connection)
                yield uow
                uow.flush()
                _stage_outbox(uow)

    @contextmanager
    def write_slot(self) -> Iterator[None]:
        """One write request at a time per process on SQLite, validation included.

        SQLite has a single writer. If another thread of the same process validated (CPU, holding
        the GIL) while this one holds the database's write lock, the lock would be held about
        twice as long and the other worker processes would wait for it; so a process validates
        while another process writes, not while it writes itself."""
        if self._slot is None:
            yield
            return
        with self._slot:
            yield

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """SQLite has one writer at a time. A waiting writer in SQLite's busy handler sleeps in
        steps of up to 100 ms and misses the moment the lock is free; a blocking file lock taken
        first (across threads and worker processes) hands over at once."""
        if self._writer_lock is None:
            yield
            return
        with open(self._writer_lock, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with _Translate(), self.engine.connect() as connection:
            yield connection

    def read(self, type: str, id: str) -> StoredVersion | None:
        query = (
            sa.select(*_CURRENT_COLUMNS)
            .select_from(_JOIN_CURRENT)
            .where(resource.c.res_type == type, resource.c.res_id == id)
        )
        with self._reading() as conn:
            row = conn.execute(query).first()
        return _version(row) if row else None

    def vread(self, type: str, id: str, version: int) -> StoredVersion | None:
        v = resource_version.c
        query = sa.select(
            v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.method, v.content, v.seq
        ).where(v.res_type == type, v.res_id == id, v.version == version)
        with self._reading() as conn:
            row = conn.execute(query).first()
        return _version(row) if row else None

    def history(self, query: HistoryQuery) -> list[StoredVersion]:
        v = resource_version.c
        stmt = sa.select(
            v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.method, v.content, v.seq
        )
        if query.type is not None:
            stmt = stmt.where(v.res_type == query.type)
        if query.id is not None:
            stmt = stmt.where(v.res_id == query.id)
        if query.since is not None:
            stmt = stmt.where(v.last_updated >= query.since)
        if query.at is not None:
            later = resource_version.alias("later")
            stmt = stmt.where(
                v.last_updated <= query.at,
                ~sa.exists().where(
                    later.c.res_type == v.res_type,
                    later.c.res_id == v.res_id,
                    later.c.version > v.version,
                    later.c.last_updated <= query.at,
                ),
            )
        if query.before_seq is not None:
            stmt = stmt.where(v.seq < query.before_seq)
        stmt = stmt.order_by(v.seq.desc()).limit(query.count)
        with self._reading() as conn:
            return [_version(r) for r in conn.execute(stmt)]

    def select(self, statement: Statement) -> list[tuple[Any, ...]]:
        sql = _dialect_sql(statement.sql, self.dialect)
        with self._reading() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), statement.params)]

    def fetch(self, keys: Sequence[tuple[str, str]]) -> list[StoredVersion]:
        """Current, non-deleted versions of ``keys``, in the order of ``keys`` (missing skipped)."""
        found: dict[tuple[str, str], StoredVersion] = {}
        pairs = list(dict.fromkeys(keys))
        # One statement per chunk: an OR of per-type primary-key lookups (a round trip per type
        # cost more than the lookups for a page of $everything).
        groups = list(_by_type(pairs))
        with self._reading() as conn:
            for start in range(0, len(groups), 20):
                alternatives = [
                    sa.and_(resource.c.res_type == type, resource.c.res_id.in_(ids))
                    for type, ids in groups[start : start + 20]
                ]
                query = (
                    sa.select(*_CURRENT_COLUMNS)
                    .select_from(_JOIN_CURRENT)
                    .where(sa.or_(*alternatives), resource.c.deleted.is_(False))
                )
                for row in conn.execute(query):
                    found[(row.res_type, row.res_id)] = _version(row)
        return [found[k] for k in pairs if k in found]

    def ping(self) -> None:
        with self._reading() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


# --- Subscriptions ---
# https://hl7.org/fhir/R4/subscription.html: an outbox row per written version, inserted in the
# writing transaction (so a rolled-back write never notifies and a committed one is never lost),
# the notifications owed to each subscription, and where delivery to each subscription stands.
# The dispatcher (notifications.py) moves outbox rows to notifications and delivers them.

subscription_outbox = sa.Table(
    "subscription_outbox",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("res_type", sa.String(64), nullable=False),
    sa.Column("res_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)
subscription_notification = sa.Table(
    "subscription_notification",
    metadata,
    sa.Column("id", _Seq, primary_key=True, autoincrement=True),
    sa.Column("sub_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("res_type", sa.String(64), nullable=False),
    sa.Column("res_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Index("ix_subscription_notification_sub", "sub_id", "channel", "id"),
    # Ids are a cursor for the websocket pollers: SQLite must never reuse one.
    sqlite_autoincrement=True,
)
subscription_delivery = sa.Table(
    "subscription_delivery",
    metadata,
    sa.Column("sub_id", sa.String(64), primary_key=True),
    sa.Column("sub_version", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("next_attempt", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
)
_BULK_COLUMNS["subscription_outbox"] = ("subscription_outbox", ("res_type", "res_id", "version"))
_ANY_SUBSCRIPTION = (
    sa.select(resource.c.res_id)
    .where(resource.c.res_type == "Subscription", resource.c.deleted.is_(False))
    .limit(1)
)


def _stage_outbox(uow: SqlUnitOfWork) -> None:
    """Inserts the outbox rows of a unit of work through the bulk path, at its end. While no
    Subscription exists there is nothing to notify, and a write pays one index lookup only."""
    if uow.outbox and uow._conn.execute(_ANY_SUBSCRIPTION).first() is not None:
        uow._bulk_insert("subscription_outbox", uow.outbox)
    uow.outbox.clear()


def _advisory_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


class _FileLease:
    """SQLite: an exclusive lock on a file next to the database; the kernel drops it when the
    process dies, so another worker takes over."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def alive(self) -> bool:
        return True

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


class _LockLease:
    """An in-memory SQLite database lives in one process: a thread lock suffices."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def alive(self) -> bool:
        return True

    def release(self) -> None:
        self._lock.release()


class _PgLease:
    """PostgreSQL: a session advisory lock on a connection kept for it; the server releases the lock
    when that connection ends (also when the process is killed)."""

    def __init__(self, connection: Connection, key: int) -> None:
        self._conn = connection
        self._key = key

    def alive(self) -> bool:
        try:
            self._conn.exec_driver_sql("SELECT 1")
            self._conn.commit()
        except DBAPIError:
            return False
        return True

    def release(self) -> None:
        try:
            self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()
        except DBAPIError:
            pass  # the connection is gone, and the lock with it
        finally:
            self._conn.close()


class SqlSubscriptionStore:
    """The SubscriptionStore port on the SQL store's engine."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._engine = store.engine
        self._dialect = store.dialect
        database = self._engine.url.database if self._dialect == "sqlite" else None
        self._lease_file = (
            f"{database}.dispatcher-lock" if database and database != ":memory:" else None
        )
        self._memory_lease = threading.Lock()
        self._keys: tuple[int, int] | None = None

    def _pg_keys(self, conn: Connection) -> tuple[int, int]:
        # Per schema: databases shared by several schemas (tests) get one dispatcher per schema.
        if self._keys is None:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
            self._keys = (
                _advisory_key(f"medikus.subscriptions.lead:{schema}"),
                _advisory_key(f"medikus.subscriptions.enqueue:{schema}"),
            )
        return self._keys

    def lead(self) -> _FileLease | _LockLease | _PgLease | None:
        if self._dialect == "postgresql":
            return self._pg_lead()
        if self._lease_file is None:
            return _LockLease(self._memory_lease) if self._memory_lease.acquire(False) else None
        file = open(self._lease_file, "a+b")  # noqa: SIM115 - the lease owns and closes it
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        return _FileLease(file)

    def _pg_lead(self) -> _PgLease | None:
        with _Translate():
            conn = self._engine.connect()
            try:
                key = self._pg_keys(conn)[0]
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
                locked = bool(got.scalar_one())
                conn.commit()
            except BaseException:
                conn.close()
                raise
        if not locked:
            conn.close()
            return None
        return _PgLease(conn, key)

    @contextmanager
    def _writing(self, *, serialised: bool = False) -> Iterator[Connection]:
        """A write transaction that takes turns with the record's writers (SQLite has one
        writer); ``serialised``: also with other enqueues on PostgreSQL (notification ids then
        grow in commit order)."""
        with self._store._one_writer(), _Translate(), self._engine.connect() as conn:
            if self._dialect == "sqlite":
                conn.info["begin"] = "BEGIN IMMEDIATE"
            with conn.begin():
                if serialised and self._dialect == "postgresql":
                    key = self._pg_keys(conn)[1]
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                yield conn

    def subscriptions(self) -> list[StoredVersion]:
        query = (
            sa.select(*_CURRENT_COLUMNS)
            .select_from(_JOIN_CURRENT)
            .where(resource.c.res_type == "Subscription", resource.c.deleted.is_(False))
        )
        with self._store._reading() as conn:
            return [_version(r) for r in conn.execute(query)]

    def outbox(self, limit: int) -> list[OutboxEntry]:
        o = subscription_outbox.c
        query = sa.select(o.seq, o.res_type, o.res_id, o.version).order_by(o.seq).limit(limit)
        with self._store._reading() as conn:
            return [
                OutboxEntry(r.seq, r.res_type, r.res_id, r.version) for r in conn.execute(query)
            ]

    def enqueue(self, matched: dict[int, list[Notification]], now: int) -> None:
        o = subscription_outbox
        with self._writing(serialised=True) as conn:
            # Claimed by deleting: rows another dispatcher already took are not notified twice.
            result = conn.execute(o.delete().where(o.c.seq.in_(list(matched))).returning(o.c.seq))
            claimed = sorted(r.seq for r in result)
            rows = [
                {
                    "sub_id": n.subscription,
                    "channel": n.channel,
                    "res_type": n.type,
                    "res_id": n.resource_id,
                    "version": n.version,
                    "created": now,
                }
                for seq in claimed
                for n in matched[seq]
            ]
            if rows:
                conn.execute(subscription_notification.insert(), rows)

    def due(self, subscription: str, channel: str, limit: int) -> list[Notification]:
        n = subscription_notification.c
        query = (
            sa.select(n.id, n.sub_id, n.channel, n.res_type, n.res_id, n.version)
            .where(n.sub_id == subscription, n.channel == channel)
            .order_by(n.id)
            .limit(limit)
        )
        with self._store._reading() as conn:
            return [_notification(r) for r in conn.execute(query)]

    def pending(self) -> list[tuple[str, str]]:
        n = subscription_notification.c
        with self._store._reading() as conn:
            rows = conn.execute(sa.select(n.sub_id, n.channel).distinct())
            return [(r.sub_id, r.channel) for r in rows]

    def acknowledge(self, ids: Collection[int]) -> None:
        table = subscription_notification
        with self._writing() as conn:
            conn.execute(table.delete().where(table.c.id.in_(list(ids))))

    def discard(self, pairs: Collection[tuple[str, str]]) -> None:
        table = subscription_notification
        with self._writing() as conn:
            for sub_id, channel in pairs:
                conn.execute(
                    table.delete().where(table.c.sub_id == sub_id, table.c.channel == channel)
                )

    def prune(self, channel: str, before: int) -> None:
        table = subscription_notification
        with self._writing() as conn:
            conn.execute(table.delete().where(table.c.channel == channel, table.c.created < before))

    def delivery_states(self) -> dict[str, DeliveryState]:
        d = subscription_delivery.c
        with self._store._reading() as conn:
            rows = conn.execute(
                sa.select(d.sub_id, d.sub_version, d.failures, d.next_attempt, d.last_error)
            )
            return {
                r.sub_id: DeliveryState(
                    r.sub_id, r.sub_version, r.failures, r.next_attempt, r.last_error
                )
                for r in rows
            }

    def save_state(self, state: DeliveryState) -> None:
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        values = {
            "sub_version": state.subscription_version,
            "failures": state.failures,
            "next_attempt": state.next_attempt,
            "last_error": state.last_error,
        }
        statement = (
            insert(subscription_delivery)
            .values(sub_id=state.subscription, **values)
            .on_conflict_do_update(index_elements=["sub_id"], set_=values)
        )
        with self._writing() as conn:
            conn.execute(statement)

    def forget_states(self, subscriptions: Collection[str]) -> None:
        table = subscription_delivery
        with self._writing() as conn:
            conn.execute(table.delete().where(table.c.sub_id.in_(list(subscriptions))))

    def last_notification_id(self) -> int:
        with self._store._reading() as conn:
            found = conn.execute(sa.select(sa.func.max(subscription_notification.c.id))).scalar()
            return int(found or 0)

    def notifications_after(self, after: int, channel: str, limit: int) -> list[Notification]:
        n = subscription_notification.c
        query = (
            sa.select(n.id, n.sub_id, n.channel, n.res_type, n.res_id, n.version)
            .where(n.id > after, n.channel == channel)
            .order_by(n.id)
            .limit(limit)
        )
        with self._store._reading() as conn:
            return [_notification(r) for r in conn.execute(query)]


def _notification(row: Any) -> Notification:
    return Notification(row.sub_id, row.channel, row.res_type, row.res_id, row.version, row.id)
