"""Decimals keep their digits through every interaction (https://hl7.org/fhir/R4/datatypes.html#decimal).

"70.000" is not "70.0": the response bytes must hold each number as the client wrote it
(https://hl7.org/fhir/R4/json.html#primitive), and quantity search must still find it.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import orjson
from fastapi.testclient import TestClient
from httpx import Response

from fhir_server.fhir_json import JsonDecimal, dumps

FHIR = {"Content-Type": "application/fhir+json"}
REPRESENTATION = {**FHIR, "Prefer": "return=representation"}
# Each number text, as the component value that carries it.
TEXTS = ("1.710", "0.00095", "16.0", "1200", "3.14159265358979323846", "1.0e2")
WEIGHT = b'"valueQuantity":{"value":70.000,'


def number(text: str) -> Any:
    return int(text) if text.isdigit() else JsonDecimal.parse(text)


def quantity(text: str) -> dict[str, Any]:
    return {
        "value": number(text),
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }


def observation(patient: str, weight: str = "70.000") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": quantity(weight),
        "component": [
            {"code": {"text": f"c{i}"}, "valueQuantity": quantity(text)}
            for i, text in enumerate(TEXTS)
        ],
    }


def send(client: TestClient, method: str, path: str, body: Any, **headers: str) -> Response:
    content = body if isinstance(body, bytes) else dumps(body)
    response: Response = client.request(
        method, f"/fhir/{path}", content=content, headers={**FHIR, **headers}
    )
    return response


def assert_exact(content: bytes, weight: str = "70.000") -> None:
    assert f'"valueQuantity":{{"value":{weight},'.encode() in content, content[:400]
    for text in TEXTS:
        assert f'"value":{text},'.encode() in content, (text, content[:400])


def new_patient(client: TestClient) -> str:
    created = send(client, "POST", "Patient", {"resourceType": "Patient", "active": True})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def create(client: TestClient) -> tuple[str, str, Response]:
    patient = new_patient(client)
    created = send(client, "POST", "Observation", observation(patient))
    assert created.status_code == 201, created.text
    return patient, str(created.json()["id"]), created


def test_create_read_vread_keep_every_digit(client: TestClient) -> None:
    _, id, created = create(client)
    assert_exact(created.content)
    read = client.get(f"/fhir/Observation/{id}")
    assert read.content == created.content
    vread = client.get(f"/fhir/Observation/{id}/_history/1")
    assert vread.content == created.content


def test_update_and_history_keep_every_digit(client: TestClient) -> None:
    patient, id, _ = create(client)
    changed = {**observation(patient, "70.010"), "id": id}
    updated = send(client, "PUT", f"Observation/{id}", changed)
    assert updated.status_code == 200, updated.text
    assert_exact(updated.content, "70.010")
    history = client.get(f"/fhir/Observation/{id}/_history")
    assert history.status_code == 200
    assert_exact(history.content, "70.010")
    assert WEIGHT in history.content  # version 1


def test_patch_writes_the_patch_values_exactly(client: TestClient) -> None:
    _, id, _ = create(client)
    operations = b'[{"op":"replace","path":"/valueQuantity/value","value":71.500},' + (
        b'{"op":"add","path":"/referenceRange","value":[{"low":{"value":70.000}}]}]'
    )
    patched = send(
        client,
        "PATCH",
        f"Observation/{id}",
        operations,
        **{"Content-Type": "application/json-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert_exact(patched.content, "71.500")  # the other decimals of the stored version too
    assert b'"low":{"value":70.000}' in patched.content


def test_patch_entry_in_a_transaction_keeps_digits(client: TestClient) -> None:
    _, id, _ = create(client)
    patch = b'[{"op":"replace","path":"/valueQuantity/value","value":69.900}]'
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json"}
    entry = {
        "resource": {**binary, "data": base64.b64encode(patch).decode()},
        "request": {"method": "PATCH", "url": f"Observation/{id}"},
    }
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    response = send(client, "POST", "", bundle)
    assert response.status_code == 200, response.text
    assert_exact(client.get(f"/fhir/Observation/{id}").content, "69.900")


def test_search_results_and_subsets_keep_every_digit(client: TestClient) -> None:
    patient, _, _ = create(client)
    for query in ("", "&_summary=data", "&_elements=valueQuantity,component"):
        found = client.get(f"/fhir/Observation?subject=Patient/{patient}{query}")
        assert found.status_code == 200, found.text
        assert found.json()["total"] == 1
        assert_exact(found.content)


def test_everything_keeps_every_digit(client: TestClient) -> None:
    patient, _, _ = create(client)
    everything = client.get(f"/fhir/Patient/{patient}/$everything")
    assert everything.status_code == 200, everything.text
    assert_exact(everything.content)


def test_transaction_and_batch_keep_every_digit(client: TestClient) -> None:
    patient = new_patient(client)
    for kind in ("transaction", "batch"):
        entry = {
            "resource": observation(patient),
            "request": {"method": "POST", "url": "Observation"},
        }
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [entry, entry]}
        response = send(client, "POST", "", bundle, Prefer="return=representation")
        assert response.status_code == 200, response.text
        entries = response.json()["entry"]
        assert [e["response"]["status"] for e in entries] == ["201 Created"] * 2
        assert response.content.count(WEIGHT) == 2
        for e in entries:
            assert_exact(client.get(f"/fhir/Observation/{e['resource']['id']}").content)


def test_pretty_printed_body_keeps_digits(client: TestClient) -> None:
    patient = new_patient(client)
    pretty = orjson.dumps(orjson.loads(dumps(observation(patient))), option=orjson.OPT_INDENT_2)
    body = pretty.replace(b'"value": 70.0,', b'"value": 70.000 ,')  # orjson wrote 70.0
    assert b"70.000 ," in body
    created = send(client, "POST", "Observation", body)
    assert created.status_code == 201, created.text
    assert WEIGHT in created.content


def test_quantity_search_finds_precise_values(client: TestClient) -> None:
    patient, id, _ = create(client)
    other = send(client, "POST", "Observation", observation(patient, "70.0005"))
    assert other.status_code == 201, other.text
    other_id = other.json()["id"]

    def ids(criteria: str) -> set[str]:
        found = client.get(f"/fhir/Observation?subject=Patient/{patient}&{criteria}")
        assert found.status_code == 200, found.text
        return {e["resource"]["id"] for e in found.json().get("entry", [])}

    both = {id, other_id}
    assert ids("value-quantity=70") == both
    assert ids("value-quantity=70|http://unitsofmeasure.org|kg") == both
    assert ids("value-quantity=70.000") == {id}  # 69.9995 ≤ v < 70.0005
    assert ids("value-quantity=ge70") == both
    assert ids("value-quantity=gt70") == {other_id}
    assert ids("value-quantity=le70") == {id}
    assert ids("value-quantity=lt70.0005") == {id}
    assert ids("component-value-quantity=1.71") == both
    assert ids("component-value-quantity=gt3.14159265358979") == both
    assert ids("component-value-quantity=ge1201") == set()


def test_decimals_in_non_decimal_elements_are_still_refused(client: TestClient) -> None:
    for body in (
        b'{"resourceType":"Patient","active":1.00}',
        b'{"resourceType":"Patient","multipleBirthInteger":2.0e0}',
    ):
        refused = send(client, "POST", "Patient", body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_malformed_bodies_with_precise_numbers_are_400(client: TestClient) -> None:
    for body in (
        b'{"resourceType":"Patient","x":70.000,"name":[{"family":"\\ud800"}]}',
        b'{"resourceType":"Patient","x":70.000,"active":NaN}',
        b'{"resourceType":"Patient","x":1.0e400}',
        b'{"resourceType":"Patient","extension":' + b"[" * 990 + b"1.50" + b"]" * 990 + b"}",
    ):
        refused = send(client, "POST", "Patient", body)
        assert refused.status_code == 400, (body[:60], refused.text)


def test_sent_decimal_equals_stored_value(client: TestClient) -> None:
    _, id, _ = create(client)
    stored = client.get(f"/fhir/Observation/{id}").json(parse_float=Decimal)
    assert stored["valueQuantity"]["value"] == Decimal("70.000")
    assert str(stored["component"][4]["valueQuantity"]["value"]) == "3.14159265358979323846"
