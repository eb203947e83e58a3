"""Exports of patient data: one patient's whole record (GDPR Art. 15/20) and pseudonymised research extracts.

**The record** (:func:`export_patient`, :func:`write_patient_export`, the operation handler
:func:`record_export`): a FHIR Bundle of type ``collection`` (https://hl7.org/fhir/R4/bundle.html)
with, in this order,
1. every page of ``Patient/[id]/$everything``: the Patient, every current resource of the
   patient's compartment and the resources they refer to (practitioners, organisations, …).
   That includes the AuditEvents about the patient, since the audit trail stores them as
   resources of the compartment: who accessed the record is part of the copy (Art. 15(1)(c),
   EHDS);
2. with ``history`` (the default): every earlier version of those resources, and every version
   with content of soft-deleted members (and of the Patient, if it was deleted): §630f BGB keeps
   corrections visible, and CJEU C-307/22 wants the first copy complete. Entries of one resource
   share the fullUrl and differ in ``meta.versionId`` (Bundle invariant bdl-7).
The stored JSON is embedded byte for byte. The caller decides who may export (the patient, the
privacy officer): these functions read through the store without access filtering.

**Research extracts** (:func:`research_export`): NDJSON, one de-identified resource per line
(compliance/research.py: only coded and quantitative data; pseudonyms keyed per study, dates
shifted per patient). Read through the store's search statements and decrypted reads, never by
SQL over content (content is encrypted at rest).
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Iterator
from typing import IO, Any, Final

import orjson

from compliance.keyring import Keyring
from compliance.principal import Role
from compliance.pseudonyms import DEFAULT_MAX_SHIFT_DAYS, StudyPseudonyms
from compliance.research import deidentify
from fhir_server._time import format_instant
from fhir_server.compartments import own_compartment, patient_compartment
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.patient_record import KEPT_TYPES, deleted_members, versions
from fhir_server.request import FHIR_JSON, FhirRequest, FhirResponse
from fhir_server.search.sql import Compiler, everything_statement, references_statement
from fhir_server.store import StoredVersion

__all__ = [
    "export_patient",
    "record_export",
    "research_export",
    "research_types",
    "write_patient_export",
]

_PAGE: Final = 500
_TRUE: Final = ("true", "1", "yes")


# --- one patient's record -----------------------------------------------------------------------


def export_patient(
    ctx: Context, patient_id: str, *, base: str = "", history: bool = True
) -> dict[str, Any]:
    """The whole record of ``patient_id`` as a collection Bundle (parsed; large records: use
    :func:`write_patient_export`). Raises FhirError (not found) for an unknown patient."""
    buffer = io.BytesIO()
    write_patient_export(ctx, patient_id, buffer, base=base, history=history)
    parsed: dict[str, Any] = orjson.loads(buffer.getvalue())
    return parsed


def write_patient_export(
    ctx: Context, patient_id: str, out: IO[bytes], *, base: str = "", history: bool = True
) -> dict[str, int]:
    """Streams the record Bundle to ``out``; returns the number of entries per kind
    (``current``, ``referenced``, ``history``). ``base``: the FHIR base URL of the fullUrls
    (none without it)."""
    patient = ctx.store.read("Patient", patient_id)
    if patient is None:
        raise FhirError(Category.NOT_FOUND, f"Patient/{patient_id} is not known.")
    head = {
        "resourceType": "Bundle",
        "id": ctx.new_id(),
        "meta": {"lastUpdated": format_instant(ctx.clock())},
        "type": "collection",
        "timestamp": format_instant(ctx.clock()),
    }
    out.write(orjson.dumps(head)[:-1] + b',"entry":[')
    counts = {"current": 0, "referenced": 0, "history": 0}
    first = True
    for version, kind in _record(ctx, patient_id, patient, history):
        if version.content is None:
            continue
        entry: dict[str, Any] = {"resource": orjson.Fragment(version.content)}
        if base:
            entry = {"fullUrl": f"{base}/{version.type}/{version.id}", **entry}
        out.write((b"" if first else b",") + orjson.dumps(entry))
        first = False
        counts[kind] += 1
    out.write(b"]}")
    return counts


def _record(
    ctx: Context, patient_id: str, patient: StoredVersion, history: bool
) -> Iterator[tuple[StoredVersion, str]]:
    # AuditEvents about the patient, not those of their own access to others' records.
    compartment = sorted(own_compartment().items())
    members: list[StoredVersion] = []
    referenced: set[tuple[str, str]] = set()
    after: tuple[str, str] | None = None
    while True:  # every page of $everything
        statement = everything_statement(patient_id, compartment, None, after, _PAGE + 1)
        keys = [(str(t), str(i)) for t, i in ctx.store.select(statement)]
        page = ctx.store.fetch(keys[:_PAGE])
        members.extend(page)
        yield from ((v, "current") for v in page)
        yield from ((v, "referenced") for v in _referenced(ctx, page, referenced))
        if len(keys) <= _PAGE:
            break
        after = keys[_PAGE - 1]
    if not history:
        return
    current = {(v.type, v.id): v.version for v in members}
    for version in members:
        if version.version > 1:  # only these have earlier versions
            yield from ((v, "history") for v in versions(ctx, version.type, version.id)[:-1])
    gone = [] if (patient.type, patient.id) in current else [("Patient", patient_id)]
    gone += [(m.type, m.id) for m in deleted_members(ctx) if patient_id in m.patients]
    for rtype, id in gone:
        yield from ((v, "history") for v in versions(ctx, rtype, id))


def _referenced(
    ctx: Context, page: list[StoredVersion], seen: set[tuple[str, str]]
) -> list[StoredVersion]:
    """Resources outside the compartment that ``page`` refers to, each once per export."""
    keys = [(v.type, v.id) for v in page]
    if not keys:
        return []
    inside = patient_compartment()
    found = []
    for t, i in ctx.store.select(references_statement(keys)):
        key = (str(t), str(i))
        if key not in seen and key[0] not in inside and key[0] != "Patient":
            seen.add(key)
            found.append(key)
    return ctx.store.fetch(found)


def record_export(
    request: FhirRequest, ctx: Context, rtype: str | None, id: str | None
) -> FhirResponse:
    """``GET Patient/[id]/$record-export[?history=false]``: the record Bundle, for the patient
    themself (GDPR Art. 15/20) and the privacy officer who answers such requests."""
    if rtype != "Patient" or id is None:
        raise FhirError(Category.NOT_FOUND, "$record-export is defined on Patient/[id].")
    caller = request.principal
    own = caller is not None and caller.has(Role.PATIENT) and caller.patient == id
    if caller is not None and not (own or caller.has(Role.PRIVACY_OFFICER)):
        raise FhirError(
            Category.FORBIDDEN,
            "The whole record is exported for the patient themself or the privacy officer.",
        )
    history = True
    for key, value in request.query:
        if key == "history":
            history = value.lower() in _TRUE
        elif key not in ("_format", "_pretty"):
            raise FhirError(
                Category.INVALID, f"Unknown $record-export parameter '{key}'.", expression=(key,)
            )
    buffer = io.BytesIO()
    write_patient_export(ctx, id, buffer, base=request.base, history=history)
    return FhirResponse(200, buffer.getvalue(), {"content-type": FHIR_JSON})


# --- pseudonymised research extracts ------------------------------------------------------------


def research_types() -> frozenset[str]:
    """The types a research extract may hold: the Patient and the patient compartment's types
    (the audit trail left out)."""
    return frozenset({"Patient", *patient_compartment()}) - KEPT_TYPES


def research_export(
    ctx: Context,
    study_id: str,
    resource_types: Collection[str],
    out: IO[bytes],
    *,
    keyring: Keyring,
    key_version: int | None = None,
    cohort: Iterable[str] | None = None,
    max_shift_days: int = DEFAULT_MAX_SHIFT_DAYS,
    exported: list[str] | None = None,
) -> dict[str, int]:
    """Writes the ``resource_types`` of the ``cohort`` (default: every patient on record) as
    de-identified NDJSON for study ``study_id``; returns the lines per type and ``patients``.

    Choosing the cohort is choosing the legal basis: research needs the patients' consent
    (GDPR Art. 9(2)(a)) or a research exemption (§27 BDSG); pass the consenting patients.
    Pseudonyms derive from master key version ``key_version`` (default: the current one; pin
    it for a study that exports again after a key rotation). ``exported`` receives the ids of
    the patients written (for the audit trail: one event per patient)."""
    wanted = set(resource_types)
    unknown = wanted - research_types()
    if unknown or not wanted:
        raise ValueError(
            "research extracts hold the Patient and patient-compartment types only; not: "
            + ", ".join(sorted(unknown) or ["(none given)"])
        )
    pseudonyms = StudyPseudonyms.for_study(
        keyring, study_id, key_version=key_version, max_shift_days=max_shift_days
    )
    linkable = research_types() - {"Patient"}
    # Other patients linking to this one (Patient.link) are their own records, not members.
    compartment = sorted(
        (t, p) for t, p in patient_compartment().items() if t in wanted and t != "Patient"
    )
    counts: dict[str, int] = {"patients": 0}
    seen: set[tuple[str, str]] = set()  # a resource of two patients leaves once
    for patient in cohort if cohort is not None else _patients(ctx):
        if ctx.store.read("Patient", patient) is None:
            continue
        counts["patients"] += 1
        if exported is not None:
            exported.append(patient)
        for version in _members(ctx, patient, compartment, "Patient" in wanted):
            key = (version.type, version.id)
            if key in seen or version.content is None:
                continue
            seen.add(key)
            line = deidentify(orjson.loads(version.content), patient, pseudonyms, linkable)
            out.write(orjson.dumps(line) + b"\n")
            counts[version.type] = counts.get(version.type, 0) + 1
    return counts


def _patients(ctx: Context) -> Iterator[str]:
    """Every current Patient id, in id order (keyset pages)."""
    after = ""
    while True:
        c = Compiler()
        statement = c.statement(
            "SELECT res_id FROM resource WHERE res_type = 'Patient' "  # nosec B608 # fixed names, bound values
            f"AND deleted = {c.bind(False)} AND res_id > {c.bind(after)} "
            f"ORDER BY res_id LIMIT {_PAGE}"
        )
        ids = [str(row[0]) for row in ctx.store.select(statement)]
        yield from ids
        if len(ids) < _PAGE:
            return
        after = ids[-1]


def _members(
    ctx: Context,
    patient: str,
    compartment: list[tuple[str, tuple[str, ...]]],
    include_patient: bool,
) -> Iterator[StoredVersion]:
    after: tuple[str, str] | None = None
    while True:
        statement = everything_statement(
            patient, compartment, None, after, _PAGE + 1, include_patient=include_patient
        )
        keys = [(str(t), str(i)) for t, i in ctx.store.select(statement)]
        yield from ctx.store.fetch(keys[:_PAGE])
        if len(keys) <= _PAGE:
            return
        after = keys[_PAGE - 1]
