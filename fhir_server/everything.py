"""``Patient/[id]/$everything`` (https://hl7.org/fhir/R4/patient-operation-everything.html).

The patient, every resource in the patient's compartment and the resources those refer to
(practitioners, organisations, medications…), paged by keyset over (type, id). ``_since`` keeps
resources changed since then, ``_type`` limits the types, ``_count`` sizes the page.

Access: types the caller may not read at all are left out; the keyset query is repeated past
rows the caller may not see until the page is full, so pages are never short for hidden data,
and the next link's cursor names the last resource *shown* (never a hidden one).
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server._time import parse_period
from fhir_server.access import READ, Guard
from fhir_server.bundles import bundle, decode_cursor, encode_cursor, entry, link
from fhir_server.compartments import patient_compartment
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse, whole_number
from fhir_server.search.sql import everything_statement, references_statement
from fhir_server.store import StoredVersion

_PARAMS = frozenset({"_since", "_type", "_count", "_cursor", "_format", "_pretty", "start", "end"})
_MAX_BATCH = 1000  # keys read per query while skipping rows the caller may not see
Key = tuple[str, str]


def everything(
    request: FhirRequest, ctx: Context, rtype: str | None, id: str | None
) -> FhirResponse:
    if rtype != "Patient" or id is None:
        raise FhirError(Category.NOT_FOUND, "$everything is defined on Patient/[id].")
    guard = Guard(ctx, request.principal)
    guard.readable("Patient", id)
    query = dict(request.query)
    for key in query:
        if key not in _PARAMS:
            raise FhirError(
                Category.INVALID, f"Unknown $everything parameter '{key}'.", expression=(key,)
            )
    patient = ctx.store.read("Patient", id)
    if patient is None or patient.deleted:
        raise FhirError(Category.NOT_FOUND, f"Patient/{id} is not known.")
    compartment = dict(patient_compartment())
    include_patient = True
    if "_type" in query:
        wanted = {t.strip() for t in query["_type"].split(",") if t.strip()}
        unknown = wanted - ctx.registry.resource_types
        if unknown:
            raise FhirError(
                Category.INVALID, f"Unknown resource types in _type: {', '.join(sorted(unknown))}."
            )
        compartment = {t: p for t, p in compartment.items() if t in wanted}
        include_patient = "Patient" in wanted
    compartment = {t: p for t, p in compartment.items() if guard.may_see(READ, t)}
    since = None
    if "_since" in query:
        period = parse_period(query["_since"])
        if period is None:
            raise FhirError(
                Category.INVALID, "_since must be a FHIR instant.", expression=("_since",)
            )
        since = period[0]
    count = min(
        whole_number(query.get("_count"), ctx.settings.default_count, "_count"),
        ctx.settings.max_count,
    )
    after = _read_cursor(query.get("_cursor"))
    scan = _Scan(id, sorted(compartment.items()), since, include_patient)
    keys, more = scan.page(ctx, guard, after, count)
    members = ctx.store.fetch(keys)
    referenced = ctx.store.fetch(
        guard.keep_visible([(v.type, v.id) for v in _referenced(ctx, members)])
    )
    plain = [(k, v) for k, v in request.query if k != "_cursor"]
    path = f"Patient/{id}/$everything"
    links = [("self", link(request.base, path, request.query))]
    if more and keys:
        cursor = encode_cursor(list(keys[-1]))
        links.append(("next", link(request.base, path, [*plain, ("_cursor", cursor)])))
    entries = [entry(request.base, v, search={"mode": "match"}) for v in members]
    entries += [entry(request.base, v, search={"mode": "include"}) for v in referenced]
    return FhirResponse(200, bundle("searchset", links, entries))


class _Scan:
    """The keyset query over one patient's compartment."""

    def __init__(
        self,
        patient: str,
        compartment: Sequence[tuple[str, Sequence[str]]],
        since: int | None,
        include_patient: bool,
    ) -> None:
        self.patient = patient
        self.compartment = compartment
        self.since = since
        self.include_patient = include_patient

    def page(
        self, ctx: Context, guard: Guard, after: Key | None, count: int
    ) -> tuple[list[Key], bool]:
        """The first ``count`` keys after ``after`` the caller may read, and whether another
        follows them."""
        shown: list[Key] = []
        batch = count + 1
        while True:
            keys = self._keys(ctx, after, batch)
            shown += guard.keep_visible(keys)
            if len(shown) > count:
                return shown[:count], True
            if len(keys) < batch:
                return shown, False
            after, batch = keys[-1], min(batch * 2, max(_MAX_BATCH, count + 1))

    def _keys(self, ctx: Context, after: Key | None, limit: int) -> list[Key]:
        statement = everything_statement(
            self.patient,
            self.compartment,
            self.since,
            after,
            limit,
            include_patient=self.include_patient,
        )
        return [(t, i) for t, i in ctx.store.select(statement)]


def _referenced(ctx: Context, members: list[StoredVersion]) -> list[StoredVersion]:
    """Resources outside the compartment that this page refers to (practitioners, …)."""
    keys = [(v.type, v.id) for v in members]
    if not keys:
        return []
    seen = set(keys)
    inside = patient_compartment()
    found: list[tuple[str, str]] = []
    for t, i in ctx.store.select(references_statement(keys)):
        if (t, i) not in seen and t not in inside and t != "Patient":
            seen.add((t, i))
            found.append((t, i))
    return ctx.store.fetch(found)


def _read_cursor(raw: str | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    try:
        value = decode_cursor(raw)
    except ValueError:
        value = None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    raise FhirError(Category.INVALID, "The _cursor is not valid.", expression=("_cursor",))
