"""Record Access Control Point (0x2A52): requests as bytes, indications parsed.

Spec: https://www.bluetooth.com/wp-content/uploads/Files/Specification/HTML/GLS_v1.0.1/out/en/index-en.html
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TypeVar

from devices.gatt import uuids
from devices.gatt._reader import Reader

_E = TypeVar("_E", bound=enum.IntEnum)


class Opcode(enum.IntEnum):
    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_RECORDS = 4
    NUMBER_OF_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


class Operator(enum.IntEnum):
    NULL = 0
    ALL_RECORDS = 1
    LESS_THAN_OR_EQUAL = 2
    GREATER_THAN_OR_EQUAL = 3
    WITHIN_RANGE = 4
    FIRST_RECORD = 5
    LAST_RECORD = 6


class FilterType(enum.IntEnum):
    SEQUENCE_NUMBER = 1
    USER_FACING_TIME = 2


class ResponseCode(enum.IntEnum):
    SUCCESS = 1
    OPCODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


@dataclass(frozen=True)
class RacpRequest:
    """``op, operator, operand``; ``parse`` is for peers (the simulator) that receive requests."""

    opcode: Opcode
    operator: Operator
    operand: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RacpRequest:
        reader = Reader(data, uuids.RECORD_ACCESS_CONTROL_POINT)
        opcode = _enum(reader, Opcode, reader.u8(), "Opcode", "opcode")
        operator = _enum(reader, Operator, reader.u8(), "Operator", "operator")
        return cls(opcode, operator, reader.take(reader.remaining()))

    def __bytes__(self) -> bytes:
        return bytes([self.opcode, self.operator]) + self.operand


def _sequence_filter(sequence: int) -> bytes:
    return struct.pack("<BH", FilterType.SEQUENCE_NUMBER, sequence)


def report_all() -> bytes:
    """``0101``: send every stored record."""
    return bytes(RacpRequest(Opcode.REPORT_STORED_RECORDS, Operator.ALL_RECORDS))


def report_from(sequence: int) -> bytes:
    """``0103 01 <u16>``: records with sequence number ≥ ``sequence``."""
    return bytes(
        RacpRequest(
            Opcode.REPORT_STORED_RECORDS,
            Operator.GREATER_THAN_OR_EQUAL,
            _sequence_filter(sequence),
        )
    )


def report_last() -> bytes:
    """``0106``: only the most recent record."""
    return bytes(RacpRequest(Opcode.REPORT_STORED_RECORDS, Operator.LAST_RECORD))


def count_all() -> bytes:
    """``0401``: how many records are stored."""
    return bytes(RacpRequest(Opcode.REPORT_NUMBER_OF_RECORDS, Operator.ALL_RECORDS))


def count_from(sequence: int) -> bytes:
    """``0403 01 <u16>``: how many records have sequence number ≥ ``sequence``."""
    return bytes(
        RacpRequest(
            Opcode.REPORT_NUMBER_OF_RECORDS,
            Operator.GREATER_THAN_OR_EQUAL,
            _sequence_filter(sequence),
        )
    )


def abort() -> bytes:
    """``0300``: stop the running procedure."""
    return bytes(RacpRequest(Opcode.ABORT_OPERATION, Operator.NULL))


@dataclass(frozen=True)
class RacpResponse:
    """An indication: a count (opcode 5) or a response code to ``request_opcode`` (opcode 6)."""

    opcode: Opcode
    request_opcode: Opcode | None
    code: ResponseCode | None
    count: int | None

    def __bytes__(self) -> bytes:
        if self.opcode is Opcode.NUMBER_OF_RECORDS_RESPONSE:
            return struct.pack("<BBH", self.opcode, Operator.NULL, self.count or 0)
        return bytes([self.opcode, Operator.NULL, self.request_opcode or 0, self.code or 0])


def parse_response(data: bytes) -> RacpResponse:
    """Exactly 4 bytes: ``05 00 <u16 count>`` or ``06 00 <request opcode> <code>``."""
    reader = Reader(data, uuids.RECORD_ACCESS_CONTROL_POINT)
    opcode = reader.u8()
    if opcode not in (Opcode.NUMBER_OF_RECORDS_RESPONSE, Opcode.RESPONSE_CODE):
        raise reader.error(
            f"Keine RACP-Antwort: Opcode {opcode} / not a RACP response: opcode {opcode}"
        )
    if (operator := reader.u8()) != Operator.NULL:
        raise reader.error(
            f"Antwort mit Operator {operator} statt 0 / response operator {operator}, expected 0"
        )
    if opcode == Opcode.NUMBER_OF_RECORDS_RESPONSE:
        response = RacpResponse(Opcode.NUMBER_OF_RECORDS_RESPONSE, None, None, reader.u16())
    else:
        request = _enum(reader, Opcode, reader.u8(), "Opcode", "opcode")
        code = _enum(reader, ResponseCode, reader.u8(), "Antwortcode", "response code")
        response = RacpResponse(Opcode.RESPONSE_CODE, request, code, None)
    reader.finish()
    return response


def _enum(reader: Reader, kind: type[_E], value: int, german: str, english: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise reader.error(f"Unbekannter {german} {value} / unknown {english} {value}") from None
