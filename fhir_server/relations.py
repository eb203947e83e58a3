"""Treatment relations → access grants: which organisation (or person) may see which patient.

A staff member sees the records of patients their organisation has a treatment relation with
(compliance/policy.py, Rows.GRANTED). The relations live in ordinary FHIR resources; whenever
one of them is written, the grants of the patients it concerns are recomputed in the same
transaction and stored in ``access_grant``, which searches join (criteria.Granted):

- Patient.managingOrganization and generalPractitioner: the patient's own practice (direct);
- an active CareTeam (its members and managing organisation), an active ServiceRequest (the
  referral's requester and performer), an Appointment that is booked or under way (its
  participants, until 90 days after its end): the network providers treating the patient —
  unless the patient's network-sharing Consent denies that provider (opt-out; the relation is
  the treatment context, GDPR Art. 9(2)(h));
- a permitting Consent (network sharing, telemonitoring) for a named provider, within its
  period and for its resource classes (compliance/consent.py evaluates).

Break-the-glass grants are added by the emergency-access operation and never recomputed here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from compliance import consent as consent_rules
from fhir_server._time import from_micros, parse_period, to_micros
from fhir_server.compartments import patient_compartment
from fhir_server.criteria import Match, Reference
from fhir_server.search.sql import match_ids
from fhir_server.store import GrantRow, NewVersion, Statement, UnitOfWork

# Types whose writes change who may see a patient.
RELATION_TYPES = frozenset(
    {"Patient", "CareTeam", "ServiceRequest", "Appointment", "EpisodeOfCare", "Consent"}
)
_ACTIVE = {
    "CareTeam": frozenset({"active"}),
    "ServiceRequest": frozenset({"active", "on-hold"}),
    "Appointment": frozenset(
        {"proposed", "pending", "booked", "arrived", "checked-in", "fulfilled"}
    ),
    "EpisodeOfCare": frozenset({"planned", "waitlist", "active", "onhold"}),
    "Consent": frozenset({"active"}),
}
# How the patient is named in each relation type (search parameters of the R4 definitions).
_PATIENT_PARAM = {
    "CareTeam": "patient",
    "ServiceRequest": "patient",
    "Appointment": "patient",
    "EpisodeOfCare": "patient",
    "Consent": "patient",
}
_GRANTEE_TYPES = ("Organization/", "Practitioner/")
_APPOINTMENT_AFTERCARE_US = 90 * 24 * 3600 * 1_000_000
_MAX_RELATIONS = 1000  # per type and patient; more is a data error, not a care network


@dataclass
class Tracker:
    """Collects, during one unit of work, the patients whose grants must be recomputed."""

    patients: set[str] = field(default_factory=set)

    def before_change(self, uow: UnitOfWork, version: NewVersion) -> None:
        """The patients the resource concerned before this write (a relation may move away)."""
        if version.type not in RELATION_TYPES or version.prior is None:
            return
        if version.type == "Patient":
            self.patients.add(version.id)
            return
        statement = Statement(
            "SELECT target_id FROM ix_reference WHERE res_type = :t AND res_id = :i "
            "AND target_type = 'Patient' AND target_id IS NOT NULL",
            {"t": version.type, "i": version.id},
        )
        self.patients.update(row[0] for row in uow.select(statement))

    def changed(self, version: NewVersion) -> None:
        if version.type not in RELATION_TYPES:
            return
        if version.type == "Patient":
            self.patients.add(version.id)
            return
        params = set(patient_compartment().get(version.type, ()))
        if version.index is not None:
            for row in version.index.references:
                if row.param in params and row.target_type == "Patient" and row.target_id:
                    self.patients.add(row.target_id)

    def refresh(self, uow: UnitOfWork, now: int) -> None:
        for patient in sorted(self.patients):
            uow.replace_grants(patient, grants_for(uow, patient, now))
        self.patients.clear()


def grants_for(uow: UnitOfWork, patient: str, now: int) -> list[GrantRow]:
    """All recomputable grants of one patient, from the current resources."""
    rows: list[GrantRow] = []
    current = uow.current("Patient", patient)
    if current is None or current.content is None:
        return rows
    resource = orjson.loads(current.content)
    source = f"Patient/{patient}"
    direct = [resource.get("managingOrganization"), *(resource.get("generalPractitioner") or [])]
    for grantee in _grantees(direct):
        rows.append(GrantRow(patient, grantee, "*", 0, None, "managing", source))
    relations = {t: _related(uow, t, patient) for t in _PATIENT_PARAM}
    consents = [c for _, c in relations.pop("Consent")]
    at = from_micros(now)
    direct_grantees = {r.grantee for r in rows}
    for rtype, found in relations.items():
        for id, item in found:
            until = _until(rtype, item)
            for grantee in _grantees(_participants(rtype, item)):
                if grantee in direct_grantees:
                    continue
                if _denied(consents, grantee, at):
                    continue
                basis = {"ServiceRequest": "referral"}.get(rtype, rtype.lower())
                rows.append(GrantRow(patient, grantee, "*", 0, until, basis, f"{rtype}/{id}"))
    rows.extend(_consented(patient, consents, at))
    return rows


def _related(uow: UnitOfWork, rtype: str, patient: str) -> list[tuple[str, dict[str, Any]]]:
    criterion = Match(_PATIENT_PARAM[rtype], "reference", None, (Reference("Patient", patient),))
    out = []
    for id in match_ids(uow, rtype, [criterion], _MAX_RELATIONS):
        stored = uow.current(rtype, id)
        if stored is None or stored.content is None:
            continue
        item = orjson.loads(stored.content)
        if item.get("status") in _ACTIVE[rtype]:
            out.append((id, item))
    return out


def _participants(rtype: str, item: dict[str, Any]) -> list[Any]:
    if rtype == "CareTeam":
        members = [p.get("member") for p in item.get("participant") or [] if isinstance(p, dict)]
        return [*members, *(item.get("managingOrganization") or [])]
    if rtype == "ServiceRequest":
        return [item.get("requester"), *(item.get("performer") or [])]
    if rtype == "Appointment":
        return [p.get("actor") for p in item.get("participant") or [] if isinstance(p, dict)]
    return [item.get("managingOrganization"), *(item.get("team") or [])]


def _until(rtype: str, item: dict[str, Any]) -> int | None:
    if rtype != "Appointment":
        return None
    end = item.get("end") or item.get("start")
    period = parse_period(end) if isinstance(end, str) else None
    return None if period is None else period[1] + _APPOINTMENT_AFTERCARE_US


def _grantees(references: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for ref in references:
        value = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(value, str) and value.startswith(_GRANTEE_TYPES) and value not in out:
            out.append(value)
    return out


def _denied(consents: list[dict[str, Any]], grantee: str, at: datetime) -> bool:
    """Opt-out: a relation counts unless an active network-sharing consent decides against
    this provider (a consent that says nothing about them leaves the relation standing)."""
    verdict = consent_rules.evaluate(
        consents,
        actor=grantee,
        resource_type="Patient",
        purpose="TREAT",
        at=at,
        kind="network-sharing",
    )
    return not verdict.permit and bool(verdict.basis)


def _consented(patient: str, consents: list[dict[str, Any]], at: datetime) -> list[GrantRow]:
    """Grants for the named providers the patient's consents let in without another relation.
    A permit for "everyone" is no grant (a relation must say who treats the patient); a permit
    for all types but some is left out rather than over-granted (fail closed)."""
    rows: list[GrantRow] = []
    for kind in ("network-sharing", "telemonitoring"):
        for grant in consent_rules.grants(consents, at, kind=kind):
            actor = grant.actor
            if actor is None or not actor.startswith(_GRANTEE_TYPES):
                continue
            if grant.types is None and grant.except_types:
                continue
            until = None if grant.valid_until is None else to_micros(grant.valid_until)
            for res_class in sorted(grant.types) if grant.types is not None else ("*",):
                rows.append(
                    GrantRow(
                        patient,
                        actor,
                        res_class,
                        to_micros(grant.valid_from),
                        until,
                        kind,
                        "Consent",
                    )
                )
    return rows
