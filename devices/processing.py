"""From a stored reading to what the uploader sends: parse, assign to a patient, map to FHIR.

A reading that cannot be parsed, belongs to no (or more than one) checked-in patient, or is a
stored record without a usable device clock is never dropped and never assigned by guess: it
goes to the review queue with the reason (German / English) and its raw bytes.
PHD IG: http://hl7.org/fhir/uv/phd/ (observations, devices, coincident time stamps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from devices.errors import ClockUnusable, ParseError
from devices.gatt import MEASUREMENT_PARSERS, Measurement, uuids
from devices.gatt.glucose import GlucoseContext, GlucoseMeasurement
from devices.phd.clock import ClockCorrection, coincident_timestamp
from devices.phd.devices import DeviceInformation, phd_device, phg_device
from devices.phd.observations import ObservationContext, observations
from devices.reading import Reading

__all__ = ["INTERMEDIATE", "Mapped", "Processor", "Review", "user_id_of"]

# Intermediate values (cuff pressure while inflating, temperature while measuring) are shown
# live but are no results: they are not stored or uploaded (PHD IG: not mapped).
INTERMEDIATE = frozenset({uuids.INTERMEDIATE_CUFF_PRESSURE, uuids.INTERMEDIATE_TEMPERATURE})
PHD = "urn:medikus:phd"
PHG = "urn:medikus:phg"


@dataclass(frozen=True)
class Mapped:
    patient_id: str
    payload: dict[str, Any]  # the uploader's format (devices/uploader.py)
    measurement: Measurement


@dataclass(frozen=True)
class Review:
    reason: str


def user_id_of(measurement: Measurement) -> int | None:
    """The device's user index, for multi-user blood-pressure monitors and scales."""
    return getattr(measurement, "user_id", None)


@dataclass
class Processor:
    """Turns readings into upload payloads for one station."""

    station_id: str
    software_version: str
    kinds: Mapping[str, str]  # device address → configured kind (codes.SPECIALIZATIONS key)
    patient_for: Callable[[str, int | None, Reading], str | None]
    zone: tzinfo
    information: Callable[[str], DeviceInformation | None] = lambda _address: None

    def parse(self, reading: Reading) -> Measurement:
        parser = MEASUREMENT_PARSERS.get(reading.characteristic)
        if parser is None:
            raise ParseError(
                reading.characteristic,
                "Unbekanntes Merkmal / unknown characteristic",
                reading.raw,
            )
        return parser(reading.raw)

    def process(
        self,
        reading: Reading,
        patient_id: str | None = None,
        glucose_context: GlucoseContext | None = None,
    ) -> Mapped | Review:
        """``patient_id`` given (staff resolved a review item) wins over the check-ins."""
        try:
            measurement = self.parse(reading)
        except ParseError as exc:
            return Review(f"Messwert nicht lesbar / unreadable reading: {exc.reason}")
        patient = patient_id or self.patient_for(
            reading.device_address, user_id_of(measurement), reading
        )
        if patient is None:
            return Review(
                "Kein eindeutig angemeldeter Patient an diesem Gerät / "
                "no single patient checked in at this device"
            )
        try:
            payload = self._payload(reading, measurement, patient, glucose_context)
        except ClockUnusable as exc:
            return Review(str(exc))
        return Mapped(patient, payload, measurement)

    def _payload(
        self,
        reading: Reading,
        measurement: Measurement,
        patient: str,
        glucose_context: GlucoseContext | None,
    ) -> dict[str, Any]:
        clock = self._clock(reading)
        context = ObservationContext(
            patient_reference=f"Patient/{patient}",
            device_reference=PHD,
            gateway_reference=PHG,
            device_address=reading.device_address,
            received_at=reading.received_at,
            clock=clock,
        )
        context_arg = glucose_context if isinstance(measurement, GlucoseMeasurement) else None
        found = observations(measurement, context, glucose_context=context_arg)
        if clock is not None and any(_corrected(o) for o in found):
            found.insert(
                0,
                coincident_timestamp(
                    clock,
                    device_address=reading.device_address,
                    device_reference=PHD,
                    gateway_reference=PHG,
                ),
            )
        kind = self.kinds.get(reading.device_address, "")
        return {
            "devices": {
                "phd": phd_device(
                    reading.device_address, kind, self.information(reading.device_address)
                ),
                "phg": phg_device(self.station_id, self.software_version),
            },
            "observations": found,
        }

    def _clock(self, reading: Reading) -> ClockCorrection | None:
        if reading.device_time_offset is None or reading.clock_read_at is None:
            return None
        return ClockCorrection(reading.device_time_offset, reading.clock_read_at, self.zone)


def _corrected(observation: Mapping[str, Any]) -> bool:
    return any(
        extension.get("url", "").endswith("CoincidentTimeStampReference")
        for extension in observation.get("extension", ())
    )
