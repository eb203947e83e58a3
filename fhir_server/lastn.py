"""``Observation/$lastn`` (https://hl7.org/fhir/R4/observation-operation-lastn.html).

The most recent ``max`` observations (default 1) for each code among those matching the search
criteria, e.g. ``patient=…&category=vital-signs``: the doctors' vital-signs view. One SQL statement
with a window function over the code index rows.
"""

from __future__ import annotations

from fhir_server.access import Guard
from fhir_server.bundles import bundle, entry, link
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse, whole_number
from fhir_server.search.sql import lastn_statement

MAX_PER_CODE = 100


def lastn(request: FhirRequest, ctx: Context, rtype: str | None, id: str | None) -> FhirResponse:
    if rtype != "Observation" or id is not None:
        raise FhirError(Category.NOT_FOUND, "$lastn is defined on Observation.")
    query = [(k, v) for k, v in request.query if k != "max"]
    maximum = whole_number(dict(request.query).get("max"), 1, "max", MAX_PER_CODE)
    if maximum < 1:
        raise FhirError(Category.INVALID, "max must be at least 1.", expression=("max",))
    lenient = request.prefer("handling") == "lenient"
    parsed = ctx.criteria.parse_query("Observation", query, lenient=lenient)
    if not parsed.criteria:
        raise FhirError(
            Category.INVALID, "$lastn needs search criteria, e.g. patient and category."
        )
    criteria = Guard(ctx, request.principal).narrow("Observation", parsed.criteria)
    ids = list(
        dict.fromkeys(row[0] for row in ctx.store.select(lastn_statement(criteria, maximum)))
    )
    found = ctx.store.fetch([("Observation", i) for i in ids])
    links = [("self", link(request.base, "Observation/$lastn", request.query))]
    entries = [entry(request.base, v, search={"mode": "match"}) for v in found]
    return FhirResponse(200, bundle("searchset", links, entries, total=len(entries)))
