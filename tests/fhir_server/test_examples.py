"""The 302 official FHIR R4 examples round-trip through create/read (https://hl7.org/fhir/R4/http.html#create).

Every example that the R4B models can validate is stored and read back unchanged apart from the
server's ``id``, ``meta.versionId`` and ``meta.lastUpdated``; the R4-only types, Evidence (whose
shape R4B changed) and Parameters (no RESTful endpoint, https://hl7.org/fhir/R4/parameters.html)
are refused with an OperationOutcome that names the type, and leave nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.core import RecordCore
from medikus.app import create_app

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "fhir-r4-examples"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
SERVER_META = ("versionId", "lastUpdated")

# Types R4B dropped, and Evidence whose structure R4B changed: the server says why it refuses them.
R4_ONLY = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProductAuthorization",
        "MedicinalProductIndication",
        "MedicinalProductInteraction",
        "MedicinalProductPackaged",
        "MedicinalProductUndesirableEffect",
        "SubstanceSpecification",
    }
)
REASONS = {"Evidence": "changed incompatibly", **dict.fromkeys(R4_ONLY, "does not exist after R4")}
# Parameters only carries operation in- and output; R4 gives it no RESTful endpoint.
NO_ENDPOINT = frozenset({"Parameters"})
# A client may not set a Subscription's status to error: the server does (subscription.html#status).
SERVER_STATUS = {"subscription-example-error.json": "set by the server"}
EXPECTED_STORED = 290
EXPECTED_REFUSED = (
    12  # 10 R4-only/Evidence examples (3 of them SubstanceSpecification) + Parameters + 1 above
)

# Examples PUT with their own id (update as create, http.html#upsert).
CLIENT_ID_EXAMPLES = (
    "patient-example.json",
    "organization-example.json",
    "binary-example.json",
    "bundle-example.json",
    "questionnaire-profile-example-ussg-fht.json",
)


@dataclass(frozen=True)
class Example:
    path: Path
    raw: bytes
    resource: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.resource["resourceType"])


def load_examples() -> list[Example]:
    examples = []
    for path in sorted(EXAMPLES.glob("*.json")):
        raw = path.read_bytes()
        examples.append(Example(path, raw, json.loads(raw)))
    return examples


@pytest.fixture
def lenient_client(record: RecordCore) -> Iterator[TestClient]:
    """The examples reference resources that are not on this server: do not enforce references."""
    app = create_app(record=record.with_settings(enforce_references=False))
    with TestClient(app, base_url="http://testserver") as client:
        yield client


def without_server_fields(resource: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the resource without id and meta, its meta without the elements the server sets)."""
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in SERVER_META}
    return body, meta


def check_stored(client: TestClient, example: Example, location: str) -> list[str]:
    """Reads the created resource back; returns what differs from the example."""
    path = location.split("/fhir/", 1)[1].split("/_history/")[0]
    response = client.get(f"/fhir/{path}")
    if response.status_code != 200:
        return [f"{example.path.name}: read {path} gave {response.status_code}"]
    stored = response.json()
    problems = []
    if f"{stored['resourceType']}/{stored['id']}" != path:
        problems.append(f"{example.path.name}: read {path} returned {stored['id']}")
    if stored["meta"].get("versionId") != "1" or "lastUpdated" not in stored["meta"]:
        problems.append(f"{example.path.name}: meta lacks versionId 1 / lastUpdated")
    if without_server_fields(stored) != without_server_fields(example.resource):
        problems.append(f"{example.path.name}: the stored content differs from the example")
    return problems


def check_refused(example: Example, status: int, outcome: dict[str, Any]) -> list[str]:
    name = example.path.name
    diagnostics = " ".join(i.get("diagnostics", "") for i in outcome.get("issue", []))
    problems = []
    if status != 404 or outcome.get("resourceType") != "OperationOutcome":
        problems.append(f"{name}: refused with {status} {outcome.get('resourceType')}")
    if example.type not in diagnostics:
        problems.append(f"{name}: the diagnostics do not name {example.type}: {diagnostics!r}")
    reason = REASONS.get(example.type)
    if reason is not None and reason not in diagnostics:
        problems.append(f"{name}: the diagnostics do not say {reason!r}: {diagnostics!r}")
    return problems


def system_history(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/fhir/_history", params={"_count": "1000"})
    assert response.status_code == 200
    bundle = response.json()
    assert not [link for link in bundle["link"] if link["relation"] == "next"]
    entries: list[dict[str, Any]] = bundle["entry"]
    return entries


def test_every_example_is_stored_or_refused(lenient_client: TestClient) -> None:
    examples = load_examples()
    assert len(examples) == 302
    stored, refused, problems = 0, set(), []
    for example in examples:
        response = lenient_client.post(
            f"/fhir/{example.type}", content=example.raw, headers=FHIR_JSON
        )
        if example.path.name in SERVER_STATUS:
            refused.add(example.path.name)
            if response.status_code != 422 or SERVER_STATUS[example.path.name] not in response.text:
                problems.append(f"{example.path.name}: {response.status_code} {response.text}")
        elif example.type in REASONS or example.type in NO_ENDPOINT:
            refused.add(example.path.name)
            problems += check_refused(example, response.status_code, response.json())
        elif response.status_code != 201:
            problems.append(f"{example.path.name}: {response.status_code} {response.text[:300]}")
        else:
            stored += 1
            problems += check_stored(lenient_client, example, response.headers["location"])
    assert problems == []
    assert (stored, len(refused)) == (EXPECTED_STORED, EXPECTED_REFUSED)
    history = system_history(lenient_client)
    assert len(history) == EXPECTED_STORED
    refused_types = REASONS.keys() | NO_ENDPOINT
    assert not [e for e in history if e["resource"]["resourceType"] in refused_types]


def test_refused_types_have_no_endpoint(lenient_client: TestClient) -> None:
    """Search and read of a refused type explain the refusal as well."""
    for rtype, reason in REASONS.items():
        for path in (f"/fhir/{rtype}", f"/fhir/{rtype}/example"):
            response = lenient_client.get(path)
            assert response.status_code == 404, path
            diagnostics = response.json()["issue"][0]["diagnostics"]
            assert rtype in diagnostics and reason in diagnostics


def test_update_as_create_keeps_the_client_id(lenient_client: TestClient) -> None:
    examples = [e for e in load_examples() if e.path.name in CLIENT_ID_EXAMPLES]
    assert len(examples) == len(CLIENT_ID_EXAMPLES)
    for example in examples:
        check_update_as_create(lenient_client, example)


def check_update_as_create(client: TestClient, example: Example) -> None:
    id = example.resource["id"]
    url = f"/fhir/{example.type}/{id}"
    created = client.put(url, content=example.raw, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    assert created.headers["location"].endswith(f"{url}/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    stored = client.get(url).json()
    assert stored["id"] == id
    assert without_server_fields(stored) == without_server_fields(example.resource)
    again = client.put(url, content=example.raw, headers=FHIR_JSON)
    assert again.status_code == 200
    assert again.headers["etag"] == 'W/"2"'
    assert client.get(f"{url}/_history/1").json()["id"] == id
