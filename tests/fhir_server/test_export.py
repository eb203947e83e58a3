"""Exports (fhir_server/export.py) on SQLite and PostgreSQL: one patient's whole record as a Bundle
(GDPR Art. 15/20) and the pseudonymised research extract."""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from compliance.keyring import Keyring, pseudonym_purpose
from fhir_server.errors import FhirError
from fhir_server.export import export_patient, record_export, research_export
from fhir_server.request import FhirRequest
from tests.conftest import Clock
from tests.fhir_server.audit_support import BASE, Audited, audited_core

# The master keys the research pseudonyms derive from (any keyring; the store has its own).
STUDY_KEYS = Keyring({1: bytes(range(32))}, 1)
SECRETS = (
    "Schäfer",
    "Elke",
    "Kusel",
    "Hauptstraße",
    "6381",
    "A123456789",
    "fühlt sich schwach",
    "Schwindel seit Tagen",
    "seit dem Sturz",
    "verwitwet",
    "Neumann",
    "Dr. Weber",
    "MVZ Kusel",
)


@pytest.fixture
def audited(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[Audited]:
    yield from audited_core(database_url, clock, keyring)


@dataclass
class Record:
    patient: str
    other: str
    organization: str
    practitioner: str
    encounter: str
    observations: list[str]
    updated: str
    deleted: str
    condition: str
    other_observation: str


def seed(audited: Audited) -> Record:
    organization = audited.created({"resourceType": "Organization", "name": "MVZ Kusel"})
    practitioner = audited.created(
        {"resourceType": "Practitioner", "name": [{"text": "Dr. Weber", "family": "Weber"}]}
    )
    patient = audited.created(
        {
            "resourceType": "Patient",
            "text": {
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">Elke Schäfer, Kusel</div>',
            },
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                    "valueAddress": {"city": "Kusel"},
                }
            ],
            "identifier": [{"system": "http://fhir.de/sid/gkv/kvid-10", "value": "A123456789"}],
            "name": [{"family": "Schäfer", "given": ["Elke"]}],
            "telecom": [{"system": "phone", "value": "+49 6381 12345"}],
            "gender": "female",
            "birthDate": "1950-04-02",
            "address": [{"line": ["Hauptstraße 7"], "city": "Kusel", "postalCode": "66869"}],
            "maritalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                        "code": "W",
                        "display": "Widowed",
                    }
                ],
                "text": "verwitwet",
            },
            "managingOrganization": {"reference": f"Organization/{organization}"},
            "generalPractitioner": [
                {"reference": f"Practitioner/{practitioner}", "display": "Dr. Weber"}
            ],
        }
    )
    subject = {"reference": f"Patient/{patient}"}
    encounter = audited.created(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject,
            "period": {"start": "2025-11-03T08:00:00+01:00", "end": "2025-11-03T08:40:00+01:00"},
            "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}],
            "reasonCode": [{"text": "Schwindel seit Tagen"}],
        }
    )
    observations = [
        audited.created(
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
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "subject": subject,
                "encounter": {"reference": f"Encounter/{encounter}"},
                "effectiveDateTime": when,
                "performer": [{"reference": f"Practitioner/{practitioner}"}],
                "component": [
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "valueQuantity": {
                            "value": systolic,
                            "unit": "mmHg",
                            "system": "http://unitsofmeasure.org",
                            "code": "mm[Hg]",
                        },
                    }
                ],
                "note": [{"text": "Patientin fühlt sich schwach"}],
            }
        )
        for when, systolic in (("2025-11-03T08:10:00+01:00", 150), ("2025-11-17T09:30:00Z", 135))
    ]
    remark = {
        "resourceType": "Observation",
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "75275-8"}]},
        "subject": subject,
        "effectiveDateTime": "2025-11-03",
        "valueString": "fühlt sich schwach seit dem Sturz",
    }
    updated = audited.created(remark)
    response = audited.call(
        "PUT", f"Observation/{updated}", {**remark, "id": updated, "status": "final"}
    )
    assert response.status == 200, response.body
    deleted = audited.created({**remark, "effectiveDateTime": "2025-11-04"})
    assert audited.call("DELETE", f"Observation/{deleted}").status in (200, 204)
    condition = audited.created(
        {
            "resourceType": "Condition",
            "subject": subject,
            "code": {
                "coding": [{"system": "http://snomed.info/sct", "code": "404640003"}],
                "text": "Schwindel seit Tagen",
            },
            "recordedDate": "2025-11-03",
            "note": [{"text": "seit dem Sturz"}],
        }
    )
    other = audited.created(
        {"resourceType": "Patient", "name": [{"family": "Neumann"}], "birthDate": "1961-07-30"}
    )
    other_observation = audited.created(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": f"Patient/{other}"},
            "effectiveDateTime": "2025-12-01T10:00:00Z",
            "valueQuantity": {"value": 81.5, "unit": "kg"},
        }
    )
    audited.chain()  # the writes' AuditEvents are stored (in the patients' compartments)
    return Record(
        patient,
        other,
        organization,
        practitioner,
        encounter,
        observations,
        updated,
        deleted,
        condition,
        other_observation,
    )


# --- the record -----------------------------------------------------------------------------------


def everything_pages(audited: Audited, patient: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    query = [("_count", "3")]
    while True:
        response = audited.call("GET", f"Patient/{patient}/$everything", query=query)
        assert response.status == 200, response.body
        page = orjson.loads(response.body)
        entries.extend(page.get("entry", []))
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            return entries
        query = parse_qsl(urlsplit(following[0]).query)


def key(entry: dict[str, Any]) -> tuple[str, str, str]:
    resource = entry["resource"]
    return resource["resourceType"], resource["id"], resource["meta"]["versionId"]


def test_record_export_is_everything_plus_the_history(audited: Audited) -> None:
    r = seed(audited)
    bundle = export_patient(audited.core.ctx, r.patient, base=BASE)
    everything = everything_pages(audited, r.patient)  # after the export: its audit not chained

    assert bundle["type"] == "collection"
    Bundle.model_validate(bundle)  # a valid R4 Bundle (bdl-7: versions differ per fullUrl)
    entries = bundle["entry"]
    assert all(
        e["fullUrl"] == f"{BASE}/{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in entries
    )
    # $everything (all pages), byte for byte, then the earlier versions and the soft-deleted one.
    history = [("Observation", r.updated, "1"), ("Observation", r.deleted, "1")]
    # ($everything repeats a referenced resource on every page that refers to it; the export
    # holds it once.)
    assert len(entries) == len(set(map(key, entries)))
    assert set(map(key, entries)) == {*map(key, everything), *history}
    assert sorted(map(key, entries[-len(history) :])) == sorted(history)
    exported = {key(e): e["resource"] for e in entries}
    assert all(exported[key(e)] == e["resource"] for e in everything)
    current = entries[: -len(history)]
    types = {k[0] for k in map(key, current)}
    assert {"Patient", "Encounter", "Observation", "Condition"} <= types
    assert {"Organization", "Practitioner"} <= types  # what the record refers to
    audits = [e["resource"] for e in current if e["resource"]["resourceType"] == "AuditEvent"]
    assert audits and all(r.patient in orjson.dumps(a).decode() for a in audits)
    # Nothing of the other patient.
    text = orjson.dumps(bundle).decode()
    assert r.other not in text and r.other_observation not in text


def test_record_export_operation_and_unknown_patient(audited: Audited) -> None:
    r = seed(audited)
    request = FhirRequest(
        "GET", f"Patient/{r.patient}/$record-export", [("history", "false")], base=BASE
    )
    response = record_export(request, audited.core.ctx, "Patient", r.patient)
    assert response.status == 200
    body = orjson.loads(response.body)
    ids = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]]
    assert ("Observation", r.deleted) not in ids and len(ids) == len(set(ids))
    with pytest.raises(FhirError) as raised:
        export_patient(audited.core.ctx, "no-such-patient")
    assert raised.value.status == 404
    bad = FhirRequest("GET", f"Patient/{r.patient}/$record-export", [("since", "2020")])
    with pytest.raises(FhirError):
        record_export(bad, audited.core.ctx, "Patient", r.patient)


# --- the research extract -----------------------------------------------------------------------


def extract(
    audited: Audited, study: str, keyring: Keyring | None = None, **kw: Any
) -> tuple[list[dict[str, Any]], dict[str, int], bytes]:
    out = io.BytesIO()
    counts = research_export(
        audited.core.ctx,
        study,
        ["Patient", "Encounter", "Observation", "Condition"],
        out,
        keyring=keyring or STUDY_KEYS,
        **kw,
    )
    raw = out.getvalue()
    return [orjson.loads(line) for line in raw.splitlines()], counts, raw


def pseudonym(study: str, patient: str) -> str:
    key = STUDY_KEYS.subkey(pseudonym_purpose(study))
    return hmac.new(key, patient.encode(), hashlib.sha256).hexdigest()[:32]


def test_research_extract_keeps_codes_and_values_only(audited: Audited) -> None:
    r = seed(audited)
    lines, counts, raw = extract(audited, "kusel-hf-2026")
    text = raw.decode()
    for secret in SECRETS:
        assert secret not in text, secret
    real_ids = [
        r.patient,
        r.other,
        r.organization,
        r.practitioner,
        r.encounter,
        r.condition,
        r.updated,
        *r.observations,
        r.other_observation,
    ]
    for real in real_ids:
        assert real not in text
    assert counts == {"patients": 2, "Patient": 2, "Encounter": 1, "Observation": 4, "Condition": 1}
    mine = pseudonym("kusel-hf-2026", r.patient)
    (patient,) = [x for x in lines if x["resourceType"] == "Patient" and x["id"] == mine]
    assert set(patient) == {"resourceType", "id", "gender", "birthDate", "maritalStatus"}
    assert patient["maritalStatus"] == {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "W"}
        ]
    }
    assert len(patient["birthDate"]) == 4  # the year only
    observations = [
        x
        for x in lines
        if x["resourceType"] == "Observation" and x["subject"]["reference"] == f"Patient/{mine}"
    ]
    assert len(observations) == 3  # the deleted one is not current: it does not leave
    (encounter,) = [x for x in lines if x["resourceType"] == "Encounter"]
    bp = [o for o in observations if "component" in o]
    assert {o["encounter"]["reference"] for o in bp} == {f"Encounter/{encounter['id']}"}
    assert all("performer" not in o and "note" not in o for o in observations)
    assert sorted(o["component"][0]["valueQuantity"]["value"] for o in bp) == [135, 150]
    assert bp[0]["component"][0]["valueQuantity"]["code"] == "mm[Hg]"
    remark = [o for o in observations if "component" not in o]
    assert remark and all("valueString" not in o for o in remark)
    (condition,) = [x for x in lines if x["resourceType"] == "Condition"]
    assert condition["code"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "404640003"}]
    }


def shift_of(original: str, shifted: str) -> int:
    return (date.fromisoformat(shifted[:10]) - date.fromisoformat(original[:10])).days


def test_research_dates_move_by_one_offset_per_patient(audited: Audited) -> None:
    r = seed(audited)
    lines, _, _ = extract(audited, "kusel-hf-2026")
    mine = pseudonym("kusel-hf-2026", r.patient)
    theirs = pseudonym("kusel-hf-2026", r.other)
    (encounter,) = [x for x in lines if x["resourceType"] == "Encounter"]
    bp = sorted(
        (x for x in lines if x["resourceType"] == "Observation" and "component" in x),
        key=lambda x: x["effectiveDateTime"],
    )
    (condition,) = [x for x in lines if x["resourceType"] == "Condition"]
    offsets = {
        shift_of("2025-11-03T08:00:00+01:00", encounter["period"]["start"]),
        shift_of("2025-11-03T08:40:00+01:00", encounter["period"]["end"]),
        shift_of("2025-11-03T08:10:00+01:00", bp[0]["effectiveDateTime"]),
        shift_of("2025-11-17T09:30:00Z", bp[1]["effectiveDateTime"]),
        shift_of("2025-11-03", condition["recordedDate"]),
    }
    (offset,) = offsets  # one offset for the whole record of the patient
    assert offset != 0 and abs(offset) <= 180
    # Times of day and offsets stay: intervals within the patient survive exactly.
    assert encounter["period"]["start"][10:] == "T08:00:00+01:00"
    assert bp[1]["effectiveDateTime"][10:] == "T09:30:00Z"
    (patient,) = [x for x in lines if x["resourceType"] == "Patient" and x["id"] == mine]
    assert int(patient["birthDate"]) == date.fromordinal(date(1950, 4, 2).toordinal() + offset).year
    (other,) = [
        x
        for x in lines
        if x["resourceType"] == "Observation" and x["subject"]["reference"] == f"Patient/{theirs}"
    ]
    other_offset = shift_of("2025-12-01T10:00:00Z", other["effectiveDateTime"])
    assert other_offset != 0 and abs(other_offset) <= 180
    assert datetime.fromisoformat(other["effectiveDateTime"]).time().hour == 10


def test_research_pseudonyms_are_stable_per_study_and_unlinkable_across(
    audited: Audited,
) -> None:
    r = seed(audited)
    first, _, raw_first = extract(audited, "study-a")
    _, _, raw_again = extract(audited, "study-a")
    other_study, _, _ = extract(audited, "study-b")
    assert raw_first == raw_again  # deterministic: a study can export again
    ids_a = {x["id"] for x in first}
    ids_b = {x["id"] for x in other_study}
    assert not ids_a & ids_b
    assert pseudonym("study-a", r.patient) in ids_a
    assert pseudonym("study-b", r.patient) in ids_b
    # Another master key (rotation) gives other pseudonyms unless the version is pinned.
    rotated = STUDY_KEYS.with_version(2, bytes(range(1, 33)))
    moved, _, _ = extract(audited, "study-a", rotated)
    _, _, raw_pinned = extract(audited, "study-a", rotated, key_version=1)
    assert not {x["id"] for x in moved} & ids_a
    assert raw_pinned == raw_first
    # A cohort limits the extract to the patients named.
    _, counts, _ = extract(audited, "study-a", cohort=[r.other])
    assert counts == {"patients": 1, "Patient": 1, "Observation": 1}
    with pytest.raises(ValueError, match="AuditEvent"):
        research_export(audited.core.ctx, "s", ["AuditEvent"], io.BytesIO(), keyring=STUDY_KEYS)
