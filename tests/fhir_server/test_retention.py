"""The retention job (fhir_server/retention.py) on SQLite and PostgreSQL: who is expunged, and
that nothing of them is left but the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import sqlalchemy as sa

from compliance.keyring import Keyring
from compliance.retention import Status
from fhir_server._sqlstore import SqlRetentionStore, SqlStore
from fhir_server._time import to_micros
from fhir_server.retention import RetentionJob, UnknownPatient
from fhir_server.store import RecordChanged, UnderLegalHold
from tests.conftest import Clock
from tests.fhir_server.audit_support import Audited, audited_core, patients, query, subtype

NOW = 1_767_225_600_000_000  # the clock fixture's start, 2026-01-01


@pytest.fixture
def audited(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[Audited]:
    yield from audited_core(database_url, clock, keyring)


def job(audited: Audited) -> RetentionJob:
    return RetentionJob(audited.core.ctx, SqlRetentionStore(audited.store))


@dataclass
class Seeded:
    patient: str
    ids: list[tuple[str, str]] = field(default_factory=list)  # every resource of the record

    @property
    def needles(self) -> set[str]:
        return {self.patient} | {i for _, i in self.ids}


def at_year(clock: Clock, year: int) -> None:
    clock.now = to_micros(datetime(year, 3, 1, tzinfo=UTC))


def seed(
    audited: Audited,
    clock: Clock,
    year: int,
    *,
    organization: str,
    practitioner: str,
    family: str,
    ongoing: bool = False,
) -> Seeded:
    """A patient treated in ``year`` (all written then): encounter, observations (one updated,
    one deleted), condition, medication, consent."""
    at_year(clock, year)
    patient = audited.created(
        {
            "resourceType": "Patient",
            "name": [{"family": family, "given": ["Elke"]}],
            "birthDate": "1950-04-02",
            "managingOrganization": {"reference": f"Organization/{organization}"},
            "generalPractitioner": [{"reference": f"Practitioner/{practitioner}"}],
        }
    )
    record = Seeded(patient, [("Patient", patient)])
    subject = {"reference": f"Patient/{patient}"}
    period = {"start": f"{year}-02-27T08:00:00Z"}
    if not ongoing:
        period["end"] = f"{year}-02-27T09:00:00Z"
    encounter = audited.created(
        {
            "resourceType": "Encounter",
            "status": "in-progress" if ongoing else "finished",
            "class": {"code": "AMB", "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode"},
            "subject": subject,
            "period": period,
            "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}],
        }
    )
    record.ids.append(("Encounter", encounter))
    for code, value in (("29463-7", 71.5), ("8867-4", 64)):
        obs = observation(subject, encounter, code, value, f"{year}-02-27T08:30:00Z")
        record.ids.append(("Observation", audited.created(obs)))
    # One observation updated (two versions), one deleted (soft: a version without content).
    updated_id = record.ids[-1][1]
    changed = observation(subject, encounter, "8867-4", 66, f"{year}-02-27T08:30:00Z")
    response = audited.call("PUT", f"Observation/{updated_id}", {**changed, "id": updated_id})
    assert response.status == 200, response.body
    gone = audited.created(observation(subject, encounter, "8310-5", 37.2, f"{year}-02-27"))
    assert audited.call("DELETE", f"Observation/{gone}").status in (200, 204)
    record.ids.append(("Observation", gone))
    for body in (
        {
            "resourceType": "Condition",
            "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            "recordedDate": f"{year}-02-27",
            "note": [{"text": f"Patientin {family} klagt über Schwindel"}],
        },
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "medicationCodeableConcept": {"coding": [{"code": "C09AA05"}]},
            "authoredOn": f"{year}-02-27",
        },
        {
            "resourceType": "Consent",
            "status": "active",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": subject,
            "policy": [{"uri": "https://medi-kus.de/fhir/policy/network-sharing"}],
            "provision": {"type": "permit"},
        },
    ):
        record.ids.append((str(body["resourceType"]), audited.created(body)))
    clock.now = NOW
    return record


def observation(
    subject: dict[str, str], encounter: str, code: str, value: float, when: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": subject,
        "encounter": {"reference": f"Encounter/{encounter}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "1"},
    }


@dataclass
class World:
    organization: str
    practitioner: str
    old: Seeded  # treated 11 years ago: due
    recent: Seeded  # treated in March 2017, almost 9 years ago: kept
    held: Seeded  # 11 years ago, under a legal hold
    ongoing: Seeded  # 11 years ago, encounter still open


def world(audited: Audited, clock: Clock) -> World:
    at_year(clock, 2014)
    organization = audited.created({"resourceType": "Organization", "name": "MVZ Kusel"})
    practitioner = audited.created({"resourceType": "Practitioner", "name": [{"family": "Weber"}]})
    # A subscription: every write below leaves an outbox row (no dispatcher runs in these tests).
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Telemonitoring",
        "criteria": "Observation?code=29463-7",
        "channel": {"type": "rest-hook", "endpoint": "https://station.example/hook"},
    }
    audited.created(subscription)

    def patient(year: int, family: str, *, ongoing: bool = False) -> Seeded:
        return seed(
            audited,
            clock,
            year,
            organization=organization,
            practitioner=practitioner,
            family=family,
            ongoing=ongoing,
        )

    built = World(
        organization,
        practitioner,
        patient(2014, "Altmann"),
        patient(2017, "Neumann"),
        patient(2014, "Haltmeier"),
        patient(2014, "Offen", ongoing=True),
    )
    job(audited).place_hold(built.held.patient, "Arzthaftungsklage, Az. 3 O 12/25", "dpo-1")
    return built


def rows_holding(store: SqlStore, needles: set[str]) -> list[str]:
    """Every row of every table (audit trail excepted) that holds one of ``needles``."""
    found = []
    with store.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            if table.startswith("audit"):
                continue
            result = conn.execute(sa.text(f'SELECT * FROM "{table}"'))  # test
            columns = list(result.keys())
            for row in result:
                values = dict(zip(columns, row, strict=True))
                if values.get("res_type") == "AuditEvent":
                    continue  # the audit trail's resources
                text = " ".join(
                    bytes(v).decode("utf-8", "replace")
                    if isinstance(v, bytes | memoryview)
                    else str(v)
                    for v in values.values()
                )
                hits = [n for n in needles if n in text]
                if hits:
                    found.append(f"{table}: {hits}")
    return found


def readable(audited: Audited, record: Seeded) -> None:
    """Every resource of the record still there: current versions and history."""
    for rtype, id in record.ids:
        response = audited.call("GET", f"{rtype}/{id}/_history")
        assert response.status == 200, (rtype, id, response.body)
        assert orjson.loads(response.body)["entry"], (rtype, id)


def test_due_record_is_expunged_completely_others_are_kept(audited: Audited, clock: Clock) -> None:
    w = world(audited, clock)
    before = rows_holding(audited.store, w.old.needles)
    assert any(r.startswith("resource_version") for r in before)
    assert any(r.startswith("subscription_outbox") for r in before)
    assert any(r.startswith("legal_hold") for r in rows_holding(audited.store, {w.held.patient}))

    report = job(audited).run()

    assert [r.assessment.patient for r in report.expunged] == [w.old.patient]
    result = report.expunged[0]
    assert result.resources == {
        "Patient": 1,
        "Encounter": 1,
        "Observation": 3,
        "Condition": 1,
        "MedicationRequest": 1,
        "Consent": 1,
    }
    assert result.versions == 8 + 1 + 1  # one update, one delete
    assert result.seconds > 0
    assert rows_holding(audited.store, w.old.needles) == []
    assert [a.patient for a in report.held] == [w.held.patient]
    assert report.ongoing == 1
    for kept in (w.recent, w.held, w.ongoing):
        readable(audited, kept)
    # The shared directory entries the record referred to stay.
    for rtype, id in (("Organization", w.organization), ("Practitioner", w.practitioner)):
        assert audited.call("GET", f"{rtype}/{id}").status == 200
    assert audited.call("GET", f"Patient/{w.old.patient}").status == 404
    assert audited.call("GET", f"Patient/{w.old.patient}/_history").status in (200, 404)
    # A second run finds nothing more to do.
    assert job(audited).run().expunged == ()


def test_the_expunge_is_recorded_in_the_audit_trail_which_stays(
    audited: Audited, clock: Clock
) -> None:
    w = world(audited, clock)
    trail_before = [e for e in audited.events() if w.old.patient in patients(e)]
    assert trail_before  # the writes of 2014 were audited
    job(audited).run()
    events = [e for e in audited.events() if w.old.patient in patients(e)]
    assert events[: len(trail_before)] == trail_before  # nothing of the trail was removed
    (expunge,) = [e for e in events[len(trail_before) :] if subtype(e) == "operation"]
    assert expunge["outcome"] == "0"
    assert query(expunge) == f"Patient/{w.old.patient}/$expunge".encode()
    assert "medikus-retention" in orjson.dumps(expunge["agent"]).decode()


def test_dry_run_lists_what_would_be_expunged_and_changes_nothing(
    audited: Audited, clock: Clock
) -> None:
    w = world(audited, clock)
    counts = table_counts(audited.store)
    report = job(audited).run(dry_run=True)
    assert [r.assessment.patient for r in report.results] == [w.old.patient]
    preview = report.results[0]
    assert preview.versions is None and report.expunged == ()
    # Live members, plus the soft-deleted observation found in its last live version.
    assert preview.resources == {
        "Patient": 1,
        "Encounter": 1,
        "Observation": 3,
        "Condition": 1,
        "MedicationRequest": 1,
        "Consent": 1,
    }
    after = table_counts(audited.store)
    assert {k: v for k, v in after.items() if k != "retention_run"} == {
        k: v for k, v in counts.items() if k != "retention_run"
    }
    assert after["retention_run"] == counts["retention_run"] + 1
    runs = SqlRetentionStore(audited.store).runs(5)
    assert runs[0].dry_run and runs[0].due == 1 and runs[0].expunged == 0


def table_counts(store: SqlStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        names = [t for t in sa.inspect(conn).get_table_names() if not t.startswith("audit")]
        return {
            t: int(conn.execute(sa.text(f'SELECT COUNT(*) FROM "{t}"')).scalar_one()) for t in names
        }


def test_legal_hold_stops_the_expunge_until_released(audited: Audited, clock: Clock) -> None:
    w = world(audited, clock)
    forgotten: list[str] = []

    def identity_store_down(patient: str) -> None:
        raise ConnectionError("identity store unreachable")

    retention = RetentionJob(
        audited.core.ctx,
        SqlRetentionStore(audited.store),
        on_expunged=[forgotten.append, identity_store_down],
    )
    (hold,) = retention.holds(w.held.patient)
    assert (hold.reason, hold.placed_by, hold.placed_at) == (
        "Arzthaftungsklage, Az. 3 O 12/25",
        "dpo-1",
        hold.placed_at,
    )
    assert hold.placed_at > 0 and hold.released_at is None
    assert w.held.patient not in [r.assessment.patient for r in retention.run().results]
    released = retention.release_holds(w.held.patient, "Verfahren abgeschlossen", "dpo-2")
    assert [(h.id, h.released_by, h.release_reason) for h in released] == [
        (hold.id, "dpo-2", "Verfahren abgeschlossen")
    ]
    assert retention.holds(w.held.patient) == []
    assert len(retention.holds(w.held.patient, released=True)) == 1
    report = retention.run()
    assert [r.assessment.patient for r in report.expunged] == [w.held.patient]
    # The follow-ups ran for each expunged patient; a failing one is reported, not fatal.
    assert forgotten == [w.old.patient, w.held.patient]
    assert report.expunged[0].notes == (
        "test_legal_hold_stops_the_expunge_until_released.<locals>.identity_store_down: "
        "identity store unreachable",
    )
    assert rows_holding(audited.store, w.held.needles) == []  # the released hold went too
    with pytest.raises(UnknownPatient):
        retention.place_hold("no-such-patient", "x", "dpo-1")
    with pytest.raises(ValueError, match="reason"):
        retention.place_hold(w.recent.patient, "  ", "dpo-1")


def test_nine_years_after_treatment_the_record_is_retained(audited: Audited, clock: Clock) -> None:
    w = world(audited, clock)
    by_patient = {a.patient: a for a in job(audited).assess()}
    recent = by_patient[w.recent.patient]
    assert recent.status is Status.RETAINED
    assert recent.erasable_from is not None
    # Written on 1 March 2017 (UTC): the period ends with 1 March 2027 (§188(2) BGB).
    assert recent.erasable_from == datetime(2027, 3, 2, tzinfo=ZoneInfo("Europe/Berlin"))
    assert by_patient[w.old.patient].status is Status.DUE
    assert by_patient[w.ongoing.patient].status is Status.ONGOING
    # Ten years later the recent one is due as well.
    clock.now = to_micros(datetime(2027, 3, 2, tzinfo=UTC))
    assert {a.patient for a in job(audited).assess() if a.due} == {
        w.old.patient,
        w.recent.patient,
    }


def test_a_write_after_the_assessment_or_a_new_hold_stops_the_expunge(
    audited: Audited, clock: Clock
) -> None:
    w = world(audited, clock)
    retention = job(audited)
    store = SqlRetentionStore(audited.store)
    plans = {c.assessment.patient: c for c in retention._candidates()}
    candidate = plans[w.old.patient]
    from fhir_server.store import ExpungePlan

    plan = ExpungePlan(
        w.old.patient,
        retention._links,
        retention._evidence,
        candidate.activity,
        candidate.extra,
    )
    # A late lab result arrives: the treatment went on.
    subject = {"reference": f"Patient/{w.old.patient}"}
    late = observation(subject, w.old.ids[1][1], "2345-7", 5.4, "2025-12-30")
    audited.created(late)
    with pytest.raises(RecordChanged):
        store.expunge(plan)
    assert audited.call("GET", f"Patient/{w.old.patient}").status == 200
    # A hold placed after the assessment wins as well.
    fresh = {c.assessment.patient: c for c in retention._candidates()}[w.recent.patient]
    plan = ExpungePlan(
        w.recent.patient, retention._links, retention._evidence, fresh.activity, fresh.extra
    )
    retention.place_hold(w.recent.patient, "Anfrage der Staatsanwaltschaft", "dpo-1")
    with pytest.raises(UnderLegalHold):
        store.expunge(plan)
    readable(audited, w.recent)


def test_a_resource_shared_with_a_patient_on_record_is_kept(audited: Audited, clock: Clock) -> None:
    w = world(audited, clock)
    at_year(clock, 2014)
    # An observation about the old patient, performed by (Observation.performer) the recent one.
    shared = observation(
        {"reference": f"Patient/{w.old.patient}"}, w.old.ids[1][1], "72514-3", 3, "2014-02-27"
    )
    shared["performer"] = [{"reference": f"Patient/{w.recent.patient}"}]
    shared_id = audited.created(shared)
    clock.now = NOW
    report = job(audited).run()
    (result,) = report.expunged
    assert result.kept == (("Observation", shared_id),)
    assert audited.call("GET", f"Observation/{shared_id}").status == 200
    # Its reference to the expunged patient is the only row left naming them, and reported.
    assert ("Observation", shared_id, "Patient", w.old.patient) in report.dangling
    left = rows_holding(audited.store, w.old.needles - {shared_id})
    assert left and all(
        r.startswith(("resource_version", "ix_reference", "ix_", "subscription_outbox"))
        for r in left
    )


def test_a_fhir_delete_stays_a_soft_delete(audited: Audited, clock: Clock) -> None:
    w = world(audited, clock)
    rtype, id = w.recent.ids[1]
    assert audited.call("DELETE", f"{rtype}/{id}").status in (200, 204)
    assert audited.call("GET", f"{rtype}/{id}").status == 410
    first = audited.call("GET", f"{rtype}/{id}/_history/1")
    assert first.status == 200 and orjson.loads(first.body)["id"] == id
    history = orjson.loads(audited.call("GET", f"{rtype}/{id}/_history").body)
    assert len(history["entry"]) == 2
    with audited.store.engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT COUNT(*) FROM resource_version WHERE res_type = :t AND res_id = :i"),
            {"t": rtype, "i": id},
        ).scalar_one()
    assert count == 2


def test_a_soft_deleted_patient_is_still_retained_then_expunged(
    audited: Audited, clock: Clock
) -> None:
    w = world(audited, clock)
    at_year(clock, 2014)
    assert audited.call("DELETE", f"Patient/{w.old.patient}").status in (200, 204)
    at_year(clock, 2017)
    assert audited.call("DELETE", f"Patient/{w.recent.patient}").status in (200, 204)
    clock.now = NOW
    by_patient = {a.patient: a for a in job(audited).assess()}
    # A FHIR delete does not end the retention period (GDPR Art. 17(3)(b)): the record stays.
    assert by_patient[w.recent.patient].status is Status.RETAINED
    report = job(audited).run()
    assert [r.assessment.patient for r in report.expunged] == [w.old.patient]
    assert rows_holding(audited.store, w.old.needles) == []
    versions = audited.call("GET", f"Patient/{w.recent.patient}/_history")
    assert versions.status == 200 and len(orjson.loads(versions.body)["entry"]) == 2
