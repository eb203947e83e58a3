"""The reference test vectors (ble-devices.md §2), parsed by devices.gatt, mapped to PHD FHIR."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from devices.fhir_json import dumps
from devices.phd import coincident_timestamp, entry_url, search_criteria
from tests.devices.phd.support import ADDRESS, CLOCK, TS, context, loincs, map_vector, mdc

UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
PHD = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
DEVICE_TS = "769084200"  # 2024-05-15T10:30:00 in seconds since 2000-01-01 (by hand)
CORRECTED = "2024-05-15T08:30:05Z"  # 10:30:00 Berlin (UTC+2), device 5 s slow


def cts_url() -> str:
    cts = coincident_timestamp(
        CLOCK, device_address=ADDRESS, device_reference="Device/phd-1", gateway_reference="x"
    )
    return entry_url(cts)


def quantity(value: str, unit: str) -> dict[str, Any]:
    return {"value": Decimal(value), "unit": unit, "system": UCUM, "code": unit}


def test_blood_pressure_with_timestamp_pulse_and_user_is_a_panel_and_a_pulse() -> None:
    panel, pulse = map_vector(0x2A35, "1E780050005D00" + TS + "4800010000")
    assert panel == {
        "resourceType": "Observation",
        "meta": {"profile": [PHD + "PhdCompoundNumericObservation", "http://hl7.org/fhir/StructureDefinition/bp"]},
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice",
                "valueReference": {"reference": "Device/phg-1"},
            },
            {
                "url": PHD + "CoincidentTimeStampReference",
                "valueReference": {"reference": cts_url()},
            },
        ],
        "identifier": [{"value": f"00-E5-DE-AD-77-C3-p1-150020-120-80-93-mm[Hg]-{DEVICE_TS}"}],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]},
            {"coding": [{"system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "code": "phd"}]},
        ],
        "code": {
            "coding": [
                {"system": MDC, "code": "150020", "display": "MDC_PRESS_BLD_NONINV"},
                {"system": LOINC, "code": "85354-9"},
            ],
            "text": "Blutdruck / BP",
        },
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": CORRECTED,
        "device": {"reference": "Device/phd-1"},
        "component": [
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8480-6"},
                        {"system": MDC, "code": "150021", "display": "MDC_PRESS_BLD_NONINV_SYS"},
                    ],
                    "text": "MDC_PRESS_BLD_NONINV_SYS",
                },
                "valueQuantity": quantity("120", "mm[Hg]"),
            },
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8462-4"},
                        {"system": MDC, "code": "150022", "display": "MDC_PRESS_BLD_NONINV_DIA"},
                    ],
                    "text": "MDC_PRESS_BLD_NONINV_DIA",
                },
                "valueQuantity": quantity("80", "mm[Hg]"),
            },
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8478-0"},
                        {"system": MDC, "code": "150023", "display": "MDC_PRESS_BLD_NONINV_MEAN"},
                    ],
                    "text": "MDC_PRESS_BLD_NONINV_MEAN",
                },
                "valueQuantity": quantity("93", "mm[Hg]"),
            },
        ],
    }  # fmt: skip
    assert (mdc(pulse), loincs(pulse)) == ("149546", ["8867-4"])
    assert pulse["valueQuantity"] == quantity("72", "/min")
    assert pulse["effectiveDateTime"] == CORRECTED
    assert pulse["identifier"][0]["value"].endswith(f"-149546-72-/min-{DEVICE_TS}")


def test_blood_pressure_without_optional_fields_uses_the_receive_time() -> None:
    [panel] = map_vector(0x2A35, "007D0052006000")
    values = [c["valueQuantity"]["value"] for c in panel["component"]]
    assert values == [Decimal(125), Decimal(82), Decimal(96)]
    assert panel["effectiveDateTime"] == "2024-05-15T08:31:07Z"
    assert [e["url"] for e in panel["extension"]] == [
        "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
    ]
    # No device timestamp: the station's receive time in ms since 2000 (by hand: 08:31:07.250Z).
    assert panel["identifier"][0]["value"].endswith("-125-82-96-mm[Hg]-769077067.250")


def test_blood_pressure_in_kpa_keeps_its_digits() -> None:
    [panel] = map_vector(0x2A35, "01A0F06BF07DF0")
    assert [c["valueQuantity"] for c in panel["component"]] == [
        quantity("16.0", "kPa"),
        quantity("10.7", "kPa"),
        quantity("12.5", "kPa"),
    ]
    assert b'"value":16.0,' in dumps(panel)


def test_irregular_pulse_becomes_a_bits_enumeration_derived_from_the_panel() -> None:
    panel, pulse, status = map_vector(0x2A35, "168C005A006C00" + TS + "58000400")
    assert pulse["valueQuantity"] == quantity("88", "/min")
    assert status["meta"]["profile"] == [PHD + "PhdBitsEnumerationObservation"]
    assert mdc(status) == "8410608"
    assert status["derivedFrom"] == [{"reference": entry_url(panel)}]
    [bit] = status["component"]
    assert bit["code"]["coding"][0]["code"] == "8410608.2"
    assert bit["valueCodeableConcept"]["coding"][0]["code"] == "Y"
    assert [c["code"] for c in status["category"][0]["coding"]] == ["phd"]


def test_real_device_error_reading_is_all_not_a_number() -> None:
    # Omron "Err" after movement: all NaN, TS 2024-06-23 14:35:10, pulse NaN, status 0.
    panel, pulse = map_vector(0x2A35, "16FF07FF07FF07E80706170E230AFF070000")
    not_a_number = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": "not-a-number",
            }
        ]
    }
    assert [c["dataAbsentReason"] for c in panel["component"]] == [not_a_number] * 3
    assert all("valueQuantity" not in c for c in panel["component"])
    assert pulse["dataAbsentReason"] == not_a_number and "valueQuantity" not in pulse
    assert "2047" not in dumps(panel).decode()


def test_intermediate_values_are_no_results() -> None:
    assert map_vector(0x2A36, "006400FF07FF07") == []
    assert map_vector(0x2A1E, "006E0100FF") == []


def test_temperature_celsius_without_site() -> None:
    [temperature] = map_vector(0x2A1C, "006E0100FF")
    assert (mdc(temperature), loincs(temperature)) == ("150364", ["8310-5"])
    assert temperature["valueQuantity"] == quantity("36.6", "Cel")
    assert "bodySite" not in temperature


def test_temperature_in_the_mouth_with_timestamp() -> None:
    [temperature] = map_vector(0x2A1C, "066E0100FF" + TS + "06")
    assert mdc(temperature) == "188424"  # MDC_TEMP_ORAL
    assert temperature["bodySite"] == {"text": "Mund / mouth"}
    assert temperature["effectiveDateTime"] == CORRECTED


def test_temperature_fahrenheit() -> None:
    [temperature] = map_vector(0x2A1C, "01DA0300FF")
    assert temperature["valueQuantity"] == quantity("98.6", "[degF]")


def test_spot_check_spo2_and_pulse_rate_carry_the_spot_modality() -> None:
    spo2, pulse = map_vector(0x2A5E, "0062004800")
    assert (mdc(spo2), loincs(spo2)) == ("150456", ["2708-6", "59408-5"])
    assert spo2["valueQuantity"] == quantity("98", "%")
    assert (mdc(pulse), loincs(pulse)) == ("149530", ["8867-4"])
    assert pulse["valueQuantity"] == quantity("72", "/min")
    for observation in (spo2, pulse):
        [modality] = observation["component"]
        assert modality["code"]["coding"][0]["code"] == "68193"
        assert modality["valueCodeableConcept"]["coding"][0]["code"] == "150588"
        assert observation["identifier"][0]["value"].endswith("-150588")


def test_validated_spot_check_with_timestamp() -> None:
    spo2, pulse = map_vector(0x2A5E, "0362004800" + TS + "8000")
    for observation in (spo2, pulse):
        assert observation["effectiveDateTime"] == CORRECTED
        assert observation["interpretation"] == [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status",
                        "code": "validated-data",
                    }
                ]
            }
        ]


def test_continuous_oximetry_has_no_modality() -> None:
    spo2, pulse = map_vector(0x2A5F, "0061004B00")
    assert spo2["valueQuantity"]["value"] == Decimal(97)
    assert pulse["valueQuantity"]["value"] == Decimal(75)
    assert "component" not in spo2 and "component" not in pulse
    assert spo2["effectiveDateTime"] == "2024-05-15T08:31:07Z"


def test_weight_keeps_the_scale_resolution() -> None:
    [weight] = map_vector(0x2A9D, "00B036")
    assert (mdc(weight), loincs(weight)) == ("188736", ["29463-7"])
    assert weight["valueQuantity"] == quantity("70.000", "kg")
    assert b'"value":70.000,' in dumps(weight)


def test_weight_with_bmi_and_height_in_centimetres() -> None:
    weight, bmi, height = map_vector(0x2A9D, "0EB036" + TS + "01EF00AE06")
    assert weight["effectiveDateTime"] == CORRECTED
    assert (mdc(bmi), loincs(bmi)) == ("188752", ["39156-5"])
    assert bmi["valueQuantity"] == quantity("23.9", "kg/m2")
    assert (mdc(height), loincs(height)) == ("188740", ["8302-2"])
    assert height["valueQuantity"] == quantity("171.0", "cm")  # 1.710 m, same digits


def test_weight_in_pounds() -> None:
    [weight] = map_vector(0x2A9D, "01483C")
    assert weight["valueQuantity"] == quantity("154.32", "[lb_av]")


def test_capillary_glucose_in_mg_per_dl() -> None:
    [glucose] = map_vector(0x2A18, "020100" + TS + "5FB011")
    assert (mdc(glucose), loincs(glucose)) == ("160184", ["41653-7"])
    assert glucose["valueQuantity"] == quantity("95", "mg/dL")
    assert [c["coding"][0]["code"] for c in glucose["category"]] == ["phd"]
    assert glucose["identifier"][0]["value"].endswith(f"-95-mg/dL-{DEVICE_TS}-1")


def test_glucose_with_offset_and_meal_context() -> None:
    glucose, meal = map_vector(0x2A18, "170200" + TS + "3C0035C011", glucose_context="02020002")
    assert glucose["valueQuantity"] == quantity("5.3", "mmol/L")
    assert loincs(glucose) == ["14743-9"]
    assert glucose["effectiveDateTime"] == "2024-05-15T09:30:05Z"  # base + 60 min
    assert meal["meta"]["profile"] == [PHD + "PhdCodedEnumerationObservation"]
    assert mdc(meal) == "8417864"
    assert meal["valueCodeableConcept"]["coding"][0]["code"] == "8417872"  # postprandial
    assert meal["derivedFrom"] == [{"reference": entry_url(glucose)}]


def test_glucose_with_sensor_status_maps_the_value() -> None:
    [glucose] = map_vector(0x2A18, "0A0300" + TS + "5FB0110100")
    assert glucose["valueQuantity"] == quantity("95", "mg/dL")


def test_glucose_context_alone_gives_nothing() -> None:
    assert map_vector(0x2A34, "0302000132D001") == []


def test_heart_rate_with_rr_intervals_as_components() -> None:
    [heart] = map_vector(0x2A37, "164855034003")
    assert (mdc(heart), loincs(heart)) == ("147842", ["8867-4"])
    assert heart["valueQuantity"] == quantity("72", "/min")
    assert [(mdc(c), c["valueQuantity"]) for c in heart["component"]] == [
        ("147240", quantity("0.8330078125", "s")),  # 853/1024
        ("147240", quantity("0.8125", "s")),  # 832/1024
    ]


def test_heart_rate_variants() -> None:
    [plain] = map_vector(0x2A37, "0048")
    assert plain["valueQuantity"]["value"] == Decimal(72) and "component" not in plain
    [wide] = map_vector(0x2A37, "194800E8030004")
    assert wide["valueQuantity"]["value"] == Decimal(72)
    assert wide["component"][0]["valueQuantity"] == quantity("1", "s")


def test_if_none_exist_criteria_escape_the_identifier() -> None:
    [weight] = map_vector(0x2A9D, "00B036", context(received_at=context().received_at))
    criteria = search_criteria(weight)
    assert criteria.startswith("identifier=00-E5-DE-AD-77-C3-p1-188736-70.000-kg-")
    assert "/" not in criteria.partition("=")[2]
