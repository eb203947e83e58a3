"""Glucose (2A18, 2A34, 2A51): reference vectors and generated records."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import ParseError
from devices.gatt import glucose, uuids
from devices.gatt.glucose import GlucoseFeature, Meal, SampleLocation, SampleType, SensorStatus
from tests.devices.gatt.wire import (
    TS,
    TS_ISO,
    Num,
    Stamp,
    assert_parses_or_rejects,
    assert_truncations_fail,
    check_numeric,
    check_stamp,
    flag_bits,
    plain,
    sfloats,
    stamps,
)

_RECORD = {
    "base_time": TS_ISO,
    "time_offset_minutes": None,
    "sensor_status": None,
    "context_follows": False,
}


@pytest.mark.parametrize(
    ("hex_", "expected"),
    [
        (
            "020100" + TS.hex() + "5FB011",
            _RECORD
            | {
                "sequence": 1,
                "concentration": "95",
                "unit": "mg/dL",
                "sample_type": SampleType.CAPILLARY_WHOLE_BLOOD,
                "sample_location": SampleLocation.FINGER,
            },
        ),
        (
            "170200" + TS.hex() + "3C0035C011",
            _RECORD
            | {
                "sequence": 2,
                "time_offset_minutes": 60,
                "concentration": "5.3",
                "unit": "mmol/L",
                "sample_type": 1,
                "sample_location": 1,
                "context_follows": True,
            },
        ),
        (
            "0A0300" + TS.hex() + "5FB0110100",
            _RECORD
            | {
                "sequence": 3,
                "concentration": "95",
                "unit": "mg/dL",
                "sample_type": 1,
                "sample_location": 1,
                "sensor_status": 1,
            },
        ),
    ],
)
def test_measurement_vectors(hex_: str, expected: dict[str, Any]) -> None:
    assert plain(glucose.parse(bytes.fromhex(hex_))) == expected


def test_timestamp_adds_the_offset() -> None:
    record = glucose.parse(bytes.fromhex("170200" + TS.hex() + "3C0035C011"))
    assert record.timestamp == datetime(2024, 5, 15, 11, 30)


def test_unknown_base_time_has_no_timestamp() -> None:
    assert glucose.parse(bytes.fromhex("000100" + "00" * 7)).timestamp is None


def test_offset_beyond_year_9999_has_no_timestamp() -> None:
    late = struct.pack("<HBBBBB", 9999, 12, 31, 23, 0, 0)
    record = glucose.parse(bytes.fromhex("010100") + late + struct.pack("<h", 32767))
    assert record.time_offset_minutes == 32767
    assert record.timestamp is None


def test_battery_low_sensor_status() -> None:
    record = glucose.parse(bytes.fromhex("0A0300" + TS.hex() + "5FB0110100"))
    assert record.sensor_flags == SensorStatus.BATTERY_LOW


@pytest.mark.parametrize(
    ("hex_", "expected"),
    [
        ("02020002", {"sequence": 2, "meal": Meal.POSTPRANDIAL}),
        (
            "0302000132D001",
            {"sequence": 2, "carbohydrate_id": 1, "carbohydrate_grams": "50", "meal": 1},
        ),
    ],
)
def test_context_vectors(hex_: str, expected: dict[str, Any]) -> None:
    absent = dict.fromkeys(
        [
            "extended_flags",
            "carbohydrate_id",
            "carbohydrate_grams",
            "meal",
            "tester",
            "health",
            "exercise_seconds",
            "exercise_intensity",
            "medication_id",
            "medication",
            "medication_unit",
            "hba1c",
        ]
    )
    assert plain(glucose.parse_context(bytes.fromhex(hex_))) == absent | expected


def test_feature() -> None:
    feature = glucose.parse_feature(bytes.fromhex("0104"))
    assert feature == GlucoseFeature.LOW_BATTERY_DETECTION | GlucoseFeature.MULTIPLE_BONDS
    with pytest.raises(ParseError):
        glucose.parse_feature(bytes.fromhex("010400"))


@given(
    st.integers(0, 0xFFFF),
    stamps(),
    st.none() | st.integers(-32768, 32767),
    st.none() | st.tuples(sfloats(), st.booleans(), st.integers(0, 15), st.integers(0, 15)),
    st.none() | st.integers(0, 0xFFFF),
    st.booleans(),
    st.booleans(),
    st.integers(0, 7),
)
def test_generated_records_decode_exactly(
    sequence: int,
    stamp: Stamp,
    offset: int | None,
    reading: tuple[Num, bool, int, int] | None,
    status: int | None,
    context: bool,
    molar_without_reading: bool,
    reserved: int,
) -> None:
    molar = reading[1] if reading else molar_without_reading  # b2 is meaningless without b1
    flags = flag_bits(offset is not None, reading is not None, molar, status is not None, context)
    payload = bytes([flags | reserved << 5]) + struct.pack("<H", sequence) + stamp.raw
    payload += struct.pack("<h", offset) if offset is not None else b""
    if reading:
        payload += reading[0].raw + bytes([reading[3] << 4 | reading[2]])
    payload += struct.pack("<H", status) if status is not None else b""
    record = glucose.parse(payload)
    assert record.sequence == sequence
    check_stamp(record.base_time, stamp)
    assert record.time_offset_minutes == offset
    if reading is None:
        assert (record.concentration, record.unit) == (None, None)
        assert (record.sample_type, record.sample_location) == (None, None)
    else:
        # kg/L → mg/dL is 10^5, mol/L → mmol/L is 10^3: only the exponent moves.
        check_numeric(record.concentration, reading[0], decades=3 if molar else 5)
        assert record.unit == ("mmol/L" if molar else "mg/dL")
        assert (record.sample_type, record.sample_location) == (reading[2], reading[3])
    assert record.sensor_status == status
    assert record.context_follows is context
    moment = stamp.moment
    if moment is not None and moment.year < 9999:
        assert record.timestamp == moment + timedelta(minutes=offset or 0)
    elif moment is None:
        assert record.timestamp is None
    assert_truncations_fail(glucose.parse, payload)


@st.composite
def contexts(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    sequence = draw(st.integers(0, 0xFFFF))
    extended = draw(st.none() | st.integers(0, 255))
    carbs = draw(st.none() | st.tuples(st.integers(0, 255), sfloats()))
    meal = draw(st.none() | st.integers(0, 255))
    tester_health = draw(st.none() | st.tuples(st.integers(0, 15), st.integers(0, 15)))
    exercise = draw(st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255)))
    medication = draw(st.none() | st.tuples(st.integers(0, 255), sfloats(), st.booleans()))
    hba1c = draw(st.none() | sfloats())
    liters = medication[2] if medication else draw(st.booleans())
    flags = flag_bits(
        carbs is not None,
        meal is not None,
        tester_health is not None,
        exercise is not None,
        medication is not None,
        liters,
        hba1c is not None,
        extended is not None,
    )
    payload = bytes([flags]) + struct.pack("<H", sequence)
    payload += bytes([extended]) if extended is not None else b""
    payload += bytes([carbs[0]]) + carbs[1].raw if carbs else b""
    payload += bytes([meal]) if meal is not None else b""
    payload += bytes([tester_health[1] << 4 | tester_health[0]]) if tester_health else b""
    payload += struct.pack("<HB", *exercise) if exercise else b""
    payload += bytes([medication[0]]) + medication[1].raw if medication else b""
    payload += hba1c.raw if hba1c else b""
    fields = {
        "sequence": sequence,
        "extended": extended,
        "carbs": carbs,
        "meal": meal,
        "tester_health": tester_health,
        "exercise": exercise,
        "medication": medication,
        "hba1c": hba1c,
    }
    return payload, fields


@given(contexts())
def test_generated_contexts_decode_exactly(case: tuple[bytes, dict[str, Any]]) -> None:
    payload, fields = case
    context = glucose.parse_context(payload)
    assert context.sequence == fields["sequence"]
    assert context.extended_flags == fields["extended"]
    if fields["carbs"] is None:
        assert (context.carbohydrate_id, context.carbohydrate_grams) == (None, None)
    else:
        assert context.carbohydrate_id == fields["carbs"][0]
        check_numeric(context.carbohydrate_grams, fields["carbs"][1], decades=3)  # kg → g
    assert context.meal == fields["meal"]
    assert (context.tester, context.health) == (fields["tester_health"] or (None, None))
    assert (context.exercise_seconds, context.exercise_intensity) == (
        fields["exercise"] or (None, None)
    )
    if fields["medication"] is None:
        assert (context.medication_id, context.medication, context.medication_unit) == (
            None,
            None,
            None,
        )
    else:
        medication_id, amount, liters = fields["medication"]
        assert context.medication_id == medication_id
        check_numeric(context.medication, amount, decades=3 if liters else 6)  # L→mL, kg→mg
        assert context.medication_unit == ("mL" if liters else "mg")
    if fields["hba1c"] is None:
        assert context.hba1c is None
    else:
        check_numeric(context.hba1c, fields["hba1c"])
    assert_truncations_fail(glucose.parse_context, payload)


@given(st.binary(max_size=24))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    assert_parses_or_rejects(glucose.parse, data, uuids.GLUCOSE_MEASUREMENT)
    assert_parses_or_rejects(glucose.parse_context, data, uuids.GLUCOSE_MEASUREMENT_CONTEXT)
    assert_parses_or_rejects(glucose.parse_feature, data, uuids.GLUCOSE_FEATURE)
