"""The history interaction at instance, type and system level (https://hl7.org/fhir/R4/http.html#history).

Pages are cut by the version's sequence number (keyset paging), so a next link stays valid and
returns neither duplicates nor gaps while new versions are written.
"""

from __future__ import annotations

from fhir_server._time import format_instant, parse_period
from fhir_server.access import READ, SEARCH, Guard
from fhir_server.bundles import bundle, entry, link
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse, whole_number
from fhir_server.resource_types import supported_types
from fhir_server.store import HistoryQuery, StoredVersion
from fhir_server.writes import check_id, check_type

_PARAMS = frozenset({"_since", "_at", "_count", "_cursor", "_format", "_pretty"})


def history(
    request: FhirRequest, ctx: Context, rtype: str | None = None, id: str | None = None
) -> FhirResponse:
    if rtype is not None:
        check_type(rtype)
    if id is not None:
        check_id(id)
    _check_access(Guard(ctx, request.principal), rtype, id)
    query = _query(request, ctx, rtype, id)
    rows = ctx.store.history(query)
    if (
        id is not None
        and not rows
        and query.before_seq is None
        and ctx.store.read(rtype or "", id) is None
    ):
        raise FhirError(Category.NOT_FOUND, f"{rtype}/{id} is not known.")
    path = "/".join(p for p in (rtype, id, "_history") if p)
    kept = [(k, v) for k, v in request.query if k in ("_since", "_at", "_count")]
    links = [("self", link(request.base, path, request.query))]
    page = query.count - 1
    if len(rows) > page:
        rows = rows[:page]
        links.append(("next", link(request.base, path, [*kept, ("_cursor", str(rows[-1].seq))])))
    entries = [_entry(request.base, r) for r in rows]
    return FhirResponse(200, bundle("history", links, entries, now=ctx.clock()))


def _check_access(guard: Guard, rtype: str | None, id: str | None) -> None:
    """Instance history follows the resource's visibility. Type and system history list old
    versions, which have no index rows to narrow by: only for callers who may see every
    resource of the type (backend services with unrestricted system scopes)."""
    if guard.unrestricted:
        return
    if rtype is not None and id is not None:
        guard.readable(rtype, id)
        return
    types = [rtype] if rtype is not None else sorted(supported_types())
    for t in types:
        if guard.restriction(SEARCH, t) is not None or guard.restriction(READ, t) is not None:
            raise FhirError(
                Category.FORBIDDEN,
                f"The history of {'all resources' if rtype is None else rtype} is available "
                "only to callers who may see every such resource; ask for the history of one "
                "resource instead.",
            )


def _query(request: FhirRequest, ctx: Context, rtype: str | None, id: str | None) -> HistoryQuery:
    values: dict[str, str] = {}
    for key, value in request.query:
        if key not in _PARAMS:
            raise FhirError(
                Category.INVALID, f"Unknown parameter '{key}' for history.", expression=(key,)
            )
        values[key] = value
    count = whole_number(values.get("_count"), ctx.settings.default_count, "_count")
    count = max(1, min(count, ctx.settings.max_count))
    cursor = values.get("_cursor")
    return HistoryQuery(
        type=rtype,
        id=id,
        since=_instant(values.get("_since"), "_since", low=True),
        at=_instant(values.get("_at"), "_at", low=False),
        # One more than asked: tells whether there is a next page.
        count=count + 1,
        before_seq=whole_number(cursor, 0, "_cursor", 2**63 - 1) if cursor is not None else None,
    )


def _instant(value: str | None, name: str, *, low: bool) -> int | None:
    if value is None:
        return None
    period = parse_period(value)
    if period is None:
        raise FhirError(
            Category.INVALID, f"{name} must be a FHIR instant or dateTime.", expression=(name,)
        )
    return period[0] if low else period[1]


def _entry(base: str, stored: StoredVersion) -> dict[str, object]:
    method = stored.method
    status = "204" if stored.deleted else "201" if stored.version == 1 else "200"
    url = stored.type if method == "POST" else f"{stored.type}/{stored.id}"
    return entry(
        base,
        stored,
        request={"method": method, "url": url},
        response={
            "status": status,
            "etag": f'W/"{stored.version}"',
            "lastModified": format_instant(stored.last_updated),
        },
    )
