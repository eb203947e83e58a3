"""BALP AuditEvent builders: the patterns' fixed values, R4 validity, one event per patient."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from hypothesis import given
from hypothesis import strategies as st

from compliance import balp
from compliance.audit_chain import MemoryAuditStore, canonical_json, log_event, verify
from compliance.balp import Client, Coding, Failure, Interaction, RequestContext, Server, User

NOW = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
SERVER = Server("https://medikus.example/fhir", "https://medikus.example/fhir")
DOCTOR = Coding("https://medikus.example/fhir/CodeSystem/staff-role", "doctor", "Doctor")
USER = User(
    "staff-17",
    issuer="https://medikus.example/auth",
    reference="Practitioner/pr-17",
    name="Dr. Anna Weber",
    roles=(DOCTOR,),
    organization="Organization/mvz-kusel",
)
TREAT = Coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT", "treatment")
CTX = RequestContext(
    server=SERVER,
    client=Client("medikus-web", "192.0.2.10"),
    recorded=NOW,
    user=USER,
    request_id="req-4711",
    token_id="jti-abc",
    purpose_of_use=(TREAT,),
)
NOT_FOUND = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-found", "details": {"text": "Unknown resource"}}],
}

REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def validated(event: dict[str, Any]) -> dict[str, Any]:
    """The event, after the R4 model accepted it (extra or misplaced keys are refused)."""
    AuditEvent.model_validate(event)
    canonical_json(event)  # and it can go into the hash chain as it is
    return event


def entities(event: dict[str, Any], type_code: str) -> list[dict[str, Any]]:
    return [e for e in event["entity"] if e.get("type", {}).get("code") == type_code]


def agent(event: dict[str, Any], type_code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        a for a in event["agent"] if a["type"]["coding"][0]["code"] == type_code
    ]
    assert len(found) == 1
    return found[0]


def patient_refs(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]


Build = Callable[..., dict[str, Any]]
PATTERNS: list[tuple[str, Build, str, str]] = [
    ("create", lambda **kw: balp.create(CTX, "Observation/o1/_history/1", **kw), "create", "C"),
    ("read", lambda **kw: balp.read(CTX, "Observation/o1", **kw), "read", "R"),
    (
        "vread",
        lambda **kw: balp.read(CTX, "Observation/o1/_history/2", vread=True, **kw),
        "vread",
        "R",
    ),
    ("update", lambda **kw: balp.update(CTX, "Observation/o1/_history/3", **kw), "update", "U"),
    (
        "patch",
        lambda **kw: balp.update(CTX, "Observation/o1/_history/3", patch=True, **kw),
        "patch",
        "U",
    ),
    ("delete", lambda **kw: balp.delete(CTX, "Observation/o1", **kw), "delete", "D"),
    ("query", lambda **kw: balp.query(CTX, "Observation?code=8867-4", **kw), "search-type", "E"),
]


@pytest.mark.parametrize(
    ("name", "build", "subtype", "action"), PATTERNS, ids=[p[0] for p in PATTERNS]
)
@pytest.mark.parametrize("patient", [None, "pat-a"])
def test_rest_patterns_carry_balp_fixed_values(
    name: str, build: Build, subtype: str, action: str, patient: str | None
) -> None:
    event = validated(build(patient=patient))
    assert event["type"] == {"system": REST, "code": "rest", "display": "Restful Operation"}
    assert event["subtype"] == [{"system": INTERACTION, "code": subtype, "display": subtype}]
    assert event["action"] == action
    assert event["outcome"] == "0"
    assert event["recorded"] == "2025-03-01T09:30:15.123Z"
    assert patient_refs(event) == ([] if patient is None else [f"Patient/{patient}"])
    if patient is not None:
        (entity,) = entities(event, "1")
        assert entity["type"]["system"] == "http://terminology.hl7.org/CodeSystem/audit-entity-type"
        assert entity["role"]["system"] == "http://terminology.hl7.org/CodeSystem/object-role"
    (transaction,) = entities(event, "XrequestId")
    assert transaction["what"] == {"identifier": {"value": "req-4711"}}
    assert event["source"]["observer"] == {"identifier": {"value": SERVER.id}}
    assert event["source"]["type"][0]["code"] == "4"


@pytest.mark.parametrize("build", [p[1] for p in PATTERNS[:-1]], ids=[p[0] for p in PATTERNS[:-1]])
def test_the_touched_resource_is_a_domain_resource_entity(build: Build) -> None:
    event = validated(build())
    (data,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "4"]
    assert data["type"]["code"] == "2"
    assert data["what"]["reference"].startswith("Observation/o1")


def test_agents_client_server_and_user() -> None:
    event = validated(balp.read(CTX, "Patient/pat-a", patient="pat-a"))
    client, server, user = agent(event, "110153"), agent(event, "110152"), agent(event, "IRCP")
    assert client["type"]["coding"][0]["system"] == DCM
    assert client["who"] == {"identifier": {"value": "medikus-web"}}
    assert client["network"] == {"address": "192.0.2.10", "type": "2"}
    assert client["requestor"] is False
    assert server["who"] == {"identifier": {"value": SERVER.id}}
    assert server["network"] == {"address": SERVER.address, "type": "5"}
    assert user["requestor"] is True
    assert user["who"] == {
        "identifier": {"system": "https://medikus.example/auth", "value": "staff-17"},
        "reference": "Practitioner/pr-17",
    }
    assert user["name"] == "Dr. Anna Weber"
    assert user["role"] == [{"coding": [DOCTOR.to_json()]}]
    assert user["policy"] == ["jti-abc"]
    assert user["purposeOfUse"] == [{"coding": [TREAT.to_json()]}]
    assert event["purposeOfEvent"] == user["purposeOfUse"]


def test_a_backend_client_without_user_is_the_requestor_and_holds_the_token() -> None:
    ctx = RequestContext(
        SERVER, Client("pilot-station", "station-01.kusel.local"), NOW, token_id="jti-sys"
    )
    event = validated(balp.create(ctx, "Observation/o2"))
    assert len(event["agent"]) == 2
    client = agent(event, "110153")
    assert client["requestor"] is True
    assert client["policy"] == ["jti-sys"]
    assert client["network"] == {"address": "station-01.kusel.local", "type": "1"}
    assert "purposeOfEvent" not in event


@given(st.binary(max_size=300))
def test_the_raw_query_is_kept_exactly_as_base64(raw: bytes) -> None:
    event = validated(balp.query(CTX, raw, description="Observation?code=8867-4"))
    (entity,) = entities(event, "2")
    assert entity["role"]["code"] == "24"
    assert base64.b64decode(entity["query"], validate=True) == raw
    assert entity["description"] == "Observation?code=8867-4"
    assert "what" not in entity


def test_query_accepts_search_history_and_operations_only() -> None:
    for interaction in (Interaction.SEARCH_SYSTEM, Interaction.HISTORY_TYPE, Interaction.OPERATION):
        event = validated(balp.query(CTX, "x", interaction=interaction))
        assert event["subtype"][0]["code"] == interaction.value
        assert event["action"] == "E"
    with pytest.raises(ValueError, match="query-like"):
        balp.query(CTX, "x", interaction=Interaction.READ)


@pytest.mark.parametrize("outcome", ["4", "8", "12"])
def test_a_failure_carries_outcome_text_and_the_operation_outcome(
    outcome: Literal["4", "8", "12"],
) -> None:
    failure = Failure(outcome, NOT_FOUND)
    event = validated(balp.read(CTX, "Patient/pat-b", patient="pat-b", failure=failure))
    assert event["outcome"] == outcome
    assert event["outcomeDesc"] == "Unknown resource"
    (contained,) = event["contained"]
    assert contained == {**NOT_FOUND, "id": "outcome"}
    (reference,) = entities(event, "OperationOutcome")
    assert reference["what"] == {"reference": "#outcome"}
    assert "id" not in NOT_FOUND  # the caller's outcome is not changed


def test_failure_text_falls_back_to_diagnostics_and_code() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "bad _has"},
            {"severity": "error", "code": "forbidden"},
        ],
    }
    event = validated(balp.query(CTX, "x", failure=Failure("4", outcome)))
    assert event["outcomeDesc"] == "bad _has; forbidden"
    with pytest.raises(ValueError, match="OperationOutcome"):
        balp.read(CTX, "Patient/p", failure=Failure("8", {"resourceType": "Bundle"}))


def test_break_the_glass_records_btg_with_the_stated_reason() -> None:
    ctx = RequestContext(
        SERVER, CTX.client, NOW, user=USER, break_the_glass="Unconscious patient in the ER"
    )
    event = validated(balp.read(ctx, "Patient/pat-c", patient="pat-c"))
    btg = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "BTG",
                "display": "break the glass",
            }
        ],
        "text": "Unconscious patient in the ER",
    }
    assert agent(event, "IRCP")["purposeOfUse"] == [btg]
    assert event["purposeOfEvent"] == [btg]
    decision = validated(balp.authz_decision(ctx, patient="pat-c", permit=True))
    assert decision["subtype"][0]["code"] == "AuthZ-Role"
    assert decision["purposeOfEvent"] == [btg]
    with pytest.raises(ValueError, match="reason"):
        balp.read(
            RequestContext(SERVER, CTX.client, NOW, user=USER, break_the_glass="  "), "Patient/p"
        )


def test_authz_consent_decision() -> None:
    event = validated(balp.authz_decision(CTX, patient="pat-a", permit=True, consents=["c1", "c2"]))
    assert event["type"] == {"system": DCM, "code": "110113", "display": "Security Alert"}
    assert event["subtype"] == [
        {
            "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType",
            "code": "AuthZ-Consent",
        }
    ]
    assert (event["action"], event["outcome"]) == ("E", "0")
    codes = [a["type"]["coding"][0]["code"] for a in event["agent"]]
    assert codes == ["110150", "IRCP", "PROV", "authserver"]
    assert agent(event, "PROV")["who"] == {"reference": "Organization/mvz-kusel"}
    assert all("policy" not in a for a in event["agent"])  # the token is an entity here
    assert [e["what"]["reference"] for e in entities(event, "Consent")] == [
        "Consent/c1",
        "Consent/c2",
    ]
    (token,) = entities(event, "UserOauthAgent")
    assert token["what"]["identifier"]["value"] == "urn:ietf:params:oauth:jti:jti-abc"
    assert patient_refs(event) == ["Patient/pat-a"]
    assert event["source"]["type"][0]["code"] == "6"


def test_authz_deny_records_the_reason() -> None:
    event = validated(
        balp.authz_decision(
            CTX, patient="pat-b", permit=False, consents=["c9"], reason="Consent denies sharing"
        )
    )
    assert (event["outcome"], event["outcomeDesc"]) == ("8", "Consent denies sharing")


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e-1", "f.2"]), max_size=12))
def test_per_patient_gives_one_event_per_distinct_patient(ids: list[str]) -> None:
    events = balp.per_patient(lambda p: balp.query(CTX, "Observation?_count=50", patient=p), ids)
    distinct = list(dict.fromkeys(ids))
    if distinct:
        assert [patient_refs(e) for e in events] == [[f"Patient/{p}"] for p in distinct]
    else:
        assert [patient_refs(e) for e in events] == [[]]
    for event in events:
        validated(event)


def test_times_are_injected_and_written_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    ctx = RequestContext(SERVER, CTX.client, datetime(2025, 3, 1, 10, 30, tzinfo=cet))
    assert balp.read(ctx, "Patient/p")["recorded"] == "2025-03-01T09:30:00.000Z"
    with pytest.raises(ValueError, match="timezone"):
        balp.read(RequestContext(SERVER, CTX.client, datetime(2025, 3, 1)), "Patient/p")


@pytest.mark.parametrize(
    "call",
    [
        lambda: balp.read(CTX, "Observation"),
        lambda: balp.read(CTX, "/o1"),
        lambda: balp.read(CTX, "Observation/o1", patient="Patient/p"),
        lambda: balp.authz_decision(CTX, patient="p", permit=True, consents=["Consent/c"]),
    ],
)
def test_malformed_references_are_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


def test_opaque_tokens_keep_at_most_their_last_32_characters() -> None:
    token = "x" * 40 + "0123456789abcdef0123456789abcdef"
    assert balp.opaque_token_id(token) == "0123456789abcdef0123456789abcdef"
    assert balp.opaque_token_id("short") == "short"


def test_events_go_into_the_hash_chain_and_verify() -> None:
    store = MemoryAuditStore()
    key = bytes(range(32))
    events = [
        *balp.per_patient(lambda p: balp.query(CTX, "Observation?code=x", patient=p), ["a", "b"]),
        balp.authz_decision(CTX, patient="a", permit=False, reason="no relation"),
        balp.read(CTX, "Patient/a", patient="a", failure=Failure("8", NOT_FOUND)),
    ]
    for event in events:
        log_event(store, event, key, 1)
    assert verify(store.records(), {1: key}).ok


def test_the_compliance_package_does_not_import_fhir_resources() -> None:
    code = (
        "import sys, compliance.balp, compliance.audit_chain; "
        "sys.exit(any(m == 'fhir' or m.startswith(('fhir.', 'fhir_core')) for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
