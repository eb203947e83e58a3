"""Device clock correction, the Coincident Timestamp Observation and unusable clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices.errors import ClockUnusable
from devices.phd import ClockCorrection, coincident_timestamp, entry_url
from devices.phd.clock import effective_time
from tests.devices.phd.support import ADDRESS, BERLIN, CLOCK, RECEIVED, TS, context, map_vector


def test_correction_puts_the_device_wall_clock_on_utc() -> None:
    assert CLOCK.correct(datetime(2024, 5, 15, 10, 30)) == datetime(
        2024, 5, 15, 8, 30, 5, tzinfo=UTC
    )
    assert CLOCK.device_now == datetime(2024, 5, 15, 10, 30, 55)


def test_coincident_timestamp_observation() -> None:
    cts = coincident_timestamp(
        CLOCK,
        device_address=ADDRESS,
        device_reference="Device/phd-1",
        gateway_reference="Device/phg-1",
    )
    assert cts["meta"] == {
        "profile": [
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"
        ]
    }
    assert cts["code"]["coding"] == [
        {"system": "urn:iso:std:iso:11073:10101", "code": "67975", "display": "MDC_ATTR_TIME_ABS"}
    ]
    assert cts["status"] == "final"
    assert cts["subject"] == {"reference": "Device/phd-1"}  # IG 2.0: the PHD is the subject
    assert cts["device"] == {"reference": "Device/phg-1"}
    assert cts["effectiveDateTime"] == "2024-05-15T08:31:00Z"  # station time
    assert cts["valueDateTime"] == "2024-05-15T10:30:55+02:00"  # device wall clock, Berlin


def test_one_coincident_timestamp_per_connection() -> None:
    def identifier(clock: ClockCorrection) -> str:
        return clock.identifier(ADDRESS)["value"]

    same = ClockCorrection(CLOCK.offset, CLOCK.read_at, BERLIN)
    reconnected = ClockCorrection(CLOCK.offset, CLOCK.read_at + timedelta(minutes=5), BERLIN)
    assert identifier(same) == identifier(CLOCK)
    assert identifier(reconnected) != identifier(CLOCK)


def test_corrected_observations_reference_the_coincident_timestamp() -> None:
    [temperature] = map_vector(0x2A1C, "066E0100FF" + TS + "06")
    cts = coincident_timestamp(
        CLOCK, device_address=ADDRESS, device_reference="d", gateway_reference="g"
    )
    [reference] = [
        e["valueReference"]["reference"]
        for e in temperature["extension"]
        if e["url"].endswith("/CoincidentTimeStampReference")
    ]
    assert reference == entry_url(cts)


def test_live_reading_with_timestamp_but_no_clock_uses_the_receive_time() -> None:
    [temperature] = map_vector(0x2A1C, "066E0100FF" + TS + "06", context(clock=None))
    assert temperature["effectiveDateTime"] == "2024-05-15T08:31:07Z"
    assert len(temperature["extension"]) == 1  # gateway only, no coincident timestamp


def test_live_spot_check_with_clock_not_set_uses_the_receive_time() -> None:
    # flags b0 TS + b4 clock not set; the device's (unset) time is not trusted.
    spo2, _ = map_vector(0x2A5E, "1162004800" + TS)
    assert spo2["effectiveDateTime"] == "2024-05-15T08:31:07Z"


def test_stored_glucose_without_clock_reading_is_unusable() -> None:
    with pytest.raises(ClockUnusable, match="stored reading"):
        map_vector(0x2A18, "020100" + TS + "5FB011", context(clock=None))


def test_stored_glucose_with_unknown_date_is_unusable_even_with_a_clock() -> None:
    with pytest.raises(ClockUnusable):
        map_vector(0x2A18, "020100" + "00" * 7 + "5FB011")


def test_stored_spot_check_with_clock_not_set_is_unusable() -> None:
    # flags b0 TS, b1 status, b4 clock not set; status bit 9 = from storage.
    with pytest.raises(ClockUnusable):
        map_vector(0x2A5E, "1362004800" + TS + "0002")


def test_effective_time_prefers_the_corrected_device_time() -> None:
    device = datetime(2024, 5, 15, 10, 30)
    live = effective_time(device, received_at=RECEIVED, clock=CLOCK, stored=False)
    assert (live.moment, live.corrected) == (datetime(2024, 5, 15, 8, 30, 5, tzinfo=UTC), True)
    unset = effective_time(device, received_at=RECEIVED, clock=CLOCK, stored=False, clock_set=False)
    assert (unset.moment, unset.corrected) == (RECEIVED, False)
