"""Parse → assign → map: what goes to review, and what the uploader gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from devices.gatt import uuids
from devices.processing import PHD, PHG, Mapped, Processor, Review
from devices.reading import Reading

CUFF = "A0:B1:C2:D3:E4:01"
METER = "A0:B1:C2:D3:E4:05"
TS = "E807050F0A1E00"  # 2024-05-15T10:30:00 device wall clock
RECEIVED = datetime(2024, 5, 15, 8, 31, tzinfo=UTC)


def processor(patient: str | None = "pat-1") -> Processor:
    return Processor(
        station_id="pz-test",
        software_version="0.1.0",
        kinds={CUFF: "blood-pressure", METER: "glucose"},
        patient_for=lambda _address, _user, _reading: patient,
        zone=ZoneInfo("Europe/Berlin"),
    )


def reading(address: str, characteristic: str, raw: str, **extra: object) -> Reading:
    return Reading(address, characteristic, bytes.fromhex(raw), RECEIVED, **extra)  # type: ignore[arg-type]


def test_a_blood_pressure_reading_is_mapped_for_the_checked_in_patient() -> None:
    bp = reading(CUFF, uuids.BLOOD_PRESSURE_MEASUREMENT, "007D0052006000")
    outcome = processor().process(bp)
    assert isinstance(outcome, Mapped) and outcome.patient_id == "pat-1"
    devices, found = outcome.payload["devices"], outcome.payload["observations"]
    assert devices["phd"]["resourceType"] == devices["phg"]["resourceType"] == "Device"
    assert {o["device"]["reference"] for o in found} == {PHD}
    assert all(o["subject"]["reference"] == "Patient/pat-1" for o in found)
    assert all(PHG in str(o["extension"]) for o in found)
    assert found[0]["effectiveDateTime"] == "2024-05-15T08:31:00Z"  # no device time: received


def test_a_corrected_device_time_comes_with_its_coincident_timestamp() -> None:
    # Device wall clock on Berlin summer time and 30 s slow: offset = station − device.
    offset = timedelta(hours=-2, seconds=30)
    bp = reading(
        CUFF,
        uuids.BLOOD_PRESSURE_MEASUREMENT,
        f"1E780050005D00{TS}4800010000",
        device_time_offset=offset,
        clock_read_at=RECEIVED,
    )
    outcome = processor().process(bp)
    assert isinstance(outcome, Mapped)
    clock, *measured = outcome.payload["observations"]
    assert {c["code"] for c in clock["code"]["coding"]} == {"67975"}
    assert measured[0]["effectiveDateTime"] == "2024-05-15T08:30:30Z"


def test_unreadable_unassigned_and_clockless_stored_readings_go_to_review() -> None:
    truncated = reading(CUFF, uuids.BLOOD_PRESSURE_MEASUREMENT, "1E7800")
    outcome = processor().process(truncated)
    assert isinstance(outcome, Review) and "nicht lesbar" in outcome.reason

    nobody = processor(patient=None).process(
        reading(CUFF, uuids.BLOOD_PRESSURE_MEASUREMENT, "007D0052006000")
    )
    assert isinstance(nobody, Review) and "Kein eindeutig angemeldeter Patient" in nobody.reason

    stored = reading(METER, uuids.GLUCOSE_MEASUREMENT, f"020100{TS}5FB011", sequence=1)
    clockless = processor().process(stored)  # a stored record, device clock never read
    assert isinstance(clockless, Review) and "Geräteuhr" in clockless.reason

    unknown = processor().process(reading(CUFF, "00002a00-0000-1000-8000-00805f9b34fb", "00"))
    assert isinstance(unknown, Review)


def test_staff_resolving_a_review_item_names_the_patient() -> None:
    resolved = processor(patient=None).process(
        reading(CUFF, uuids.BLOOD_PRESSURE_MEASUREMENT, "007D0052006000"), patient_id="pat-9"
    )
    assert isinstance(resolved, Mapped) and resolved.patient_id == "pat-9"
