"""Transactions are all or nothing, and resolve their entries' identities (https://hl7.org/fhir/R4/http.html#trules).

A transaction that fails in its last entry leaves resource counts and system history exactly as
they were, whether it fails while being checked (an unknown element), while writing (a stale
``ifMatch``) or at the end (a reference to a missing resource). ``urn:uuid`` and conditional
references become literal ``Type/id`` references, the entries run in the order DELETE, POST,
PUT/PATCH, GET, and ``ifNoneExist`` finds an existing match instead of creating a duplicate.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
Entry = dict[str, Any]


def transaction(client: TestClient, entries: list[Entry]) -> Any:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR_JSON)


def put(client: TestClient, resource: dict[str, Any]) -> None:
    url = f"/fhir/{resource['resourceType']}/{resource['id']}"
    response = client.put(url, content=orjson.dumps(resource), headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.text


def create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(
        f"/fhir/{resource['resourceType']}", content=orjson.dumps(resource), headers=FHIR_JSON
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def patient(id: str | None = None, identifier: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", **extra}
    if id is not None:
        resource["id"] = id
    if identifier is not None:
        system, _, value = identifier.partition("|")
        resource["identifier"] = [{"system": system, "value": value}]
    return resource


def observation(subject: str, text: str = "weight") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": subject},
    }


def post_entry(resource: dict[str, Any], full_url: str | None = None, **request: str) -> Entry:
    entry: Entry = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def put_entry(resource: dict[str, Any], **request: str) -> Entry:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url, **request}}


def location_id(response_entry: Entry) -> str:
    """The id in an entry's response.location (…/Type/id/_history/n)."""
    return str(response_entry["response"]["location"].split("/_history/")[0].rsplit("/", 1)[1])


def search(client: TestClient, rtype: str, **params: str) -> dict[str, Any]:
    response = client.get(f"/fhir/{rtype}", params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def snapshot(client: TestClient) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """System history (every version) and resource counts per type."""
    history = client.get("/fhir/_history", params={"_count": "1000"}).json()
    versions = [(e["fullUrl"], e["response"]["etag"]) for e in history["entry"]]
    counts = {t: search(client, t, _count="0")["total"] for t in ("Patient", "Observation")}
    return versions, counts


# --- a failing last entry --------------------------------------------------------------------


def seed(client: TestClient) -> None:
    put(client, patient("p1", "urn:seed|1"))
    put(client, patient("p1", "urn:seed|1", active=True))  # p1 is at version 2
    put(client, patient("p2", "urn:seed|2"))
    put(client, patient("p3", "urn:seed|3"))
    create(client, observation("Patient/p1"))


def unknown_element() -> Entry:
    return post_entry({**observation("Patient/p1"), "flavour": "unknown element"})


def stale_if_match() -> Entry:
    return put_entry(patient("p3", "urn:seed|3", active=False), ifMatch='W/"7"')


def missing_reference() -> Entry:
    return post_entry(observation("Patient/does-not-exist"))


FAILURES: dict[str, tuple[Callable[[], Entry], int]] = {
    "unknown-element": (unknown_element, 422),
    "stale-if-match": (stale_if_match, 412),
    "missing-reference": (missing_reference, 422),
}


def good_entries() -> list[Entry]:
    """An update, two creates linked by urn:uuid and a delete: all valid on the seeded data."""
    new = "urn:uuid:6f1c2b9e-3a7d-4e55-9c1b-0d2f8e4a7b11"
    return [
        put_entry(patient("p1", "urn:seed|1", active=False), ifMatch='W/"2"'),
        post_entry(patient(identifier="urn:seed|new"), full_url=new),
        post_entry(observation(new)),
        {"request": {"method": "DELETE", "url": "Patient/p2"}},
    ]


@pytest.mark.parametrize("failure", FAILURES)
def test_failing_last_entry_writes_nothing(client: TestClient, failure: str) -> None:
    seed(client)
    before = snapshot(client)
    last, status = FAILURES[failure]
    response = transaction(client, [*good_entries(), last()])
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert snapshot(client) == before
    assert client.get("/fhir/Patient/p2").status_code == 200
    assert search(client, "Patient", identifier="urn:seed|new")["total"] == 0


@pytest.mark.parametrize(
    "failure",
    [
        "unknown-element",
        "stale-if-match",
        "missing-reference",
    ],
)
def test_outcome_names_the_failing_entry(client: TestClient, failure: str) -> None:
    seed(client)
    entries = [*good_entries(), FAILURES[failure][0]()]
    issue = transaction(client, entries).json()["issue"][0]
    where = f"Bundle.entry[{len(entries) - 1}]"
    assert where in issue["diagnostics"]
    assert any(e.startswith(where) for e in issue.get("expression", [])), issue


def test_a_valid_transaction_writes_all(client: TestClient) -> None:
    """The control for the tests above: the same entries without the failing one are applied."""
    seed(client)
    response = transaction(client, good_entries())
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "201 Created", "201 Created", "204 No Content"]
    assert client.get("/fhir/Patient/p1").json()["meta"]["versionId"] == "3"
    assert client.get("/fhir/Patient/p2").status_code == 410
    assert search(client, "Patient", identifier="urn:seed|new")["total"] == 1


# --- identities and order ---------------------------------------------------------------------


def test_urn_uuid_references_become_literal(client: TestClient) -> None:
    patient_url = "urn:uuid:0b7c7c7e-8d7f-4b0e-9f55-5d9a1a3c2e01"
    encounter_url = "urn:uuid:0b7c7c7e-8d7f-4b0e-9f55-5d9a1a3c2e02"
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": patient_url},
    }
    # The Observation comes first: references resolve regardless of the entries' order.
    obs = {**observation(patient_url), "encounter": {"reference": encounter_url}}
    response = transaction(
        client,
        [
            post_entry(obs),
            post_entry(encounter, full_url=encounter_url),
            post_entry(patient(identifier="urn:uuid-test|1"), full_url=patient_url),
        ],
    )
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    obs_id, encounter_id, patient_id = (location_id(e) for e in entries)
    stored = client.get(f"/fhir/Observation/{obs_id}").json()
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["encounter"]["reference"] == f"Encounter/{encounter_id}"
    stored_encounter = client.get(f"/fhir/Encounter/{encounter_id}").json()
    assert stored_encounter["subject"]["reference"] == f"Patient/{patient_id}"


def binary_patch(operations: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON Patch in a bundle travels as a Binary (https://hl7.org/fhir/R4/http.html#patch)."""
    return {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(orjson.dumps(operations)).decode(),
    }


def test_entries_run_delete_post_put_patch_get(client: TestClient) -> None:
    for id in ("a", "b", "c"):
        put(client, patient(id, f"urn:order|{id}"))
    # Listed in the reverse of the processing order.
    entries: list[Entry] = [
        {"request": {"method": "GET", "url": "Patient?identifier=urn:order|new"}},
        {"request": {"method": "GET", "url": "Patient/c"}},
        {"request": {"method": "GET", "url": "Patient/b"}},
        {
            "resource": binary_patch([{"op": "add", "path": "/active", "value": True}]),
            "request": {"method": "PATCH", "url": "Patient/b"},
        },
        put_entry(patient("a", "urn:order|a", active=False)),
        post_entry(patient(identifier="urn:order|new")),
        {"request": {"method": "DELETE", "url": "Patient/c"}},
    ]
    response = transaction(client, entries)
    assert response.status_code == 200, response.text
    results = response.json()["entry"]
    statuses = [e["response"]["status"] for e in results]
    assert statuses == [
        "200 OK",
        "410 Gone",
        "200 OK",
        "200 OK",
        "200 OK",
        "201 Created",
        "204 No Content",
    ]
    # The GETs ran after every write: they see the new Patient, the delete and the patch.
    assert results[0]["resource"]["total"] == 1
    assert results[2]["resource"]["active"] is True
    assert results[2]["resource"]["meta"]["versionId"] == "2"
    # The system history lists this transaction's versions in the order they were written.
    history = client.get("/fhir/_history", params={"_count": "4"}).json()["entry"]
    methods = [e["request"]["method"] for e in reversed(history)]
    assert methods[:2] == ["DELETE", "POST"]
    assert sorted(methods[2:]) == ["PATCH", "PUT"]


def test_conditional_references_resolve(client: TestClient) -> None:
    target = create(client, patient(identifier="urn:cond|42"))
    create(client, patient(identifier="urn:cond|other"))
    response = transaction(client, [post_entry(observation("Patient?identifier=urn:cond|42"))])
    assert response.status_code == 200, response.text
    obs_id = location_id(response.json()["entry"][0])
    stored = client.get(f"/fhir/Observation/{obs_id}").json()
    assert stored["subject"]["reference"] == f"Patient/{target}"


@pytest.mark.parametrize("identifier", ["urn:cond|nobody", "urn:cond|twice"])
def test_conditional_reference_without_one_match_fails(client: TestClient, identifier: str) -> None:
    create(client, patient(identifier="urn:cond|twice"))
    create(client, patient(identifier="urn:cond|twice"))
    before = snapshot(client)
    reference = f"Patient?identifier={identifier}"
    response = transaction(client, [post_entry(observation(reference))])
    assert response.status_code == 412, response.text
    assert reference in response.json()["issue"][0]["diagnostics"]
    assert snapshot(client) == before


def test_if_none_exist_finds_the_existing_resource(client: TestClient) -> None:
    existing = create(client, patient(identifier="urn:ine|1"))
    first, second = (f"urn:uuid:5d1e0c4a-2b3f-4c6d-8e9f-0a1b2c3d4e5{i}" for i in (1, 2))
    response = transaction(
        client,
        [
            post_entry(patient(identifier="urn:ine|1"), first, ifNoneExist="identifier=urn:ine|1"),
            post_entry(patient(identifier="urn:ine|2"), second, ifNoneExist="identifier=urn:ine|2"),
            post_entry(observation(first, "about the existing patient")),
            post_entry(observation(second, "about the new patient")),
        ],
    )
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", *["201 Created"] * 3]
    assert location_id(entries[0]) == existing
    assert search(client, "Patient", identifier="urn:ine|1")["total"] == 1
    assert search(client, "Patient", identifier="urn:ine|2")["total"] == 1
    about_existing = client.get(f"/fhir/Observation/{location_id(entries[2])}").json()
    assert about_existing["subject"]["reference"] == f"Patient/{existing}"
    assert client.get(f"/fhir/Patient/{existing}").json()["meta"]["versionId"] == "1"
