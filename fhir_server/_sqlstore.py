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

from compliance.envelope import FORMAT_VERSION, Aad, EnvelopeError
from compliance.keyring import Keyring
from fhir_server.encryption import PayloadCipher, Payloads, PlainPayloads
from fhir_server.protection import Protection, token_prefix
from fhir_server.search.rows import IndexRows
from fhir_server.search.sql import Statement
from fhir_server.store import (
    DeliveryState,
    GrantRow,
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


def _version(row: Any, payloads: Payloads) -> StoredVersion:
    """A stored version with its payload opened (decrypted: encryption.py)."""
    content = row.content
    if content is not None:
        content = payloads.open(row.res_type, row.res_id, row.version, row.seq, bytes(content))
    return StoredVersion(
        type=row.res_type,
        id=row.res_id,
        version=row.version,
        last_updated=row.last_updated,
        deleted=row.deleted,
        method=row.method,
        content=content,
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

    def __init__(
        self,
        connection: Connection,
        payloads: Payloads | None = None,
        protection: Protection | None = None,
    ) -> None:
        self._conn = connection
        self._dialect = connection.dialect.name
        # Encryption at rest (encryption.py, protection.py): payloads sealed, identifying index
        # values as tokens; a store without keys passes neither.
        self._payloads: Payloads = payloads or PlainPayloads()
        self._protection = protection
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
        return _version(row, self._payloads) if row else None

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
                None
                if version.content is None
                else self._payloads.seal(
                    version.type, version.id, version.version, version.content
                ),
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
        self.stage_rows(version.type, version.id, version.index)

    def stage_rows(self, type: str, id: str, index: IndexRows) -> None:
        if self._protection is not None:
            index = self._protection.rows(type, index)
        key = (type, id)
        for attr, staged in self._new_index.items():
            fields = _ROW_FIELDS[attr]
            staged.extend(key + fields(row) for row in getattr(index, attr))

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
        statement = statement.render(self._protection)
        sql = _dialect_sql(statement.sql, self._dialect)
        return [tuple(r) for r in self._conn.execute(sa.text(sql), statement.params)]

    def replace_grants(self, patient: str, rows: Sequence[GrantRow]) -> None:
        self._conn.execute(
            access_grant.delete().where(
                access_grant.c.patient_id == patient, access_grant.c.basis != "btg"
            )
        )
        if rows:
            self._conn.execute(access_grant.insert(), [_grant_values(r) for r in rows])

    def add_grant(self, row: GrantRow) -> None:
        self._conn.execute(access_grant.insert(), [_grant_values(row)])

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
    """The Store port on SQLAlchemy (SQLite or PostgreSQL).

    With a keyring, payloads are encrypted and identifying index values stored as tokens
    (encryption.py, protection.py); without one (tests, tools), both are plain, and a database
    that holds encrypted data is refused."""

    def __init__(self, engine: Engine, keyring: Keyring | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        database = engine.url.database if self.dialect == "sqlite" else None
        self._writer_lock = (
            f"{database}.writer-lock" if database and database != ":memory:" else None
        )
        self._slot = threading.Lock() if self.dialect == "sqlite" else None
        self._payloads: Payloads = PlainPayloads()
        self._protection: Protection | None = None
        self._plain_checked = keyring is not None
        if keyring is not None:
            self._protect(keyring)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        migrate_schema: bool = True,
        keyring: Keyring | None = None,
    ) -> SqlStore:
        engine = create_engine(url, pool_size=pool_size)
        try:
            if migrate_schema:
                with _Translate():
                    migrate(engine)
            return cls(engine, keyring)
        except BaseException:  # e.g. a wrong key file: no connection left open
            engine.dispose()
            raise

    def _protect(self, keyring: Keyring) -> None:
        keys = SqlDataKeyStore(self)
        cipher = PayloadCipher(keyring, keys, 0)
        # Loads (or, on the first start with keys, creates) the current data key now, outside
        # any write transaction: a wrong key file fails here, at start, with a clear message.
        with _Translate():
            cipher.envelope.encrypt(b"", _PROBE)
            cipher.plaintext_below = keys.plaintext_below()
        self._payloads = cipher
        self._protection = Protection(keyring)

    def _check_plain(self) -> None:
        """A store without keys must not write plain text next to encrypted data."""
        if self._plain_checked:
            return
        with _Translate(), self.engine.connect() as conn:
            encrypted = conn.execute(sa.select(data_key.c.version).limit(1)).first()
        if encrypted is not None:
            raise EnvelopeError(
                "the database is encrypted at rest: open it with its key file (keyring)"
            )
        self._plain_checked = True

    @contextmanager
    def unit_of_work(self) -> Iterator[SqlUnitOfWork]:
        self._check_plain()
        with self._one_writer(), _Translate(), self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection.info["begin"] = "BEGIN IMMEDIATE"
            with connection.begin():
                uow = SqlUnitOfWork(connection, self._payloads, self._protection)
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
        self._check_plain()
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
        return _version(row, self._payloads) if row else None

    def vread(self, type: str, id: str, version: int) -> StoredVersion | None:
        v = resource_version.c
        query = sa.select(
            v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.method, v.content, v.seq
        ).where(v.res_type == type, v.res_id == id, v.version == version)
        with self._reading() as conn:
            row = conn.execute(query).first()
        return _version(row, self._payloads) if row else None

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
            return [_version(r, self._payloads) for r in conn.execute(stmt)]

    def select(self, statement: Statement) -> list[tuple[Any, ...]]:
        statement = statement.render(self._protection)
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
                    found[(row.res_type, row.res_id)] = _version(row, self._payloads)
        return [found[k] for k in pairs if k in found]

    def ping(self) -> None:
        with self._reading() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


# --- Encryption at rest (H2: encryption.py, protection.py) ---
# Wrapped data keys (compliance.envelope's DataKeyStore), the bound below which payloads may still
# be plain text, and the store side of rotation (encryption.rewrap).

data_key = sa.Table(
    "data_key",
    metadata,
    sa.Column("purpose", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
)
protection_state = sa.Table(
    "protection_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
_PLAINTEXT_BELOW = "plaintext_below"
_PROBE = Aad("data_key", "startup", "probe")


class SqlDataKeyStore:
    """compliance.envelope.DataKeyStore in the ``data_key`` table."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def load(self, purpose: str, version: int) -> bytes | None:
        k = data_key.c
        query = sa.select(k.wrapped).where(k.purpose == purpose, k.version == version)
        with _Translate(), self._store.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return bytes(found) if found is not None else None

    def insert_if_absent(self, purpose: str, version: int, wrapped: bytes) -> bytes:
        store, k = self._store, data_key.c
        with store._one_writer(), _Translate(), store.engine.connect() as conn:
            if store.dialect == "sqlite":
                conn.info["begin"] = "BEGIN IMMEDIATE"
            with conn.begin():
                state = protection_state.c
                below = sa.select(state.value).where(state.name == _PLAINTEXT_BELOW)
                if store.dialect == "postgresql":  # one first key, one switch-over
                    conn.execute(below.with_for_update())
                if conn.execute(sa.select(k.version).limit(1)).first() is None:
                    # The first data key: every payload so far was written in plain text.
                    highest = sa.select(sa.func.coalesce(sa.func.max(resource_version.c.seq), 0))
                    conn.execute(
                        protection_state.update()
                        .where(state.name == _PLAINTEXT_BELOW)
                        .values(value=highest.scalar_subquery())
                    )
                insert = pg_insert if store.dialect == "postgresql" else sqlite_insert
                row = {"purpose": purpose, "version": version, "wrapped": wrapped}
                conn.execute(insert(data_key).values(**row).on_conflict_do_nothing())
                query = sa.select(k.wrapped).where(k.purpose == purpose, k.version == version)
                return bytes(conn.execute(query).scalar_one())

    def plaintext_below(self) -> int:
        state = protection_state.c
        query = sa.select(state.value).where(state.name == _PLAINTEXT_BELOW)
        with _Translate(), self._store.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)


class SqlRewrap:
    """encryption.RewrapStore: payloads and tokens to the current key version, batch by batch,
    each batch one short write transaction (the server keeps running)."""

    def __init__(self, store: SqlStore) -> None:
        if not isinstance(store._payloads, PayloadCipher) or store._protection is None:
            raise EnvelopeError("rewrap needs a store opened with its keyring")
        self._store = store
        self._cipher: PayloadCipher = store._payloads
        self._protection: Protection = store._protection

    def rewrap_payloads(self, after: int, batch: int) -> tuple[int, int | None]:
        v = resource_version.c
        current = _header(self._protection.current_version)
        query = (
            sa.select(v.seq, v.res_type, v.res_id, v.version, v.content)
            .where(
                v.seq > after,
                v.content.is_not(None),
                sa.func.substr(v.content, 1, len(current)) != sa.literal(current, sa.LargeBinary),
            )
            .order_by(v.seq)
            .limit(batch)
        )
        changed, last = 0, None
        with self._store.unit_of_work() as uow:
            for row in uow._conn.execute(query).all():
                last, old = row.seq, bytes(row.content)
                new = self._cipher.rewrap(row.res_type, row.res_id, row.version, row.seq, old)
                result = uow._conn.execute(
                    resource_version.update()
                    .where(v.seq == row.seq, v.content == old)
                    .values(content=new)
                )
                changed += result.rowcount
        return changed, last

    def stale_index(
        self, after: tuple[str, str] | None, batch: int
    ) -> list[tuple[str, str, int, bytes]]:
        t = ix_text.c
        prefix = " " + token_prefix(self._protection.current_version) + " "
        query = sa.select(t.res_type, t.res_id).where(
            sa.func.substr(t.value, 1, len(prefix)) != prefix
        )
        if after is not None:
            query = query.where(
                sa.or_(t.res_type > after[0], sa.and_(t.res_type == after[0], t.res_id > after[1]))
            )
        query = query.distinct().order_by(t.res_type, t.res_id).limit(batch)
        with self._store._reading() as conn:
            keys = [(r.res_type, r.res_id) for r in conn.execute(query)]
        found = {(s.type, s.id): s for s in self._store.fetch(keys)}
        return [
            (s.type, s.id, s.version, s.content)
            for key in keys
            if (s := found.get(key)) is not None and s.content is not None
        ]

    def replace_index(self, items: Sequence[tuple[str, str, int, IndexRows]]) -> int:
        r = resource.c
        replaced = 0
        with self._store.unit_of_work() as uow:
            for type, id, version, rows in items:
                query = sa.select(r.version).where(
                    r.res_type == type, r.res_id == id, r.deleted.is_(False)
                )
                if self._store.dialect == "postgresql":
                    query = query.with_for_update()
                if uow._conn.execute(query).scalar() != version:
                    continue  # changed meanwhile: that write indexed it under the current key
                uow.flush()
                for table in _INDEX_TABLES.values():
                    uow._conn.execute(
                        table.delete().where(table.c.res_type == type, table.c.res_id == id)
                    )
                uow.stage_rows(type, id, rows)
                replaced += 1
        return replaced

    def finish_plaintext(self) -> None:
        if self._cipher.plaintext_below == 0:
            return
        v, state = resource_version.c, protection_state.c
        plain = sa.select(v.seq).where(
            v.seq <= self._cipher.plaintext_below,
            v.content.is_not(None),
            sa.func.substr(v.content, 1, 1) == sa.literal(b"{", sa.LargeBinary),
        )
        with self._store.unit_of_work() as uow:
            if uow._conn.execute(plain.limit(1)).first() is None:
                uow._conn.execute(
                    protection_state.update().where(state.name == _PLAINTEXT_BELOW).values(value=0)
                )
                self._cipher.plaintext_below = 0

    def versions_in_use(self) -> set[int]:
        """Master key versions some payload or token is still under (a version not listed can
        be removed from the key file)."""
        v, t = resource_version.c, ix_text.c
        headers = sa.select(sa.func.substr(v.content, 1, 5)).where(v.content.is_not(None))
        prefixes = sa.select(sa.func.substr(t.value, 1, 12))
        versions: set[int] = set()
        with self._store._reading() as conn:
            for (head,) in conn.execute(headers.distinct()):
                head = bytes(head)
                if head[:1] != b"{":
                    versions.add(int.from_bytes(head[1:5], "big"))
            for (text,) in conn.execute(prefixes.distinct()):
                match = _TOKEN_VERSION.match(text or "")
                if match:
                    versions.add(int(match[1]))
        return versions


_TOKEN_VERSION = re.compile(r"^ (\d+)\.")


def _header(version: int) -> bytes:
    """The first bytes of every payload under master key ``version`` (compliance.envelope)."""
    return bytes([FORMAT_VERSION]) + version.to_bytes(4, "big")


# --- Access grants ---
# Which organisation (or person, after break-the-glass) may see which patient, recomputed in the
# writing transaction from the relation resources (fhir_server/relations.py). Searches join it.

access_grant = sa.Table(
    "access_grant",
    metadata,
    sa.Column("id", _Seq, primary_key=True, autoincrement=True),
    sa.Column("patient_id", sa.String(64), nullable=False),
    sa.Column("grantee", sa.String(200), nullable=False),
    sa.Column("res_class", sa.String(64), nullable=False),
    sa.Column("valid_from", sa.BigInteger, nullable=False),
    sa.Column("valid_until", sa.BigInteger, nullable=True),
    sa.Column("basis", sa.String(32), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
)


def _grant_values(row: GrantRow) -> dict[str, Any]:
    return {
        "patient_id": row.patient,
        "grantee": row.grantee,
        "res_class": row.res_class,
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
        "basis": row.basis,
        "source": row.source,
    }


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


class _Leadership:
    """Held by one process per database at a time (the subscription dispatcher, the audit
    chainer): a session-level advisory lock per schema on PostgreSQL (databases shared by
    several schemas, as in the tests, get one leader per schema), an flock on a file beside a
    SQLite database, an in-process lock for an in-memory one."""

    def __init__(self, store: SqlStore, file_suffix: str, key_name: str) -> None:
        self._engine = store.engine
        self._dialect = store.dialect
        database = self._engine.url.database if self._dialect == "sqlite" else None
        self._lease_file = (
            f"{database}.{file_suffix}" if database and database != ":memory:" else None
        )
        self._memory_lease = threading.Lock()
        self._key_name = key_name
        self._key: int | None = None

    def take(self) -> _FileLease | _LockLease | _PgLease | None:
        if self._dialect == "postgresql":
            return self._pg_take()
        if self._lease_file is None:
            return _LockLease(self._memory_lease) if self._memory_lease.acquire(False) else None
        file = open(self._lease_file, "a+b")  # noqa: SIM115 - the lease owns and closes it
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        return _FileLease(file)

    def _pg_take(self) -> _PgLease | None:
        with _Translate():
            conn = self._engine.connect()
            try:
                if self._key is None:
                    self._key = _schema_key(conn, self._key_name)
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})
                locked = bool(got.scalar_one())
                conn.commit()
            except BaseException:
                conn.close()
                raise
        if not locked:
            conn.close()
            return None
        return _PgLease(conn, self._key)


def _schema_key(conn: Connection, name: str) -> int:
    """An advisory lock key for ``name`` in the connection's schema."""
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    return _advisory_key(f"{name}:{schema}")


class SqlSubscriptionStore:
    """The SubscriptionStore port on the SQL store's engine."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._engine = store.engine
        self._dialect = store.dialect
        self._leadership = _Leadership(store, "dispatcher-lock", "medikus.subscriptions.lead")
        self._enqueue_key: int | None = None

    def lead(self) -> _FileLease | _LockLease | _PgLease | None:
        return self._leadership.take()

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
                    if self._enqueue_key is None:
                        self._enqueue_key = _schema_key(conn, "medikus.subscriptions.enqueue")
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._enqueue_key}
                    )
                yield conn

    def subscriptions(self) -> list[StoredVersion]:
        query = (
            sa.select(*_CURRENT_COLUMNS)
            .select_from(_JOIN_CURRENT)
            .where(resource.c.res_type == "Subscription", resource.c.deleted.is_(False))
        )
        with self._store._reading() as conn:
            return [_version(r, self._store._payloads) for r in conn.execute(query)]

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


# --- Audit trail ---
# IHE BALP AuditEvents in a chained-HMAC log (fhir_server/audit.py, audit_chainer.py). Events wait
# sealed in ``audit_pending`` (a write's own events are inserted in the writing transaction); the
# one chainer per database moves them into the chain: each becomes an AuditEvent resource (in
# resource_version, through the write path) and a row of ``audit_log``; signed heads are kept in
# ``audit_signed_head`` (and should be copied off-site). Imports here, not at the top: this section
# was appended while the top of the module was being edited (encryption at rest).
from compliance.audit_chain import GENESIS_HEAD, ChainHead, SignedHead  # noqa: E402
from fhir_server._time import from_micros, to_micros  # noqa: E402
from fhir_server.store import AuditLink, PendingAudit, UnitOfWork  # noqa: E402

audit_pending = sa.Table(
    "audit_pending",
    metadata,
    sa.Column("id", _Seq, primary_key=True, autoincrement=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", _Id, nullable=False),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)
audit_signed_head = sa.Table(
    "audit_signed_head",
    metadata,
    sa.Column("id", _Seq, primary_key=True, autoincrement=True),
    sa.Column("head_index", sa.BigInteger, nullable=False),
    sa.Column("head_hash", sa.LargeBinary, nullable=False),
    sa.Column("signed_at", sa.BigInteger, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
)


class SqlAuditLog:
    """The AuditLog port on the SQL store's engine (the AuditEvent resources live in the Store)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._engine = store.engine
        self._dialect = store.dialect
        self._leadership = _Leadership(store, "audit-chainer-lock", "medikus.audit.chainer")

    def stage(self, uow: UnitOfWork, payloads: Sequence[bytes], now: int) -> None:
        if payloads:
            assert isinstance(uow, SqlUnitOfWork)
            self._insert_pending(uow._conn, payloads, now)

    def submit(self, payloads: Sequence[bytes], now: int) -> None:
        if not payloads:
            return
        with self._store._one_writer(), _Translate(), self._engine.connect() as conn:
            if self._dialect == "sqlite":
                conn.info["begin"] = "BEGIN IMMEDIATE"
            with conn.begin():
                self._insert_pending(conn, payloads, now)

    def _insert_pending(self, conn: Connection, payloads: Sequence[bytes], now: int) -> None:
        # Fixed SQL straight to the driver: on the write path SQLAlchemy's statement handling
        # cost more than the insert itself.
        placeholder = "?" if self._dialect == "sqlite" else "%s"
        sql = _insert_sql("audit_pending", ("created", "payload"), placeholder)
        conn.exec_driver_sql(sql, [(now, p) for p in payloads])

    def pending(self, limit: int) -> list[PendingAudit]:
        p = audit_pending.c
        query = sa.select(p.id, p.payload).order_by(p.id).limit(limit)
        with self._store._reading() as conn:
            return [PendingAudit(r.id, bytes(r.payload)) for r in conn.execute(query)]

    def head(self) -> ChainHead:
        with self._store._reading() as conn:
            return _chain_head(conn)

    def append(
        self,
        uow: UnitOfWork,
        head: ChainHead,
        links: Sequence[AuditLink],
        done: Collection[int],
        signed: SignedHead | None,
    ) -> None:
        assert isinstance(uow, SqlUnitOfWork)
        conn = uow._conn
        if _chain_head(conn) != head:
            raise VersionConflict("the audit chain grew meanwhile (another chainer?)")
        p = audit_pending
        claimed = conn.execute(p.delete().where(p.c.id.in_(list(done))).returning(p.c.id)).all()
        if len(claimed) != len(done):
            raise VersionConflict("pending audit events were chained by another chainer")
        if links:
            placeholder = "?" if self._dialect == "sqlite" else "%s"
            columns = ("seq", "event_id", "key_version", "hash")
            rows = [(k.seq, k.event_id, k.key_version, k.hash) for k in links]
            conn.exec_driver_sql(_insert_sql("audit_log", columns, placeholder), rows)
        if signed is not None:
            conn.execute(
                audit_signed_head.insert(),
                {
                    "head_index": signed.index,
                    "head_hash": signed.head_hash,
                    "signed_at": to_micros(signed.signed_at),
                    "key_id": signed.key_id,
                    "signature": signed.signature,
                },
            )

    def links(self, after: int, limit: int) -> list[AuditLink]:
        a = audit_log.c
        query = (
            sa.select(a.seq, a.event_id, a.key_version, a.hash)
            .where(a.seq > after)
            .order_by(a.seq)
            .limit(limit)
        )
        with self._store._reading() as conn:
            return [
                AuditLink(r.seq, r.event_id, r.key_version, bytes(r.hash))
                for r in conn.execute(query)
            ]

    def signed_heads(self) -> list[SignedHead]:
        h = audit_signed_head.c
        query = sa.select(h.head_index, h.head_hash, h.signed_at, h.key_id, h.signature).order_by(
            h.id
        )
        with self._store._reading() as conn:
            return [
                SignedHead(
                    r.head_index,
                    bytes(r.head_hash),
                    from_micros(r.signed_at),
                    bytes(r.signature),
                    r.key_id,
                )
                for r in conn.execute(query)
            ]

    def key_versions(self) -> set[int]:
        query = sa.select(audit_log.c.key_version).distinct()
        with self._store._reading() as conn:
            return {r.key_version for r in conn.execute(query)}

    def lead(self) -> _FileLease | _LockLease | _PgLease | None:
        return self._leadership.take()


def _chain_head(conn: Connection) -> ChainHead:
    a = audit_log.c
    row = conn.execute(sa.select(a.seq, a.hash).order_by(a.seq.desc()).limit(1)).first()
    return ChainHead(row.seq, bytes(row.hash)) if row else GENESIS_HEAD


# --- Retention (§630f BGB): legal holds, run bookkeeping and the expunge ---
# fhir_server/retention.py decides who is due; this section finds the dates in the index and
# deletes. The expunge is the only hard delete. It clears a patient's compartment from every table
# of this schema that holds rows of resources (columns ``res_type`` and ``res_id``) or of patients
# (a ``patient_id`` column), found by that convention, so tables added later are cleared too;
# except the audit trail (tables named ``audit*``, and the AuditEvent resources, which a plan never
# names): it is the evidence, and records the expunge itself.
from fhir_server.store import (  # noqa: E402
    Expunged,
    ExpungePlan,
    HoldRecord,
    PatientActivity,
    RecordChanged,
    RetentionRun,
    UnderLegalHold,
)

legal_hold = sa.Table(
    "legal_hold",
    metadata,
    sa.Column("id", _Seq, primary_key=True, autoincrement=True),
    sa.Column("patient_id", _Id, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("placed_by", sa.String(200), nullable=False),
    sa.Column("placed_at", sa.BigInteger, nullable=False),
    sa.Column("released_by", sa.String(200), nullable=True),
    sa.Column("released_at", sa.BigInteger, nullable=True),
    sa.Column("release_reason", sa.Text, nullable=True),
    sa.Index("ix_legal_hold_patient", "patient_id", "released_at"),
)
retention_run = sa.Table(
    "retention_run",
    metadata,
    sa.Column("id", _Seq, primary_key=True, autoincrement=True),
    sa.Column("started", sa.BigInteger, nullable=False),
    sa.Column("finished", sa.BigInteger, nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("patients", sa.Integer, nullable=False),
    sa.Column("due", sa.Integer, nullable=False),
    sa.Column("held", sa.Integer, nullable=False),
    sa.Column("expunged", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),
    sa.Column("run_by", sa.String(200), nullable=False),
)


def _values(name: str, pairs: Sequence[tuple[str, str]], params: dict[str, Any]) -> str:
    """A CTE ``name(t, p)`` of bound pairs (joined like everything_statement's links)."""
    rows = []
    for k, (a, b) in enumerate(pairs):
        params[f"{name}{k}a"], params[f"{name}{k}b"] = a, b
        rows.append(f"(:{name}{k}a, :{name}{k}b)")
    return f"{name}(t, p) AS (VALUES {', '.join(rows)})"


def _activity_sql(
    links: Sequence[tuple[str, str]], evidence: Sequence[tuple[str, str]], patient: str | None
) -> tuple[str, dict[str, Any]]:
    # Grouped joins, not correlated subqueries: one pass over the compartment links for all
    # patients. Members are found through the reference index: live resources only.
    if not links:
        raise ValueError("a patient compartment needs at least one link")
    params: dict[str, Any] = {}
    one_link = one_patient = ""
    if patient is not None:
        params["patient"] = patient
        one_link, one_patient = " AND i.target_id = :patient", " AND p.res_id = :patient"
    ctes = [_values("lk", links, params), _values("ev", evidence or [("", "")], params)]
    sql = (
        f"WITH {', '.join(ctes)}, "  # nosec B608 # fixed names; values bound (_values)
        "members AS (SELECT DISTINCT i.target_id AS patient, i.res_type, i.res_id "
        "FROM lk JOIN ix_reference i ON i.res_type = lk.t AND i.param = lk.p "
        f"WHERE i.target_type = 'Patient'{one_link}), "
        "recorded AS (SELECT m.patient, MAX(r.last_updated) AS last FROM members m "
        "JOIN resource r ON r.res_type = m.res_type AND r.res_id = m.res_id GROUP BY m.patient), "
        "treated AS (SELECT m.patient, MAX(d.high) AS high FROM members m "
        "JOIN ev ON ev.t = m.res_type JOIN ix_date d ON d.res_type = m.res_type "
        "AND d.res_id = m.res_id AND d.param = ev.p GROUP BY m.patient) "
        "SELECT p.res_id, p.last_updated, rc.last, tr.high FROM resource p "
        "LEFT JOIN recorded rc ON rc.patient = p.res_id "
        "LEFT JOIN treated tr ON tr.patient = p.res_id "
        f"WHERE p.res_type = 'Patient'{one_patient} ORDER BY p.res_id"
    )
    return sql, params


def _activities(conn: Connection, sql: str, params: dict[str, Any]) -> list[PatientActivity]:
    return [
        PatientActivity(row[0], row[3], max(row[1], row[2] if row[2] is not None else row[1]))
        for row in conn.execute(sa.text(sql), params)
    ]


def _expunge_tables() -> tuple[list[sa.Table], list[sa.Table]]:
    """(tables with resource rows, tables with patient rows), the audit trail left out."""
    by_resource: list[sa.Table] = []
    by_patient: list[sa.Table] = []
    for table in metadata.sorted_tables:
        if table.name.startswith("audit"):
            continue
        if "res_type" in table.c and "res_id" in table.c:
            by_resource.append(table)
        elif "patient_id" in table.c:
            by_patient.append(table)
    return by_resource, by_patient


def _hold(row: Any) -> HoldRecord:
    return HoldRecord(
        row.id,
        row.patient_id,
        row.reason,
        row.placed_by,
        row.placed_at,
        row.released_by,
        row.released_at,
        row.release_reason,
    )


class SqlRetentionStore:
    """The RetentionStore port on the SQL store's engine."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._engine = store.engine
        self._dialect = store.dialect

    @contextmanager
    def _writing(self, patient: str | None = None) -> Iterator[Connection]:
        """A write transaction that takes turns with the record's writers; on PostgreSQL it
        also serialises holds and expunges of ``patient``."""
        with self._store._one_writer(), _Translate(), self._engine.connect() as conn:
            if self._dialect == "sqlite":
                conn.info["begin"] = "BEGIN IMMEDIATE"
            with conn.begin():
                if patient is not None and self._dialect == "postgresql":
                    schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
                    key = _advisory_key(f"medikus.retention:{schema}:{patient}")
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                yield conn

    def activity(
        self,
        links: Sequence[tuple[str, str]],
        evidence: Sequence[tuple[str, str]],
        patient: str | None = None,
    ) -> list[PatientActivity]:
        sql, params = _activity_sql(links, evidence, patient)
        with self._store._reading() as conn:
            return _activities(conn, sql, params)

    def holds(self, patient: str | None = None, *, released: bool = False) -> list[HoldRecord]:
        h = legal_hold.c
        query = sa.select(legal_hold).order_by(h.id)
        if patient is not None:
            query = query.where(h.patient_id == patient)
        if not released:
            query = query.where(h.released_at.is_(None))
        with self._store._reading() as conn:
            return [_hold(row) for row in conn.execute(query)]

    def place_hold(self, patient: str, reason: str, by: str, at: int) -> HoldRecord:
        values = {"patient_id": patient, "reason": reason, "placed_by": by, "placed_at": at}
        with self._writing(patient) as conn:
            row = conn.execute(legal_hold.insert().values(**values).returning(legal_hold)).one()
        return _hold(row)

    def release_holds(self, patient: str, by: str, at: int, reason: str) -> list[HoldRecord]:
        h = legal_hold.c
        statement = (
            legal_hold.update()
            .where(h.patient_id == patient, h.released_at.is_(None))
            .values(released_by=by, released_at=at, release_reason=reason)
            .returning(legal_hold)
        )
        with self._writing(patient) as conn:
            return sorted((_hold(row) for row in conn.execute(statement)), key=lambda x: x.id)

    def expunge(self, plan: ExpungePlan) -> Expunged:
        patient = plan.patient
        with self._writing(patient) as conn:
            h = legal_hold.c
            held = sa.select(h.id).where(h.patient_id == patient, h.released_at.is_(None))
            if conn.execute(held.limit(1)).first() is not None:
                raise UnderLegalHold(f"Patient/{patient} is under a legal hold")
            self._lock_patient(conn, patient)
            sql, params = _activity_sql(plan.links, plan.evidence, patient)
            if _activities(conn, sql, params) != [plan.activity]:
                raise RecordChanged(f"Patient/{patient} changed since it was assessed")
            live = self._members(conn, plan)
            kept = self._shared(conn, plan, live)
            members = [k for k in dict.fromkeys([*live, *plan.extra]) if k not in kept]
            members.append(("Patient", patient))
            return self._delete(conn, patient, members, tuple(sorted(kept)))

    def _lock_patient(self, conn: Connection, patient: str) -> None:
        if self._dialect == "postgresql":
            r = resource.c
            conn.execute(
                sa.select(r.res_id)
                .where(r.res_type == "Patient", r.res_id == patient)
                .with_for_update()
            )

    def _members(self, conn: Connection, plan: ExpungePlan) -> list[tuple[str, str]]:
        params: dict[str, Any] = {"patient": plan.patient}
        sql = (
            f"WITH {_values('lk', plan.links, params)} "  # nosec B608 # fixed names; values bound
            "SELECT DISTINCT i.res_type, i.res_id FROM lk JOIN ix_reference i "
            "ON i.res_type = lk.t AND i.param = lk.p "
            "WHERE i.target_type = 'Patient' AND i.target_id = :patient"
        )
        return [(row[0], row[1]) for row in conn.execute(sa.text(sql), params)]

    def _shared(
        self, conn: Connection, plan: ExpungePlan, live: list[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Live members that are also in the compartment of another patient still on record.
        Driven by the members (the resource index), the link parameters checked here: joining
        the links first would read every reference of every resource of those types."""
        links = {(t, p) for t, p in plan.links}
        others: dict[tuple[str, str], set[str]] = {}
        i = ix_reference.c
        for rtype, ids in _by_type(live):
            query = sa.select(i.res_id, i.param, i.target_id).where(
                i.res_type == rtype,
                i.res_id.in_(ids),
                i.target_type == "Patient",
                i.target_id != plan.patient,
            )
            for res_id, param, target in conn.execute(query):
                if (rtype, param) in links:
                    others.setdefault((rtype, res_id), set()).add(target)
        if not others:
            return set()
        r = resource.c
        targets = sorted({t for ts in others.values() for t in ts})
        on_record: set[str] = set()
        for start in range(0, len(targets), 500):
            query = sa.select(r.res_id).where(
                r.res_type == "Patient", r.res_id.in_(targets[start : start + 500])
            )
            on_record.update(row[0] for row in conn.execute(query))
        return {key for key, ts in others.items() if ts & on_record}

    def _delete(
        self,
        conn: Connection,
        patient: str,
        members: list[tuple[str, str]],
        kept: tuple[tuple[str, str], ...],
    ) -> Expunged:
        by_resource, by_patient = _expunge_tables()
        rows: dict[str, int] = {}
        # One statement per table, each row found through the table's (res_type, res_id) index:
        # SQLite runs a prepared DELETE per member (executemany loops in C); PostgreSQL joins the
        # members as two arrays (one round trip instead of one per member).
        types = [t for t, _ in members]
        ids = [i for _, i in members]
        for table in by_resource:
            if self._dialect == "sqlite":
                sql = f"DELETE FROM {table.name} WHERE res_type = ? AND res_id = ?"  # nosec B608 # table names from the metadata, values bound
                result = conn.exec_driver_sql(sql, members)
            else:
                sql = (
                    f"DELETE FROM {table.name} t USING unnest(%s::text[], %s::text[]) AS m(k, i) "  # nosec B608 # table names from the metadata, values bound
                    "WHERE t.res_type = m.k AND t.res_id = m.i"
                )
                result = conn.exec_driver_sql(sql, (types, ids))
            rows[table.name] = result.rowcount
        resources: dict[str, int] = {}
        for rtype, _ in members:  # each member exists: found in the index, or named by the job
            resources[rtype] = resources.get(rtype, 0) + 1
        for table in by_patient:
            result = conn.execute(table.delete().where(table.c.patient_id == patient))
            rows[table.name] = rows.get(table.name, 0) + result.rowcount
        versions = rows.get(resource_version.name, 0)
        return Expunged(patient, resources, versions, rows, kept)

    def dangling_references(self, limit: int) -> list[tuple[str, str, str, str]]:
        i, r = ix_reference.c, resource.c
        query = (
            sa.select(i.res_type, i.res_id, i.target_type, i.target_id)
            .where(
                i.target_id.is_not(None),
                i.target_type.is_not(None),
                i.res_type != "AuditEvent",
                ~sa.exists().where(r.res_type == i.target_type, r.res_id == i.target_id),
            )
            .distinct()
            .limit(limit)
        )
        with self._store._reading() as conn:
            return [(row[0], row[1], row[2], row[3]) for row in conn.execute(query)]

    def record_run(self, run: RetentionRun) -> None:
        values = {
            "started": run.started,
            "finished": run.finished,
            "dry_run": run.dry_run,
            "patients": run.patients,
            "due": run.due,
            "held": run.held,
            "expunged": run.expunged,
            "skipped": run.skipped,
            "run_by": run.run_by,
        }
        with self._writing() as conn:
            conn.execute(retention_run.insert().values(**values))

    def runs(self, limit: int) -> list[RetentionRun]:
        t = retention_run.c
        query = sa.select(retention_run).order_by(t.id.desc()).limit(limit)
        with self._store._reading() as conn:
            return [
                RetentionRun(
                    row.started,
                    row.finished,
                    row.dry_run,
                    row.patients,
                    row.due,
                    row.held,
                    row.expunged,
                    row.skipped,
                    row.run_by,
                    row.id,
                )
                for row in conn.execute(query)
            ]
