"""The pilot-centre station: devices → durable outbox → patient assignment and PHD mapping →
record core, with a live feed of what arrives.

Order of events per notification (nothing acknowledged is lost, nothing sent twice):
1. the profile hands the payload to :meth:`Station.store`, which appends it to the outbox
   (fsynced; a glucose record moves the device's download cursor in the same transaction);
2. the reading is published on the live feed;
3. it is parsed, assigned and mapped (:mod:`devices.processing`): ``ready`` or ``review``;
4. the uploader sends ready items as transactions of conditional creates.
A crash anywhere repeats at most steps 3–4 for the affected items after the restart, and the
conditional creates make a repeated upload create nothing new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from devices.gatt import uuids
from devices.gatt.glucose import GlucoseContext, GlucoseMeasurement
from devices.live import LiveFeed
from devices.outbox import Item, Outbox, State
from devices.phd.devices import DeviceInformation
from devices.processing import INTERMEDIATE, Mapped, Processor
from devices.profiles.device_information import DeviceInformation as ConnectedInformation
from devices.reading import Reading

__all__ = ["LiveReading", "Runnable", "Station"]

_log = logging.getLogger(__name__)
# A glucose record announces its context (2A34) as the next notification; wait this long for it.
CONTEXT_WAIT = timedelta(seconds=10)


@dataclass(frozen=True)
class LiveReading:
    """What watchers (the consultation's data channel, the care-staff screen) receive."""

    device_address: str
    characteristic: str
    received_at: datetime
    patient_id: str | None
    observations: tuple[dict[str, Any], ...] = ()  # empty for intermediate values
    raw: bytes = b""
    review_reason: str | None = None


class Runnable(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class Uploading(Protocol):
    def wake(self) -> None: ...

    async def run(self) -> None: ...


@dataclass
class Station:
    outbox: Outbox
    processor: Processor
    uploader: Uploading
    clock: Callable[[], datetime]
    live: LiveFeed[LiveReading] = field(default_factory=LiveFeed)
    connections: Sequence[Runnable] = ()
    _information: dict[str, DeviceInformation] = field(default_factory=dict)
    _waiting: set[int] = field(default_factory=set)  # glucose records waiting for their context
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- the reading sink of the profiles ----------------------------------------------------

    async def store(self, reading: Reading) -> None:
        """Durably stores ``reading`` (returns once it is on disk), then processes it."""
        if reading.characteristic in INTERMEDIATE:
            self._publish(reading, None, ())
            return
        item_id = await asyncio.to_thread(self.outbox.append, reading)
        if item_id is None:
            return  # a stored record the device sent again: stored already
        await self.process([item_id])

    async def information(self, info: ConnectedInformation) -> None:
        """The connection read the Device Information Service: used for the PhdDevice."""
        self._information[info.address] = DeviceInformation(
            manufacturer=info.manufacturer,
            model_number=info.model_number,
            serial_number=info.serial_number,
            hardware_revision=info.hardware_revision,
            firmware_revision=info.firmware_revision,
            software_revision=info.software_revision,
            system_id=info.system_id,
        )

    def device_information(self, address: str) -> DeviceInformation | None:
        return self._information.get(address)

    # -- processing --------------------------------------------------------------------------

    async def process(self, item_ids: Iterable[int]) -> None:
        async with self._lock:  # one processor at a time: the glucose pairing looks around
            woke = False
            for item_id in item_ids:
                item = await asyncio.to_thread(self.outbox.get, item_id)
                if item is not None and item.state is State.RECEIVED:
                    woke |= await asyncio.to_thread(self._process_one, item)
            if woke:
                self.uploader.wake()

    async def recover(self) -> None:
        """After a (re)start: process what was stored but not yet processed."""
        received = await asyncio.to_thread(self.outbox.received)
        await self.process(item.id for item in received)

    def _process_one(self, item: Item) -> bool:
        reading = item.reading
        if reading.characteristic == uuids.GLUCOSE_MEASUREMENT_CONTEXT:
            return self._context_arrived(item)
        context: GlucoseContext | None = None
        if reading.characteristic == uuids.GLUCOSE_MEASUREMENT:
            waiting, context = self._glucose_context(item)
            if waiting:
                self._waiting.add(item.id)
                return False
        outcome = self.processor.process(reading, item.patient_id, context)
        self._waiting.discard(item.id)
        if isinstance(outcome, Mapped):
            self.outbox.mark_ready(item.id, outcome.patient_id, outcome.payload)
            self._publish(reading, outcome.patient_id, outcome.payload["observations"])
            return True
        _log.warning(
            "%s %s: Prüfliste / review: %s (raw %s)",
            reading.device_address,
            reading.characteristic,
            outcome.reason,
            reading.raw.hex(),
        )
        self.outbox.mark_review(item.id, outcome.reason)
        self._publish(reading, None, (), outcome.reason)
        return False

    def _glucose_context(self, item: Item) -> tuple[bool, GlucoseContext | None]:
        """(still waiting, the context) of a glucose record that announces one."""
        try:
            measurement = self.processor.parse(item.reading)
        except Exception:
            return False, None  # the processor puts it to review with the reason
        if not isinstance(measurement, GlucoseMeasurement) or not measurement.context_follows:
            return False, None
        partner = self.outbox.sequenced(
            item.reading.device_address,
            uuids.GLUCOSE_MEASUREMENT_CONTEXT,
            measurement.sequence,
        )
        if partner is None:
            overdue = self.clock() - item.reading.received_at > CONTEXT_WAIT
            return (not overdue), None
        try:
            context = self.processor.parse(partner.reading)
        except Exception:
            return False, None  # a broken context must not hold the measurement back
        return False, context if isinstance(context, GlucoseContext) else None

    def _context_arrived(self, item: Item) -> bool:
        """A context is uploaded with its measurement; its own item carries nothing."""
        self.outbox.mark_ready(item.id, item.patient_id or "", {"devices": {}, "observations": []})
        partner = None
        sequence = item.reading.sequence
        if sequence is not None:
            partner = self.outbox.sequenced(
                item.reading.device_address, uuids.GLUCOSE_MEASUREMENT, sequence
            )
        if partner is not None and partner.state is State.RECEIVED:
            return self._process_one(partner) or True
        return True

    async def sweep(self) -> None:
        """Glucose records whose context never came are processed without it."""
        if self._waiting:
            await self.process(sorted(self._waiting))

    def _publish(
        self,
        reading: Reading,
        patient: str | None,
        observations: Iterable[dict[str, Any]],
        reason: str | None = None,
    ) -> None:
        self.live.publish(
            LiveReading(
                reading.device_address,
                reading.characteristic,
                reading.received_at,
                patient,
                tuple(observations),
                reading.raw,
                reason,
            )
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs the uploader, the device connections and the sweeper until cancelled."""
        await self.recover()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.uploader.run())
            for connection in self.connections:
                group.create_task(connection.run())
            group.create_task(self._sweeper())

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.sweep()

    async def stop(self) -> None:
        for connection in self.connections:
            await connection.stop()
