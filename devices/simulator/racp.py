"""Record Access Control Point server side (GLS 1.0.1 §3.3 / PLXS §3.4, https://www.bluetooth.com/specifications/specs/glucose-service-1-0-1/)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable

from devices.simulator.errors import AttError
from devices.simulator.model import Characteristic, Peripheral
from devices.simulator.payloads import glucose_sequence, uuid

RACP = uuid(0x2A52)
OP_REPORT, OP_DELETE, OP_ABORT, OP_COUNT, OP_COUNT_RESPONSE, OP_RESPONSE = 1, 2, 3, 4, 5, 6
ALL, LESS_OR_EQUAL, GREATER_OR_EQUAL, RANGE, FIRST, LAST = 1, 2, 3, 4, 5, 6
SUCCESS, OPCODE_NOT_SUPPORTED, INVALID_OPERATOR, OPERATOR_NOT_SUPPORTED = 1, 2, 3, 4
INVALID_OPERAND, NO_RECORDS, OPERAND_NOT_SUPPORTED = 5, 6, 9
ATT_PROCEDURE_IN_PROGRESS = 0x80
ATT_CCCD_NOT_CONFIGURED = 0x81
FILTER_SEQUENCE = 1


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class RecordStore:
    """Stored records by sequence number with the RACP procedures on top."""

    def __init__(
        self, device: Peripheral, record_uuid: str, context_uuid: str | None = None
    ) -> None:
        self.device = device
        self.record_uuid = uuid(record_uuid)
        self.context_uuid = uuid(context_uuid) if context_uuid else None
        self.records: dict[int, bytes] = {}
        self.contexts: dict[int, bytes] = {}
        self.record_interval = 0.005  # seconds between two record notifications
        self._task: asyncio.Task[None] | None = None

    def characteristic(self) -> Characteristic:
        return Characteristic(RACP, ("write", "indicate"), protected=True, on_write=self.write)

    def add(self, records: Iterable[bytes], contexts: Iterable[bytes] = ()) -> None:
        """Store raw records (0x2A18 / 0x2A5E); sequence numbers come from bytes 1–2."""
        for record in records:
            self.records[glucose_sequence(record)] = bytes(record)
        for context in contexts:
            self.contexts[glucose_sequence(context)] = bytes(context)

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def write(self, data: bytes) -> None:
        """A RACP write: ATT errors at once, the response later as an indication."""
        opcode = data[0] if data else 0
        if not self.device.subscribed(RACP) or (
            opcode == OP_REPORT and not self.device.subscribed(self.record_uuid)
        ):
            raise AttError(ATT_CCCD_NOT_CONFIGURED)
        if self.busy and opcode != OP_ABORT:
            raise AttError(ATT_PROCEDURE_IN_PROGRESS)
        if opcode == OP_ABORT:
            self.reset()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(bytes(data)))

    async def _run(self, data: bytes) -> None:
        opcode = data[0] if data else 0
        await asyncio.sleep(0)  # the write response goes out before the first record
        try:
            if opcode == OP_ABORT:
                await self._abort(data)
            elif opcode == OP_COUNT:
                count = len(self._select(data))
                self.device.notify(RACP, bytes([OP_COUNT_RESPONSE, 0]) + struct.pack("<H", count))
            elif opcode == OP_DELETE:
                self._delete(self._select(data))
            elif opcode == OP_REPORT:
                await self._report(self._select(data))
            else:
                self._respond(opcode, OPCODE_NOT_SUPPORTED)
        except _Refused as refused:
            self._respond(opcode, refused.code)

    def _respond(self, request: int, code: int) -> None:
        self.device.notify(RACP, bytes([OP_RESPONSE, 0, request, code]))

    async def _abort(self, data: bytes) -> None:
        if len(data) != 2 or data[1] != 0:
            raise _Refused(INVALID_OPERATOR)
        self._respond(OP_ABORT, SUCCESS)

    def _delete(self, sequences: list[int]) -> None:
        if not sequences:
            raise _Refused(NO_RECORDS)
        for sequence in sequences:
            self.records.pop(sequence, None)
            self.contexts.pop(sequence, None)
        self._respond(OP_DELETE, SUCCESS)

    async def _report(self, sequences: list[int]) -> None:
        if not sequences:
            raise _Refused(NO_RECORDS)
        for sequence in sequences:
            if sequence not in self.records or not self._send_record(sequence):
                return  # link dropped or record deleted meanwhile: the procedure dies silently
            await asyncio.sleep(self.record_interval)
        self._respond(OP_REPORT, SUCCESS)

    def _send_record(self, sequence: int) -> bool:
        if not self.device.notify(self.record_uuid, self.records[sequence]):
            return False
        context = self.contexts.get(sequence)
        if context is not None and self.context_uuid is not None:
            return self.device.notify(self.context_uuid, context)
        return True

    def _select(self, data: bytes) -> list[int]:
        """The sequence numbers a request's operator and operand select, in order."""
        if len(data) < 2 or data[1] == 0:
            raise _Refused(INVALID_OPERATOR)
        operator, operand, stored = data[1], data[2:], sorted(self.records)
        if operator in (ALL, FIRST, LAST):
            if operand:
                raise _Refused(INVALID_OPERAND)
            return {ALL: stored, FIRST: stored[:1], LAST: stored[-1:]}[operator]
        if operator not in (LESS_OR_EQUAL, GREATER_OR_EQUAL, RANGE):
            raise _Refused(OPERATOR_NOT_SUPPORTED)
        if not operand or operand[0] != FILTER_SEQUENCE:
            raise _Refused(OPERAND_NOT_SUPPORTED)
        bounds = operand[1:]
        if len(bounds) != (4 if operator == RANGE else 2):
            raise _Refused(INVALID_OPERAND)
        values = struct.unpack(f"<{len(bounds) // 2}H", bounds)
        low, high = {
            LESS_OR_EQUAL: (0, values[0]),
            GREATER_OR_EQUAL: (values[0], 0xFFFF),
            RANGE: (values[0], values[-1]),
        }[operator]
        return [sequence for sequence in stored if low <= sequence <= high]

    def reset(self) -> None:
        """The connection ended: a running procedure stops."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
