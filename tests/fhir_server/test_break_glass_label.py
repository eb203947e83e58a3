"""Access through a break-the-glass grant is labelled in the audit trail: the events of a read or
search that reached a patient only through the doctor's emergency grant carry purpose BTG with
the stated reason and the security label BTG; access through a treatment relation does not.
SQLite and PostgreSQL, in process through the router, with real principals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from compliance.keyring import Keyring
from compliance.principal import Principal, Role
from compliance.scopes import parse_scopes
from fhir_server.access import UNSTATED
from fhir_server.break_glass import BTG_DURATION_US
from tests.conftest import Clock
from tests.fhir_server.audit_support import Audited, audited_core, patients, subtype

BTG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "BTG",
    "display": "break the glass",
}
REASON = "Bewusstlos eingeliefert, Medikation unbekannt"


@dataclass
class World:
    audited: Audited
    clock: Clock
    ids: dict[str, str]

    def doctor(self, org: str, practitioner: str) -> Principal:
        return Principal(
            subject=f"u-{practitioner}",
            client_id="doctor-app",
            scopes=parse_scopes("user/*.cruds"),
            roles=frozenset({Role.DOCTOR}),
            fhir_user=f"Practitioner/{self.ids[practitioner]}",
            organization=self.ids[org],
            name=practitioner,
        )

    def get(self, who: Principal, path: str, **query: str) -> int:
        return self.audited.call("GET", path, query=list(query.items()), principal=who).status

    def events_of(self, who: Principal) -> list[dict[str, Any]]:
        """Every event a request of ``who`` left (BALP names the user by the token's ``sub``)."""
        return [e for e in self.audited.events() if _user(e) == who.subject]


def _user(event: dict[str, Any]) -> str | None:
    for agent in event["agent"]:
        if agent["type"]["coding"][0]["code"] == "IRCP":
            return str(agent["who"]["identifier"]["value"])
    return None


@pytest.fixture
def world(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[World]:
    """MVZ 1 treats patient A, MVZ 2 treats patient B; each has an Observation."""
    for audited in audited_core(database_url, clock, keyring):
        ids: dict[str, str] = {}
        for name in ("mvz1", "mvz2"):
            ids[name] = audited.created({"resourceType": "Organization", "name": name})
        for name in ("docA", "docB"):
            practitioner = {"resourceType": "Practitioner", "name": [{"family": name}]}
            ids[name] = audited.created(practitioner)
        for name, org in (("A", "mvz1"), ("B", "mvz2")):
            patient = {
                "resourceType": "Patient",
                "name": [{"family": f"Patient{name}"}],
                "managingOrganization": {"reference": f"Organization/{ids[org]}"},
            }
            ids[name] = audited.created(patient)
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{ids[name]}"},
            }
            ids[f"obs{name}"] = audited.created(observation)
        yield World(audited, clock, ids)


def break_glass(world: World, who: Principal, patient: str) -> None:
    reason = {"name": "reason", "valueString": REASON}
    body = {"resourceType": "Parameters", "parameter": [reason]}
    path = f"Patient/{patient}/$break-glass"
    assert world.audited.call("POST", path, body, principal=who).status == 200


def labelled(event: dict[str, Any]) -> bool:
    return bool(event.get("meta", {}).get("security") == [BTG])


def test_reads_through_an_emergency_grant_carry_btg_and_the_reason(world: World) -> None:
    ids = world.ids
    doc_a = world.doctor("mvz1", "docA")
    assert world.get(doc_a, f"Observation/{ids['obsB']}") == 404  # no treatment relation
    world.audited.chain()
    break_glass(world, doc_a, ids["B"])
    already = len(world.events_of(doc_a))

    assert world.get(doc_a, f"Observation/{ids['obsB']}") == 200
    assert world.get(doc_a, "Observation", subject=f"Patient/{ids['B']}") == 200
    assert world.get(doc_a, f"Observation/{ids['obsA']}") == 200  # their own patient
    read_b, decision_b, search_b, decision_search, read_a = world.events_of(doc_a)[already:]

    for event in (read_b, search_b):
        assert patients(event) == [ids["B"]]
        assert event["purposeOfEvent"] == [{"coding": [BTG], "text": UNSTATED}]
        assert labelled(event)
    assert (subtype(read_b), subtype(search_b)) == ("read", "search-type")
    for decision in (decision_b, decision_search):  # BALP AuthZ: permitted by the emergency
        assert (decision["type"]["code"], decision["outcome"]) == ("110113", "0")
        assert patients(decision) == [ids["B"]] and labelled(decision)
    assert patients(read_a) == [ids["A"]]
    assert not labelled(read_a) and "purposeOfEvent" not in read_a

    # What the privacy officer reviews: the $break-glass call and each access it opened.
    found = world.audited.call(
        "GET",
        "AuditEvent",
        query=[("_security", f"{BTG['system']}|BTG"), ("patient", ids["B"]), ("_count", "50")],
    )
    assert orjson.loads(found.body)["total"] == 2 + 4


def test_access_through_a_treatment_relation_is_not_labelled(world: World) -> None:
    ids = world.ids
    doc_a, doc_b = world.doctor("mvz1", "docA"), world.doctor("mvz2", "docB")
    break_glass(world, doc_a, ids["B"])  # someone else's emergency changes nothing for doc B
    assert world.get(doc_b, f"Observation/{ids['obsB']}") == 200
    assert world.get(doc_b, "Observation", subject=f"Patient/{ids['B']}") == 200
    events = world.events_of(doc_b)
    assert [subtype(e) for e in events] == ["read", "search-type"]
    assert not any(labelled(e) or "purposeOfEvent" in e for e in events)


def test_a_doctor_with_a_relation_and_an_emergency_grant_is_not_labelled(world: World) -> None:
    ids = world.ids
    doc_b = world.doctor("mvz2", "docB")
    break_glass(world, doc_b, ids["B"])  # not needed: MVZ 2 treats B
    already = len(world.events_of(doc_b))
    assert world.get(doc_b, f"Observation/{ids['obsB']}") == 200
    (read,) = world.events_of(doc_b)[already:]
    assert not labelled(read) and "purposeOfEvent" not in read


def test_after_the_grant_expires_the_record_is_closed_again(world: World) -> None:
    ids = world.ids
    doc_a = world.doctor("mvz1", "docA")
    break_glass(world, doc_a, ids["B"])
    assert world.get(doc_a, f"Observation/{ids['obsB']}") == 200
    world.audited.chain()
    already = len(world.events_of(doc_a))
    world.clock.now += BTG_DURATION_US + 1
    assert world.get(doc_a, f"Observation/{ids['obsB']}") == 404
    (refused,) = world.events_of(doc_a)[already:]
    assert refused["outcome"] == "8" and not labelled(refused)


def test_a_write_through_an_emergency_grant_is_labelled(world: World) -> None:
    ids = world.ids
    doc_a = world.doctor("mvz1", "docA")
    break_glass(world, doc_a, ids["B"])
    already = len(world.events_of(doc_a))
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "subject": {"reference": f"Patient/{ids['B']}"},
    }
    response = world.audited.call("POST", "Observation", observation, principal=doc_a)
    assert response.status == 201, response.body
    created, decision = world.events_of(doc_a)[already:]
    assert (subtype(created), patients(created)) == ("create", [ids["B"]])
    assert created["purposeOfEvent"] == [{"coding": [BTG], "text": UNSTATED}]
    assert labelled(created) and labelled(decision)
