"""PhdBaseObservation and PhdNumericObservation building blocks shared by every mapping.

IG: http://hl7.org/fhir/uv/phd/StructureDefinition-PhdBaseObservation.html — gatewayDevice
extension, de-dup identifier, phd (+ vital-signs) category, MDC (+ LOINC) code, subject,
effectiveDateTime, device, CoincidentTimeStampReference when the time was corrected, and the
measurement status; numeric values keep the device's digits as ``Decimal``
(http://hl7.org/fhir/uv/phd/NumericObservationProfile.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from devices.fhir_json import decimal_text
from devices.gatt.date_time import DateTime
from devices.gatt.ieee11073 import Numeric, Special
from devices.phd import codes
from devices.phd.clock import (
    CTS_REFERENCE,
    GATEWAY_DEVICE,
    ClockCorrection,
    Effective,
    effective_time,
    fhir_instant,
)
from devices.phd.identifiers import device_timestamp, observation_identifier, receive_timestamp
from devices.phd.measurement_status import NONE, StatusEffects

_PHD = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
NUMERIC = _PHD + "PhdNumericObservation"
COMPOUND = _PHD + "PhdCompoundNumericObservation"
CODED = _PHD + "PhdCodedEnumerationObservation"
BITS = _PHD + "PhdBitsEnumerationObservation"
VITAL = "http://hl7.org/fhir/StructureDefinition/"  # R4 vital-signs profiles
_ABSENT = {
    Special.NAN: "not-a-number",
    Special.POSITIVE_INFINITY: "positive-infinity",
    Special.NEGATIVE_INFINITY: "negative-infinity",
    Special.NRES: "error",
    Special.RESERVED: "error",
}


@dataclass(frozen=True)
class ObservationContext:
    """Who and what a reading belongs to, and when the station received it."""

    patient_reference: str  # "Patient/<id>"
    device_reference: str  # the PhdDevice (Device/<id> or the bundle's urn:uuid)
    gateway_reference: str  # the station's PhgDevice
    device_address: str  # "AA:BB:CC:DD:EE:FF"
    received_at: datetime  # station clock, UTC, aware
    clock: ClockCorrection | None  # the device clock read at this connection, if it was


@dataclass(frozen=True)
class Frame:
    """What all Observations of one reading share."""

    context: ObservationContext
    effective: Effective
    timestamp: str  # the identifier's reported-timestamp part
    status: StatusEffects = NONE
    supplemental: tuple[str, ...] = ()


def frame(
    context: ObservationContext,
    device_time: DateTime | datetime | None,
    *,
    stored: bool = False,
    clock_set: bool = True,
    status: StatusEffects = NONE,
    supplemental: tuple[str, ...] = (),
) -> Frame:
    moment = device_time.to_datetime() if isinstance(device_time, DateTime) else device_time
    effective = effective_time(
        moment, received_at=context.received_at, clock=context.clock, stored=stored,
        clock_set=clock_set,
    )  # fmt: skip
    # The device's own timestamp, so a re-sent record maps to the same identifier.
    stamp = device_timestamp(moment) if moment else receive_timestamp(context.received_at)
    return Frame(context, effective, stamp, status, supplemental)


def _value(numeric: Numeric) -> tuple[Decimal | None, str | None]:
    """(value, dataAbsentReason code)."""
    if numeric.special is not None:
        return None, _ABSENT[numeric.special]
    return numeric.value, None


def quantity(value: Decimal, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": codes.UCUM, "code": unit}


def absent(reason: str) -> dict[str, Any]:
    return {"coding": [{"system": codes.DATA_ABSENT_REASON, "code": reason}]}


def value_elements(numeric: Numeric, unit: str, status: StatusEffects) -> dict[str, Any]:
    value, reason = _value(numeric)
    reason = status.absent_reason or reason
    if reason or value is None:
        return {"dataAbsentReason": absent(reason or "error")}
    return {"valueQuantity": quantity(value, unit)}


def id_value(numeric: Numeric) -> str:
    value, reason = _value(numeric)
    return decimal_text(value) if value is not None else reason or "error"


def base(
    frame: Frame,
    profiles: list[str],
    code: dict[str, Any],
    identifier: tuple[int, str, str],
    *,
    vital: bool,
    supplemental: tuple[str, ...] = (),
) -> dict[str, Any]:
    """PhdBaseObservation; ``identifier`` = (MDC code, value text, unit) of the de-dup id."""
    ctx, status = frame.context, frame.status
    meta: dict[str, Any] = {"profile": profiles}
    if status.test_data:
        meta["security"] = [{"system": codes.ACT_REASON, "code": "HTEST"}]
    extensions = [{"url": GATEWAY_DEVICE, "valueReference": {"reference": ctx.gateway_reference}}]
    if frame.effective.corrected and ctx.clock:
        cts = ctx.clock.reference(ctx.device_address)
        extensions.append({"url": CTS_REFERENCE, "valueReference": {"reference": cts}})
    category = [codes.codeable({"system": codes.PHD_CATEGORY, "code": "phd"})]
    if vital:
        vital_signs = {"system": codes.OBSERVATION_CATEGORY, "code": "vital-signs"}
        category.insert(0, codes.codeable(vital_signs))
    mdc, value, unit = identifier
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": meta,
        "extension": extensions,
        "identifier": [
            observation_identifier(
                device_address=ctx.device_address,
                patient_reference=ctx.patient_reference,
                code=mdc,
                value=value,
                unit=unit,
                timestamp=frame.timestamp,
                supplemental=(*supplemental, *frame.supplemental),
            )
        ],
        "status": "final",
        "category": category,
        "code": code,
        "subject": {"reference": ctx.patient_reference},
        "effectiveDateTime": fhir_instant(frame.effective.moment),
        "device": {"reference": ctx.device_reference},
    }
    if status.interpretations:
        resource["interpretation"] = [
            codes.codeable({"system": codes.MEASUREMENT_STATUS, "code": code})
            for code in status.interpretations
        ]
    return resource


def numeric_observation(
    frame: Frame,
    mdc: codes.Mdc,
    loinc: tuple[str, ...],
    numeric: Numeric,
    unit: str,
    *,
    vital_profile: str | None = None,
    modality: codes.Mdc | None = None,
) -> dict[str, Any]:
    """A PhdNumericObservation (plus the R4 vital-signs profile when it is one)."""
    profiles = [NUMERIC] + ([VITAL + vital_profile] if vital_profile else [])
    code = codes.codeable(mdc.coding(), *map(codes.loinc, loinc), text=mdc.ref_id)
    supplemental = (str(modality.code),) if modality else ()
    observation = base(
        frame, profiles, code, (mdc.code, id_value(numeric), unit),
        vital=vital_profile is not None, supplemental=supplemental,
    )  # fmt: skip
    observation |= value_elements(numeric, unit, frame.status)
    if modality:
        observation["component"] = [supplemental_type(modality)]
    return observation


def supplemental_type(modality: codes.Mdc) -> dict[str, Any]:
    return {
        "code": codes.codeable(codes.SUPPLEMENTAL_TYPES.coding()),
        "valueCodeableConcept": codes.codeable(modality.coding()),
    }


def component(mdc: codes.Mdc, loinc: str | None, numeric: Numeric, unit: str) -> dict[str, Any]:
    codings = ([codes.loinc(loinc)] if loinc else []) + [mdc.coding()]
    component: dict[str, Any] = {"code": codes.codeable(*codings, text=mdc.ref_id)}
    return component | value_elements(numeric, unit, NONE)
