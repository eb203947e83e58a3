"""Transaction processing details (fhir_server/transaction.py) beyond the atomicity tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from compliance.keyring import Keyring
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from fhir_server.search.sql import Statement

FHIR = {"Content-Type": "application/fhir+json"}
FHIR_LOWER = {"content-type": "application/fhir+json"}
ORG_ID = {"system": "urn:bsnr", "value": "071234500"}


def organization() -> dict[str, Any]:
    return {"resourceType": "Organization", "identifier": [ORG_ID], "name": "MVZ Kusel"}


def bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6f1c1d52-0000-4000-8000-000000000001",
                "resource": organization(),
                "request": {
                    "method": "POST",
                    "url": "Organization",
                    "ifNoneExist": "identifier=urn:bsnr|071234500",
                },
            },
            {
                "fullUrl": "urn:uuid:6f1c1d52-0000-4000-8000-000000000002",
                "resource": {
                    "resourceType": "Practitioner",
                    "name": [{"family": "Weber"}],
                },
                "request": {"method": "POST", "url": "Practitioner"},
            },
            {
                "resource": {
                    "resourceType": "PractitionerRole",
                    "practitioner": {"reference": "urn:uuid:6f1c1d52-0000-4000-8000-000000000002"},
                    "organization": {"reference": "urn:uuid:6f1c1d52-0000-4000-8000-000000000001"},
                },
                "request": {"method": "POST", "url": "PractitionerRole"},
            },
        ],
    }


def test_conditional_create_that_appears_meanwhile_is_used_not_duplicated(
    record: RecordCore,
    client: TestClient,
    database_url: str,
    keyring: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injected: another writer creates the matching Organization right after the
    transaction's early (lock-free) match saw none; under the lock the transaction must notice,
    start over, and link to that Organization instead of creating a second one."""
    store = record.ctx.store
    # Another server process on the same database.
    other_worker = RecordCore.open(database_url, keyring=keyring)
    original: Callable[[Statement], list[tuple[Any, ...]]] = store.select
    raced: list[str] = []

    def match_then_race(statement: Statement) -> list[tuple[Any, ...]]:
        found = original(statement)
        if "Organization" in statement.params.values() and not raced:
            created = other_worker.handle(
                FhirRequest(
                    "POST", "Organization", headers=FHIR_LOWER, body=orjson.dumps(organization())
                )
            )
            assert created.status == 201
            raced.append(orjson.loads(created.body)["id"])
        return found

    monkeypatch.setattr(store, "select", match_then_race)
    try:
        response = client.post("/fhir", content=orjson.dumps(bundle()), headers=FHIR)
    finally:
        other_worker.close()
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "201 Created", "201 Created"]
    orgs = client.get("/fhir/Organization", params={"identifier": "urn:bsnr|071234500"}).json()
    assert orgs["total"] == 1
    role_location = response.json()["entry"][2]["response"]["location"]
    role = client.get(role_location.removeprefix("http://testserver").split("/_history")[0]).json()
    assert role["organization"]["reference"] == f"Organization/{raced[0]}"
    assert client.get(f"/fhir/{role['practitioner']['reference']}").status_code == 200


def test_early_match_found_is_confirmed_under_the_lock(client: TestClient) -> None:
    first = client.post("/fhir", content=orjson.dumps(bundle()), headers=FHIR)
    second = client.post("/fhir", content=orjson.dumps(bundle()), headers=FHIR)
    assert first.json()["entry"][0]["response"]["status"] == "201 Created"
    assert second.json()["entry"][0]["response"]["status"] == "200 OK"
    orgs = client.get("/fhir/Organization").json()
    assert orgs["total"] == 1
    roles = client.get("/fhir/PractitionerRole").json()["entry"]
    assert {r["resource"]["organization"]["reference"] for r in roles} == {
        f"Organization/{orgs['entry'][0]['resource']['id']}"
    }
