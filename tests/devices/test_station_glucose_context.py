"""A glucose record and its context (2A34) are joined by sequence number before upload; a
record whose announced context never comes is uploaded without it after a while."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from devices.gatt import uuids
from devices.outbox import Outbox, State, open_database
from devices.processing import Processor
from devices.reading import Reading
from devices.station import CONTEXT_WAIT, Station

METER = "A0:B1:C2:D3:E4:05"
TS = "E807050F0A1E00"
T0 = datetime(2024, 5, 15, 9, 0, tzinfo=UTC)


class Woken:
    """The uploader's port as the station uses it (counts wake-ups; uploads nothing)."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    async def run(self) -> None:
        await asyncio.Event().wait()


def stored(characteristic: str, raw: str, sequence: int) -> Reading:
    return Reading(
        METER,
        characteristic,
        bytes.fromhex(raw),
        T0,
        device_time_offset=timedelta(hours=-2),
        sequence=sequence,
        clock_read_at=T0,
    )


def test_context_is_joined_and_a_missing_one_stops_waiting(tmp_path: Path) -> None:
    now = [T0]
    database = open_database(tmp_path / "station.sqlite3")
    outbox = Outbox(database, lambda: now[0])
    station = Station(
        outbox=outbox,
        processor=Processor(
            station_id="pz",
            software_version="0",
            kinds={METER: "glucose"},
            patient_for=lambda _a, _u, _r: "pat-1",
            zone=ZoneInfo("Europe/Berlin"),
        ),
        uploader=Woken(),
        clock=lambda: now[0],
    )

    async def scenario() -> None:
        # seq 2 announces a context; it arrives as the next notification
        await station.store(stored(uuids.GLUCOSE_MEASUREMENT, f"170200{TS}3C0035C011", 2))
        assert [i.state for i in outbox.received()] == [State.RECEIVED]  # waits for it
        await station.store(stored(uuids.GLUCOSE_MEASUREMENT_CONTEXT, "02020002", 2))
        # seq 3 announces one that never comes (link lost)
        await station.store(stored(uuids.GLUCOSE_MEASUREMENT, f"130300{TS}00005FB011", 3))
        await station.sweep()
        assert len(outbox.received()) == 1  # still waiting
        now[0] = T0 + CONTEXT_WAIT + timedelta(seconds=1)
        await station.sweep()
        assert outbox.received() == []

    asyncio.run(scenario())
    ready = outbox.pending(10)
    glucose = [i for i in ready if i.reading.characteristic == uuids.GLUCOSE_MEASUREMENT]
    assert [i.reading.sequence for i in glucose] == [2, 3]
    joined = glucose[0].payload
    assert joined is not None
    codes = [c["code"] for o in joined["observations"] for c in o["code"]["coding"]]
    assert "8417864" in codes  # the meal context (postprandial) went up with record 2
    alone = glucose[1].payload
    assert alone is not None
    assert "8417864" not in [c["code"] for o in alone["observations"] for c in o["code"]["coding"]]
    database.close()
