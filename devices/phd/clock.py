"""Device clock correction and the Coincident Timestamp Observation (MDC_ATTR_TIME_ABS).

IG: http://hl7.org/fhir/uv/phd/CoincidentTimeStamp.html — the PHG reads the PHD's current time
at its own (NTP-synchronised) time, shifts the PHD's timestamps onto its timeline and reports the
pair as a PhdCoincidentTimeStampObservation (subject = PHD, device = PHG), which every corrected
Observation references through the CoincidentTimeStampReference extension. Timestamps that cannot
be placed on the station's timeline are never guessed: a live reading takes its receive time, a
stored one raises ClockUnusable (the station puts it in review; Non11073PHDDevices.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from devices.errors import ClockUnusable
from devices.phd import codes
from devices.phd.identifiers import btmac, full_url, receive_timestamp

CTS_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"
CTS_REFERENCE = "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference"
GATEWAY_DEVICE = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"


def fhir_instant(moment: datetime) -> str:
    """An aware time as a FHIR dateTime in UTC with seconds: 2024-05-15T08:30:00Z."""
    if moment.tzinfo is None:
        raise ValueError("station times are timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ClockCorrection:
    """The device's current time read (CTS) against the station clock at one connection.

    ``offset`` = station time (UTC) − device wall clock read as if it were UTC, i.e. the
    ``Reading.device_time_offset``; it contains the device's time zone and its drift, so
    device time + offset is UTC. ``zone`` is the station's zone, used only to write the
    device's wall clock as a FHIR dateTime in the Coincident Timestamp.
    """

    offset: timedelta
    read_at: datetime  # station clock (UTC, aware) when the device's time was read
    zone: tzinfo

    def correct(self, device_time: datetime) -> datetime:
        """A device wall-clock time (naive) on the station's timeline (UTC, aware)."""
        return device_time.replace(tzinfo=UTC) + self.offset

    @property
    def device_now(self) -> datetime:
        """The device's wall clock at ``read_at`` (naive)."""
        return self.read_at.astimezone(UTC).replace(tzinfo=None) - self.offset

    def identifier(self, device_address: str) -> dict[str, str]:
        """One Coincident Timestamp per device and connection, so re-sends create it once."""
        offset_ms = self.offset // timedelta(milliseconds=1)
        value = "-".join(
            (btmac(device_address), str(codes.TIME_ABS.code), receive_timestamp(self.read_at))
        )
        return {"value": f"{value}-{offset_ms}ms"}

    def reference(self, device_address: str) -> str:
        return full_url(self.identifier(device_address)["value"])


@dataclass(frozen=True)
class Effective:
    """When a reading happened on the station's timeline; ``corrected`` = from the device clock."""

    moment: datetime
    corrected: bool


def effective_time(
    device_time: datetime | None,
    *,
    received_at: datetime,
    clock: ClockCorrection | None,
    stored: bool,
    clock_set: bool = True,
) -> Effective:
    """The corrected device time if the device sent a usable one and its clock was read;
    otherwise the receive time for a live reading; ClockUnusable for a stored record."""
    if device_time is not None and clock_set and clock is not None:
        return Effective(clock.correct(device_time), corrected=True)
    if stored:
        raise ClockUnusable(
            "Gespeicherter Messwert ohne verwertbare Geräteuhr / "
            "stored reading without a usable device clock"
        )
    return Effective(received_at, corrected=False)


def coincident_timestamp(
    clock: ClockCorrection,
    *,
    device_address: str,
    device_reference: str,
    gateway_reference: str,
) -> dict[str, Any]:
    """The PhdCoincidentTimeStampObservation of one connection (PHG better synchronised)."""
    return {
        "resourceType": "Observation",
        "meta": {"profile": [CTS_PROFILE]},
        "extension": [{"url": GATEWAY_DEVICE, "valueReference": {"reference": gateway_reference}}],
        "identifier": [clock.identifier(device_address)],
        "status": "final",
        "category": [codes.codeable({"system": codes.PHD_CATEGORY, "code": "phd"})],
        "code": codes.codeable(codes.TIME_ABS.coding(), text="Absolute time"),
        "subject": {"reference": device_reference},
        "effectiveDateTime": fhir_instant(clock.read_at),
        "valueDateTime": clock.device_now.replace(tzinfo=clock.zone).isoformat(timespec="seconds"),
        "device": {"reference": gateway_reference},
    }
