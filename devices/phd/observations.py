"""Parsed Bluetooth health measurements → PHD IG Observations (FHIR R4 JSON dicts).

IG: http://hl7.org/fhir/uv/phd/Non11073PHDDevices.html — readings of Bluetooth SIG devices are
mapped "as if" from IEEE 11073-10206 devices (transcoding white paper): blood pressure as a
compound (sys/dia/MAP) plus the cuff's pulse, status bits as a BITs enumeration, temperature by
measuring site, SpO2 and pulse rate with their modality, weight/BMI/height, glucose by sample
type with its meal context as a coded enumeration, heart rate with the RR intervals as
components. Values are ``Decimal``s with the device's digits (``fhir_json.dumps`` writes them).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote

from devices.gatt.blood_pressure import BloodPressureMeasurement, BloodPressureStatus
from devices.gatt.glucose import GlucoseContext, GlucoseMeasurement
from devices.gatt.heart_rate import HeartRateMeasurement
from devices.gatt.ieee11073 import Numeric
from devices.gatt.pulse_oximeter import PlxContinuous, PlxSpotCheck
from devices.gatt.thermometer import TemperatureMeasurement
from devices.gatt.weight_scale import WeightMeasurement
from devices.phd import codes
from devices.phd.base_observation import (
    BITS,
    CODED,
    COMPOUND,
    VITAL,
    Frame,
    ObservationContext,
    base,
    component,
    frame,
    id_value,
    numeric_observation,
    quantity,
)
from devices.phd.identifiers import full_url
from devices.phd.measurement_status import plx_status

__all__ = ["Measurement", "ObservationContext", "entry_url", "observations", "search_criteria"]

Measurement = (
    BloodPressureMeasurement
    | TemperatureMeasurement
    | PlxSpotCheck
    | PlxContinuous
    | WeightMeasurement
    | GlucoseMeasurement
    | GlucoseContext
    | HeartRateMeasurement
)
_PER_MINUTE = "/min"
_BP_STATUS_BITS = (  # 11073 MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS bit → ASN.1 name, text
    (0, "body-movement", "Körperbewegung / body movement"),
    (1, "cuff-too-loose", "Manschette zu locker / cuff too loose"),
    (2, "irregular-pulse", "unregelmäßiger Puls / irregular pulse"),
    (3, "pr-exceeds-upper-limit", "Puls über dem Bereich / pulse above range"),
    (4, "pr-less-than-lower-limit", "Puls unter dem Bereich / pulse below range"),
    (5, "improper-body-position", "falsche Messposition / improper position"),
)


def observations(
    measurement: Measurement,
    context: ObservationContext,
    *,
    glucose_context: GlucoseContext | None = None,
) -> list[dict[str, Any]]:
    """The Observations of one reading. Intermediate values (2A36, 2A1E) and a glucose context
    on its own give none: they are no results, and a context is mapped with its measurement.
    Raises ClockUnusable for a stored record whose time cannot be put on the station's clock."""
    match measurement:
        case BloodPressureMeasurement(intermediate=False):
            return _blood_pressure(measurement, context)
        case TemperatureMeasurement(intermediate=False):
            return [_temperature(measurement, context)]
        case PlxSpotCheck():
            return _spot_check(measurement, context)
        case PlxContinuous():
            return _continuous(measurement, context)
        case WeightMeasurement():
            return _weight(measurement, context)
        case GlucoseMeasurement():
            return _glucose(measurement, glucose_context, context)
        case HeartRateMeasurement():
            return [_heart_rate(measurement, context)]
    return []


def entry_url(resource: dict[str, Any]) -> str:
    """The transaction fullUrl of a mapped resource; references between them use it."""
    return full_url(resource["identifier"][0]["value"])


def search_criteria(resource: dict[str, Any]) -> str:
    """If-None-Exist criteria of a mapped Observation: its identifier (which has no system)."""
    return "identifier=" + quote(resource["identifier"][0]["value"], safe="")


# ---- blood pressure (BLS) ----------------------------------------------------------------------


def _blood_pressure(bp: BloodPressureMeasurement, ctx: ObservationContext) -> list[dict[str, Any]]:
    shared = frame(ctx, bp.timestamp)
    unit = codes.UCUM_UNITS[bp.unit]
    values = (bp.systolic, bp.diastolic, bp.mean_arterial)
    panel = base(
        shared,
        [COMPOUND, VITAL + "bp"],
        codes.codeable(
            codes.BP_PANEL.coding(), codes.loinc(codes.LOINC_BP_PANEL), text="Blutdruck / BP"
        ),
        (codes.BP_PANEL.code, "-".join(map(id_value, values)), unit),
        vital=True,
    )
    panel["component"] = [
        component(codes.BP_SYSTOLIC, codes.LOINC_SYSTOLIC, bp.systolic, unit),
        component(codes.BP_DIASTOLIC, codes.LOINC_DIASTOLIC, bp.diastolic, unit),
        component(codes.BP_MEAN, codes.LOINC_MAP, bp.mean_arterial, unit),
    ]
    result = [panel]
    if bp.pulse_rate is not None:
        pulse = numeric_observation(
            shared, codes.PULSE_RATE_CUFF, (codes.LOINC_HEART_RATE,), bp.pulse_rate,
            _PER_MINUTE, vital_profile="heartrate",
        )  # fmt: skip
        result.append(pulse)
    if bp.status is not None and bp.status.raw & 0b111111:
        result.append(_bp_status(shared, bp.status, entry_url(panel)))
    return result


def _bp_status(shared: Frame, status: BloodPressureStatus, panel_url: str) -> dict[str, Any]:
    """PhdBitsEnumerationObservation: one component per set (event) bit, derived from the BP."""
    code = codes.codeable(codes.BP_MEASUREMENT_STATUS.coding(), text="Messprobleme / issues")
    observation = base(
        shared, [BITS], code, (codes.BP_MEASUREMENT_STATUS.code, str(status.raw), "bits"),
        vital=False,
    )  # fmt: skip
    observation["derivedFrom"] = [{"reference": panel_url}]
    observation["component"] = [
        {
            "code": codes.codeable(
                {"system": codes.ASN1_TO_HL7, "code": f"{codes.BP_MEASUREMENT_STATUS.code}.{bit}"},
                text=name,
            ),
            "valueCodeableConcept": codes.codeable(
                {"system": codes.V2_BINARY, "code": "Y"}, text=text
            ),
        }
        for bit, name, text in _BP_STATUS_BITS
        if status.raw >> bit & 1
    ]
    return observation


# ---- thermometer (HTS) -------------------------------------------------------------------------


def _temperature(reading: TemperatureMeasurement, ctx: ObservationContext) -> dict[str, Any]:
    site = reading.temperature_type
    mdc = codes.TEMPERATURE_SITES.get(site or 0, codes.TEMP_BODY)
    observation = numeric_observation(
        frame(ctx, reading.timestamp), mdc, (codes.LOINC_BODY_TEMPERATURE,), reading.value,
        reading.unit, vital_profile="bodytemp",
    )  # fmt: skip
    if site in codes.TEMPERATURE_SITE_TEXT:
        observation["bodySite"] = {"text": codes.TEMPERATURE_SITE_TEXT[site]}
    return observation


# ---- pulse oximeter (PLXS) ---------------------------------------------------------------------


def _oximetry(
    shared: Frame, spo2: Numeric, pulse: Numeric, modality: codes.Mdc | None
) -> list[dict[str, Any]]:
    return [
        numeric_observation(
            shared, codes.SPO2, codes.LOINC_SPO2, spo2, "%", vital_profile="oxygensat",
            modality=modality,
        ),
        numeric_observation(
            shared, codes.PULSE_RATE_OXIMETER, (codes.LOINC_HEART_RATE,), pulse, _PER_MINUTE,
            vital_profile="heartrate", modality=modality,
        ),
    ]  # fmt: skip


def _pulse_amplitude(shared: Frame, pai: Numeric | None) -> list[dict[str, Any]]:
    if pai is None:
        return []
    return [numeric_observation(shared, codes.PULSE_AMPLITUDE_INDEX, (), pai, "%")]


def _spot_check(spot: PlxSpotCheck, ctx: ObservationContext) -> list[dict[str, Any]]:
    shared = frame(
        ctx, spot.timestamp, stored=spot.from_storage, clock_set=not spot.clock_not_set,
        status=plx_status(spot.measurement_status),
    )  # fmt: skip
    spot_check = _oximetry(shared, spot.spo2, spot.pulse_rate, codes.MODALITY_SPOT)
    return spot_check + _pulse_amplitude(shared, spot.pulse_amplitude_index)


def _continuous(plx: PlxContinuous, ctx: ObservationContext) -> list[dict[str, Any]]:
    # No timestamp in 2A5F: a record "from storage" has no usable time at all.
    shared = frame(ctx, None, stored=plx.from_storage, status=plx_status(plx.measurement_status))
    result = _oximetry(shared, plx.spo2, plx.pulse_rate, None)
    for pair, modality in ((plx.fast, codes.MODALITY_FAST), (plx.slow, codes.MODALITY_SLOW)):
        if pair is not None:
            result += _oximetry(shared, *pair, modality)
    return result + _pulse_amplitude(shared, plx.pulse_amplitude_index)


# ---- weight scale (WSS) ------------------------------------------------------------------------


def _weight(scale: WeightMeasurement, ctx: ObservationContext) -> list[dict[str, Any]]:
    shared = frame(ctx, scale.timestamp)
    result = [
        numeric_observation(
            shared, codes.BODY_WEIGHT, (codes.LOINC_BODY_WEIGHT,), scale.weight, scale.unit,
            vital_profile="bodyweight",
        )
    ]  # fmt: skip
    if scale.bmi is not None:
        result.append(
            numeric_observation(
                shared, codes.BMI, (codes.LOINC_BMI,), scale.bmi, "kg/m2", vital_profile="bmi"
            )
        )
    if scale.height is not None:
        # The vital-signs profile wants cm or [in_i]; m → cm moves the exponent, no digit lost.
        metric = scale.height_unit == "m"
        height = scale.height.scaled(2) if metric else scale.height
        result.append(
            numeric_observation(
                shared, codes.BODY_HEIGHT, (codes.LOINC_BODY_HEIGHT,), height,
                "cm" if metric else "[in_i]", vital_profile="bodyheight",
            )
        )  # fmt: skip
    return result


# ---- glucose meter (GLS) -----------------------------------------------------------------------


def _glucose(
    record: GlucoseMeasurement, meal: GlucoseContext | None, ctx: ObservationContext
) -> list[dict[str, Any]]:
    if record.concentration is None or record.unit is None:
        return []  # a record without a concentration carries nothing to report
    # RACP records are stored by definition; the sequence number tells equal times apart.
    shared = frame(ctx, record.timestamp, stored=True, supplemental=(str(record.sequence),))
    sample = record.sample_type or 0
    mdc = codes.GLUCOSE_SAMPLES.get(sample, codes.GLUCOSE_UNKNOWN_SAMPLE)
    loinc = (codes.LOINC_GLUCOSE[record.unit],) if sample in codes.CAPILLARY_SAMPLES else ()
    glucose = numeric_observation(shared, mdc, loinc, record.concentration, record.unit)
    result = [glucose]
    if meal is not None and meal.meal in codes.GLUCOSE_MEALS:
        result.append(_meal(shared, meal.meal, entry_url(glucose)))
    return result


def _meal(shared: Frame, meal: int, glucose_url: str) -> dict[str, Any]:
    """PhdCodedEnumerationObservation MDC_CTXT_GLU_MEAL, derived from its glucose reading."""
    value = codes.GLUCOSE_MEALS[meal]
    observation = base(
        shared, [CODED], codes.codeable(codes.GLUCOSE_MEAL.coding(), text="Mahlzeit / meal"),
        (codes.GLUCOSE_MEAL.code, str(value.code), ""), vital=False,
    )  # fmt: skip
    observation["valueCodeableConcept"] = codes.codeable(
        value.coding(), text=codes.GLUCOSE_MEAL_TEXT[meal]
    )
    observation["derivedFrom"] = [{"reference": glucose_url}]
    return observation


# ---- heart rate (HRS) --------------------------------------------------------------------------


def _heart_rate(reading: HeartRateMeasurement, ctx: ObservationContext) -> dict[str, Any]:
    observation = numeric_observation(
        frame(ctx, None), codes.HEART_RATE, (codes.LOINC_HEART_RATE,),
        Numeric(reading.heart_rate, 0), _PER_MINUTE, vital_profile="heartrate",
    )  # fmt: skip
    if reading.rr_intervals:
        # Beat-to-beat intervals are not equidistant samples (no SampledData period), so each
        # is a component MDC_ECG_TIME_PD_RR_GL in seconds, exact (n/1024), oldest first;
        # normalize() drops the zeros a division leaves (0.8125000000 → 0.8125), not digits.
        observation["component"] = [_rr(seconds) for seconds in reading.rr_intervals]
    return observation


def _rr(seconds: Decimal) -> dict[str, Any]:
    return {
        "code": codes.codeable(codes.RR_INTERVAL.coding(), text=codes.RR_INTERVAL.ref_id),
        "valueQuantity": quantity(seconds.normalize(), "s"),
    }
