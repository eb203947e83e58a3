"""The search interaction at type level (https://hl7.org/fhir/R4/http.html#search).

Criteria run as SQL over the index tables written with each version.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fhir_server.bundles import bundle, entry, link
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse, whole_number
from fhir_server.writes import check_type


def search(request: FhirRequest, ctx: Context, rtype: str) -> FhirResponse:
    check_type(rtype)
    query = request.query
    if request.method == "POST":
        if request.media_type() != "application/x-www-form-urlencoded":
            raise FhirError(
                Category.UNSUPPORTED_MEDIA_TYPE, "POST _search takes a form-encoded body."
            )
        query = [
            *query,
            *parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True),
        ]
    criteria = ctx.criteria.parse(rtype, query)
    count = _number(query, "_count", ctx.settings.default_count)
    count = max(0, min(count, ctx.settings.max_count))
    offset = _number(query, "_offset", 0)
    # One more row than asked tells whether there is a next page (none for _count=0).
    rows = list(ctx.store.search(rtype, criteria, count + 1, offset)) if count else []
    total = ctx.store.count(rtype, criteria)
    base_query = [(k, v) for k, v in query if k not in ("_count", "_offset")]
    links = [("self", link(request.base, rtype, query))]
    if len(rows) > count:
        rows = rows[:count]
        next_query = [*base_query, ("_count", str(count)), ("_offset", str(offset + count))]
        links.append(("next", link(request.base, rtype, next_query)))
    entries = [entry(request.base, r, search={"mode": "match"}) for r in rows]
    return FhirResponse(200, bundle("searchset", links, entries, total=total))


def _number(query: list[tuple[str, str]], name: str, default: int) -> int:
    values = [v for k, v in query if k == name]
    return whole_number(values[-1] if values else None, default, name)
