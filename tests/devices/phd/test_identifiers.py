"""Device identifiers and the Observation de-dup identifier (stable across re-sends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices.phd.identifiers import (
    btmac,
    btmac_identifier,
    device_timestamp,
    logical_id,
    receive_timestamp,
    sysid_identifier,
)
from tests.devices.phd.support import CLOCK, RECEIVED, TS, context, map_vector

GLUCOSE = "020100" + TS + "5FB011"


def test_btmac_is_upper_case_with_dashes() -> None:
    assert btmac("00:e5:de:ad:77:c3") == "00-E5-DE-AD-77-C3"
    assert btmac_identifier("00:E5:DE:AD:77:C3") == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers",
                    "code": "BTMAC",
                }
            ]
        },
        "system": "http://hl7.org/fhir/sid/eui-48/bluetooth",
        "value": "00-E5-DE-AD-77-C3",
    }


@pytest.mark.parametrize("address", ["00:E5:DE:AD:77", "00:E5:DE:AD:77:C3:11", "xx:E5:DE:AD:77:C3"])
def test_btmac_refuses_what_is_no_address(address: str) -> None:
    with pytest.raises(ValueError, match="Bluetooth"):
        btmac(address)


def test_sysid_is_all_zeros_when_unknown() -> None:
    assert sysid_identifier(None)["value"] == "00-00-00-00-00-00-00-00"
    assert sysid_identifier("71-10-00-fe-ff-5f-49-b0")["value"] == "71-10-00-FE-FF-5F-49-B0"
    assert sysid_identifier(None)["system"] == "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"


def test_timestamps_count_seconds_since_2000() -> None:
    assert device_timestamp(datetime(2000, 1, 1, 0, 0, 1)) == "1"
    assert device_timestamp(datetime(2024, 5, 15, 10, 30)) == "769084200"
    assert receive_timestamp(datetime(2000, 1, 1, 1, 0, 0, 1500, tzinfo=UTC)) == "3600.001"
    # A zone-aware station time counts in UTC.
    berlin = datetime(2000, 1, 1, 2, 0, tzinfo=UTC).astimezone(CLOCK.zone)
    assert receive_timestamp(berlin) == "7200.000"


def test_logical_id_of_a_reference() -> None:
    assert logical_id("Patient/abc-1") == "abc-1"
    assert logical_id("urn:uuid:6f1c3a52") == "urn:uuid:6f1c3a52"


def test_a_stored_record_sent_again_later_keeps_its_identifier() -> None:
    first = map_vector(0x2A18, GLUCOSE, context())
    later_clock = type(CLOCK)(CLOCK.offset + timedelta(seconds=3), CLOCK.read_at, CLOCK.zone)
    again = map_vector(
        0x2A18, GLUCOSE, context(clock=later_clock, received_at=RECEIVED + timedelta(days=3))
    )
    assert first[0]["identifier"] == again[0]["identifier"]
    # …while its effective time follows the newer clock reading.
    assert first[0]["effectiveDateTime"] != again[0]["effectiveDateTime"]


def test_another_patient_gets_another_identifier() -> None:
    mine = map_vector(0x2A18, GLUCOSE, context("Patient/p1"))
    theirs = map_vector(0x2A18, GLUCOSE, context("Patient/p2"))
    assert mine[0]["identifier"] != theirs[0]["identifier"]


def test_other_record_number_or_value_gets_another_identifier() -> None:
    one = map_vector(0x2A18, GLUCOSE)
    other_sequence = map_vector(0x2A18, "020200" + TS + "5FB011")
    other_value = map_vector(0x2A18, "020100" + TS + "60B011")
    values = {o[0]["identifier"][0]["value"] for o in (one, other_sequence, other_value)}
    assert len(values) == 3


def test_live_readings_without_device_time_differ_by_receive_time() -> None:
    first = map_vector(0x2A37, "0048", context(received_at=RECEIVED))
    second = map_vector(0x2A37, "0048", context(received_at=RECEIVED + timedelta(seconds=1)))
    assert first[0]["identifier"] != second[0]["identifier"]
