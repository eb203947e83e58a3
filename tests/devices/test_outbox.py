"""The outbox keeps every acknowledged reading exactly once, across crashes (SIGKILL)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devices.errors import DeviceError
from devices.outbox import Database, Item, Outbox, State, open_database
from devices.reading import Reading

ROOT = Path(__file__).resolve().parents[2]
GLUCOSE = "00002a18-0000-1000-8000-00805f9b34fb"
CONTEXT = "00002a34-0000-1000-8000-00805f9b34fb"
PRESSURE = "00002a35-0000-1000-8000-00805f9b34fb"
METER = "A0:B1:C2:D3:E4:05"
CUFF = "A0:B1:C2:D3:E4:01"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(name="database")
def database_fixture(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "station.sqlite3")
    yield database
    database.close()


@pytest.fixture(name="outbox")
def outbox_fixture(database: Database) -> Outbox:
    return Outbox(database, Clock())


def pressure(minute: int, raw: bytes = b"\x1e\x78\x00\x50\x00\x5d\x00") -> Reading:
    received = T0 + timedelta(minutes=minute)
    return Reading(
        CUFF, PRESSURE, raw, received, timedelta(seconds=-42), clock_read_at=T0 - timedelta(days=1)
    )


def glucose(sequence: int, characteristic: str = GLUCOSE) -> Reading:
    raw = bytes([0x10]) + sequence.to_bytes(2, "little") + b"\xea\x07\x03\x02\x08\x00\x00"
    return Reading(METER, characteristic, raw, T0 + timedelta(seconds=sequence), None, sequence)


def payload(n: int) -> dict[str, object]:
    return {"observations": [{"resourceType": "Observation", "id": f"o{n}"}], "devices": {}}


def test_append_keeps_the_reading_exactly(outbox: Outbox) -> None:
    reading = pressure(0, raw=bytes(range(256)))
    item_id = outbox.append(reading)
    assert item_id is not None
    item = outbox.get(item_id)
    assert item is not None
    assert item.reading == reading
    assert item.state is State.RECEIVED
    assert (item.patient_id, item.payload, item.attempts) == (None, None, 0)
    assert [i.id for i in outbox.received()] == [item_id]


def test_naive_times_are_refused(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="naive"):
        outbox.append(Reading(CUFF, PRESSURE, b"\x00", datetime(2026, 3, 2, 9, 30)))


def test_a_resent_stored_record_is_stored_once(outbox: Outbox) -> None:
    first = outbox.append(glucose(7))
    assert first is not None
    assert outbox.append(glucose(7)) is None
    # the context record of the same measurement is its own record
    assert outbox.append(glucose(7, CONTEXT)) is not None
    measurement, context = outbox.sequenced(METER, GLUCOSE, 7), outbox.sequenced(METER, CONTEXT, 7)
    assert measurement is not None and measurement.id == first
    assert context is not None and context.reading == glucose(7, CONTEXT)
    assert outbox.sequenced(METER, GLUCOSE, 8) is None
    # unsequenced readings are never merged, even when identical
    assert outbox.append(pressure(1)) != outbox.append(pressure(1))
    assert outbox.statistics().counts[State.RECEIVED] == 4


def test_the_glucose_cursor_follows_the_stored_records(outbox: Outbox) -> None:
    assert outbox.last_sequence(METER) is None
    for sequence in (3, 4, 5):
        outbox.append(glucose(sequence))
    assert outbox.last_sequence(METER) == 5
    outbox.append(glucose(1))  # an older record sent late does not move the cursor back
    assert outbox.last_sequence(METER) == 5
    assert outbox.last_sequence(CUFF) is None


def test_life_of_an_item(outbox: Outbox) -> None:
    item_id = outbox.append(pressure(0))
    assert item_id is not None
    outbox.mark_ready(item_id, "pat-1", payload(1))
    ready = outbox.pending(10)
    assert [(i.id, i.state, i.patient_id, i.payload) for i in ready] == [
        (item_id, State.READY, "pat-1", payload(1))
    ]
    outbox.record_failure([item_id], "HTTP 503")
    outbox.record_failure([item_id], "timeout")
    item = outbox.get(item_id)
    assert item is not None and (item.attempts, item.last_error) == (2, "timeout")
    outbox.mark_uploaded([item_id])
    item = outbox.get(item_id)
    assert item is not None and item.state is State.UPLOADED
    assert item.uploaded_at == T0 + timedelta(hours=1)
    assert outbox.pending(10) == []


def test_review_and_resolution(outbox: Outbox) -> None:
    item_id = outbox.append(pressure(0))
    assert item_id is not None
    outbox.mark_review(item_id, "kein Patient eingecheckt / no patient checked in")
    assert [(i.id, i.review_reason) for i in outbox.review_items()] == [
        (item_id, "kein Patient eingecheckt / no patient checked in")
    ]
    assert outbox.received() == []
    outbox.resolve_review(item_id, "pat-9")
    (item,) = outbox.received()
    assert (item.id, item.patient_id, item.state) == (item_id, "pat-9", State.RECEIVED)
    assert outbox.review_items() == []
    outbox.mark_ready(item_id, "pat-9", payload(2))
    outbox.mark_review(item_id, "refused")  # the record core may refuse a ready item
    assert [i.id for i in outbox.review_items()] == [item_id]


def test_transitions_that_make_no_sense_are_refused(outbox: Outbox) -> None:
    item_id = outbox.append(pressure(0))
    assert item_id is not None
    with pytest.raises(ValueError, match="not review"):
        outbox.resolve_review(item_id, "pat-1")
    outbox.mark_ready(item_id, "pat-1", payload(1))
    with pytest.raises(ValueError, match="is ready, not received"):
        outbox.mark_ready(item_id, "pat-2", payload(2))
    outbox.mark_uploaded([item_id])
    with pytest.raises(ValueError, match="is uploaded"):
        outbox.mark_review(item_id, "late")
    with pytest.raises(ValueError, match="does not exist"):
        outbox.mark_review(item_id + 1, "unknown")
    outbox.mark_uploaded([item_id])  # again: no change, no error
    item = outbox.get(item_id)
    assert item is not None and item.uploaded_at == T0 + timedelta(hours=1)


def test_pending_in_arrival_order_and_limited(outbox: Outbox) -> None:
    ids = [outbox.append(pressure(m)) for m in range(5)]
    for item_id in reversed(ids):
        assert item_id is not None
        outbox.mark_ready(item_id, "pat-1", payload(item_id))
    assert [i.id for i in outbox.pending(3)] == ids[:3]
    assert [i.id for i in outbox.pending(100)] == ids


def test_statistics(outbox: Outbox) -> None:
    assert outbox.statistics().oldest_pending is None
    ids = [outbox.append(pressure(m)) for m in range(4)]
    assert None not in ids
    a, b, c, d = (i for i in ids if i is not None)
    outbox.mark_ready(a, "p", payload(a))
    outbox.mark_uploaded([a])
    outbox.mark_ready(b, "p", payload(b))
    outbox.mark_review(c, "?")
    stats = outbox.statistics()
    assert dict(stats.counts) == {
        State.RECEIVED: 1,
        State.READY: 1,
        State.REVIEW: 1,
        State.UPLOADED: 1,
    }
    # b (minute 1) is the oldest item still on its way; a is done, c waits for staff
    assert stats.oldest_pending == T0 + timedelta(minutes=1)
    assert stats.oldest_pending_age(T0 + timedelta(minutes=11)) == timedelta(minutes=10)
    del d


def test_purge_keeps_what_is_not_uploaded_and_the_cursor(outbox: Outbox) -> None:
    uploaded, waiting = outbox.append(glucose(1)), outbox.append(glucose(2))
    assert uploaded is not None and waiting is not None
    outbox.mark_ready(uploaded, "p", payload(1))
    outbox.mark_uploaded([uploaded])
    assert outbox.purge_uploaded(T0 + timedelta(hours=1)) == 0  # uploaded exactly then
    assert outbox.purge_uploaded(T0 + timedelta(hours=2)) == 1
    assert outbox.get(uploaded) is None and outbox.get(waiting) is not None
    assert outbox.last_sequence(METER) == 2


def test_reopening_keeps_everything_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "station.sqlite3"
    database = open_database(path)
    item_id = Outbox(database, Clock()).append(glucose(3))
    database.close()
    database = open_database(path)
    outbox = Outbox(database, Clock())
    assert outbox.get(item_id or 0) is not None and outbox.last_sequence(METER) == 3
    database.close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(DeviceError, match="newer"):
        open_database(path)


def test_threads_may_share_one_outbox(outbox: Outbox) -> None:
    def writer(start: int) -> None:
        for sequence in range(start, start + 50):
            outbox.append(glucose(sequence))

    threads = [threading.Thread(target=writer, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i.reading.sequence for i in outbox.received()} == set(range(200))
    assert outbox.last_sequence(METER) == 199


# --- crash safety ------------------------------------------------------------------------------

WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from devices.outbox import Outbox, open_database
from devices.reading import Reading

path, start = Path(sys.argv[1]), int(sys.argv[2])
outbox = Outbox(open_database(path), lambda: datetime.now(UTC))
t0 = datetime(2026, 3, 2, tzinfo=UTC)
sequence = start
while True:
    raw = sequence.to_bytes(4, "little")
    item = outbox.append(Reading("A0:B1:C2:D3:E4:05", "GLUCOSE", raw, t0 + timedelta(seconds=sequence),
                                 None, sequence))
    if item is not None and sequence % 3 == 0:  # keep other transactions in flight too
        outbox.mark_ready(item, "pat-1", {"observations": [], "devices": {}, "n": sequence})
        if sequence % 2 == 0:
            outbox.mark_uploaded([item])
    print(sequence, item, flush=True)
    sequence += 1
""".replace("GLUCOSE", GLUCOSE)


def run_writer_and_kill(path: Path, start: int, acks: int) -> list[tuple[int, int | None]]:
    """Starts a writer at ``start``, waits for ``acks`` acknowledged appends, then SIGKILLs it."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(start)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    acknowledged = []
    try:
        for line in process.stdout:
            sequence, item = line.split()
            acknowledged.append((int(sequence), None if item == b"None" else int(item)))
            if len(acknowledged) == acks:
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    return acknowledged


def test_sigkilled_writer_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "station.sqlite3"
    acknowledged: list[tuple[int, int | None]] = []
    start = 0
    for round_, acks in enumerate((150, 97, 213, 5)):
        acknowledged += run_writer_and_kill(path, start, acks)
        database = open_database(path)
        try:
            assert database_is_intact(database)
            outbox = Outbox(database, Clock())
            items = all_items(database, outbox)
            sequences = sorted(i.reading.sequence or 0 for i in items)
            cursor = outbox.last_sequence("A0:B1:C2:D3:E4:05")
        finally:
            database.close()
        # every acknowledged record is there, once, intact; the cursor is exactly the newest
        assert len(sequences) == len(set(sequences))
        assert {s for s, _ in acknowledged} <= set(sequences)
        assert sequences == list(range(len(sequences)))
        assert cursor == sequences[-1]
        for item in items:
            assert item.reading.raw == (item.reading.sequence or 0).to_bytes(4, "little")
        # the device re-sends its last few stored records after the reconnect (round > 0)
        start = max(0, cursor - 3 * round_)


def database_is_intact(database: Database) -> bool:
    with database.reading() as db:
        return bool(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def all_items(database: Database, outbox: Outbox) -> list[Item]:
    with database.reading() as db:
        ids = [row[0] for row in db.execute("SELECT id FROM readings")]
    return [item for item in map(outbox.get, ids) if item is not None]
