"""The station's durable store-and-forward queue: one SQLite file, nothing acknowledged is lost.

https://www.sqlite.org/wal.html — WAL journal with ``synchronous=FULL``: when :meth:`Outbox.append`
returns, the reading survives a crash or power cut (each commit is fsynced). The same file holds
the glucose download cursor (updated in the reading's own transaction, so a re-started RACP
download neither skips nor repeats a record) and the check-ins of ``assignment.py``; the schema
version of the whole file is ``PRAGMA user_version``.

An item's life::

    append → received ──mark_ready──→ ready ──mark_uploaded──→ uploaded
                 │  ↑                   │
      mark_review│  └─resolve_review─┐  │mark_review (record core refused it)
                 ↓                   │  ↓
               review ───────────────┘

``received`` items are the ones to (re)process after a crash: parse, assign, map. The payload of a
``ready`` item is the JSON the uploader sends (format: ``uploader.py``).

Threads: every method is one short synchronous transaction on one connection guarded by a lock,
so an instance may be shared between the asyncio loop and worker threads. A commit costs one
fsync (milliseconds on an SSD, more on an SD card): the uploader calls through
``asyncio.to_thread``; the station may call ``append`` directly or the same way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from devices import fhir_json
from devices.errors import DeviceError
from devices.reading import Reading

__all__ = ["Database", "Item", "Outbox", "State", "Statistics", "from_us", "open_database", "to_us"]

SCHEMA_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_address TEXT NOT NULL,
        characteristic TEXT NOT NULL,
        raw BLOB NOT NULL,
        received_us INTEGER NOT NULL,          -- station clock, µs since the epoch (UTC)
        device_time_offset_us INTEGER,         -- station − device clock, µs
        clock_read_us INTEGER,                 -- station clock when the device clock was read
        sequence INTEGER,
        state TEXT NOT NULL DEFAULT 'received'
            CHECK (state IN ('received', 'ready', 'review', 'uploaded')),
        patient_id TEXT,
        payload TEXT,                          -- JSON, see uploader.py
        review_reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        uploaded_us INTEGER
    );
    -- A stored record the device sends again (RACP "all records") is the same record.
    CREATE UNIQUE INDEX readings_sequence ON readings (device_address, characteristic, sequence)
        WHERE sequence IS NOT NULL;
    CREATE INDEX readings_state ON readings (state, id);
    CREATE TABLE glucose_cursors (
        device_address TEXT PRIMARY KEY,
        last_sequence INTEGER NOT NULL
    );
    -- assignment.py: who is checked in at which device (NULL = the whole station), when.
    CREATE TABLE check_ins (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        patient_id TEXT NOT NULL,
        device_address TEXT,
        user_id INTEGER,
        start_us INTEGER NOT NULL,
        end_us INTEGER,
        checked_in_by TEXT,
        CHECK (user_id IS NULL OR device_address IS NOT NULL),
        CHECK (end_us IS NULL OR end_us > start_us)
    );
    CREATE INDEX check_ins_device ON check_ins (device_address, start_us);
    """,
}


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch; ``moment`` must be timezone-aware."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the station stores UTC instants")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class Database:
    """The station's SQLite file: one connection, one lock, explicit transactions."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self.path = path

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                yield self._connection
            finally:
                self._connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def open_database(path: Path) -> Database:
    """Opens (creating if needed, with its directory) the station database and migrates it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # health data: owner only
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise DeviceError(f"{path}: WAL nicht möglich / cannot use WAL (journal mode {mode})")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        _migrate(connection, path)
    except BaseException:
        connection.close()
        raise
    return Database(connection, path)


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DeviceError(
                f"{path}: Datenbank von neuerer Version {version} / database schema {version} is "
                f"newer than this station software ({SCHEMA_VERSION})"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class State(StrEnum):
    RECEIVED = "received"
    READY = "ready"
    REVIEW = "review"
    UPLOADED = "uploaded"


@dataclass(frozen=True)
class Item:
    """One stored reading and where it stands."""

    id: int
    reading: Reading
    state: State
    patient_id: str | None  # set by mark_ready, or by resolve_review (then it overrides check-ins)
    payload: Mapping[str, Any] | None  # what the uploader sends (ready items)
    review_reason: str | None
    attempts: int  # failed upload attempts
    last_error: str | None
    uploaded_at: datetime | None


@dataclass(frozen=True)
class Statistics:
    """Queue depth for monitoring."""

    counts: Mapping[State, int]
    oldest_pending: datetime | None  # receive time of the oldest received or ready item

    def oldest_pending_age(self, now: datetime) -> timedelta | None:
        return None if self.oldest_pending is None else now - self.oldest_pending


_COLUMNS = (
    "id, device_address, characteristic, raw, received_us, device_time_offset_us, clock_read_us, "
    "sequence, state, patient_id, payload, review_reason, attempts, last_error, uploaded_us"
)


def _item(row: sqlite3.Row | tuple[Any, ...]) -> Item:
    (id_, address, characteristic, raw, received, offset, clock_read, sequence) = row[:8]
    state, patient, payload, reason, attempts, error, uploaded = row[8:]
    reading = Reading(
        device_address=address,
        characteristic=characteristic,
        raw=bytes(raw),
        received_at=from_us(received),
        device_time_offset=None if offset is None else timedelta(microseconds=offset),
        sequence=sequence,
        clock_read_at=None if clock_read is None else from_us(clock_read),
    )
    return Item(
        id=id_,
        reading=reading,
        state=State(state),
        patient_id=patient,
        payload=None if payload is None else fhir_json.loads(payload),
        review_reason=reason,
        attempts=attempts,
        last_error=error,
        uploaded_at=None if uploaded is None else from_us(uploaded),
    )


class Outbox:
    """Readings on their way to the record core; see the module docstring for the states."""

    def __init__(self, database: Database, clock: Callable[[], datetime]) -> None:
        self._db = database
        self._clock = clock

    def append(self, reading: Reading) -> int | None:
        """Stores ``reading`` durably (state ``received``) and returns its id; ``None`` if this
        sequenced record (glucose) is stored already. A sequenced reading moves the device's
        cursor (:meth:`last_sequence`) in the same transaction."""
        offset = reading.device_time_offset
        with self._db.transaction() as db:
            cursor = db.execute(
                "INSERT INTO readings (device_address, characteristic, raw, received_us,"
                " device_time_offset_us, clock_read_us, sequence) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    reading.device_address,
                    reading.characteristic,
                    reading.raw,
                    to_us(reading.received_at),
                    None if offset is None else offset // timedelta(microseconds=1),
                    None if reading.clock_read_at is None else to_us(reading.clock_read_at),
                    reading.sequence,
                ),
            )
            if reading.sequence is not None:
                db.execute(
                    "INSERT INTO glucose_cursors VALUES (?, ?) ON CONFLICT (device_address)"
                    " DO UPDATE SET last_sequence = max(last_sequence, excluded.last_sequence)",
                    (reading.device_address, reading.sequence),
                )
            return cursor.lastrowid if cursor.rowcount == 1 else None

    def last_sequence(self, device_address: str) -> int | None:
        """The highest glucose record sequence number stored for this device (resume point)."""
        with self._db.reading() as db:
            row = db.execute(
                "SELECT last_sequence FROM glucose_cursors WHERE device_address = ?",
                (device_address,),
            ).fetchone()
        return None if row is None else int(row[0])

    def mark_ready(self, item_id: int, patient_id: str, payload: Mapping[str, Any]) -> None:
        """A received item is assigned and mapped: ``payload`` is what the uploader sends."""
        self._move(
            item_id,
            (State.RECEIVED,),
            "state = 'ready', patient_id = ?, payload = ?, review_reason = NULL",
            (patient_id, fhir_json.dumps(payload).decode()),
        )

    def mark_review(self, item_id: int, reason: str) -> None:
        """Parks an item for staff (no patient, malformed, unusable clock, refused)."""
        self._move(
            item_id,
            (State.RECEIVED, State.READY),
            "state = 'review', review_reason = ?",
            (reason,),
        )

    def resolve_review(self, item_id: int, patient_id: str) -> None:
        """Staff named the patient: the item goes back to ``received`` to be mapped again for
        ``patient_id`` (which then wins over the check-ins)."""
        self._move(
            item_id,
            (State.REVIEW,),
            "state = 'received', patient_id = ?, payload = NULL, attempts = 0, last_error = NULL",
            (patient_id,),
        )

    def mark_uploaded(self, item_ids: Sequence[int]) -> None:
        """The record core has these items; ids not in ``ready`` are left alone."""
        now = to_us(self._clock())
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE readings SET state = 'uploaded', uploaded_us = ?, last_error = NULL"
                " WHERE id = ? AND state = 'ready'",
                [(now, item_id) for item_id in item_ids],
            )

    def record_failure(self, item_ids: Sequence[int], error: str) -> None:
        """An upload attempt for these items failed (they stay ``ready``)."""
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE readings SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                [(error, item_id) for item_id in item_ids],
            )

    def pending(self, limit: int) -> list[Item]:
        """The oldest ``limit`` ready items, in arrival order."""
        return self._select("WHERE state = 'ready' ORDER BY id LIMIT ?", (limit,))

    def received(self) -> list[Item]:
        """Items still to parse, assign and map (after a crash, or after resolve_review)."""
        return self._select("WHERE state = 'received' ORDER BY id", ())

    def review_items(self) -> list[Item]:
        return self._select("WHERE state = 'review' ORDER BY id", ())

    def get(self, item_id: int) -> Item | None:
        items = self._select("WHERE id = ?", (item_id,))
        return items[0] if items else None

    def sequenced(self, device_address: str, characteristic: str, sequence: int) -> Item | None:
        """The stored record with this sequence number (a glucose measurement's context)."""
        items = self._select(
            "WHERE device_address = ? AND characteristic = ? AND sequence = ?",
            (device_address, characteristic, sequence),
        )
        return items[0] if items else None

    def statistics(self) -> Statistics:
        with self._db.reading() as db:
            rows = db.execute("SELECT state, count(*) FROM readings GROUP BY state").fetchall()
            oldest = db.execute(
                "SELECT min(received_us) FROM readings WHERE state IN ('received', 'ready')"
            ).fetchone()[0]
        counts = {state: 0 for state in State} | {State(s): n for s, n in rows}
        return Statistics(counts, None if oldest is None else from_us(oldest))

    def purge_uploaded(self, before: datetime) -> int:
        """Deletes items uploaded before ``before`` (the record core keeps them); the glucose
        cursors stay, so purged records are not downloaded again."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "DELETE FROM readings WHERE state = 'uploaded' AND uploaded_us < ?",
                (to_us(before),),
            )
            return cursor.rowcount

    def _select(self, where: str, parameters: tuple[Any, ...]) -> list[Item]:
        with self._db.reading() as db:
            # The fragments are this module's constants; values are always parameters.
            query = f"SELECT {_COLUMNS} FROM readings {where}"  # nosec B608 # constants only
            rows = db.execute(query, parameters).fetchall()
        return [_item(row) for row in rows]

    def _move(
        self, item_id: int, allowed: tuple[State, ...], assignment: str, values: tuple[Any, ...]
    ) -> None:
        with self._db.transaction() as db:
            row = db.execute("SELECT state FROM readings WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise ValueError(f"outbox item {item_id} does not exist")
            if State(row[0]) not in allowed:
                raise ValueError(f"outbox item {item_id} is {row[0]}, not {' or '.join(allowed)}")
            update = f"UPDATE readings SET {assignment} WHERE id = ?"  # nosec B608 # constants
            db.execute(update, (*values, item_id))
