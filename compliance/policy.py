"""The access policy: which caller may do what to which resource type, and on which rows.

A decision combines three things (all must allow):
- the SMART scopes of the token (compliance/scopes.py: ``cruds`` per type, query restrictions,
  ``patient/`` scopes bound to the launch patient);
- the role table below (what a doctor, care worker, coordinator, administrator, privacy officer
  or patient may do at all — an administrator never sees clinical data, §203 StGB);
- the rows: a patient sees their own compartment; staff see the compartments of patients their
  organisation has a treatment relation with (an ``access_grant`` the record core maintains from
  Patient, CareTeam, ServiceRequest, Appointment and Consent — and, after break-the-glass, the
  user personally); backend services with ``system/`` scopes see all rows their scopes allow.

The result names, per alternative, the row restriction; the record core turns it into search
criteria (fhir_server/access.py), so reads, searches, counts, includes, chains and writes all
pass the same filter. Deny unless something allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from compliance.principal import Principal, Role
from compliance.scopes import Interaction, Level, ScopeContext, allows

__all__ = [
    "DIRECTORY_TYPES",
    "Alternative",
    "Interaction",
    "Rows",
    "TypeAccess",
    "decide",
]


class Rows(Enum):
    ALL = "all"  # every row of the type (within the scope's query restriction)
    OWN = "own"  # the compartment of the principal's own patient
    GRANTED = "granted"  # compartments of patients granted to the organisation (or user)


# Shared directory and definitional data: no patient in it, readable by every signed-in user.
DIRECTORY_TYPES = frozenset(
    {
        "Organization",
        "OrganizationAffiliation",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "HealthcareService",
        "Endpoint",
        "Schedule",
        "Slot",
        "Medication",
        "Substance",
        "CodeSystem",
        "ValueSet",
        "ConceptMap",
        "NamingSystem",
        "StructureDefinition",
        "SearchParameter",
        "Questionnaire",
        "PlanDefinition",
        "ActivityDefinition",
        "Library",
    }
)
# Care coordination (scheduling, referrals, teams, consent records): what a coordinator handles
# without seeing findings.
COORDINATION_TYPES = frozenset(
    {
        "Patient",
        "Appointment",
        "AppointmentResponse",
        "ServiceRequest",
        "CareTeam",
        "EpisodeOfCare",
        "Task",
        "Communication",
        "CommunicationRequest",
        "Consent",
    }
)
# Types no staff role reaches through the clinical class: the audit trail is for the privacy
# officer (and the patient it is about), never for colleagues.
_NOT_CLINICAL = frozenset({"AuditEvent", "Provenance"})

_READ = frozenset({Interaction.READ, Interaction.SEARCH})
_ALL = frozenset(Interaction)
_NO_DELETE = frozenset(
    {Interaction.CREATE, Interaction.READ, Interaction.UPDATE, Interaction.SEARCH}
)


@dataclass(frozen=True, slots=True)
class _Rule:
    """What a role may do on a class of types, and on which rows."""

    types: frozenset[str] | None  # None: the patient-compartment (clinical) types
    interactions: frozenset[Interaction]
    rows: Rows


_ROLE_RULES: Mapping[Role, tuple[_Rule, ...]] = {
    Role.DOCTOR: (
        _Rule(None, _ALL, Rows.GRANTED),
        _Rule(DIRECTORY_TYPES, _READ, Rows.ALL),
    ),
    Role.CARE_STAFF: (
        _Rule(None, _NO_DELETE, Rows.GRANTED),
        # Registration at the pilot centre: find a patient of the district to check them in.
        _Rule(frozenset({"Patient"}), _READ, Rows.ALL),
        _Rule(DIRECTORY_TYPES, _READ, Rows.ALL),
    ),
    Role.COORDINATOR: (
        _Rule(COORDINATION_TYPES, _ALL, Rows.GRANTED),
        _Rule(frozenset({"Patient"}), _READ, Rows.ALL),
        _Rule(DIRECTORY_TYPES, _ALL, Rows.ALL),
    ),
    Role.ADMINISTRATOR: (_Rule(DIRECTORY_TYPES, _ALL, Rows.ALL),),
    Role.PRIVACY_OFFICER: (
        _Rule(frozenset({"AuditEvent", "Consent"}), _READ, Rows.ALL),
        _Rule(DIRECTORY_TYPES, _READ, Rows.ALL),
    ),
    Role.PATIENT: (
        _Rule(None, _READ, Rows.OWN),
        # Patients record and revoke their own consents (revocation = status inactive).
        _Rule(frozenset({"Consent"}), _NO_DELETE, Rows.OWN),
        # GDPR Art. 15 / EHDS: who accessed (or tried to access) my record: the events whose
        # data subject they are, naming the agent ("recipients"); not the events of their own
        # attempts on someone else's record (the record core's in_own_records).
        _Rule(frozenset({"AuditEvent"}), _READ, Rows.OWN),
        _Rule(DIRECTORY_TYPES, _READ, Rows.ALL),
    ),
}


@dataclass(frozen=True, slots=True)
class Alternative:
    """One way the interaction is allowed: rows AND the scope's query restriction.

    ``patient``: for ``Rows.OWN`` and for ``patient/`` scopes, the patient whose compartment
    bounds the rows (both may apply: a doctor's patient-launch token is also limited to the
    organisation's grants)."""

    rows: Rows
    patient: str | None = None
    criteria: tuple[tuple[str, str], ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.rows is Rows.ALL and self.patient is None and not self.criteria


@dataclass(frozen=True, slots=True)
class TypeAccess:
    """The decision for one interaction on one type: allowed within the union of
    ``alternatives``. ``grantees``: the references an ``access_grant`` row may name for
    ``Rows.GRANTED`` (the organisation, and the user for break-the-glass)."""

    alternatives: tuple[Alternative, ...]
    grantees: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return bool(self.alternatives)

    @property
    def unrestricted(self) -> bool:
        return any(a.unrestricted for a in self.alternatives)


DENY = TypeAccess(())


def _role_rows(
    roles: frozenset[Role], interaction: Interaction, rtype: str, clinical: bool
) -> set[Rows]:
    rows: set[Rows] = set()
    for role in roles:
        for rule in _ROLE_RULES.get(role, ()):
            if interaction not in rule.interactions:
                continue
            if rule.types is None:
                if clinical and rtype not in _NOT_CLINICAL:
                    rows.add(rule.rows)
            elif rtype in rule.types:
                rows.add(rule.rows)
    # Seeing every row makes a narrower rule for the same type redundant.
    return {Rows.ALL} if Rows.ALL in rows else rows


def grantees(principal: Principal) -> tuple[str, ...]:
    out = []
    if principal.organization:
        out.append(f"Organization/{principal.organization}")
    if principal.fhir_user and principal.fhir_user.startswith("Practitioner/"):
        out.append(principal.fhir_user)
    return tuple(out)


def decide(
    principal: Principal, interaction: Interaction, rtype: str, *, clinical: bool
) -> TypeAccess:
    """May ``principal`` perform ``interaction`` on ``rtype``, and on which rows?

    ``clinical``: the type belongs to the Patient compartment (the record core knows)."""
    decision = allows(principal.scopes, ScopeContext(principal.patient), interaction, rtype)
    if not decision.allowed:
        return DENY
    alternatives: list[Alternative] = []
    if principal.is_system:
        for grant in decision.grants:
            if grant.level is Level.SYSTEM:
                alternatives.append(Alternative(Rows.ALL, None, grant.criteria))
        return TypeAccess(tuple(alternatives))
    rows = _role_rows(principal.roles, interaction, rtype, clinical)
    for grant in decision.grants:
        if grant.level is Level.SYSTEM:
            continue  # a user's token never acts as the system
        for row in sorted(rows, key=lambda r: r.value):
            if row is Rows.OWN and principal.patient is None:
                continue
            patient = grant.patient if grant.level is Level.PATIENT else None
            if row is Rows.OWN:
                if patient is not None and patient != principal.patient:
                    continue  # a patient's token bound to someone else's record
                patient = principal.patient
            if patient is not None and not clinical:
                patient = None  # a compartment does not restrict directory data
            alternative = Alternative(row, patient, grant.criteria)
            if alternative not in alternatives:
                alternatives.append(alternative)
    return TypeAccess(tuple(alternatives), grantees(principal))
