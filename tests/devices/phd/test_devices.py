"""PhdDevice and PhgDevice resources."""

from __future__ import annotations

from devices.gatt.device_information import parse_system_id
from devices.phd import DeviceInformation, phd_device, phg_device
from devices.phd.devices import station_search
from devices.phd.identifiers import device_search

MDC = "urn:iso:std:iso:11073:10101"


def test_phd_device_from_the_device_information_service() -> None:
    info = DeviceInformation(
        manufacturer="OMRON HEALTHCARE",
        model_number="HEM-9200T",
        serial_number="20150200002A",
        hardware_revision="1.0",
        firmware_revision="C.00.7AJ-02",
        software_revision="101",
        system_id=parse_system_id(bytes.fromhex("711000FEFF5F49B0")),
    )
    device = phd_device("B0:49:5F:00:10:71", "blood-pressure", info)
    assert device["meta"]["profile"] == ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"]
    assert [(i["type"]["coding"][0]["code"], i["value"]) for i in device["identifier"]] == [
        ("SYSID", "71-10-00-FE-FF-5F-49-B0"),
        ("BTMAC", "B0-49-5F-00-10-71"),
    ]
    assert (device["manufacturer"], device["modelNumber"], device["serialNumber"]) == (
        "OMRON HEALTHCARE",
        "HEM-9200T",
        "20150200002A",
    )
    assert device["type"]["coding"][0]["code"] == "65573"
    assert device["specialization"][0]["systemType"]["coding"][0]["code"] == "528391"
    assert [(v["type"]["coding"][0]["code"], v["value"]) for v in device["version"]] == [
        ("531974", "1.0"),
        ("531975", "101"),
        ("531976", "C.00.7AJ-02"),
    ]


def test_phd_device_without_information_has_the_address_and_zero_system_id() -> None:
    device = phd_device("00:e5:de:ad:77:c3", "glucose")
    assert [i["value"] for i in device["identifier"]] == [
        "00-00-00-00-00-00-00-00",
        "00-E5-DE-AD-77-C3",
    ]
    assert "manufacturer" not in device and "version" not in device
    assert device["specialization"][0]["systemType"]["coding"][0]["code"] == "528401"
    assert device_search("00:e5:de:ad:77:c3") == (
        "identifier=http://hl7.org/fhir/sid/eui-48/bluetooth|00-E5-DE-AD-77-C3"
    )


def test_specializations_per_kind() -> None:
    expected = {
        "blood-pressure": "528391",
        "pulse-oximeter": "528388",
        "thermometer": "528392",
        "weight-scale": "528399",
        "glucose": "528401",
    }
    for kind, code in expected.items():
        device = phd_device("00:E5:DE:AD:77:C3", kind)
        assert device["specialization"][0]["systemType"]["coding"][0]["code"] == code


def test_phg_device_is_the_ntp_synchronised_station() -> None:
    gateway = phg_device("pilotzentrum-kusel", "0.9.0", adapter_address="A0:B1:C2:D3:E4:F5")
    assert gateway["type"]["coding"][0] == {
        "system": MDC,
        "code": "531981",
        "display": "MDC_MOC_VMS_MDS_AHD",
    }
    [sync] = gateway["property"]
    assert sync["type"]["coding"][0]["code"] == "68220"
    assert sync["valueCode"][0]["coding"][0]["code"] == "532226"
    assert gateway["version"][0]["value"] == "0.9.0"
    assert gateway["identifier"][0]["value"] == "pilotzentrum-kusel"
    assert gateway["identifier"][1]["value"] == "A0-B1-C2-D3-E4-F5"
    assert station_search("pilotzentrum-kusel").endswith("|pilotzentrum-kusel")
