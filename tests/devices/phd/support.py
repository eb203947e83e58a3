"""Shared inputs of the PHD mapping tests: the reference test vectors, parsed by devices.gatt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from devices.gatt import MEASUREMENT_PARSERS, uuids
from devices.gatt.glucose import GlucoseContext, parse_context
from devices.phd import ClockCorrection, ObservationContext, observations
from devices.phd.observations import Measurement

TS = "E807050F0A1E00"  # 2024-05-15T10:30:00 on the device's wall clock
ADDRESS = "00:E5:DE:AD:77:C3"
BERLIN = ZoneInfo("Europe/Berlin")
RECEIVED = datetime(2024, 5, 15, 8, 31, 7, 250000, tzinfo=UTC)
# Device clock (Berlin summer time, UTC+2) 5 s behind the station: 10:30:00 local = 08:30:05Z.
CLOCK = ClockCorrection(
    offset=timedelta(hours=-2, seconds=5),
    read_at=datetime(2024, 5, 15, 8, 31, 0, tzinfo=UTC),
    zone=BERLIN,
)


def context(
    patient: str = "Patient/p1",
    *,
    clock: ClockCorrection | None = CLOCK,
    received_at: datetime = RECEIVED,
    device: str = "Device/phd-1",
    gateway: str = "Device/phg-1",
    address: str = ADDRESS,
) -> ObservationContext:
    return ObservationContext(
        patient_reference=patient,
        device_reference=device,
        gateway_reference=gateway,
        device_address=address,
        received_at=received_at,
        clock=clock,
    )


def parse(characteristic: int, hex_bytes: str) -> Measurement:
    return MEASUREMENT_PARSERS[uuids.uuid16(characteristic)](bytes.fromhex(hex_bytes))


def map_vector(
    characteristic: int,
    hex_bytes: str,
    ctx: ObservationContext | None = None,
    *,
    glucose_context: str | None = None,
) -> list[dict[str, Any]]:
    meal: GlucoseContext | None = None
    if glucose_context is not None:
        meal = parse_context(bytes.fromhex(glucose_context))
    return observations(parse(characteristic, hex_bytes), ctx or context(), glucose_context=meal)


def mdc(resource: dict[str, Any]) -> str:
    """The MDC code of an Observation or component."""
    codings: list[dict[str, str]] = resource["code"]["coding"]
    return next(c["code"] for c in codings if c["system"].startswith("urn:iso"))


def loincs(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in resource["code"]["coding"] if c["system"] == "http://loinc.org"]
