"""One patient's record: the members of the Patient compartment, soft-deleted ones included (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).

Live members are found through the reference index (as ``$everything`` finds them). A
soft-deleted resource has no index rows left, but its earlier versions stay (§630f BGB) and
belong to the record: it is found by indexing its last live version again. Used by the retention
job (retention.py: what to expunge) and by the patient export (export.py: a complete copy).

Left out of the record here: the audit trail (AuditEvent, evidence about the record, kept when
the record is expunged) and other Patient resources that merely link to this one
(``Patient.link``: separate records with their own retention).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Final

from fhir_server import fhir_json
from fhir_server.compartments import patient_compartment
from fhir_server.context import Context
from fhir_server.search.sql import Compiler
from fhir_server.store import HistoryQuery, StoredVersion

__all__ = [
    "KEPT_TYPES",
    "DeletedMember",
    "compartment_links",
    "deleted_members",
    "last_live_version",
    "versions",
]

KEPT_TYPES: Final = frozenset({"AuditEvent"})
_PAGE: Final = 200


@dataclass(frozen=True, slots=True)
class DeletedMember:
    """A soft-deleted resource whose last live version put it into ``patients``' compartments."""

    type: str
    id: str
    last_updated: int
    patients: frozenset[str]


def compartment_links(types: Collection[str] | None = None) -> tuple[tuple[str, str], ...]:
    """(type, parameter) pairs linking a resource to a patient's compartment, the audit trail
    and other Patients left out; limited to ``types`` if given."""
    return tuple(
        (rtype, param)
        for rtype, params in sorted(patient_compartment().items())
        if rtype not in KEPT_TYPES and rtype != "Patient" and (types is None or rtype in types)
        for param in params
        if param != "{def}"
    )


def last_live_version(ctx: Context, rtype: str, id: str) -> StoredVersion | None:
    """The newest version of a resource that has content (None: never had any)."""
    before: int | None = None
    while True:
        page = ctx.store.history(HistoryQuery(type=rtype, id=id, count=10, before_seq=before))
        for version in page:
            if version.content is not None:
                return version
        if len(page) < 10:
            return None
        before = page[-1].seq


def versions(ctx: Context, rtype: str, id: str) -> list[StoredVersion]:
    """Every version of a resource, oldest first."""
    found: list[StoredVersion] = []
    before: int | None = None
    while True:
        page = ctx.store.history(HistoryQuery(type=rtype, id=id, count=_PAGE, before_seq=before))
        found.extend(page)
        if len(page) < _PAGE:
            return found[::-1]
        before = page[-1].seq


def deleted_members(ctx: Context) -> Iterator[DeletedMember]:
    """The soft-deleted resources whose last live version belonged to some patient's
    compartment, with those patients. Reads every soft-deleted resource of the compartment
    types once (a history lookup and an index extraction each): work for a job, not a request."""
    links: dict[str, set[str]] = {}
    for rtype, param in compartment_links():
        links.setdefault(rtype, set()).add(param)
    c = Compiler()
    types = ", ".join(c.bind(t) for t in sorted(links))
    statement = c.statement(
        "SELECT res_type, res_id, last_updated FROM resource "  # nosec B608 # fixed names, bound values
        f"WHERE deleted = {c.bind(True)} AND res_type IN ({types}) ORDER BY res_type, res_id"
    )
    for rtype, id, last_updated in ctx.store.select(statement):
        params = links[rtype]
        version = last_live_version(ctx, rtype, id)
        if version is None or version.content is None:
            continue
        rows = ctx.indexer.extract(fhir_json.loads(version.content))
        patients = frozenset(
            row.target_id
            for row in rows.references
            if row.param in params and row.target_type == "Patient" and row.target_id
        )
        if patients:
            yield DeletedMember(rtype, id, last_updated, patients)
