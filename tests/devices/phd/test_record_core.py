"""Every mapped resource is accepted by the record core (validated with fhir.resources R4B),
posted the way the uploader does: one transaction of conditional creates, idempotent on re-send."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from fastapi.testclient import TestClient

from devices.fhir_json import dumps
from devices.phd import (
    coincident_timestamp,
    entry_url,
    phd_device,
    phg_device,
    search_criteria,
)
from devices.phd.devices import station_search
from devices.phd.identifiers import device_search
from tests.devices.phd.support import CLOCK, RECEIVED, TS, context, map_vector

FHIR = {"Content-Type": "application/fhir+json"}
GATEWAY_URL = "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e01"
# kind → (address, device fullUrl, [(characteristic, payload, glucose context)])
DEVICES: dict[str, tuple[str, str, list[tuple[int, str, str | None]]]] = {
    "blood-pressure": (
        "00:E5:DE:AD:77:01",
        "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e11",
        [
            (0x2A35, "1E780050005D00" + TS + "4800010000", None),
            (0x2A35, "007D0052006000", None),
            (0x2A35, "01A0F06BF07DF0", None),
            (0x2A35, "168C005A006C00" + TS + "58000400", None),
            (0x2A35, "16FF07FF07FF07E80706170E230AFF070000", None),
        ],
    ),
    "thermometer": (
        "00:E5:DE:AD:77:02",
        "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e12",
        [(0x2A1C, "006E0100FF", None), (0x2A1C, "066E0100FF" + TS + "06", None)],
    ),
    "pulse-oximeter": (
        "00:E5:DE:AD:77:03",
        "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e13",
        [
            (0x2A5E, "0062004800", None),
            (0x2A5E, "0362004800" + TS + "8000", None),
            (0x2A5E, "0262004800" + "0088", None),  # invalid + test data
            (0x2A5F, "0061004B00", None),
        ],
    ),
    "weight-scale": (
        "00:E5:DE:AD:77:04",
        "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e14",
        [(0x2A9D, "00B036", None), (0x2A9D, "0EB036" + TS + "01EF00AE06", None)],
    ),
    "glucose": (
        "00:E5:DE:AD:77:05",
        "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e15",
        [
            (0x2A18, "020100" + TS + "5FB011", None),
            (0x2A18, "170200" + TS + "3C0035C011", "02020002"),
            (0x2A18, "0A0300" + TS + "5FB0110100", None),
        ],
    ),
    "heart-rate": (
        "00:E5:DE:AD:77:06",
        "urn:uuid:0b6c7f0e-8d7a-4f0e-9a51-2f6f3c1d9e16",
        [(0x2A37, "0048", None), (0x2A37, "164855034003", None), (0x2A37, "194800E8030004", None)],
    ),
}


def conditional(url: str, resource: dict[str, Any], criteria: str) -> dict[str, Any]:
    request = {"method": "POST", "url": resource["resourceType"], "ifNoneExist": criteria}
    return {"fullUrl": url, "resource": resource, "request": request}


def bundle(patient: str) -> dict[str, Any]:
    entries = [
        conditional(GATEWAY_URL, phg_device("pilot-kusel", "0.1.0"), station_search("pilot-kusel"))
    ]
    second = 0
    for kind, (address, device_url, vectors) in DEVICES.items():
        entries.append(conditional(device_url, phd_device(address, kind), device_search(address)))
        cts = coincident_timestamp(
            CLOCK, device_address=address, device_reference=device_url,
            gateway_reference=GATEWAY_URL,
        )  # fmt: skip
        entries.append(conditional(entry_url(cts), cts, search_criteria(cts)))
        for characteristic, payload, meal in vectors:
            second += 1  # one notification per second: live readings differ by receive time
            ctx = context(
                patient, device=device_url, gateway=GATEWAY_URL,
                received_at=RECEIVED + timedelta(seconds=second), address=address,
            )  # fmt: skip
            for observation in map_vector(characteristic, payload, ctx, glucose_context=meal):
                entries.append(
                    conditional(entry_url(observation), observation, search_criteria(observation))
                )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def statuses(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [entry["response"]["status"] for entry in response.json()["entry"]]


def test_every_mapped_resource_is_created_once(client: TestClient) -> None:
    created = client.post(
        "/fhir/Patient", content=orjson.dumps({"resourceType": "Patient"}), headers=FHIR
    )
    assert created.status_code == 201, created.text
    patient = f"Patient/{created.json()['id']}"
    payload = dumps(bundle(patient))

    first = statuses(client.post("/fhir", content=payload, headers=FHIR))
    assert len(first) > 40
    assert set(first) == {"201 Created"}

    # The station re-sends after a crash: every conditional create finds its resource.
    again = statuses(client.post("/fhir", content=payload, headers=FHIR))
    assert set(again) == {"200 OK"}

    found = client.get("/fhir/Observation", params={"subject": patient, "_summary": "count"})
    device_observations = len(first) - 1 - 2 * len(DEVICES)  # minus PHG, PHDs, timestamps
    assert found.json()["total"] == device_observations
