"""Access control in the record core, through the in-process port with real principals, on
SQLite and PostgreSQL: relations decide what staff see, patients see their own record, scopes
narrow further, and forbidden answers look exactly like missing ones."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from compliance.principal import Principal, Role, system_principal
from compliance.scopes import parse_scopes
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse

SYSTEM = system_principal()


def call(
    record: RecordCore,
    principal: Principal | None,
    method: str,
    path: str,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
) -> FhirResponse:
    return record.handle(
        FhirRequest(
            method=method,
            path=path,
            query=query or [],
            headers={"content-type": "application/fhir+json"},
            body=orjson.dumps(body) if body is not None else b"",
            base="http://test/fhir",
            principal=principal,
        )
    )


def ok(response: FhirResponse, status: int = 200) -> Any:
    assert response.status == status, response.body[:400]
    return orjson.loads(response.body) if response.body else None


def create(
    record: RecordCore, resource: dict[str, Any], principal: Principal | None = SYSTEM
) -> str:
    return str(ok(call(record, principal, "POST", resource["resourceType"], resource), 201)["id"])


def doctor(org: str, practitioner: str, scope: str = "user/*.cruds") -> Principal:
    return Principal(
        subject=f"u-{practitioner}",
        client_id="doctor-app",
        scopes=parse_scopes(scope),
        roles=frozenset({Role.DOCTOR}),
        fhir_user=f"Practitioner/{practitioner}",
        organization=org,
    )


def patient_principal(patient: str, scope: str = "patient/*.rs") -> Principal:
    return Principal(
        subject=f"p-{patient}",
        client_id="patient-app",
        scopes=parse_scopes(scope),
        roles=frozenset({Role.PATIENT}),
        fhir_user=f"Patient/{patient}",
        patient=patient,
    )


@pytest.fixture
def world(record: RecordCore) -> dict[str, str]:
    """Two MVZs, a doctor in each, patient A managed by MVZ 1, patient B by MVZ 2, each with an
    Observation; a third practice that treats B through a referral."""
    ids: dict[str, str] = {}
    for name in ("mvz1", "mvz2", "mvz3"):
        ids[name] = create(record, {"resourceType": "Organization", "name": name})
    for name in ("docA", "docB", "docC"):
        ids[name] = create(record, {"resourceType": "Practitioner", "name": [{"family": name}]})
    for name, org in (("A", "mvz1"), ("B", "mvz2")):
        ids[name] = create(
            record,
            {
                "resourceType": "Patient",
                "name": [{"family": f"Patient{name}"}],
                "managingOrganization": {"reference": f"Organization/{ids[org]}"},
            },
        )
        ids[f"obs{name}"] = create(
            record,
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{ids[name]}"},
                "valueQuantity": {"value": 70 if name == "A" else 99, "unit": "/min"},
            },
        )
    return ids


def total(response: FhirResponse) -> int:
    return int(ok(response)["total"])


def entries(response: FhirResponse) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in ok(response).get("entry", [])
    }


def test_doctor_sees_own_mvz_patients_only(record: RecordCore, world: dict[str, str]) -> None:
    d1 = doctor(world["mvz1"], world["docA"])
    assert ok(call(record, d1, "GET", f"Patient/{world['A']}"))["id"] == world["A"]
    refused = call(record, d1, "GET", f"Patient/{world['B']}")
    missing = call(record, d1, "GET", "Patient/does-not-exist")
    assert refused.status == missing.status == 404
    # Identical shapes: only the id differs.
    assert refused.body.replace(world["B"].encode(), b"X") == missing.body.replace(
        b"does-not-exist", b"X"
    )
    assert total(call(record, d1, "GET", "Observation")) == 1
    assert entries(call(record, d1, "GET", "Observation")) == {f"Observation/{world['obsA']}"}
    assert total(call(record, d1, "GET", "Patient", query=[("_summary", "count")])) == 1


@pytest.mark.parametrize(
    "query",
    [
        [("subject:Patient.family", "PatientB")],
        [("_has:Observation:patient:value-quantity", "gt90")],
        [("_id", "{B}")],
    ],
)
def test_chains_and_has_never_reach_hidden_data(
    record: RecordCore, world: dict[str, str], query: list[tuple[str, str]]
) -> None:
    d1 = doctor(world["mvz1"], world["docA"])
    resolved = [(k, v.format(**world)) for k, v in query]
    rtype = "Observation" if query[0][0].startswith("subject") else "Patient"
    assert total(call(record, d1, "GET", rtype, query=resolved)) == 0
    # The system sees B's data through the same query: the restriction is what hides it.
    assert total(call(record, SYSTEM, "GET", rtype, query=resolved)) == 1


def test_includes_and_everything_are_filtered(record: RecordCore, world: dict[str, str]) -> None:
    d1 = doctor(world["mvz1"], world["docA"])
    found = entries(
        call(record, d1, "GET", "Observation", query=[("_include", "Observation:subject")])
    )
    assert found == {f"Observation/{world['obsA']}", f"Patient/{world['A']}"}
    revinc = entries(
        call(record, d1, "GET", "Patient", query=[("_revinclude", "Observation:subject")])
    )
    assert revinc == {f"Patient/{world['A']}", f"Observation/{world['obsA']}"}
    assert call(record, d1, "GET", f"Patient/{world['B']}/$everything").status == 404
    everything = entries(call(record, d1, "GET", f"Patient/{world['A']}/$everything"))
    assert f"Observation/{world['obsA']}" in everything
    assert not any(world["B"] in e or world["obsB"] in e for e in everything)
    lastn = entries(call(record, d1, "GET", "Observation/$lastn", query=[("code", "8867-4")]))
    assert lastn == {f"Observation/{world['obsA']}"}


def test_referral_grants_the_receiving_practice(record: RecordCore, world: dict[str, str]) -> None:
    d3 = doctor(world["mvz3"], world["docC"])
    assert call(record, d3, "GET", f"Patient/{world['B']}").status == 404
    referral = create(
        record,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{world['B']}"},
            "performer": [{"reference": f"Organization/{world['mvz3']}"}],
        },
    )
    assert ok(call(record, d3, "GET", f"Patient/{world['B']}"))["id"] == world["B"]
    assert total(call(record, d3, "GET", "Observation")) == 1
    # Completing the referral ends the relation.
    current = ok(call(record, SYSTEM, "GET", f"ServiceRequest/{referral}"))
    ok(
        call(
            record, SYSTEM, "PUT", f"ServiceRequest/{referral}", {**current, "status": "completed"}
        )
    )
    assert call(record, d3, "GET", f"Patient/{world['B']}").status == 404


def test_patient_sees_only_own_record(record: RecordCore, world: dict[str, str]) -> None:
    pa = patient_principal(world["A"])
    assert ok(call(record, pa, "GET", f"Patient/{world['A']}"))["id"] == world["A"]
    assert call(record, pa, "GET", f"Patient/{world['B']}").status == 404
    assert call(record, pa, "GET", f"Observation/{world['obsB']}").status == 404
    assert entries(call(record, pa, "GET", "Observation")) == {f"Observation/{world['obsA']}"}
    # Read-only: a patient cannot write observations, not even into their own record.
    new = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{world['A']}"},
    }
    assert call(record, pa, "POST", "Observation", new).status == 403
    # Type and system history would show other patients' versions: refused.
    assert call(record, pa, "GET", "Observation/_history").status == 403
    assert call(record, pa, "GET", "_history").status == 403
    assert len(ok(call(record, pa, "GET", f"Observation/{world['obsA']}/_history"))["entry"]) == 1
    assert call(record, pa, "GET", f"Observation/{world['obsB']}/_history").status == 404
    assert call(record, pa, "GET", f"Observation/{world['obsB']}/_history/1").status == 404


def test_scope_query_restriction_narrows(record: RecordCore, world: dict[str, str]) -> None:
    narrow = Principal(
        subject="station",
        client_id="station",
        scopes=parse_scopes("system/Observation.rs?category=laboratory system/Patient.rs"),
    )
    assert total(call(record, narrow, "GET", "Observation")) == 0
    assert call(record, narrow, "GET", f"Observation/{world['obsA']}").status == 404
    # Types outside the scopes are refused outright, also inside chains and _has.
    assert call(record, narrow, "GET", "Condition").status == 403
    chained = call(
        record, narrow, "GET", "Observation", query=[("encounter:Encounter.status", "x")]
    )
    assert chained.status == 403
    has = call(record, narrow, "GET", "Patient", query=[("_has:Condition:patient:code", "x")])
    assert has.status == 403
    include = [("_include", "Patient:organization:Organization")]
    assert call(record, narrow, "GET", "Patient", query=include).status == 403
    # Without a named target the included resources are results, not filters: left out.
    implied = call(record, narrow, "GET", "Patient", query=[("_include", "Patient:organization")])
    assert all(e.startswith("Patient/") for e in entries(implied))


def test_writes_stay_within_reach(record: RecordCore, world: dict[str, str]) -> None:
    d1 = doctor(world["mvz1"], world["docA"])
    for_b = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": f"Patient/{world['B']}"},
    }
    assert call(record, d1, "POST", "Observation", for_b).status == 403
    assert total(call(record, SYSTEM, "GET", "Observation")) == 2  # nothing was written
    # Updating or deleting B's observation: "not known", like a missing one.
    current = ok(call(record, SYSTEM, "GET", f"Observation/{world['obsB']}"))
    assert call(record, d1, "PUT", f"Observation/{world['obsB']}", current).status == 404
    assert call(record, d1, "DELETE", f"Observation/{world['obsB']}").status == 404
    # A new patient of the own MVZ is the doctor's at once (relations refresh in the write).
    mine = create(
        record,
        {
            "resourceType": "Patient",
            "managingOrganization": {"reference": f"Organization/{world['mvz1']}"},
        },
        d1,
    )
    assert ok(call(record, d1, "GET", f"Patient/{mine}"))["id"] == mine
    # A transaction with one forbidden entry writes nothing.
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**for_b, "subject": {"reference": f"Patient/{world['A']}"}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": for_b, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    assert call(record, d1, "POST", "", bundle).status == 403
    assert total(call(record, SYSTEM, "GET", "Observation")) == 2


def test_writes_to_unknown_ids_answer_like_hidden_ones(
    record: RecordCore, world: dict[str, str]
) -> None:
    """No update-as-create and no 204 for deleting nothing for callers who do not see every
    row: the answers for B's hidden Observation and an unused id would tell them apart."""
    d1 = doctor(world["mvz1"], world["docA"])
    own = ok(call(record, SYSTEM, "GET", f"Observation/{world['obsA']}"))  # within reach
    answers = {}
    for id in (world["obsB"], "unused-id"):
        body = {**own, "id": id}
        put = call(record, d1, "PUT", f"Observation/{id}", body)
        deleted = call(record, d1, "DELETE", f"Observation/{id}")
        answers[id] = [(r.status, r.body.replace(id.encode(), b"<id>")) for r in (put, deleted)]
    assert answers[world["obsB"]] == answers["unused-id"]
    assert [status for status, _ in answers["unused-id"]] == [404, 404]
    # A deleted resource is not known to them either (no re-creation by PUT).
    ok(call(record, d1, "DELETE", f"Observation/{world['obsA']}"), 204)
    assert call(record, d1, "DELETE", f"Observation/{world['obsA']}").status == 404
    assert call(record, d1, "PUT", f"Observation/{world['obsA']}", own).status == 404
    # An id the server assigns is new by construction: a conditional update without a match
    # creates; the system (sees every row) still has update-as-create.
    fresh = {k: v for k, v in own.items() if k not in ("id", "meta")}
    created = call(record, d1, "PUT", "Observation", fresh, [("identifier", "urn:x|none")])
    assert ok(created, 201)["subject"] == own["subject"]
    ok(call(record, SYSTEM, "PUT", "Observation/system-made", {**fresh, "id": "system-made"}), 201)


def test_audit_events_are_read_only(record: RecordCore, world: dict[str, str]) -> None:
    event = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "x"}}],
        "source": {"observer": {"display": "x"}},
    }
    assert call(record, SYSTEM, "POST", "AuditEvent", event).status == 403


def test_break_the_glass_is_personal_and_time_limited(
    record: RecordCore, world: dict[str, str], clock: Any
) -> None:
    d1 = doctor(world["mvz1"], world["docA"])
    colleague = doctor(world["mvz1"], "someone-else")
    reason = {
        "resourceType": "Parameters",
        "parameter": [{"name": "reason", "valueString": "Bewusstlos in der Notaufnahme"}],
    }
    assert call(record, d1, "POST", f"Patient/{world['B']}/$break-glass", {}).status == 400
    ok(call(record, d1, "POST", f"Patient/{world['B']}/$break-glass", reason))
    assert ok(call(record, d1, "GET", f"Patient/{world['B']}"))["id"] == world["B"]
    assert call(record, colleague, "GET", f"Patient/{world['B']}").status == 404
    clock.now += 61 * 60 * 1_000_000
    assert call(record, d1, "GET", f"Patient/{world['B']}").status == 404
    nurse = Principal(
        subject="n",
        client_id="x",
        scopes=parse_scopes("user/*.cruds"),
        roles=frozenset({Role.CARE_STAFF}),
        organization=world["mvz1"],
    )
    assert call(record, nurse, "POST", f"Patient/{world['B']}/$break-glass", reason).status == 403
