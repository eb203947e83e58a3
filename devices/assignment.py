"""Check-ins: which patient a reading belongs to — decided by care staff, never guessed.

https://hl7.org/fhir/uv/phd/ (the PHG must know the patient; legacy Bluetooth devices do not).
Staff check a patient in at one device or at the whole station, for a time window; a multi-user
device (blood-pressure cuff with user 1/2) maps each device user id to a patient. A reading
received at time *t* belongs to:

1. if user ids are mapped at that device at *t*: with a known user id, the patient mapped to
   that id (nobody else); with no or an unknown (255) user id, the one patient checked in at the
   device at all, else nobody;
2. else the one patient checked in at that device at *t*;
3. else the one patient checked in at the whole station at *t*.

Two candidate patients at the same level mean nobody (``None``): the reading goes to review.
Check-ins live in the station database (``outbox.open_database``), table ``check_ins``.
Patients are found in the record core by KVNR or by name and birth date (exactly one match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from devices.errors import DeviceError
from devices.outbox import Database, from_us, to_us

__all__ = [
    "KVID_SYSTEM",
    "UNKNOWN_USER",
    "Assignments",
    "CheckIn",
    "PatientLookupError",
    "find_patient",
]

KVID_SYSTEM = "http://fhir.de/sid/gkv/kvid-10"
UNKNOWN_USER = 255  # Bluetooth SIG: "unknown user"
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_KVNR = re.compile(r"[A-Z][0-9]{9}")
_ADDRESS = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}")


class PatientLookupError(DeviceError):
    """No patient or more than one patient matches (the message names the problem)."""


@dataclass(frozen=True)
class CheckIn:
    id: int
    patient_id: str  # the FHIR id, without "Patient/"
    device_address: str | None  # None: the whole station
    user_id: int | None  # the device's user id (multi-user devices)
    start: datetime
    end: datetime | None  # None: until checked out
    checked_in_by: str | None  # the staff member, for the record

    def covers(self, moment: datetime) -> bool:
        return self.start <= moment and (self.end is None or moment < self.end)


class Assignments:
    """Check-ins in the station database; each call is one short transaction (thread-safe)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def check_in(
        self,
        patient_id: str,
        device_address: str | None,
        user_id: int | None = None,
        *,
        at: datetime,
        until: datetime | None = None,
        by: str | None = None,
    ) -> CheckIn:
        """Checks ``patient_id`` in at a device (or the whole station when ``None``) from ``at``
        until ``until`` or check-out; ``user_id`` maps that device user to the patient."""
        if _ID.fullmatch(patient_id) is None:
            raise ValueError(f"Patienten-ID ungültig / invalid patient id {patient_id!r}")
        address = None if device_address is None else device_address.strip().upper()
        if address is not None and _ADDRESS.fullmatch(address) is None:
            raise ValueError(f"Bluetooth-Adresse ungültig / invalid address {device_address!r}")
        if user_id is not None and (address is None or not 0 <= user_id < UNKNOWN_USER):
            raise ValueError(
                "Benutzernummer nur mit Gerät, 0–254 / a user id needs a device and is 0–254"
            )
        if until is not None and until <= at:
            raise ValueError("Ende vor Beginn / check-in ends before it starts")
        end = None if until is None else to_us(until)
        with self._db.transaction() as db:
            cursor = db.execute(
                "INSERT INTO check_ins (patient_id, device_address, user_id, start_us, end_us,"
                " checked_in_by) VALUES (?, ?, ?, ?, ?, ?)",
                (patient_id, address, user_id, to_us(at), end, by),
            )
            return CheckIn(int(cursor.lastrowid or 0), patient_id, address, user_id, at, until, by)

    def check_out(self, patient_id: str, at: datetime) -> int:
        """Ends every check-in of ``patient_id`` running at ``at``; returns how many."""
        moment = to_us(at)
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE check_ins SET end_us = ? WHERE patient_id = ? AND start_us < ?"
                " AND (end_us IS NULL OR end_us > ?)",
                (moment, patient_id, moment, moment),
            )
            return cursor.rowcount

    def end(self, check_in_id: int, at: datetime) -> None:
        """Ends one check-in at ``at`` (if it is still running then)."""
        moment = to_us(at)
        with self._db.transaction() as db:
            db.execute(
                "UPDATE check_ins SET end_us = ? WHERE id = ? AND start_us < ?"
                " AND (end_us IS NULL OR end_us > ?)",
                (moment, check_in_id, moment, moment),
            )

    def active(self, at: datetime) -> list[CheckIn]:
        """The check-ins running at ``at``."""
        moment = to_us(at)
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT id, patient_id, device_address, user_id, start_us, end_us, checked_in_by"
                " FROM check_ins WHERE start_us <= ? AND (end_us IS NULL OR end_us > ?)"
                " ORDER BY id",
                (moment, moment),
            ).fetchall()
        return [
            CheckIn(i, p, d, u, from_us(s), None if e is None else from_us(e), b)
            for i, p, d, u, s, e, b in rows
        ]

    def patient_for(
        self, device_address: str, user_id: int | None, received_at: datetime
    ) -> str | None:
        """The patient a reading belongs to (rules in the module docstring), or ``None``."""
        running = self.active(received_at)
        address = device_address.upper()
        at_device = [c for c in running if c.device_address == address]
        mapped = [c for c in at_device if c.user_id is not None]
        if mapped:
            if user_id is not None and user_id != UNKNOWN_USER:
                return _only(c.patient_id for c in mapped if c.user_id == user_id)
            return _only(c.patient_id for c in at_device)
        if at_device:
            return _only(c.patient_id for c in at_device)
        return _only(c.patient_id for c in running if c.device_address is None)


def _only(patients: Iterable[str]) -> str | None:
    distinct = set(patients)
    return distinct.pop() if len(distinct) == 1 else None


class PatientSearch(Protocol):
    """What the lookup needs of ``RecordClient``."""

    async def search(
        self, resource_type: str, params: Mapping[str, str]
    ) -> list[dict[str, Any]]: ...


async def find_patient(
    client: PatientSearch,
    *,
    kvnr: str | None = None,
    family: str | None = None,
    given: str | None = None,
    birthdate: date | None = None,
) -> str:
    """The id of the one Patient with this KVNR, or with exactly this family name, given name
    and birth date; :class:`PatientLookupError` naming the problem otherwise."""
    if kvnr is not None:
        kvnr = kvnr.strip().upper()
        if _KVNR.fullmatch(kvnr) is None:
            raise PatientLookupError(
                f"KVNR {kvnr!r} ungültig (Buchstabe und 9 Ziffern) / invalid KVNR "
                "(a letter and 9 digits)"
            )
        found = await client.search(
            "Patient", {"identifier": f"{KVID_SYSTEM}|{kvnr}", "_count": "10"}
        )
        return _one(found, f"KVNR {kvnr}")
    if not (family and given and birthdate):
        raise PatientLookupError(
            "KVNR oder Name, Vorname und Geburtsdatum angeben / give a KVNR or family name, "
            "given name and birth date"
        )
    found = await client.search(
        "Patient",
        {"family": family, "given": given, "birthdate": birthdate.isoformat(), "_count": "20"},
    )
    # Name search matches prefixes ("Meier" finds "Meierhofer"): keep exact matches only.
    exact = [p for p in found if _named(p, family, given) and p.get("birthDate") == str(birthdate)]
    return _one(exact, f"{given} {family}, {birthdate.isoformat()}")


def _named(patient: Mapping[str, Any], family: str, given: str) -> bool:
    for name in patient.get("name") or []:
        if str(name.get("family", "")).casefold() == family.casefold() and any(
            str(g).casefold() == given.casefold() for g in name.get("given") or []
        ):
            return True
    return False


def _one(patients: list[dict[str, Any]], wanted: str) -> str:
    if len(patients) == 1 and isinstance(patients[0].get("id"), str):
        return str(patients[0]["id"])
    if not patients:
        raise PatientLookupError(f"Kein Patient gefunden / no patient found: {wanted}")
    listed = "; ".join(_describe(p) for p in patients)
    raise PatientLookupError(
        f"{len(patients)} Patienten passen, bitte genauer angeben / {len(patients)} patients "
        f"match {wanted}: {listed}"
    )


def _describe(patient: Mapping[str, Any]) -> str:
    names = patient.get("name") or [{}]
    first = names[0] if isinstance(names[0], dict) else {}
    shown = " ".join([*map(str, first.get("given") or []), str(first.get("family", ""))]).strip()
    return f"Patient/{patient.get('id')} ({shown or '?'}, {patient.get('birthDate', '?')})"
