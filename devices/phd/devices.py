"""PhdDevice (a measuring device) and PhgDevice (the station) Device resources.

IG: http://hl7.org/fhir/uv/phd/StructureDefinition-PhdDevice.html and
http://hl7.org/fhir/uv/phd/StructureDefinition-PhgDevice.html — a legacy Bluetooth SIG device is
described "as if" it were an IEEE 11073-10206 one (Non11073PHDDevices.html): type
MDC_MOC_VMS_MDS_SIMP, its specialization, the Device Information Service strings, and both
identifiers (SYSID, all zeros when the device has no System ID, and the Bluetooth address that
the station's uploader conditionally creates it by).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devices.gatt.device_information import SystemId
from devices.phd import codes
from devices.phd.identifiers import btmac_identifier, sysid_identifier

PHD_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"
PHG_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice"
STATION_SYSTEM = "https://medikus.example/fhir/sid/station"  # the station's configured id
_SPECIALIZATION_VERSION = "1"  # BLE profiles carry no 11073 specialization version


@dataclass(frozen=True)
class DeviceInformation:
    """What the Device Information Service told; every field may be missing."""

    manufacturer: str | None = None
    model_number: str | None = None
    serial_number: str | None = None
    hardware_revision: str | None = None
    firmware_revision: str | None = None
    software_revision: str | None = None
    system_id: SystemId | None = None


def _version(code: codes.Mdc, value: str) -> dict[str, Any]:
    return {"type": codes.codeable(code.coding()), "value": value}


def _versions(info: DeviceInformation) -> list[dict[str, Any]]:
    pairs = (
        (codes.VERSION_HW, info.hardware_revision),
        (codes.VERSION_SW, info.software_revision),
        (codes.VERSION_FW, info.firmware_revision),
    )
    return [_version(code, value) for code, value in pairs if value]


def _strings(info: DeviceInformation) -> dict[str, str]:
    fields = {
        "manufacturer": info.manufacturer,
        "serialNumber": info.serial_number,
        "modelNumber": info.model_number,
    }
    return {key: value for key, value in fields.items() if value}


def phd_device(address: str, kind: str, info: DeviceInformation | None = None) -> dict[str, Any]:
    """The PhdDevice of a configured device (``kind`` as in the station configuration)."""
    info = info or DeviceInformation()
    specialization = codes.SPECIALIZATIONS[kind]
    sysid = info.system_id.fhir_value() if info.system_id else None
    device: dict[str, Any] = {
        "resourceType": "Device",
        "meta": {"profile": [PHD_PROFILE]},
        "identifier": [sysid_identifier(sysid), btmac_identifier(address)],
        **_strings(info),
        "type": codes.codeable(codes.MDS_SIMPLE.coding(), text=codes.MDS_SIMPLE.ref_id),
        "specialization": [
            {
                "systemType": codes.codeable(specialization.coding()),
                "version": _SPECIALIZATION_VERSION,
            }
        ],
    }
    versions = _versions(info)
    if versions:
        device["version"] = versions
    return device


def station_search(station_id: str) -> str:
    """If-None-Exist criteria that find the station's PhgDevice."""
    return f"identifier={STATION_SYSTEM}|{station_id}"


def phg_device(
    station_id: str,
    software_version: str,
    *,
    manufacturer: str = "Medi-KUS",
    model_number: str = "medikus station",
    adapter_address: str | None = None,
) -> dict[str, Any]:
    """The station as PhgDevice: synchronised by NTPv4, identified by its configured id (and
    its Bluetooth adapter's address when known)."""
    identifiers = [{"system": STATION_SYSTEM, "value": station_id}]
    if adapter_address:
        identifiers.append(btmac_identifier(adapter_address))
    return {
        "resourceType": "Device",
        "meta": {"profile": [PHG_PROFILE]},
        "identifier": identifiers,
        "manufacturer": manufacturer,
        "modelNumber": model_number,
        "type": codes.codeable(codes.MDS_AHD.coding(), text=codes.MDS_AHD.ref_id),
        "version": [_version(codes.VERSION_SW, software_version)],
        "property": [
            {
                "type": codes.codeable(codes.TIME_SYNC_PROTOCOL.coding()),
                "valueCode": [codes.codeable(codes.TIME_SYNC_NTPV4.coding())],
            }
        ],
    }
