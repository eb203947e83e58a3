"""Retention of patient records: when a record may be erased (§630f(3) BGB, GDPR Art. 17(3)(b), 18).

Pure policy; the record core finds the dates (fhir_server/retention.py) and expunges.

Reading of the law (compliance.md §1; not legal advice):
- §630f(3) BGB: the record is kept "für die Dauer von zehn Jahren nach Abschluss der
  Behandlung". The period runs from the end of the treatment, not from the end of that calendar
  year: the year-end rule belongs to tax and commercial law (§147(4) AO, §257(5) HGB) and to the
  limitation of claims (§199 BGB), not to §630f. Computed as the BGB computes periods (§187(1):
  the day of the event is not counted; §188(2): the period ends with the end of the day of the
  tenth year that has the same date; §188(3): a 29 February without counterpart ends on
  28 February), in German civil days (Europe/Berlin). The record may be erased from the start of
  the following day. ``RetentionRule(from_year_end=True)`` counts from 31 December instead, for
  an operator who erases once a year; it only ever keeps longer.
- Until then the record is never hard-deleted: GDPR Art. 17(3)(b) exempts it from erasure and
  Art. 18 restricts its processing instead (a FHIR delete stays a soft delete).
- "Abschluss der Behandlung": the latest end of any treatment evidence in the patient's
  compartment (:data:`TREATMENT_EVIDENCE`), and no earlier than the latest write to the
  compartment (a late lab result, a discharge letter or a correction shows that documentation
  of the treatment went on). An open period (an encounter in progress, an active episode of
  care) means the treatment has not ended: never due. A data import of old records thus
  counts from the import: longer, never shorter.
- Longer periods under other law (§630f(3) "soweit nicht nach anderen Vorschriften andere
  Aufbewahrungsfristen bestehen": e.g. 30 years for transfusion records, §14(3) TFG, and for
  radiotherapy, §85 StrlSchG with the StrlSchV) and litigation are handled by legal holds: a
  patient with an active hold is never due.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo

__all__ = [
    "TREATMENT_EVIDENCE",
    "Activity",
    "Assessment",
    "LegalHold",
    "RetentionRule",
    "Status",
    "assess",
    "erasable_from",
]

# Resource type -> the date search parameters whose latest end marks a treatment act (R4
# SearchParameter codes; their index rows hold the end of periods and the end of partial dates).
# Plans and bookings (CarePlan, CareTeam, Appointment) are not treatment acts: a plan never
# closed must not keep a record forever.
TREATMENT_EVIDENCE: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "Encounter": ("date",),  # Encounter.period
        "EpisodeOfCare": ("date",),  # EpisodeOfCare.period
        "Observation": ("date",),  # Observation.effective[x]
        "Procedure": ("date",),  # Procedure.performed[x]
        "DiagnosticReport": ("date",),  # DiagnosticReport.effective[x]
        "Immunization": ("date",),  # Immunization.occurrence[x]
        "Composition": ("date",),  # documents: discharge letters, reports
        "Condition": ("recorded-date",),
        "MedicationRequest": ("authoredon",),
        "MedicationAdministration": ("effective-time",),
        "MedicationDispense": ("whenhandedover",),
        "ServiceRequest": ("authored",),
    }
)


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """``years`` after the end of treatment (§630f(3) BGB: 10), counted in ``zone``'s civil
    days, from the end of treatment or (``from_year_end``) from the end of its calendar year."""

    years: int = 10
    from_year_end: bool = False
    zone: str = "Europe/Berlin"


@dataclass(frozen=True, slots=True)
class Activity:
    """What the record shows of one patient's treatment (instants timezone-aware).

    ``last_treatment``: the latest end of treatment evidence (None: none recorded);
    ``ongoing``: some treatment period is open; ``last_recorded``: the latest write to the
    patient's compartment (the Patient resource included)."""

    patient: str
    last_treatment: datetime | None
    ongoing: bool
    last_recorded: datetime


@dataclass(frozen=True, slots=True)
class LegalHold:
    """A hold that stops erasure (litigation, an authority's request, a longer legal period).
    Active while ``released_at`` is None."""

    patient: str
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str | None = None
    released_at: datetime | None = None
    id: int = 0

    @property
    def active(self) -> bool:
        return self.released_at is None


class Status(StrEnum):
    DUE = "due"  # may (and, GDPR Art. 17, should) be erased now
    RETAINED = "retained"  # within the retention period
    ONGOING = "ongoing"  # treatment not ended: no period runs yet
    HELD = "held"  # would be due, but a legal hold stops it


@dataclass(frozen=True, slots=True)
class Assessment:
    """``erasable_from``: the first instant the record may be erased (None while ongoing)."""

    patient: str
    status: Status
    treatment_end: datetime | None
    erasable_from: datetime | None
    holds: tuple[LegalHold, ...] = ()

    @property
    def due(self) -> bool:
        return self.status is Status.DUE


def erasable_from(treatment_end: datetime, rule: RetentionRule = RetentionRule()) -> datetime:
    """The first instant a record whose treatment ended at ``treatment_end`` may be erased."""
    if treatment_end.tzinfo is None:
        raise ValueError("the end of treatment must be timezone-aware")
    zone = ZoneInfo(rule.zone)
    day = treatment_end.astimezone(zone).date()
    if rule.from_year_end:
        last = date(day.year + rule.years, 12, 31)
    else:
        last = _same_date(day, day.year + rule.years)
    return datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone)


def _same_date(day: date, year: int) -> date:
    # §188(3) BGB: without a corresponding day (29 February) the period ends on the month's last.
    try:
        return day.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def assess(
    activity: Activity,
    holds: Sequence[LegalHold],
    now: datetime,
    rule: RetentionRule = RetentionRule(),
) -> Assessment:
    """Is ``activity.patient``'s record due for erasure at ``now``?"""
    active = tuple(h for h in holds if h.active and h.patient == activity.patient)
    if activity.ongoing:
        return Assessment(activity.patient, Status.ONGOING, None, None, active)
    ends = [activity.last_recorded]
    if activity.last_treatment is not None:
        ends.append(activity.last_treatment)
    end = max(ends)
    erasable = erasable_from(end, rule)
    status = Status.RETAINED if now < erasable else Status.HELD if active else Status.DUE
    return Assessment(activity.patient, status, end, erasable, active)
