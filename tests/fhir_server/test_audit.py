"""Every access and change leaves IHE BALP AuditEvents, one per patient, on SQLite and PostgreSQL.

The record core runs in process through the router (the path every HTTP request takes), on a
real database; the events are read back as the chainer stored them (valid R4 AuditEvents, see
audit_support.Audited.events) and searched through the FHIR API.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.audit_chain import canonical_json, verify
from compliance.keyring import Keyring
from fhir_server import audit_events
from fhir_server._sqlstore import SqlUnitOfWork
from fhir_server.audit import AuditSettings, ChainSettings, note_break_glass, note_refusal
from fhir_server.audit_chainer import jcs
from fhir_server.audit_keys import AuditKeys
from fhir_server.audit_verify import verify_trail
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.store import NewVersion, StoreUnavailable, VersionConflict
from tests.conftest import Clock
from tests.fhir_server.audit_support import (
    BASE,
    DOCTOR,
    ISSUER,
    SERVICE,
    Audited,
    agent,
    audited_core,
    data,
    open_audited,
    patients,
    query,
    request_ids,
    subtype,
)

REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"


@pytest.fixture
def audited(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[Audited]:
    yield from audited_core(database_url, clock, keyring)


def new_patient(audited: Audited, family: str = "Schäfer", **kw: Any) -> str:
    return audited.created({"resourceType": "Patient", "name": [{"family": family}]}, **kw)


def managed_patient(audited: Audited, family: str = "Weber") -> str:
    """A patient of the doctor's MVZ (Patient.managingOrganization: a treatment relation)."""
    org = {"resourceType": "Organization", "id": "mvz-1", "name": "MVZ Kusel"}
    assert audited.call("PUT", "Organization/mvz-1", org).status in (200, 201)
    managing = {"reference": "Organization/mvz-1"}
    return audited.created(
        {"resourceType": "Patient", "name": [{"family": family}], "managingOrganization": managing}
    )


def observation(patient: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def only(events: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [e for e in events if subtype(e) == code]


def assert_rest(event: dict[str, Any], action: str, outcome: str = "0") -> None:
    assert event["type"]["system"] == REST and event["type"]["code"] == "rest"
    assert (event["action"], event["outcome"]) == (action, outcome)
    assert event["source"]["observer"]["identifier"]["value"] == BASE


# --- reads --------------------------------------------------------------------------------------


def test_read_and_vread_are_balp_read_events_of_the_patient(audited: Audited) -> None:
    p = new_patient(audited)
    obs = audited.created(observation(p))
    assert audited.call("GET", f"Observation/{obs}").status == 200
    assert audited.call("GET", f"Observation/{obs}/_history/1", request_id="req-2").status == 200
    assert audited.call("GET", f"Patient/{p}").status == 200
    events = audited.events()
    read_obs, read_patient = only(events, "read")
    (vread,) = only(events, "vread")
    for event in (read_obs, vread, read_patient):
        assert_rest(event, "R")
        assert patients(event) == [p]
    assert data(read_obs) == [{"reference": f"Observation/{obs}"}]
    assert data(vread) == [{"reference": f"Observation/{obs}/_history/1"}]
    assert data(read_patient) == [{"reference": f"Patient/{p}"}]
    assert request_ids(read_obs) == ["req-1"] and request_ids(vread) == ["req-2"]


def test_a_resource_in_two_compartments_gives_one_event_per_patient(audited: Audited) -> None:
    mother, child = new_patient(audited, "Mutter"), new_patient(audited, "Kind")
    obs = audited.created(observation(child, performer=[{"reference": f"Patient/{mother}"}]))
    audited.call("GET", f"Observation/{obs}")
    reads = only(audited.events(), "read")
    assert sorted(patients(e)[0] for e in reads) == sorted([child, mother])
    assert all(len(patients(e)) == 1 for e in reads)


# --- searches -----------------------------------------------------------------------------------


def test_a_search_over_two_patients_gives_one_query_event_per_patient(audited: Audited) -> None:
    a, b = new_patient(audited, "Adler"), new_patient(audited, "Becker")
    obs_a, obs_b = audited.created(observation(a)), audited.created(observation(b))
    params = [("code", "http://loinc.org|8867-4"), ("_count", "10")]
    response = audited.call("GET", "Observation", query=params)
    assert len(orjson.loads(response.body)["entry"]) == 2
    searches = only(audited.events(), "search-type")
    assert sorted(patients(e)[0] for e in searches) == sorted([a, b])
    for event in searches:
        assert_rest(event, "E")
        expected = f"{BASE}/Observation?code=http%3A%2F%2Floinc.org%7C8867-4&_count=10"
        assert query(event) == expected.encode()
        text = orjson.dumps(event).decode()
        assert obs_a not in text and obs_b not in text  # results are never recorded


def test_post_search_records_the_form_body_and_includes_count(audited: Audited) -> None:
    p = new_patient(audited)
    audited.created(observation(p))
    form = b"subject=Patient%2F" + p.encode() + b"&_include=Observation:subject"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    response = audited.call("POST", "Observation/_search", raw=form, headers=headers)
    assert response.status == 200
    (event,) = only(audited.events(), "search-type")
    assert query(event) == form
    assert patients(event) == [p]


def test_compartment_search_history_and_everything_name_the_patient(audited: Audited) -> None:
    p = new_patient(audited)
    audited.created(observation(p))
    assert audited.call("GET", f"Patient/{p}/Observation").status == 200
    assert audited.call("GET", f"Patient/{p}/$everything").status == 200
    assert audited.call("GET", f"Patient/{p}/_history").status == 200
    events = audited.events()
    for code in ("search-type", "operation", "history-instance"):
        (event,) = only(events, code)
        assert_rest(event, "E")
        assert patients(event) == [p]


def test_an_empty_search_is_one_event_without_patient(audited: Audited) -> None:
    audited.call("GET", "Observation", query=[("code", "none|none")])
    (event,) = only(audited.events(), "search-type")
    assert patients(event) == []
    assert query(event) == f"{BASE}/Observation?code=none%7Cnone".encode()


# --- changes ------------------------------------------------------------------------------------


def test_create_update_patch_delete_are_change_events_of_the_version(audited: Audited) -> None:
    p = new_patient(audited)
    obs = audited.created(observation(p))
    body = {**observation(p), "id": obs, "status": "amended"}
    assert audited.call("PUT", f"Observation/{obs}", body).status == 200
    patch = [{"op": "replace", "path": "/status", "value": "corrected"}]
    response = audited.call(
        "PATCH",
        f"Observation/{obs}",
        patch,
        headers={"content-type": "application/json-patch+json"},
    )
    assert response.status == 200
    assert audited.call("DELETE", f"Observation/{obs}").status == 204
    events = [e for e in audited.events() if data(e)[0]["reference"].startswith("Observation")]
    assert [(subtype(e), e["action"]) for e in events] == [
        ("create", "C"),
        ("update", "U"),
        ("patch", "U"),
        ("delete", "D"),
    ]
    for version, event in enumerate(events, start=1):
        assert_rest(event, event["action"])
        assert data(event) == [{"reference": f"Observation/{obs}/_history/{version}"}]
        assert patients(event) == [p]  # the delete names the patient of what it deleted


def test_an_update_moving_data_between_patients_names_both(audited: Audited) -> None:
    a, b = new_patient(audited, "Adler"), new_patient(audited, "Becker")
    obs = audited.created(observation(a))
    assert audited.call("PUT", f"Observation/{obs}", {**observation(b), "id": obs}).status == 200
    updates = only(audited.events(), "update")
    assert sorted(patients(e)[0] for e in updates) == sorted([a, b])


def test_a_transaction_records_each_entry_per_patient(audited: Audited) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b7e8f1c-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Patient", "name": [{"family": "Neu"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": observation("x")
                | {"subject": {"reference": "urn:uuid:0b7e8f1c-0000-4000-8000-000000000001"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = audited.call("POST", "", bundle, request_id="tx-42")
    assert response.status == 200
    locations = [
        e["response"]["location"].removeprefix(BASE + "/")
        for e in orjson.loads(response.body)["entry"]
    ]
    patient_id = locations[0].split("/")[1]
    creates = only(audited.events(), "create")
    assert sorted(data(e)[0]["reference"] for e in creates) == sorted(locations)
    assert all(patients(e) == [patient_id] for e in creates)
    assert all(request_ids(e) == ["tx-42"] for e in creates)
    assert not only(audited.events(), "transaction")  # the bundle itself: recorded by entries


def test_a_rolled_back_transaction_records_no_change_only_its_failure(audited: Audited) -> None:
    p = new_patient(audited)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation(p), "request": {"method": "POST", "url": "Observation"}},
            {
                "resource": observation("missing"),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = audited.call("POST", "", bundle, request_id="tx-bad")
    assert response.status == 422
    events = audited.events()
    assert [subtype(e) for e in events] == ["create", "transaction"]  # the Patient, the failure
    failure = events[1]
    assert (failure["action"], failure["outcome"]) == ("E", "4")
    assert failure["contained"][0]["issue"] == orjson.loads(response.body)["issue"]
    assert request_ids(failure) == ["tx-bad"]
    assert orjson.loads(audited.call("GET", "Observation").body)["total"] == 0


def test_a_fault_after_the_events_were_staged_leaves_none(
    database_url: str, clock: Clock, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The events sit in the writing transaction: if it does not commit, they are gone with it.
    audited = open_audited(database_url, clock, keyring)
    try:
        p = new_patient(audited)
        store = audited.store
        original = store.unit_of_work

        @contextmanager
        def failing_commit() -> Iterator[Any]:
            with original() as uow:
                yield uow
                staged = audited.sql("SELECT count(*) FROM audit_pending")
                assert staged[0][0] >= 1  # visible inside: the events were staged …
                raise StoreUnavailable("connection lost at commit")  # … and roll back

        monkeypatch.setattr(store, "unit_of_work", failing_commit)
        response = audited.call("POST", "Observation", observation(p))
        monkeypatch.undo()
        assert response.status == 503
        events = audited.events()
        assert [subtype(e) for e in events] == ["create", "create"]
        assert (events[1]["outcome"], data(events[1])) == ("12", [{"type": "Observation"}])
    finally:
        audited.system.stop()
        audited.core.close()


def test_batch_entries_are_recorded_one_by_one(audited: Audited) -> None:
    p = new_patient(audited)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": observation(p), "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": f"Patient/{p}"}},
            {"request": {"method": "GET", "url": "Patient/unknown"}},
        ],
    }
    assert audited.call("POST", "", bundle).status == 200
    events = audited.events()[1:]
    assert [(subtype(e), e["outcome"]) for e in events] == [
        ("create", "0"),
        ("read", "0"),
        ("read", "4"),
    ]
    assert [patients(e) for e in events] == [[p], [p], ["unknown"]]


# --- failures and refusals ----------------------------------------------------------------------


def test_a_failed_read_records_the_operation_outcome(audited: Audited) -> None:
    response = audited.call("GET", "Observation/nope")
    assert response.status == 404
    (event,) = audited.events()
    assert_rest(event, "R", "4")
    outcome = orjson.loads(response.body)
    assert event["contained"] == [{**outcome, "id": "outcome"}]
    assert event["outcomeDesc"] == outcome["issue"][0]["diagnostics"]
    assert {"reference": "#outcome"} in [e["what"] for e in event["entity"]]


def test_a_refused_search_is_a_failed_query(audited: Audited) -> None:
    response = audited.call("GET", "Observation", query=[("no-such-param", "1")])
    assert response.status == 400
    (event,) = audited.events()
    assert (subtype(event), event["outcome"]) == ("search-type", "4")
    assert query(event) == f"{BASE}/Observation?no-such-param=1".encode()


def test_an_access_refusal_noted_by_the_access_layer(audited: Audited) -> None:
    trail = audited.system.trail
    request = FhirRequest("GET", "Observation/o-1", base=BASE, principal=DOCTOR)

    def refused() -> FhirResponse:  # what the access layer does for data out of reach
        note_refusal("no treatment relation", ["p-9"])
        return FhirResponse.error(FhirError(Category.NOT_FOUND, "Observation/o-1 is not known."))

    assert trail.audited(request, refused).status == 404
    read, decision = audited.events()
    assert (subtype(read), read["outcome"], patients(read)) == ("read", "8", ["p-9"])
    assert "no treatment relation" in read["outcomeDesc"]
    assert decision["type"]["code"] == "110113"  # Security Alert: BALP AuthZ decision
    assert (decision["outcome"], decision["outcomeDesc"]) == ("8", "no treatment relation")
    assert patients(decision) == ["p-9"]


def test_an_unexpected_error_is_recorded_as_a_major_failure(audited: Audited) -> None:
    request = FhirRequest("GET", "Patient/p-1", base=BASE, principal=SERVICE)

    def broken() -> FhirResponse:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        audited.system.trail.audited(request, broken)
    (event,) = audited.events()
    assert (subtype(event), event["outcome"], patients(event)) == ("read", "12", ["p-1"])


# --- who ----------------------------------------------------------------------------------------


def test_the_user_agent_carries_the_oauth_identity(audited: Audited) -> None:
    # A patient the doctor may see (a read of one they may not see adds a deny decision).
    p = managed_patient(audited)
    assert audited.call("GET", f"Patient/{p}", principal=DOCTOR).status == 200
    event = audited.events()[-1]
    user = agent(event, "IRCP")
    assert user["who"] == {
        "identifier": {"value": "staff-17", "system": ISSUER},
        "reference": "Practitioner/pr-17",
    }
    assert user["requestor"] is True and user["name"] == "Dr. Anna Weber"
    assert user["policy"] == ["jti-doctor"]
    assert user["role"][0]["coding"][0]["code"] == "doctor"
    client = agent(event, "110153")
    assert client["who"]["identifier"]["value"] == "medikus-web"
    assert client["network"] == {"address": "198.51.100.4", "type": "2"}
    assert client["requestor"] is False


def test_a_backend_service_is_the_requestor(audited: Audited) -> None:
    audited.call("GET", "Patient/p-1")
    (event,) = audited.events()
    client = agent(event, "110153")
    assert client["who"]["identifier"]["value"] == "station-7" and client["requestor"] is True
    assert client["policy"] == ["jti-service"]
    assert [a["type"]["coding"][0]["code"] for a in event["agent"]] == ["110153", "110152"]


def test_callers_without_principal_are_the_system(audited: Audited) -> None:
    p = new_patient(audited, principal=None)
    (event,) = audited.events()
    client = agent(event, "110153")
    assert client["who"]["identifier"]["value"] == "medikus-internal"
    assert client["requestor"] is True and "network" not in client
    assert patients(event) == [p]


def test_the_capability_statement_is_not_audited(audited: Audited) -> None:
    assert audited.call("GET", "metadata").status == 200
    assert audited.events() == []


# --- the trail as FHIR AuditEvent --------------------------------------------------------------


def test_events_are_searchable_by_patient_date_agent_and_subtype(audited: Audited) -> None:
    a, b = managed_patient(audited, "Adler"), new_patient(audited, "Becker")
    assert audited.call("GET", f"Patient/{a}", principal=DOCTOR).status == 200
    audited.call("GET", f"Patient/{b}")
    audited.chain()

    def found(*params: tuple[str, str]) -> list[dict[str, Any]]:
        response = audited.call("GET", "AuditEvent", query=[*params, ("_count", "100")])
        assert response.status == 200, response.body
        return [e["resource"] for e in orjson.loads(response.body).get("entry", [])]

    reads_of_a = found(("patient", a), ("subtype", "read"))
    assert [patients(e) for e in reads_of_a] == [[a]]
    assert len(found(("patient", a))) == 2  # created, read
    assert found(("patient", a), ("date", "gt2100-01-01")) == []
    assert len(found(("patient", a), ("date", "ge2020-01-01"), ("date", "le2100-01-01"))) == 2
    by_doctor = found(("agent", "Practitioner/pr-17"))
    assert [patients(e) for e in by_doctor] == [[a]]
    assert [patients(e) for e in found(("action", "R"), ("patient", b))] == [[b]]


# --- the writer, the chainer, the sealed queue ----------------------------------------------


def test_the_background_writer_group_commits_reads(
    database_url: str, clock: Clock, keyring: Keyring
) -> None:
    audited = open_audited(
        database_url, clock, keyring, settings=AuditSettings(flush_interval=0.05)
    )
    audited.system.trail.start()
    try:
        p = new_patient(audited)
        threads = [
            threading.Thread(target=lambda: audited.call("GET", f"Patient/{p}")) for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 10
        while audited.sql("SELECT count(*) FROM audit_pending")[0][0] < 21:
            assert time.monotonic() < deadline, "the writer did not write within 10 s"
            time.sleep(0.02)
        audited.system.trail.close()
        assert len(only(audited.events(), "read")) == 20
    finally:
        audited.system.stop()
        audited.core.close()


def test_pending_events_are_sealed(audited: Audited, keyring: Keyring) -> None:
    p = new_patient(audited, "Vertraulich")
    audited.call("GET", "Patient", query=[("family", "Vertraulich")])
    audited.system.trail.flush()
    rows = audited.sql("SELECT payload FROM audit_pending")
    assert len(rows) == 2
    for (payload,) in rows:
        blob = bytes(payload)
        assert p.encode() not in blob and b"AuditEvent" not in blob
        assert base64.b64encode(b"Vertraulich") not in blob
        assert AuditKeys(keyring).open(blob).startswith(b"{")


def test_a_forged_pending_row_is_chained_as_a_security_alert(audited: Audited) -> None:
    new_patient(audited)
    audited.sql(
        "INSERT INTO audit_pending (created, payload) VALUES (1, :p)",
        p=b"\x00\x00\x00\x01" + bytes(40),
    )
    events = audited.events()
    assert [e["type"]["code"] for e in events] == ["rest", "110113"]
    assert "failed authentication" in events[1]["outcomeDesc"]
    assert events[1]["outcome"] == "12"


def test_one_chainer_per_database(audited: Audited) -> None:
    first = audited.log.lead()
    assert first is not None and first.alive()
    assert audited.log.lead() is None
    first.release()
    again = audited.log.lead()
    assert again is not None
    again.release()


def test_the_chainer_signs_heads_every_n_events(
    database_url: str, clock: Clock, keyring: Keyring
) -> None:
    settings = ChainSettings(batch=2, sign_every=3, sign_interval=3600)
    audited = open_audited(database_url, clock, keyring, chain_settings=settings)
    try:
        for _ in range(7):
            new_patient(audited)
        audited.chain()
        assert [h.index for h in audited.log.signed_heads()] == [2, 6]  # first batch, then ≥ 3
        assert audited.system.chainer.sign_now() is not None
        assert audited.system.chainer.sign_now() is None  # the head is signed already
        heads = audited.log.signed_heads()
        assert [h.index for h in heads] == [2, 6, 7]
        keys = AuditKeys(keyring)
        records = audited.log.links(0, 100)
        assert len(records) == 7 and [r.seq for r in records] == list(range(1, 8))
        assert verify([], keys.hmac_keys(), heads, keys.public_keys()).problem is not None
    finally:
        audited.system.stop()
        audited.core.close()


def test_a_running_system_chains_in_the_background(
    database_url: str, clock: Clock, keyring: Keyring
) -> None:
    settings = ChainSettings(poll_interval=0.02, sign_interval=0)
    audited = open_audited(
        database_url,
        clock,
        keyring,
        chain_settings=settings,
        settings=AuditSettings(flush_interval=0.02),
    )
    audited.system.start()
    try:
        p = new_patient(audited)
        audited.call("GET", f"Patient/{p}")
        deadline = time.monotonic() + 15
        while len(audited.log.links(0, 10)) < 2:
            assert time.monotonic() < deadline, "nothing chained within 15 s"
            time.sleep(0.05)
        audited.system.stop()
        assert audited.log.signed_heads()[-1].index == 2  # signed at the latest on shutdown
    finally:
        audited.system.stop()
        audited.core.close()


BTG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "BTG",
    "display": "break the glass",
}
REASON = "Bewusstlos eingeliefert, Medikation unbekannt"


def test_break_the_glass_is_recorded_with_its_reason(audited: Audited) -> None:
    p = new_patient(audited)  # no treatment relation with the doctor's MVZ
    doctor = replace(DOCTOR, scopes=SERVICE.scopes)
    body = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": REASON}]}
    response = audited.call("POST", f"Patient/{p}/$break-glass", body, principal=doctor)
    assert response.status == 200, response.body
    operation, decision = audited.events()[1:]
    for event in (operation, decision):
        assert event["purposeOfEvent"] == [{"coding": [BTG], "text": REASON}]
        assert event["meta"]["security"] == [BTG]
        assert patients(event) == [p]
    assert (subtype(operation), operation["outcome"]) == ("operation", "0")
    assert decision["type"]["code"] == "110113" and decision["outcome"] == "0"
    assert decision["subtype"][0]["code"] == "AuthZ-Role"
    found = audited.call(
        "GET", "AuditEvent", query=[("_security", f"{BTG['system']}|BTG"), ("patient", p)]
    )
    assert orjson.loads(found.body)["total"] == 2  # what the privacy officer reviews


def test_access_through_an_emergency_grant_is_labelled(audited: Audited) -> None:
    request = FhirRequest("GET", "Patient/p-1", base=BASE, principal=DOCTOR)

    def granted_by_break_glass() -> FhirResponse:  # what the access layer notes
        note_break_glass(REASON)
        return FhirResponse.json(200, {"resourceType": "Patient", "id": "p-1"})

    audited.system.trail.audited(request, granted_by_break_glass)
    read, decision = audited.events()
    assert read["meta"]["security"] == [BTG] and decision["meta"]["security"] == [BTG]
    assert read["purposeOfEvent"] == [{"coding": [BTG], "text": REASON}]
    assert (subtype(read), decision["subtype"][0]["code"]) == ("read", "AuthZ-Role")


def test_a_token_for_emergency_access_labels_what_it_reaches(audited: Audited) -> None:
    p = managed_patient(audited)
    emergency = replace(DOCTOR, break_glass=REASON)
    assert audited.call("GET", f"Patient/{p}", principal=emergency).status == 200
    read, decision = audited.events()[-2:]
    assert read["purposeOfEvent"] == decision["purposeOfEvent"]
    assert (decision["outcome"], patients(decision)) == ("0", [p])


def test_an_unauthenticated_request_is_recorded_as_unknown(audited: Audited) -> None:
    request = FhirRequest("GET", "Patient/p-1", base=BASE)
    outcome = FhirResponse.error(FhirError(Category.FORBIDDEN, "invalid token"))
    outcome.status = 401
    audited.system.trail.unauthenticated(request, outcome, "203.0.113.9")
    (event,) = audited.events()
    client = agent(event, "110153")
    assert client["who"]["identifier"]["value"] == "anonymous"
    assert client["network"] == {"address": "203.0.113.9", "type": "2"}
    assert (event["outcome"], patients(event)) == ("8", ["p-1"])


def test_the_chain_records_its_key_versions(audited: Audited) -> None:
    new_patient(audited)
    audited.chain()
    assert audited.log.key_versions() == {audited.system.trail.keys.version}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_the_fast_encoder_writes_canonical_json(value: dict[str, Any]) -> None:
    # The chainer MACs what jcs() writes, the verification what canonical_json() writes.
    assert jcs(value) == canonical_json(value)


@pytest.mark.parametrize("odd", [1.5, 2**53, {"\U0001f600": 1, "\ufb33": 2}])
def test_the_fast_encoder_leaves_the_odd_cases_to_canonical_json(odd: object) -> None:
    value = {"x": odd}
    try:
        expected = canonical_json(value)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            jcs(value)
    else:
        assert jcs(value) == expected


def test_subsetted_answers_still_name_the_patients(audited: Audited) -> None:
    p = new_patient(audited)
    obs = audited.created(observation(p))
    found = audited.call("GET", "Observation", query=[("_elements", "status")])
    assert b"subject" not in found.body  # the answer does not show whose it is …
    unchanged = audited.call("GET", f"Observation/{obs}", headers={"if-none-match": 'W/"1"'})
    assert unchanged.status == 304 and not unchanged.body
    events = audited.events()
    assert patients(only(events, "search-type")[0]) == [p]  # … the audit still knows
    assert patients(only(events, "read")[0]) == [p]


def test_the_writer_waits_out_an_unavailable_database(
    database_url: str, clock: Clock, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = AuditSettings(flush_interval=0.01, retry=0.01)
    audited = open_audited(database_url, clock, keyring, settings=settings)
    try:
        log = audited.log
        submit, outages = log.submit, [StoreUnavailable("down"), StoreUnavailable("down")]

        def flaky(payloads: list[bytes], now: int) -> None:
            if outages:
                raise outages.pop()
            submit(payloads, now)

        monkeypatch.setattr(log, "submit", flaky)
        audited.system.trail.start()
        audited.call("GET", "Patient/p-1")
        audited.system.trail.flush()
        assert not outages  # it was tried three times …
        assert [subtype(e) for e in audited.events()] == ["read"]  # … and nothing was lost
    finally:
        audited.system.stop()
        audited.core.close()


def test_the_btg_report_lists_the_emergency_accesses(
    tmp_path: Path, clock: Clock, keyring: Keyring
) -> None:
    url = f"sqlite:///{tmp_path / 'medikus.sqlite3'}"
    audited = open_audited(url, clock, keyring)
    try:
        p = new_patient(audited)
        doctor = replace(DOCTOR, scopes=SERVICE.scopes)
        reason = {"name": "reason", "valueString": REASON}
        body = {"resourceType": "Parameters", "parameter": [reason]}
        assert (
            audited.call("POST", f"Patient/{p}/$break-glass", body, principal=doctor).status == 200
        )
        audited.call("GET", f"Patient/{p}")  # an access without emergency: not listed
        audited.chain()
    finally:
        audited.system.stop()
        audited.core.close()
    command = [sys.executable, "-m", "medikus", "audit", "btg-report", "--database-url", url]
    report = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr
    lines = [line.split("\t") for line in report.stdout.splitlines()]
    assert [(who, patient, what, why) for _, who, patient, what, why in lines] == [
        ("Dr. Anna Weber (staff-17)", f"Patient/{p}", "operation", REASON),
        ("Dr. Anna Weber (staff-17)", f"Patient/{p}", "AuthZ-Role", REASON),
    ]
    later = subprocess.run(
        [*command, "--since", "2100-01-01"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert later.returncode == 0 and later.stdout == ""


def test_a_write_retried_after_a_conflict_records_one_event(
    audited: Audited, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Update-as-create retries when a concurrent writer created the id first (writes.update).
    p = new_patient(audited)
    conflicts = [VersionConflict("created concurrently")]
    put = SqlUnitOfWork.put

    def racing_put(self: SqlUnitOfWork, version: NewVersion) -> None:
        if version.type == "Observation" and conflicts:
            raise conflicts.pop()
        put(self, version)

    monkeypatch.setattr(SqlUnitOfWork, "put", racing_put)
    response = audited.call("PUT", "Observation/o-race", {**observation(p), "id": "o-race"})
    assert response.status == 201 and not conflicts
    creates = [e for e in only(audited.events(), "create") if "o-race" in str(data(e))]
    assert [data(e) for e in creates] == [[{"reference": "Observation/o-race/_history/1"}]]


def test_a_large_transaction_is_staged_in_chunks_and_chained_whole(
    audited: Audited, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_events, "CHUNK", 3)
    p = new_patient(audited)
    entries = [
        {"resource": observation(p), "request": {"method": "POST", "url": "Observation"}}
        for _ in range(7)
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert audited.call("POST", "", bundle).status == 200
    audited.system.trail.flush()
    assert audited.sql("SELECT count(*) FROM audit_pending")[0][0] == 1 + 3  # patient, 3+3+1
    creates = only(audited.events(), "create")
    assert len(creates) == 8 and all(patients(e) == [p] for e in creates)
    keys = audited.system.trail.keys
    records = audited.log.links(0, 100)
    assert [r.seq for r in records] == list(range(1, 9))
    assert verify_trail(audited.store, audited.log, keys).ok
