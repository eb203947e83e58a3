"""devices.profiles.glucose: RACP download against the simulated meter — once, incrementally,
resumed after a broken link, retried when the meter is busy."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from devices.errors import AttError, LinkError
from devices.gatt import uuids
from devices.link import Link
from devices.profiles.base import Session
from devices.profiles.glucose import Glucose, record_sequence
from devices.simulator import DeviceConfig, Simulator
from devices.simulator.payloads import glucose_measurement
from tests.devices.profiles.support import (
    MemoryOutbox,
    bus_address,
    run,
    simulator,
    station_clock,
)

__all__ = ["bus_address"]

METER = "AA:BB:CC:DD:EE:05"
START = datetime(2024, 5, 1, 7, 0)


def records(first: int, last: int) -> list[bytes]:
    return [
        glucose_measurement(seq, START + timedelta(hours=seq), 80 + seq % 60)
        for seq in range(first, last + 1)
    ]


def meter() -> DeviceConfig:
    return DeviceConfig("glucose_meter", METER, "Meter")


async def sync(outbox: MemoryOutbox, idle_timeout: float = 15.0) -> None:
    """One connection: connect, download, disconnect."""
    async with Link(clock=station_clock, timeout=5) as link:
        await link.connect(METER)
        profile = Glucose(outbox, idle_timeout=idle_timeout)
        await profile.start(Session(link, outbox, timedelta(hours=-2)))


def test_500_records_once_then_only_new_ones(bus_address: str) -> None:
    outbox = MemoryOutbox()
    stored = records(1, 500)

    async def scenario() -> None:
        async with simulator(bus_address, meter()) as sim:
            sim.add_records(METER, stored)
            await sync(outbox)
            assert outbox.sequences() == list(range(1, 501))
            await sync(outbox)  # nothing new: "no records" is success
            assert len(outbox.readings) == 500
            sim.add_records(METER, records(501, 503))
            await sync(outbox)

    run(scenario())
    assert outbox.sequences() == list(range(1, 504))
    assert outbox.payloads() == [*stored, *records(501, 503)]
    assert {r.device_time_offset for r in outbox.readings} == {timedelta(hours=-2)}
    assert {r.characteristic for r in outbox.readings} == {uuids.GLUCOSE_MEASUREMENT}


def test_a_broken_download_resumes_without_loss_or_duplicates(bus_address: str) -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with simulator(bus_address, meter()) as sim:
            sim.add_records(METER, records(1, 300))
            sim.disconnect_after(METER, 120)
            with pytest.raises(LinkError, match="getrennt / disconnected"):
                await sync(outbox)
            assert outbox.sequences() == list(range(1, 121))
            sim.disconnect_after(METER, 50)
            with pytest.raises(LinkError):
                await sync(outbox)
            await sync(outbox)

    run(scenario())
    assert outbox.sequences() == list(range(1, 301))


def test_each_record_is_stored_before_the_next_with_contexts(bus_address: str) -> None:
    outbox = MemoryOutbox(delay=0.01)  # a slow durable write
    measurements = [
        glucose_measurement(seq, START, 95, context_follows=seq % 2 == 0) for seq in range(1, 21)
    ]
    contexts = [bytes([0x02]) + seq.to_bytes(2, "little") + b"\x02" for seq in range(2, 21, 2)]

    async def scenario() -> None:
        async with simulator(bus_address, meter()) as sim:
            sim.add_records(METER, measurements, contexts)
            await sync(outbox)

    run(scenario())
    assert outbox.overlaps == 0
    expected: list[tuple[str, int]] = []
    for seq in range(1, 21):
        expected.append((uuids.GLUCOSE_MEASUREMENT, seq))
        if seq % 2 == 0:
            expected.append((uuids.GLUCOSE_MEASUREMENT_CONTEXT, seq))
    assert [(r.characteristic, r.sequence) for r in outbox.readings] == expected


def test_busy_meter_is_aborted_and_asked_again(bus_address: str) -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with simulator(bus_address, meter()) as sim:
            sim.add_records(METER, records(1, 5))
            sim.fail_next(METER, "2a52", 0x80, "write")
            await sync(outbox)
            assert outbox.sequences() == [1, 2, 3, 4, 5]
            sim.add_records(METER, records(6, 6))
            for _ in range(3):  # busy every time: the profile gives up with the ATT error
                sim.fail_next(METER, "2a52", 0x80, "write")
            with pytest.raises(AttError) as caught:
                await sync(outbox)
            assert caught.value.code == 0x80

    run(scenario())


def test_other_att_errors_are_not_retried(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, meter()) as sim:
            sim.add_records(METER, records(1, 3))
            sim.fail_next(METER, "2a52", 0x81, "write")
            with pytest.raises(AttError) as caught:
                await sync(MemoryOutbox())
            assert caught.value.code == 0x81

    run(scenario())


def test_a_silent_meter_times_out(bus_address: str) -> None:
    async def scenario() -> None:
        async with simulator(bus_address, meter()) as sim:
            sim.add_records(METER, records(1, 3))
            silence(sim)
            with pytest.raises(LinkError, match="antwortet nicht / meter stopped answering"):
                await sync(MemoryOutbox(), idle_timeout=0.3)

    run(scenario())


def silence(sim: Simulator) -> None:
    """The meter accepts the request but never answers (a firmware that hangs)."""
    sim.device(METER).peripheral.characteristic("2a52").on_write = lambda data: None


@pytest.mark.parametrize(
    ("raw", "sequence"),
    [
        (b"\x02\x01\x00", 1),
        (bytes.fromhex("170200E807050F0A1E003C0035C011"), 2),
        (b"\x00\xff", None),
    ],
)
def test_record_sequence_comes_from_the_fixed_header(raw: bytes, sequence: int | None) -> None:
    assert record_sequence(raw) == sequence
