"""The retention job: expunges the records whose retention period has ended (§630f BGB, GDPR Art. 17).

The policy (when a record is due, legal holds) is ``compliance.retention``; this module finds
each patient's dates in the index, asks the policy, and expunges what is due, one patient per
transaction (``RetentionStore.expunge``): every version of every resource in the patient's
compartment (soft-deleted ones included: patient_record.py) and of the Patient, their index rows,
subscription rows, access grants and released holds. The audit trail stays (evidence); the
expunge itself is recorded there (``Patient/<id>/$expunge``, one AuditEvent per patient).

Safe against a changing record: the activity a patient was assessed on is checked again under
the write lock, so a write that lands between the assessment and the expunge (or a hold placed
meanwhile) leaves the record alone. Resources shared with a patient still on record are kept.
A FHIR delete stays a soft delete: this job is the only hard delete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from compliance.principal import Principal, system_principal
from compliance.retention import (
    TREATMENT_EVIDENCE,
    Activity,
    Assessment,
    LegalHold,
    RetentionRule,
    Status,
    assess,
)
from fhir_server._time import from_micros
from fhir_server.context import Context
from fhir_server.patient_record import compartment_links, deleted_members
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.search.rows import DATE_MAX
from fhir_server.search.sql import everything_statement
from fhir_server.store import (
    Expunged,
    ExpungePlan,
    HoldRecord,
    PatientActivity,
    RecordChanged,
    RetentionRun,
    RetentionStore,
    UnderLegalHold,
)

__all__ = ["PatientResult", "RetentionJob", "RetentionReport", "UnknownPatient"]


class UnknownPatient(LookupError):
    """A hold names a patient that is not on record."""


@dataclass(frozen=True, slots=True)
class PatientResult:
    """One due patient: what was (dry run: would be) expunged, per type, and how long it took."""

    assessment: Assessment
    resources: dict[str, int]
    versions: int | None = None  # None in a dry run
    kept: tuple[tuple[str, str], ...] = ()
    skipped: str | None = None  # why it was not expunged after all
    seconds: float = 0.0
    notes: tuple[str, ...] = ()  # follow-ups (``on_expunged``) that failed


@dataclass(frozen=True, slots=True)
class RetentionReport:
    dry_run: bool
    patients: int
    results: tuple[PatientResult, ...]
    held: tuple[Assessment, ...]
    ongoing: int
    dangling: tuple[tuple[str, str, str, str], ...] = ()
    run: RetentionRun | None = None

    @property
    def expunged(self) -> tuple[PatientResult, ...]:
        return tuple(r for r in self.results if r.versions is not None and r.skipped is None)


@dataclass(frozen=True, slots=True)
class _Candidate:
    assessment: Assessment
    activity: PatientActivity
    extra: tuple[tuple[str, str], ...]


@dataclass
class RetentionJob:
    """The retention job on one record core. ``principal``: who runs it (the audit trail's
    agent); ``now`` comes from the record core's clock."""

    ctx: Context
    store: RetentionStore
    rule: RetentionRule = field(default_factory=RetentionRule)
    principal: Principal = field(
        default_factory=lambda: system_principal("system/*.cruds", "medikus-retention")
    )
    # Called with the patient id after each expunge, for data kept outside the record core's
    # tables (e.g. patient accounts and links of the identity store); failures are reported.
    on_expunged: Sequence[Callable[[str], object]] = ()

    def __post_init__(self) -> None:
        self._links = compartment_links()
        self._evidence = tuple(
            (rtype, param) for rtype, params in TREATMENT_EVIDENCE.items() for param in params
        )

    # -- assessment ------------------------------------------------------------------------

    def assess(self) -> list[Assessment]:
        """Every patient on record, assessed now (what a dry run shows)."""
        return [c.assessment for c in self._candidates()]

    def _candidates(self) -> list[_Candidate]:
        now = self._now()
        holds = [_legal_hold(h) for h in self.store.holds()]
        deleted: dict[str, list[tuple[str, str, int]]] = {}
        for member in deleted_members(self.ctx):
            for patient in member.patients:
                deleted.setdefault(patient, []).append(
                    (member.type, member.id, member.last_updated)
                )
            if len(member.patients) > 1:
                self._note_shared(deleted, member.type, member.id, member.patients)
        out = []
        for activity in self.store.activity(self._links, self._evidence):
            extra = deleted.get(activity.patient, [])
            policy = _policy_activity(activity, extra)
            assessment = assess(policy, holds, now, self.rule)
            keys = tuple((t, i) for t, i, _ in extra)
            out.append(_Candidate(assessment, activity, keys))
        return out

    def _note_shared(
        self,
        deleted: dict[str, list[tuple[str, str, int]]],
        rtype: str,
        id: str,
        patients: frozenset[str],
    ) -> None:
        # A deleted resource of several patients goes with the last of them still on record.
        on_record = {p for p in patients if self.ctx.store.read("Patient", p) is not None}
        if len(on_record) > 1:
            for patient in on_record:
                deleted[patient] = [e for e in deleted[patient] if (e[0], e[1]) != (rtype, id)]

    # -- the run ---------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False, limit: int | None = None) -> RetentionReport:
        """Expunges every due record (at most ``limit``); ``dry_run``: only lists them."""
        started = self.ctx.clock()
        candidates = self._candidates()
        due = [c for c in candidates if c.assessment.due]
        results = [self._preview(c) if dry_run else self._expunge(c) for c in due[:limit]]
        done = [r for r in results if r.versions is not None and r.skipped is None]
        dangling = tuple(self.store.dangling_references(20)) if done else ()
        held = tuple(c.assessment for c in candidates if c.assessment.status is Status.HELD)
        ongoing = sum(1 for c in candidates if c.assessment.status is Status.ONGOING)
        run = RetentionRun(
            started=started,
            finished=self.ctx.clock(),
            dry_run=dry_run,
            patients=len(candidates),
            due=len(due),
            held=len(held),
            expunged=len(done),
            skipped=len(results) - len(done) if not dry_run else 0,
            run_by=self.principal.subject,
        )
        self.store.record_run(run)
        self._flush_audit()
        return RetentionReport(
            dry_run, len(candidates), tuple(results), held, ongoing, dangling, run
        )

    def _preview(self, candidate: _Candidate) -> PatientResult:
        patient = candidate.assessment.patient
        statement = everything_statement(
            patient, _grouped(self._links), None, None, 1_000_000_000, include_patient=True
        )
        keys = {(str(t), str(i)) for t, i in self.ctx.store.select(statement)}
        keys.update(candidate.extra)
        counts: dict[str, int] = {}
        for rtype, _ in sorted(keys):
            counts[rtype] = counts.get(rtype, 0) + 1
        counts.setdefault("Patient", 1)
        return PatientResult(candidate.assessment, counts)

    def _expunge(self, candidate: _Candidate) -> PatientResult:
        patient = candidate.assessment.patient
        plan = ExpungePlan(
            patient, self._links, self._evidence, candidate.activity, candidate.extra
        )
        began = time.perf_counter()
        outcome: dict[str, Expunged | str] = {}

        def work() -> FhirResponse:
            try:
                expunged = self.store.expunge(plan)
            except (RecordChanged, UnderLegalHold) as exc:
                outcome["skipped"] = str(exc)
                return _outcome(409, "conflict", str(exc))
            outcome["done"] = expunged
            return FhirResponse.json(200, _parameters(expunged))

        self._audited(f"Patient/{patient}/$expunge", work)
        seconds = time.perf_counter() - began
        done = outcome.get("done")
        if isinstance(done, Expunged):
            notes = tuple(self._follow_up(patient))
            return PatientResult(
                candidate.assessment,
                done.resources,
                done.versions,
                done.kept,
                None,
                seconds,
                notes,
            )
        return PatientResult(candidate.assessment, {}, 0, (), str(outcome["skipped"]), seconds)

    def _follow_up(self, patient: str) -> list[str]:
        failed = []
        for hook in self.on_expunged:
            try:
                hook(patient)
            except Exception as exc:  # the record is gone either way: report, go on
                failed.append(f"{getattr(hook, '__qualname__', hook)}: {exc}")
        return failed

    # -- legal holds -----------------------------------------------------------------------

    def place_hold(self, patient: str, reason: str, by: str) -> HoldRecord:
        """Stops the expunge of ``patient``'s record until released (who, why and when kept)."""
        if not reason.strip():
            raise ValueError("a legal hold needs a reason")
        if self.ctx.store.read("Patient", patient) is None:
            raise UnknownPatient(f"Patient/{patient} is not on record")
        held: list[HoldRecord] = []

        def work() -> FhirResponse:
            held.append(self.store.place_hold(patient, reason, by, self.ctx.clock()))
            return FhirResponse.json(200, _hold_parameters(held))

        self._audited(f"Patient/{patient}/$legal-hold", work)
        self._flush_audit()
        return held[0]

    def release_holds(self, patient: str, reason: str, by: str) -> list[HoldRecord]:
        """Releases ``patient``'s active holds; returns those released (none: empty)."""
        released: list[HoldRecord] = []

        def work() -> FhirResponse:
            released.extend(self.store.release_holds(patient, by, self.ctx.clock(), reason))
            return FhirResponse.json(200, _hold_parameters(released))

        self._audited(f"Patient/{patient}/$legal-hold-release", work)
        self._flush_audit()
        return released

    def holds(self, patient: str | None = None, *, released: bool = False) -> list[HoldRecord]:
        return self.store.holds(patient, released=released)

    # -- helpers ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        return from_micros(self.ctx.clock())

    def _audited(self, path: str, work: Callable[[], FhirResponse]) -> None:
        """Runs ``work`` as an operation on the audit trail (one BALP event naming the patient);
        without an audit trail (tools, tests) it just runs."""
        audit = self.ctx.audit
        if audit is None:
            work()
            return
        request = FhirRequest("POST", path, principal=self.principal)
        audit.audited(request, work)

    def _flush_audit(self) -> None:
        # The trail writes read-like events in the background; a job that ends right after must
        # not leave its events in memory.
        flush = getattr(self.ctx.audit, "flush", None)
        if callable(flush):
            flush()


def _policy_activity(activity: PatientActivity, extra: list[tuple[str, str, int]]) -> Activity:
    recorded = max([activity.last_recorded, *(last for _, _, last in extra)])
    end = activity.treatment_end
    ongoing = end is not None and end >= DATE_MAX
    treated = from_micros(end) if end is not None and not ongoing else None
    return Activity(activity.patient, treated, ongoing, from_micros(recorded))


def _legal_hold(record: HoldRecord) -> LegalHold:
    return LegalHold(
        record.patient,
        record.reason,
        record.placed_by,
        from_micros(record.placed_at),
        record.released_by,
        from_micros(record.released_at) if record.released_at is not None else None,
        record.id,
    )


def _grouped(links: tuple[tuple[str, str], ...]) -> list[tuple[str, tuple[str, ...]]]:
    grouped: dict[str, list[str]] = {}
    for rtype, param in links:
        grouped.setdefault(rtype, []).append(param)
    return [(rtype, tuple(params)) for rtype, params in sorted(grouped.items())]


def _parameters(expunged: Expunged) -> dict[str, Any]:
    """What the expunge removed, as the operation's answer (counts only, no content)."""
    parts: list[dict[str, Any]] = [
        {"name": "type", "part": [{"name": rtype, "valueInteger": n}]}
        for rtype, n in sorted(expunged.resources.items())
    ]
    parts.append({"name": "versions", "valueInteger": expunged.versions})
    return {"resourceType": "Parameters", "parameter": parts}


def _hold_parameters(holds: list[HoldRecord]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "hold", "valueInteger": h.id} for h in holds],
    }


def _outcome(status: int, code: str, text: str) -> FhirResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return FhirResponse(status, orjson.dumps(body), {}, body)
