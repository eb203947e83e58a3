"""Record Access Control Point (2A52): request bytes and response parsing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import racp, uuids
from devices.gatt.racp import Opcode, Operator, RacpRequest, RacpResponse, ResponseCode
from tests.devices.gatt.wire import assert_parses_or_rejects, assert_truncations_fail


@pytest.mark.parametrize(
    ("request_", "hex_"),
    [
        (racp.report_all(), "0101"),
        (racp.count_all(), "0401"),
        (racp.report_from(5), "0103010500"),
        (racp.report_from(0x1234), "0103013412"),
        (racp.count_from(5), "0403010500"),
        (racp.report_last(), "0106"),
        (racp.abort(), "0300"),
    ],
)
def test_requests(request_: bytes, hex_: str) -> None:
    assert request_.hex().upper() == hex_


def test_count_response() -> None:
    response = racp.parse_response(bytes.fromhex("05000200"))
    assert response == RacpResponse(Opcode.NUMBER_OF_RECORDS_RESPONSE, None, None, 2)


def test_no_records_response() -> None:
    response = racp.parse_response(bytes.fromhex("06000106"))
    assert response.opcode is Opcode.RESPONSE_CODE
    assert response.request_opcode is Opcode.REPORT_STORED_RECORDS
    assert response.code is ResponseCode.NO_RECORDS
    assert response.count is None


def test_success_response() -> None:
    response = racp.parse_response(bytes.fromhex("06000101"))
    assert (response.request_opcode, response.code) == (
        Opcode.REPORT_STORED_RECORDS,
        ResponseCode.SUCCESS,
    )


@pytest.mark.parametrize(
    ("hex_", "reason"),
    [
        ("01010000", "not a RACP response: opcode 1"),
        ("06010106", "response operator 1, expected 0"),
        ("06000100", "unknown response code 0"),
        ("0600010A", "unknown response code 10"),
        ("06000906", "unknown opcode 9"),
        ("0500020000", "trailing bytes"),
        ("050002", "truncated"),
    ],
)
def test_malformed_responses(hex_: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason) as caught:
        racp.parse_response(bytes.fromhex(hex_))
    assert caught.value.characteristic == uuids.RECORD_ACCESS_CONTROL_POINT


@given(st.sampled_from(list(Opcode)), st.sampled_from(list(Operator)), st.binary(max_size=6))
def test_request_round_trip(opcode: Opcode, operator: Operator, operand: bytes) -> None:
    request = RacpRequest(opcode, operator, operand)
    assert bytes(request) == bytes([opcode, operator]) + operand
    assert RacpRequest.parse(bytes(request)) == request


@given(st.integers(0, 0xFFFF))
def test_generated_count_responses(count: int) -> None:
    payload = struct.pack("<BBH", 5, 0, count)
    response = racp.parse_response(payload)
    assert response.count == count
    assert bytes(response) == payload
    assert_truncations_fail(racp.parse_response, payload)


@given(st.integers(1, 6), st.integers(1, 9))
def test_generated_code_responses(request_opcode: int, code: int) -> None:
    payload = bytes([6, 0, request_opcode, code])
    response = racp.parse_response(payload)
    assert (response.opcode, response.request_opcode, response.code) == (6, request_opcode, code)
    assert response.count is None
    assert bytes(response) == payload
    assert_truncations_fail(racp.parse_response, payload)


@given(st.binary(max_size=8))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(racp.parse_response, data, uuids.RECORD_ACCESS_CONTROL_POINT)
    assert_parses_or_rejects(RacpRequest.parse, data, uuids.RECORD_ACCESS_CONTROL_POINT)
