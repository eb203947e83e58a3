"""PHD Device identifiers (BTMAC, SYSID) and the Observation identifier used for de-duplication.

IG: http://hl7.org/fhir/uv/phd/ObservationIdentifier.html — the identifier has a value only
(PhdBaseObservation: identifier[conditionalCreate].system 0..0, type 0..0), made of
"device-patient-type-value-units-reported PHD timestamp-supplemental types" (Numeric profile),
from the PHD's own timestamp so a re-sent stored record yields the same value. The reported
timestamp is seconds since 2000-01-01 at the device's resolution
(http://hl7.org/fhir/uv/phd/GeneratingtheReportedTimeStampIdentifier.html).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from devices.phd.codes import CONTINUA_DEVICE_IDENTIFIERS

BTMAC_SYSTEM = "http://hl7.org/fhir/sid/eui-48/bluetooth"
SYSID_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
SYSID_UNKNOWN = "00-00-00-00-00-00-00-00"  # the IG's value for devices without a System ID
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_EPOCH = datetime(2000, 1, 1)
_MILLI = Decimal("0.001")
_ONE_MICROSECOND = timedelta(microseconds=1)
# uuid5 namespace of the station's bundle entries: same identifier, same fullUrl, across re-sends.
_ENTRIES = uuid.UUID("6f1c3a52-8f0e-4c47-9a8b-4d2e1f7c9b31")


def btmac(address: str) -> str:
    """00:e5:de:ad:77:c3 → 00-E5-DE-AD-77-C3 (an EUI-48 as the IG writes it)."""
    if not _ADDRESS.match(address):
        raise ValueError(f"Keine Bluetooth-Adresse / not a Bluetooth address: {address!r}")
    return address.replace(":", "-").upper()


def typed_identifier(kind: str, system: str, value: str) -> dict[str, Any]:
    """A Device identifier typed with ContinuaDeviceIdentifiers (SYSID, BTMAC, …)."""
    return {
        "type": {"coding": [{"system": CONTINUA_DEVICE_IDENTIFIERS, "code": kind}]},
        "system": system,
        "value": value,
    }


def btmac_identifier(address: str) -> dict[str, Any]:
    return typed_identifier("BTMAC", BTMAC_SYSTEM, btmac(address))


def sysid_identifier(value: str | None) -> dict[str, Any]:
    """The EUI-64 System ID ("FE-ED-…", 8 octets); all zeros when the device has none."""
    return typed_identifier("SYSID", SYSID_SYSTEM, (value or SYSID_UNKNOWN).upper())


def device_search(address: str) -> str:
    """If-None-Exist criteria that find a PHD's Device by its Bluetooth address."""
    return f"identifier={BTMAC_SYSTEM}|{btmac(address)}"


def logical_id(reference: str) -> str:
    """Patient/123 → 123; any other form (urn:uuid:…) is used whole."""
    kind, _, rest = reference.partition("/")
    return rest if kind.isalpha() and rest and "/" not in rest else reference


def device_timestamp(moment: datetime) -> str:
    """A device wall-clock time (naive, 1 s resolution) as whole seconds since 2000-01-01."""
    return str(int((moment.replace(tzinfo=None) - _EPOCH).total_seconds()))


def receive_timestamp(moment: datetime) -> str:
    """A station time (aware) in seconds since 2000-01-01 UTC with millisecond resolution."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    seconds = Decimal((utc - _EPOCH) // _ONE_MICROSECOND).scaleb(-6)
    return format(seconds.quantize(_MILLI, rounding=ROUND_FLOOR), "f")  # whole ms elapsed


def observation_identifier(
    *,
    device_address: str,
    patient_reference: str,
    code: int,
    value: str,
    unit: str,
    timestamp: str,
    supplemental: Iterable[str] = (),
) -> dict[str, str]:
    """The conditional-create identifier; ``value`` is the value's digits or the absent reason."""
    parts = [btmac(device_address), logical_id(patient_reference), str(code), value, unit]
    return {"value": "-".join([*parts, timestamp, *supplemental])}


def full_url(identifier_value: str) -> str:
    """The transaction-bundle fullUrl (urn:uuid) of the resource with this identifier value;
    Observations reference a Coincident Timestamp or a related Observation through it."""
    return f"urn:uuid:{uuid.uuid5(_ENTRIES, identifier_value)}"
