"""Special values and measurement status bits → dataAbsentReason, interpretation, HTEST."""

from __future__ import annotations

import struct

import pytest

from devices.phd.measurement_status import StatusEffects, plx_status
from tests.devices.phd.support import map_vector

DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def spot_check(status: int) -> str:
    """2A5E: SpO2 98 %, pulse 72 /min, with a Measurement Status field."""
    return "02620048" + "00" + struct.pack("<H", status).hex()


@pytest.mark.parametrize(
    ("sfloat", "reason"),
    [
        ("FF07", "not-a-number"),
        ("0008", "error"),  # NRes
        ("FE07", "positive-infinity"),
        ("0208", "negative-infinity"),
        ("0108", "error"),  # reserved
    ],
)
def test_special_values_become_data_absent_reasons(sfloat: str, reason: str) -> None:
    spo2, pulse = map_vector(0x2A5F, "00" + sfloat + "4800")
    assert spo2["dataAbsentReason"] == {"coding": [{"system": DAR, "code": reason}]}
    assert "valueQuantity" not in spo2
    assert pulse["valueQuantity"]["value"] == 72
    assert f"-{reason}-%-" in spo2["identifier"][0]["value"]


@pytest.mark.parametrize(
    ("float32", "reason"),
    [("FFFF7F00", "not-a-number"), ("00008000", "error")],
)
def test_float_specials_of_a_thermometer(float32: str, reason: str) -> None:
    [temperature] = map_vector(0x2A1C, "00" + float32)
    assert temperature["dataAbsentReason"]["coding"][0]["code"] == reason


def test_invalid_measurement_drops_the_value_for_error_and_stays_final() -> None:
    spo2, pulse = map_vector(0x2A5E, spot_check(1 << 15))
    for observation in (spo2, pulse):
        assert observation["status"] == "final"  # IG: invalid → dataAbsentReason, not a status
        assert observation["dataAbsentReason"]["coding"][0]["code"] == "error"
        assert "valueQuantity" not in observation


def test_questionable_measurement_is_interpreted() -> None:
    spo2, _ = map_vector(0x2A5E, spot_check(1 << 14))
    assert spo2["valueQuantity"]["value"] == 98
    assert spo2["interpretation"] == [
        {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status",
                    "code": "questionable",
                }
            ]
        }
    ]


@pytest.mark.parametrize("bit", [10, 11])  # demonstration, testing
def test_test_and_demo_data_are_labelled_htest(bit: int) -> None:
    spo2, pulse = map_vector(0x2A5E, spot_check(1 << bit))
    for observation in (spo2, pulse):
        assert observation["meta"]["security"] == [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}
        ]


def test_real_data_has_no_security_label() -> None:
    spo2, _ = map_vector(0x2A5E, spot_check(1 << 7))
    assert "security" not in spo2["meta"]


def test_status_bits_combine_and_the_gravest_reason_wins() -> None:
    effects = plx_status((1 << 15) | (1 << 13) | (1 << 14) | (1 << 11) | (1 << 12))
    assert effects == StatusEffects(
        absent_reason="error",
        interpretations=("calibration-ongoing", "questionable"),
        test_data=True,
    )
    assert plx_status(1 << 13).absent_reason == "not-performed"
    assert plx_status(1 << 5).absent_reason == "temp-unknown"
    assert plx_status(1 << 9) == StatusEffects()  # from storage: no mark on the Observation
    assert plx_status(None) == StatusEffects()
