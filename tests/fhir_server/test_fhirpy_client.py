"""A third-party FHIR client (fhirpy, https://github.com/beda-software/fhir-py) against a real server.

https://hl7.org/fhir/R4/http.html — fhirpy sends ``application/json`` bodies, reads ids and versions
from the returned resources, follows ``next`` links for ``fetch_all`` and maps 404/410 to
``ResourceNotFound`` and other errors to ``OperationOutcome``. Runs the ``server`` fixture (a
``medikus serve`` process) on SQLite and PostgreSQL; about 20 s.

Not used here: ``SearchSet.count()`` sends Aidbox's ``_totalMethod=count``, which this server, strict
about unknown search parameters, refuses; ``limit(0).fetch_raw()["total"]`` is the portable way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.conftest import ServerProcess

LOINC = "http://loinc.org"
SYSTEM = "urn:oid:1.2.276.0.76.4.8"  # a KVNR-like identifier system


@pytest.fixture
def fhir(server: ServerProcess) -> SyncFHIRClient:
    return SyncFHIRClient(
        f"{server.base}/fhir",
        authorization=f"Bearer {server.auth.value()}",
        requests_config={"timeout": 30},
    )


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """Plain HTTP next to fhirpy, for what it does not expose (headers, vread)."""
    with httpx.Client(base_url=f"{server.base}/fhir", timeout=30, auth=server.auth) as client:
        yield client


def new_patient(fhir: SyncFHIRClient, value: str, family: str, birth_date: str) -> Any:
    patient = fhir.resource(
        "Patient",
        identifier=[{"system": SYSTEM, "value": value}],
        name=[{"family": family, "given": ["Anna"]}],
        birthDate=birth_date,
        gender="female",
    )
    patient.save()
    return patient


def new_heart_rate(fhir: SyncFHIRClient, patient: Any, when: str, bpm: int) -> Any:
    observation = fhir.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        subject=patient.to_reference(),
        effectiveDateTime=when,
        valueQuantity={"value": bpm, "unit": "/min", "system": "http://unitsofmeasure.org"},
    )
    observation.save()
    return observation


def test_create_read_update_delete(fhir: SyncFHIRClient, http: httpx.Client) -> None:
    patient = new_patient(fhir, "A123456789", "Müller", "1980-02-03")
    assert patient.id and patient["meta"]["versionId"] == "1"
    observation = new_heart_rate(fhir, patient, "2026-01-02T10:00:00Z", 72)
    assert observation["subject"]["reference"] == f"Patient/{patient.id}"

    read = fhir.reference("Patient", patient.id).to_resource()
    assert read["name"][0]["family"] == "Müller"
    assert read["identifier"] == [{"system": SYSTEM, "value": "A123456789"}]
    assert fhir.get("Observation", observation.id)["valueQuantity"]["value"] == 72

    patient["active"] = True
    patient.save()  # a PUT now that it has an id
    assert patient["meta"]["versionId"] == "2"
    current = http.get(f"/Patient/{patient.id}")
    assert current.headers["etag"] == 'W/"2"'
    assert current.json()["active"] is True
    first = http.get(f"/Patient/{patient.id}/_history/1")
    assert first.status_code == 200 and "active" not in first.json()

    observation.delete()
    patient.delete()
    with pytest.raises(ResourceNotFound) as gone:  # 410 Gone
        fhir.get("Patient", patient.id)
    assert '"deleted"' in str(gone.value)
    with pytest.raises(ResourceNotFound) as unknown:  # 404 Not Found
        fhir.reference("Patient", "never-created").to_resource()
    assert '"not-found"' in str(unknown.value)
    assert fhir.resources("Patient").search(_id=patient.id).fetch() == []


def test_search_and_paging(fhir: SyncFHIRClient) -> None:
    anna = new_patient(fhir, "B1", "Schäfer", "1975-06-01")
    others = [new_patient(fhir, f"B{n}", f"Weber{n}", f"199{n}-01-01") for n in range(2, 6)]
    for day, bpm in ((1, 60), (2, 80), (3, 100)):
        new_heart_rate(fhir, anna, f"2026-01-0{day}T08:00:00Z", bpm)

    patients = fhir.resources("Patient")
    assert [p.id for p in patients.search(identifier=f"{SYSTEM}|B1").fetch()] == [anna.id]
    assert patients.search(identifier="B1").get().id == anna.id
    assert [p.id for p in patients.search(name="schafer").fetch()] == [anna.id]  # accents ignored
    assert {p.id for p in patients.search(birthdate__ge="1990-01-01").fetch()} == {
        p.id for p in others
    }
    assert patients.search(family="Nobody").first() is None

    observations = fhir.resources("Observation")
    assert len(observations.search(subject=anna).fetch()) == 3
    assert len(observations.search(patient=anna.id, code=f"{LOINC}|8867-4").fetch()) == 3
    later = observations.search(subject=anna, date__ge="2026-01-02").fetch()
    assert sorted(o["valueQuantity"]["value"] for o in later) == [80, 100]

    # fetch_all follows the server's next links: 5 patients in pages of 2, none twice.
    everyone = patients.search(identifier=f"{SYSTEM}|").limit(2).fetch_all()
    assert sorted(p.id for p in everyone) == sorted([anna.id, *(p.id for p in others)])
    page = patients.limit(2).fetch_raw()
    assert page["total"] == 5 and len(page["entry"]) == 2
    assert any(link["relation"] == "next" for link in page["link"])
    assert patients.limit(0).fetch_raw()["total"] == 5


def test_errors_arrive_as_operation_outcomes(fhir: SyncFHIRClient) -> None:
    invalid = fhir.resource("Patient", birthDate="3rd of May")
    assert invalid.is_valid() is False  # $validate
    assert fhir.resource("Patient", birthDate="1980-05-03").is_valid() is True
    with pytest.raises(OperationOutcome) as refused:
        invalid.save()
    issues = refused.value.resource["issue"]
    assert issues[0]["severity"] == "error"
    assert any("birthDate" in issue["diagnostics"] for issue in issues)

    dangling = fhir.resource(
        "Observation",
        status="final",
        code={"text": "x"},
        subject={"reference": "Patient/not-there"},
    )
    with pytest.raises(OperationOutcome) as unresolved:
        dangling.save()
    assert "Patient/not-there" in unresolved.value.resource["issue"][0]["diagnostics"]

    # fhirpy's patch() sends a JSON merge document; the server takes only JSON Patch (RFC 6902).
    patient = new_patient(fhir, "C1", "Becker", "1960-01-01")
    with pytest.raises(OperationOutcome) as unsupported:
        patient.patch(active=False)
    assert unsupported.value.resource["issue"][0]["code"] == "not-supported"
    with pytest.raises(ResourceNotFound):
        fhir.resources("Patient").search(identifier="nobody").get()


def test_count_zero_page_has_no_next_link(fhir: SyncFHIRClient) -> None:
    new_patient(fhir, "D1", "Wagner", "1970-01-01")
    bundle = fhir.resources("Patient").limit(0).fetch_raw()
    assert bundle["total"] == 1
    assert [link["relation"] for link in bundle["link"]] == ["self"]
