"""Check-in rules (a reading goes to a patient only when that is certain) and the patient lookup
in a real record core."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devices.assignment import KVID_SYSTEM, Assignments, PatientLookupError, find_patient
from devices.outbox import Database, Outbox, open_database
from devices.reading import Reading
from tests.devices.test_record_client import (
    FaultTransport,
    Station,
    client_for,
    create_patient,
    station_fixture,
)

__all__ = ["station_fixture"]  # the shared server (module scope, both databases)

CUFF = "A0:B1:C2:D3:E4:01"
SCALE = "A0:B1:C2:D3:E4:02"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(name="database")
def database_fixture(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "station.sqlite3")
    yield database
    database.close()


@pytest.fixture(name="assignments")
def assignments_fixture(database: Database) -> Assignments:
    return Assignments(database)


def test_a_device_check_in_covers_its_time_window(assignments: Assignments) -> None:
    assignments.check_in("anna", CUFF.lower(), at=at(0), until=at(30), by="pflege.mueller")
    assert assignments.patient_for(CUFF, None, at(0)) == "anna"
    assert assignments.patient_for(CUFF, None, at(29.9)) == "anna"
    assert assignments.patient_for(CUFF, None, at(-1)) is None  # before
    assert assignments.patient_for(CUFF, None, at(30)) is None  # until is exclusive
    assert assignments.patient_for(SCALE, None, at(10)) is None  # another device
    (running,) = assignments.active(at(10))
    assert (running.device_address, running.checked_in_by) == (CUFF, "pflege.mueller")


def test_check_out_ends_the_patients_check_ins_then(assignments: Assignments) -> None:
    assignments.check_in("anna", CUFF, at=at(0))
    assignments.check_in("anna", SCALE, at=at(5))
    assignments.check_in("bernd", None, at=at(0))
    assert assignments.check_out("anna", at(20)) == 2
    assert assignments.patient_for(CUFF, None, at(19)) == "anna"  # readings before still count
    assert assignments.patient_for(CUFF, None, at(21)) == "bernd"  # the station-wide one
    assert assignments.check_out("anna", at(25)) == 0
    later = assignments.check_in("anna", CUFF, at=at(40))
    assignments.end(later.id, at(50))
    assert assignments.patient_for(CUFF, None, at(45)) == "anna"
    assert assignments.patient_for(CUFF, None, at(55)) == "bernd"


def test_the_station_check_in_covers_every_device_unless_one_is_taken(
    assignments: Assignments,
) -> None:
    assignments.check_in("anna", None, at=at(0))
    assert assignments.patient_for(CUFF, None, at(1)) == "anna"
    assert assignments.patient_for(SCALE, 2, at(1)) == "anna"
    assignments.check_in("bernd", SCALE, at=at(2))
    assert assignments.patient_for(SCALE, None, at(3)) == "bernd"  # the device's own check-in
    assert assignments.patient_for(CUFF, None, at(3)) == "anna"


def test_two_candidates_mean_nobody(assignments: Assignments) -> None:
    assignments.check_in("anna", CUFF, at=at(0))
    assignments.check_in("bernd", CUFF, at=at(1))
    assert assignments.patient_for(CUFF, None, at(0.5)) == "anna"
    assert assignments.patient_for(CUFF, None, at(2)) is None
    assignments.check_in("carla", None, at=at(0))
    assignments.check_in("dieter", None, at=at(0))
    assert assignments.patient_for(SCALE, None, at(2)) is None
    # the same patient twice is not ambiguous
    assignments.check_in("erika", SCALE, at=at(10))
    assignments.check_in("erika", SCALE, at=at(11))
    assert assignments.patient_for(SCALE, None, at(12)) == "erika"


def test_device_users_go_only_to_their_mapped_patient(assignments: Assignments) -> None:
    assignments.check_in("anna", CUFF, 1, at=at(0))
    assignments.check_in("bernd", CUFF, 2, at=at(0))
    assert assignments.patient_for(CUFF, 1, at(1)) == "anna"
    assert assignments.patient_for(CUFF, 2, at(1)) == "bernd"
    assert assignments.patient_for(CUFF, 3, at(1)) is None  # user 3 is nobody we know
    assert assignments.patient_for(CUFF, None, at(1)) is None  # anna or bernd?
    assert assignments.patient_for(CUFF, 255, at(1)) is None  # "unknown user"


def test_a_mapped_user_wins_over_a_plain_check_in(assignments: Assignments) -> None:
    assignments.check_in("anna", CUFF, 1, at=at(0))
    assignments.check_in("bernd", CUFF, at=at(0))
    assignments.check_in("carla", None, at=at(0))
    assert assignments.patient_for(CUFF, 1, at(1)) == "anna"
    assert assignments.patient_for(CUFF, 2, at(1)) is None  # not anna's, and not a guess
    assert assignments.patient_for(CUFF, None, at(1)) is None


def test_without_user_mappings_the_user_id_does_not_matter(assignments: Assignments) -> None:
    assignments.check_in("anna", CUFF, at=at(0))
    assert assignments.patient_for(CUFF, 1, at(1)) == "anna"
    assert assignments.patient_for(CUFF, 255, at(1)) == "anna"
    assignments.check_in("bernd", SCALE, 1, at=at(0))
    assert assignments.patient_for(SCALE, None, at(1)) == "bernd"  # the only one there


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda a: a.check_in("Patient/anna", CUFF, at=at(0)), "invalid patient id"),
        (lambda a: a.check_in("anna", "not-an-address", at=at(0)), "invalid address"),
        (lambda a: a.check_in("anna", None, 1, at=at(0)), "needs a device"),
        (lambda a: a.check_in("anna", CUFF, 255, at=at(0)), "0–254"),
        (lambda a: a.check_in("anna", CUFF, at=at(5), until=at(5)), "ends before"),
        (lambda a: a.check_in("anna", CUFF, at=datetime(2026, 3, 2, 8, 0)), "naive"),
    ],
)
def test_bad_check_ins_are_refused(
    assignments: Assignments, call: Callable[[Assignments], object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        call(assignments)
    assert assignments.active(at(5)) == []


def test_check_ins_share_the_outbox_file_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "station.sqlite3"
    database = open_database(path)
    Assignments(database).check_in("anna", CUFF, 1, at=at(0))
    Outbox(database, lambda: at(0)).append(Reading(CUFF, "2a35", b"\x00", at(1)))
    database.close()
    database = open_database(path)
    try:
        assert Assignments(database).patient_for(CUFF, 1, at(1)) == "anna"
        assert len(Outbox(database, lambda: at(0)).received()) == 1
    finally:
        database.close()


# --- patient lookup in the record core -----------------------------------------------------------


def kvnr() -> str:
    return "X" + "".join(secrets.choice("0123456789") for _ in range(9))


def test_find_patient_by_kvnr_or_name_and_birth_date(station: Station) -> None:
    server = station.server
    erika_kvnr, shared_kvnr = kvnr(), kvnr()
    family = "Lookup" + secrets.token_hex(3)
    erika = create_patient(
        server,
        family,
        identifier=[{"system": KVID_SYSTEM, "value": erika_kvnr}],
        birthDate="1961-04-12",
    )
    # same given name, longer family name (a prefix match) and another birth date
    create_patient(server, family + "er", birthDate="1961-04-12")
    create_patient(server, family, birthDate="1970-01-01")
    for _ in range(2):
        create_patient(
            server, "Doppelt", identifier=[{"system": KVID_SYSTEM, "value": shared_kvnr}]
        )

    async def scenario() -> None:
        async with client_for(server, station.key, FaultTransport()) as client:
            assert await find_patient(client, kvnr=erika_kvnr.lower()) == erika
            assert (
                await find_patient(
                    client, family=family, given="erika", birthdate=date(1961, 4, 12)
                )
                == erika
            )
            with pytest.raises(PatientLookupError, match="no patient found: KVNR"):
                await find_patient(client, kvnr=kvnr())
            with pytest.raises(PatientLookupError, match="2 patients match") as twice:
                await find_patient(client, kvnr=shared_kvnr)
            assert str(twice.value).count("Patient/") == 2 and "Erika Doppelt" in str(twice.value)
            with pytest.raises(PatientLookupError, match="no patient found"):
                await find_patient(client, family=family, given="Erika", birthdate=date(1990, 1, 1))

    asyncio.run(scenario())


def test_lookup_requests_are_checked_before_asking() -> None:
    async def scenario() -> None:
        # a client that must not be used: no network request may happen
        with pytest.raises(PatientLookupError, match="a letter and 9 digits"):
            await find_patient(Unused(), kvnr="12345")
        with pytest.raises(PatientLookupError, match="give a KVNR or"):
            await find_patient(Unused(), family="Muster", given="Erika")

    asyncio.run(scenario())


class Unused:
    async def search(self, resource_type: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        raise AssertionError("no search expected")
