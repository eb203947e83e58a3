"""MDC (ISO/IEEE 11073-10101), LOINC and UCUM codes the station's Observations and Devices use.

IG: http://hl7.org/fhir/uv/phd/ObtainObservationCode.html — an MDC code is partition × 2¹⁶ + term
(partition 2 SCADA = 131072, 8 INFRA = 524288, 128 PHD_DM = 8388608); vital signs add the FHIR
vital-signs LOINC code (https://hl7.org/fhir/R4/observation-vitalsigns.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PHD_CATEGORY = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
MEASUREMENT_STATUS = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"
ASN1_TO_HL7 = "http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7"
V2_BINARY = "http://terminology.hl7.org/CodeSystem/v2-0136"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONTINUA_DEVICE_IDENTIFIERS = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"


@dataclass(frozen=True)
class Mdc:
    """One MDC term: the 32-bit code and its reference id (shown as display and text)."""

    code: int
    ref_id: str

    def coding(self) -> dict[str, Any]:
        return {"system": MDC, "code": str(self.code), "display": self.ref_id}


# Measurements (partition 2, SCADA)
BP_PANEL = Mdc(150020, "MDC_PRESS_BLD_NONINV")
BP_SYSTOLIC = Mdc(150021, "MDC_PRESS_BLD_NONINV_SYS")
BP_DIASTOLIC = Mdc(150022, "MDC_PRESS_BLD_NONINV_DIA")
BP_MEAN = Mdc(150023, "MDC_PRESS_BLD_NONINV_MEAN")
PULSE_RATE_CUFF = Mdc(149546, "MDC_PULS_RATE_NON_INV")
HEART_RATE = Mdc(147842, "MDC_ECG_HEART_RATE")
RR_INTERVAL = Mdc(147240, "MDC_ECG_TIME_PD_RR_GL")
SPO2 = Mdc(150456, "MDC_PULS_OXIM_SAT_O2")
PULSE_RATE_OXIMETER = Mdc(149530, "MDC_PULS_OXIM_PULS_RATE")
PULSE_AMPLITUDE_INDEX = Mdc(150448, "MDC_PULS_OXIM_PERF_REL")
MODALITY_FAST = Mdc(150580, "MDC_MODALITY_FAST")
MODALITY_SLOW = Mdc(150584, "MDC_MODALITY_SLOW")
MODALITY_SPOT = Mdc(150588, "MDC_MODALITY_SPOT")
BODY_WEIGHT = Mdc(188736, "MDC_MASS_BODY_ACTUAL")
BODY_HEIGHT = Mdc(188740, "MDC_LEN_BODY_ACTUAL")
BMI = Mdc(188752, "MDC_RATIO_MASS_BODY_LEN_SQ")
TEMP_BODY = Mdc(150364, "MDC_TEMP_BODY")

# Attributes and objects (partition 1 OBJ/ATTR, 8 INFRA)
SUPPLEMENTAL_TYPES = Mdc(68193, "MDC_ATTR_SUPPLEMENTAL_TYPES")
TIME_ABS = Mdc(67975, "MDC_ATTR_TIME_ABS")
TIME_SYNC_PROTOCOL = Mdc(68220, "MDC_TIME_SYNC_PROTOCOL")
TIME_SYNC_NTPV4 = Mdc(532226, "MDC_TIME_SYNC_NTPV4")
MDS_SIMPLE = Mdc(65573, "MDC_MOC_VMS_MDS_SIMP")
MDS_AHD = Mdc(531981, "MDC_MOC_VMS_MDS_AHD")
VERSION_HW = Mdc(531974, "MDC_ID_PROD_SPEC_HW")
VERSION_SW = Mdc(531975, "MDC_ID_PROD_SPEC_SW")
VERSION_FW = Mdc(531976, "MDC_ID_PROD_SPEC_FW")
BP_MEASUREMENT_STATUS = Mdc(8410608, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS")

# Device specializations (MDC_DEV_SPEC_PROFILE_*), by the station's device kind.
SPECIALIZATIONS: dict[str, Mdc] = {
    "blood-pressure": Mdc(528391, "MDC_DEV_SPEC_PROFILE_BPM"),
    "pulse-oximeter": Mdc(528388, "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
    "thermometer": Mdc(528392, "MDC_DEV_SPEC_PROFILE_TEMP"),
    "weight-scale": Mdc(528399, "MDC_DEV_SPEC_PROFILE_SCALE"),
    "glucose": Mdc(528401, "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
    "heart-rate": Mdc(528425, "MDC_DEV_SPEC_PROFILE_HF_CARDIO"),
}

# 2A1D temperature type → the site-specific MDC temperature code (transcoding white paper).
TEMPERATURE_SITES: dict[int, Mdc] = {
    1: Mdc(188452, "MDC_TEMP_AXILLA"),
    2: TEMP_BODY,
    3: Mdc(188428, "MDC_TEMP_EAR"),
    4: Mdc(188432, "MDC_TEMP_FINGER"),
    5: Mdc(188456, "MDC_TEMP_GIT"),
    6: Mdc(188424, "MDC_TEMP_ORAL"),
    7: Mdc(188420, "MDC_TEMP_RECT"),
    8: Mdc(188448, "MDC_TEMP_TOE"),
    9: Mdc(150392, "MDC_TEMP_TYMP"),
}
TEMPERATURE_SITE_TEXT: dict[int, str] = {
    1: "Achsel / armpit",
    2: "Körper / body",
    3: "Ohr / ear",
    4: "Finger / finger",
    5: "Magen-Darm-Trakt / gastro-intestinal tract",
    6: "Mund / mouth",
    7: "Rektum / rectum",
    8: "Zeh / toe",
    9: "Trommelfell / tympanum",
}

# 2A18 sample type → MDC glucose concentration code (MDC_CONC_GLU_*).
GLUCOSE_SAMPLES: dict[int, Mdc] = {
    1: Mdc(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
    2: Mdc(160188, "MDC_CONC_GLU_CAPILLARY_PLASMA"),
    3: Mdc(160192, "MDC_CONC_GLU_VENOUS_WHOLEBLOOD"),
    4: Mdc(160196, "MDC_CONC_GLU_VENOUS_PLASMA"),
    5: Mdc(160200, "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"),
    6: Mdc(160204, "MDC_CONC_GLU_ARTERIAL_PLASMA"),
    7: Mdc(160364, "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD"),
    8: Mdc(160368, "MDC_CONC_GLU_UNDETERMINED_PLASMA"),
    9: Mdc(160212, "MDC_CONC_GLU_ISF"),
    10: Mdc(160208, "MDC_CONC_GLU_CONTROL"),
}
GLUCOSE_UNKNOWN_SAMPLE = GLUCOSE_SAMPLES[8]  # no type sent: "undetermined plasma" (most meters)
CAPILLARY_SAMPLES = frozenset({1, 2})  # only these have the glucometer LOINC codes below

# 2A34 meal → MDC_CTXT_GLU_MEAL_* (partition 128); the IG reports it as a coded enumeration.
GLUCOSE_MEAL = Mdc(8417864, "MDC_CTXT_GLU_MEAL")
GLUCOSE_MEALS: dict[int, Mdc] = {
    1: Mdc(8417868, "MDC_CTXT_GLU_MEAL_PREPRANDIAL"),
    2: Mdc(8417872, "MDC_CTXT_GLU_MEAL_POSTPRANDIAL"),
    3: Mdc(8417876, "MDC_CTXT_GLU_MEAL_FASTING"),
    4: Mdc(8417880, "MDC_CTXT_GLU_MEAL_CASUAL"),
    # Published tables disagree on bedtime (term 29261 or 29300); 29261 does not collide.
    5: Mdc(8417869, "MDC_CTXT_GLU_MEAL_BEDTIME"),
}
GLUCOSE_MEAL_TEXT: dict[int, str] = {
    1: "vor dem Essen / preprandial",
    2: "nach dem Essen / postprandial",
    3: "nüchtern / fasting",
    4: "Zwischenmahlzeit / casual",
    5: "vor dem Schlafen / bedtime",
}

# LOINC (vital signs and glucometer glucose)
LOINC_BP_PANEL = "85354-9"
LOINC_SYSTOLIC = "8480-6"
LOINC_DIASTOLIC = "8462-4"
LOINC_MAP = "8478-0"
LOINC_HEART_RATE = "8867-4"
LOINC_BODY_TEMPERATURE = "8310-5"
LOINC_SPO2 = ("2708-6", "59408-5")  # vital-signs code, plus US Core's pulse-oximetry code
LOINC_BODY_WEIGHT = "29463-7"
LOINC_BODY_HEIGHT = "8302-2"
LOINC_BMI = "39156-5"
LOINC_GLUCOSE = {"mg/dL": "41653-7", "mmol/L": "14743-9"}  # capillary blood by glucometer

# UCUM: GATT unit names → UCUM codes (most are UCUM already).
UCUM_UNITS = {"mmHg": "mm[Hg]", "kPa": "kPa"}


def loinc(code: str) -> dict[str, str]:
    return {"system": LOINC, "code": code}


def codeable(*codings: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": list(codings)}
    if text:
        concept["text"] = text
    return concept
