"""The core REST interactions (https://hl7.org/fhir/R4/http.html) on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from httpx import Response

FHIR = {"Content-Type": "application/fhir+json"}


def post(client: TestClient, path: str, body: Any, **headers: str) -> Response:
    response: Response = client.post(
        f"/fhir/{path}", content=orjson.dumps(body), headers={**FHIR, **headers}
    )
    return response


def put(client: TestClient, path: str, body: Any, **headers: str) -> Response:
    response: Response = client.put(
        f"/fhir/{path}", content=orjson.dumps(body), headers={**FHIR, **headers}
    )
    return response


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Schäfer", "given": ["Elke"]}], **extra}


def outcome(response: Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return str(body["issue"][0]["diagnostics"])


def test_create_assigns_id_version_and_headers(client: TestClient) -> None:
    response = post(client, "Patient", patient(id="client-chosen"))
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert "last-modified" in response.headers


def test_read_serves_exactly_the_stored_json(client: TestClient) -> None:
    created = post(client, "Patient", patient(gender="female"))
    read = client.get(f"/fhir/Patient/{created.json()['id']}")
    assert read.status_code == 200
    assert read.content == created.content
    assert read.headers["etag"] == 'W/"1"'


def test_update_as_create_keeps_client_id_then_versions(client: TestClient) -> None:
    first = put(client, "Patient/p-1", patient(id="p-1"))
    assert first.status_code == 201
    second = put(client, "Patient/p-1", patient(id="p-1", active=True))
    assert second.status_code == 200
    assert second.json()["meta"]["versionId"] == "2"
    old = client.get("/fhir/Patient/p-1/_history/1")
    assert old.status_code == 200
    assert "active" not in old.json()
    assert client.get("/fhir/Patient/p-1/_history/3").status_code == 404


def test_update_refuses_id_mismatch(client: TestClient) -> None:
    response = put(client, "Patient/p-1", patient(id="p-2"))
    assert response.status_code == 400
    assert "does not match" in outcome(response)


def test_if_match_stale_gives_412_and_changes_nothing(client: TestClient) -> None:
    put(client, "Patient/p", patient(id="p"))
    put(client, "Patient/p", patient(id="p", active=True), **{"If-Match": 'W/"1"'})
    stale = put(client, "Patient/p", patient(id="p", active=False), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "version 2" in outcome(stale)
    assert client.get("/fhir/Patient/p").json()["active"] is True


def test_delete_then_read_is_gone_and_history_keeps_the_original(client: TestClient) -> None:
    put(client, "Patient/p", patient(id="p"))
    assert client.delete("/fhir/Patient/p").status_code == 204
    gone = client.get("/fhir/Patient/p")
    assert gone.status_code == 410
    assert "deleted" in outcome(gone)
    assert client.get("/fhir/Patient/p/_history/1").status_code == 200
    assert client.delete("/fhir/Patient/p").status_code == 204  # idempotent
    history = client.get("/fhir/Patient/p/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT"]
    recreated = put(client, "Patient/p", patient(id="p"))
    assert recreated.status_code == 201
    assert recreated.json()["meta"]["versionId"] == "3"


def test_conditional_read(client: TestClient) -> None:
    put(client, "Patient/p", patient(id="p"))
    same = client.get("/fhir/Patient/p", headers={"If-None-Match": 'W/"1"'})
    assert same.status_code == 304
    assert client.get("/fhir/Patient/p", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    modified = client.get("/fhir/Patient/p").headers["last-modified"]
    assert client.get("/fhir/Patient/p", headers={"If-Modified-Since": modified}).status_code == 304
    early = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert client.get("/fhir/Patient/p", headers={"If-Modified-Since": early}).status_code == 200


@pytest.mark.parametrize(
    ("prefer", "kind"),
    [
        ("return=minimal", None),
        ("return=representation", "Patient"),
        ("return=OperationOutcome", "OperationOutcome"),
    ],
)
def test_prefer_return(client: TestClient, prefer: str, kind: str | None) -> None:
    response = post(client, "Patient", patient(), Prefer=prefer)
    assert response.status_code == 201
    assert "location" in response.headers
    if kind is None:
        assert response.content == b""
    else:
        assert response.json()["resourceType"] == kind


def test_json_patch(client: TestClient) -> None:
    put(client, "Patient/p", patient(id="p"))
    ops = [
        {"op": "replace", "path": "/name/0/family", "value": "Becker"},
        {"op": "add", "path": "/active", "value": True},
    ]
    headers = {"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'}
    response = client.patch("/fhir/Patient/p", content=orjson.dumps(ops), headers=headers)
    assert response.status_code == 200
    assert response.json()["name"][0]["family"] == "Becker"
    assert response.json()["meta"]["versionId"] == "2"
    stale = client.patch("/fhir/Patient/p", content=orjson.dumps(ops), headers=headers)
    assert stale.status_code == 412
    invalid = [{"op": "add", "path": "/birthDate", "value": "not a date"}]
    id_change = [{"op": "replace", "path": "/id", "value": "other"}]
    for refused in (invalid, id_change):
        bad = client.patch(
            "/fhir/Patient/p",
            content=orjson.dumps(refused),
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert bad.status_code == 422
    assert client.get("/fhir/Patient/p").json()["meta"]["versionId"] == "2"


def test_conditional_create(client: TestClient) -> None:
    body = patient(identifier=[{"system": "urn:kvid", "value": "A123456789"}])
    first = post(client, "Patient", body, **{"If-None-Exist": "identifier=urn:kvid|A123456789"})
    assert first.status_code == 201
    again = post(client, "Patient", body, **{"If-None-Exist": "identifier=urn:kvid|A123456789"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    post(client, "Patient", body)
    many = post(client, "Patient", body, **{"If-None-Exist": "identifier=urn:kvid|A123456789"})
    assert many.status_code == 412


def test_conditional_update_rules(client: TestClient) -> None:
    ident = {"identifier": [{"system": "urn:kvid", "value": "B1"}]}
    created = put(client, "Patient?identifier=urn:kvid|B1", patient(**ident))
    assert created.status_code == 201  # no match, no id: create
    pid = created.json()["id"]
    updated = put(client, "Patient?identifier=urn:kvid|B1", patient(**ident, active=True))
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    wrong_id = put(client, "Patient?identifier=urn:kvid|B1", patient(id="other", **ident))
    assert wrong_id.status_code == 400
    post(client, "Patient", patient(**ident))
    assert put(client, "Patient?identifier=urn:kvid|B1", patient(**ident)).status_code == 412


def test_conditional_delete_rules(client: TestClient) -> None:
    assert client.delete("/fhir/Patient?identifier=urn:x|none").status_code == 204
    put(client, "Patient/a", patient(id="a", identifier=[{"system": "urn:x", "value": "1"}]))
    assert client.delete("/fhir/Patient?identifier=urn:x|1").status_code == 204
    assert client.get("/fhir/Patient/a").status_code == 410
    for pid in ("b", "c"):
        put(
            client,
            f"Patient/{pid}",
            patient(id=pid, identifier=[{"system": "urn:x", "value": "2"}]),
        )
    assert client.delete("/fhir/Patient?identifier=urn:x|2").status_code == 412
    assert client.get("/fhir/Patient/b").status_code == 200


def test_references_must_resolve(client: TestClient) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Puls"},
        "subject": {"reference": "Patient/missing"},
    }
    response = post(client, "Observation", obs)
    assert response.status_code == 422
    assert "Patient/missing" in outcome(response)
    put(client, "Patient/missing", patient(id="missing"))
    assert post(client, "Observation", obs).status_code == 201
    dangling = {**obs, "subject": {"reference": "urn:uuid:0b7b1c36-0b52-4f5e-9d89-6f1f4d1c0000"}}
    assert post(client, "Observation", dangling).status_code == 422


def test_history_levels_since_and_paging(client: TestClient) -> None:
    for i in range(5):
        put(client, f"Patient/h{i}", patient(id=f"h{i}"))
    put(client, "Patient/h0", patient(id="h0", active=True))
    system = client.get("/fhir/_history").json()
    assert system["type"] == "history"
    assert len(system["entry"]) == 6
    page = client.get("/fhir/Patient/_history", params={"_count": "2"}).json()
    seen = [e["resource"]["id"] + "/" + e["resource"]["meta"]["versionId"] for e in page["entry"]]
    while next_link := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        put(client, "Patient/late", patient(id="late"))  # writes during paging do not disturb it
        page = client.get(next_link[0].removeprefix("http://testserver")).json()
        seen += [
            e["resource"]["id"] + "/" + e["resource"]["meta"]["versionId"] for e in page["entry"]
        ]
    assert seen == ["h0/2", "h4/1", "h3/1", "h2/1", "h1/1", "h0/1"]
    since = system["entry"][0]["resource"]["meta"]["lastUpdated"]
    recent = client.get("/fhir/Patient/h0/_history", params={"_since": since}).json()
    assert [e["resource"]["meta"]["versionId"] for e in recent["entry"]] == ["2"]
    assert client.get("/fhir/Patient/h0/_history", params={"_bogus": "1"}).status_code == 400
    assert client.get("/fhir/Patient/nobody/_history").status_code == 404


def test_history_at(client: TestClient) -> None:
    put(client, "Patient/a", patient(id="a"))
    between = client.get("/fhir/Patient/a").json()["meta"]["lastUpdated"]
    put(client, "Patient/a", patient(id="a", active=True))
    at = client.get("/fhir/Patient/_history", params={"_at": between}).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["1"]


def test_validate_operation(client: TestClient) -> None:
    ok = post(client, "Patient/$validate", patient())
    assert ok.status_code == 200
    assert ok.json()["issue"][0]["severity"] == "information"
    bad = post(client, "Patient/$validate", patient(birthDate="1990-13-01"))
    assert bad.status_code == 200
    assert any(
        i["severity"] == "error" and "birthDate" in i["diagnostics"] for i in bad.json()["issue"]
    )
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": patient(foo=1)}],
    }
    unknown = post(client, "Patient/$validate", params)
    assert any("foo" in i.get("expression", [""])[0] for i in unknown.json()["issue"])
    assert client.get("/fhir/Patient").status_code == 200
    assert client.get("/fhir/Patient").json()["total"] == 0  # $validate stored nothing


def test_capability_statement_lists_what_is_implemented(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert "Patient" in types and "MedicinalProduct" not in types and "Evidence" not in types
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    patient_caps = types["Patient"]
    assert {"read", "vread", "update", "patch", "delete", "create"} <= {
        i["code"] for i in patient_caps["interaction"]
    }
    assert patient_caps["operation"] == [
        {
            "name": "validate",
            "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        },
        {
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        },
        {
            "name": "record-export",
            "definition": "https://medi-kus.de/fhir/OperationDefinition/Patient-record-export",
        },
        {
            "name": "break-glass",
            "definition": "https://medi-kus.de/fhir/OperationDefinition/Patient-break-glass",
        },
    ]
    assert "identifier" in {p["name"] for p in patient_caps["searchParam"]}


def test_errors_are_operation_outcomes(client: TestClient) -> None:
    assert client.get("/fhir/Patient/bad id!").status_code in (400, 404)
    assert client.get("/fhir/NoSuchType/1").status_code == 404
    refused = post(client, "MedicinalProduct", {"resourceType": "MedicinalProduct"})
    assert refused.status_code == 404
    assert "MedicinalProduct" in outcome(refused)
    wrong_type = client.post(
        "/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/xml"}
    )
    assert wrong_type.status_code == 415
    assert client.post("/fhir/Patient", content=b"{", headers=FHIR).status_code == 400
    mismatch = post(client, "Patient", {"resourceType": "Observation"})
    assert mismatch.status_code == 400
    assert client.request("PUT", "/fhir/_history").status_code == 405
    too_big = post(
        client, "Patient", patient(text={"status": "generated", "div": "x" * (3 * 1024 * 1024)})
    )
    assert too_big.status_code == 413
    for response in (refused, wrong_type, mismatch, too_big):
        outcome(response)


def test_search_by_token_string_and_reference(client: TestClient) -> None:
    put(client, "Patient/p", patient(id="p", identifier=[{"system": "urn:kvid", "value": "X1"}]))
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "effectiveDateTime": "2026-03-04T10:00:00+01:00",
    }
    post(client, "Observation", obs)

    def total(query: str) -> int:
        response = client.get(f"/fhir/{query}")
        assert response.status_code == 200, response.text
        return int(response.json()["total"])

    assert total("Patient?identifier=urn:kvid|X1") == 1
    assert total("Patient?identifier=X1") == 1
    assert total("Patient?identifier=urn:other|X1") == 0
    assert total("Patient?name=schaf") == 1  # case and accents ignored
    assert total("Patient?name:exact=Schäfer") == 1
    assert total("Patient?name:exact=schäfer") == 0
    assert total("Observation?subject=Patient/p") == 1
    assert total("Observation?code=http://loinc.org|8867-4&date=2026-03") == 1
    assert total("Observation?date=gt2026-03-05") == 0
    assert client.get("/fhir/Patient?nonsense=1").status_code == 400
