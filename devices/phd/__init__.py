"""HL7 PHD IG mapping of parsed Bluetooth health measurements to FHIR R4 resources.

IG: http://hl7.org/fhir/uv/phd (2.0.0) — pure functions, no I/O: Observations, PhdDevice and
PhgDevice dicts whose decimals are ``Decimal``s (write them with ``fhir_json.dumps``).
"""

from __future__ import annotations

from devices.phd.clock import ClockCorrection, coincident_timestamp
from devices.phd.devices import DeviceInformation, phd_device, phg_device
from devices.phd.observations import ObservationContext, entry_url, observations, search_criteria

__all__ = [
    "ClockCorrection",
    "DeviceInformation",
    "ObservationContext",
    "coincident_timestamp",
    "entry_url",
    "observations",
    "phd_device",
    "phg_device",
    "search_criteria",
]
