"""The search interaction (https://hl7.org/fhir/R4/search.html, https://hl7.org/fhir/R4/http.html#search).

Criteria run as SQL over the index tables written with each version. Paging is by keyset: a page
link carries the sort values and id of the row it continues from (``_cursor``), so links stay
valid and pages neither repeat nor skip rows while other clients write (a resource whose sort
value changes in between may move, as the spec allows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.access import READ, Guard
from fhir_server.bundles import bundle, decode_cursor, encode_cursor, entry, link
from fhir_server.compartments import in_compartment
from fhir_server.context import Context
from fhir_server.criteria import Criterion, Ids, split_values
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse, whole_number
from fhir_server.search.sql import (
    SortKey,
    count_statement,
    include_statement,
    match_ids,
    page_statement,
    revinclude_statement,
)
from fhir_server.store import StoredVersion
from fhir_server.subsetting import check_summary, subset
from fhir_server.writes import check_type

_SORTABLE = frozenset({"date", "string", "token", "reference", "number", "quantity", "uri"})
_TOTAL_MODES = ("none", "estimate", "accurate")
# Bounds on _include work per page: iterations and included resources.
MAX_INCLUDE_ROUNDS = 8
MAX_INCLUDED = 2000
MAX_QUERY_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True)
class Include:
    source: str
    params: tuple[str, ...] | None  # None: every reference parameter ("*")
    target: str | None
    iterate: bool
    reverse: bool


@dataclass(slots=True)
class ResultParams:
    sort: list[SortKey] = field(default_factory=list)
    count: int = 50
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: frozenset[str] | None = None
    total: str = "accurate"
    cursor: str | None = None
    used: list[tuple[str, str]] = field(default_factory=list)


def search(
    request: FhirRequest,
    ctx: Context,
    rtype: str,
    compartment: tuple[str, str] | None = None,
) -> FhirResponse:
    check_type(rtype)
    query = _query(request)
    lenient = request.prefer("handling") == "lenient"
    parsed = ctx.criteria.parse_query(rtype, query, lenient=lenient)
    criteria: list[Criterion] = list(parsed.criteria)
    path = rtype
    if compartment is not None:
        ctype, cid = compartment
        member = in_compartment(rtype, cid) if ctype == "Patient" else None
        if member is None:
            raise FhirError(
                Category.NOT_FOUND, f"{rtype} resources are not in the {ctype} compartment."
            )
        criteria.insert(0, member)
        path = f"{ctype}/{cid}/{rtype}"
    result = parse_result(ctx, rtype, query, lenient)
    guard = Guard(ctx, request.principal)
    criteria = guard.narrow(rtype, criteria)
    for inc in result.includes:
        # Naming a type the caller may not read is refused, not silently dropped.
        guard.require(READ, inc.source)
        if inc.target is not None:
            guard.require(READ, inc.target)
    return run_search(request, ctx, rtype, path, criteria, parsed.used, result, guard)


def _query(request: FhirRequest) -> list[tuple[str, str]]:
    query = request.query
    size = sum(len(k) + len(v) for k, v in query)
    if request.method == "POST":
        if request.media_type() != "application/x-www-form-urlencoded":
            raise FhirError(
                Category.UNSUPPORTED_MEDIA_TYPE, "POST _search takes a form-encoded body."
            )
        size += len(request.body)
        if size <= MAX_QUERY_BYTES:
            form = parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True)
            query = [*query, *form]
    if size > MAX_QUERY_BYTES:
        raise FhirError(
            Category.INVALID, f"The search parameters are longer than {MAX_QUERY_BYTES} bytes."
        )
    return query


def run_search(
    request: FhirRequest,
    ctx: Context,
    rtype: str,
    path: str,
    criteria: list[Criterion],
    used: list[tuple[str, str]],
    result: ResultParams,
    guard: Guard | None = None,
) -> FhirResponse:
    store = ctx.store
    self_query = [*used, *result.used]
    links = [("self", link(request.base, path, self_query))]
    if result.summary == "count":
        counted = int(store.select(count_statement(rtype, criteria))[0][0])
        return FhirResponse(200, bundle("searchset", links, [], total=counted))
    count = result.count
    after, backwards = _read_cursor(result.cursor, result.sort)
    counting = result.total != "none" and after is None and count > 0
    rows = (
        store.select(
            page_statement(
                rtype, criteria, result.sort, after, backwards, count + 1, with_total=counting
            )
        )
        if count
        else []
    )
    total: int | None = None
    if counting:
        total = int(rows[0][-1]) if rows else 0
        rows = [row[:-1] for row in rows]
    elif result.total != "none":
        total = int(store.select(count_statement(rtype, criteria))[0][0])
    more = len(rows) > count
    rows = rows[:count]
    if backwards:
        rows.reverse()
    matches = store.fetch([(rtype, row[0]) for row in rows])
    page_links = _page_links(request.base, path, self_query, result, rows, after, backwards, more)
    links.extend(page_links)
    included = _includes(ctx, matches, result.includes, guard or Guard(ctx, None))
    entries = [_entry(ctx, request.base, v, "match", result) for v in matches]
    entries += [_entry(ctx, request.base, v, "include", result) for v in included]
    return FhirResponse(200, bundle("searchset", links, entries, total=total))


def _entry(
    ctx: Context, base: str, version: StoredVersion, mode: str, result: ResultParams
) -> dict[str, Any]:
    if (result.summary or result.elements is not None) and version.content is not None:
        content = subset(version.content, result.summary, result.elements, ctx.validator.elements)
        version = StoredVersion(
            version.type,
            version.id,
            version.version,
            version.last_updated,
            version.deleted,
            version.method,
            content,
            version.seq,
        )
    return entry(base, version, search={"mode": mode})


# -- result parameters ------------------------------------------------------------------------


def parse_result(
    ctx: Context, rtype: str, query: list[tuple[str, str]], lenient: bool
) -> ResultParams:
    result = ResultParams(count=ctx.settings.default_count)
    for key, raw in query:
        name, _, modifier = key.partition(":")
        if name == "_count":
            count = whole_number(raw, ctx.settings.default_count, "_count")
            result.count = min(count, ctx.settings.max_count)
        elif name == "_sort":
            result.sort = _sort(ctx, rtype, raw)
        elif name in ("_include", "_revinclude"):
            if modifier not in ("", "iterate", "recurse"):
                raise _bad(f"Unknown modifier in '{key}'.", key)
            result.includes.append(_include(ctx, rtype, key, raw, name == "_revinclude"))
        elif name == "_summary":
            result.summary = check_summary(raw)
        elif name == "_elements":
            result.elements = frozenset(e.strip() for e in raw.split(",") if e.strip())
        elif name == "_total":
            if raw not in _TOTAL_MODES:
                raise _bad(f"_total must be one of {', '.join(_TOTAL_MODES)}.", key)
            result.total = raw
        elif name == "_cursor":
            result.cursor = raw
            continue
        elif name in ("_contained", "_containedType"):
            if lenient:
                continue
            raise FhirError(
                Category.NOT_SUPPORTED,
                f"The parameter '{key}' is not supported.",
                expression=(key,),
            )
        elif name == "_format":
            if raw not in ("json", "application/json", "application/fhir+json"):
                raise FhirError(
                    Category.NOT_ACCEPTABLE, "Only JSON is supported.", expression=(key,)
                )
        elif name != "_pretty":
            continue
        result.used.append((key, raw))
    if result.summary is not None and result.elements is not None:
        raise _bad("_summary and _elements cannot be combined.", "_elements")
    return result


def _bad(message: str, key: str) -> FhirError:
    return FhirError(Category.INVALID, message, expression=(key,))


def _sort(ctx: Context, rtype: str, raw: str) -> list[SortKey]:
    keys = []
    for item in split_values(raw):
        descending = item.startswith("-")
        name = item[1:] if descending else item
        if name in ("_id", "_lastUpdated"):
            keys.append(SortKey(name, name, descending))
            continue
        definition = ctx.criteria.params(rtype).get(name)
        if definition is None or definition.type not in _SORTABLE:
            raise _bad(f"Cannot sort {rtype} by '{name}'.", "_sort")
        keys.append(SortKey(name, definition.type, descending))
    return keys


def _include(ctx: Context, rtype: str, key: str, raw: str, reverse: bool) -> Include:
    iterate = key.endswith((":iterate", ":recurse"))
    if raw == "*":
        return Include(rtype, None, None, iterate, reverse)
    parts = raw.split(":")
    if len(parts) not in (2, 3):
        raise _bad(f"'{raw}' must read SourceType:parameter[:TargetType].", key)
    source, param = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    types = ctx.registry.resource_types
    if source not in types or (target is not None and target not in types):
        raise _bad(f"'{raw}' names an unknown resource type.", key)
    if param == "*":
        return Include(source, None, target, iterate, reverse)
    definition = ctx.criteria.params(source).get(param)
    if definition is None or definition.type != "reference":
        raise _bad(f"'{param}' is not a reference parameter of {source}.", key)
    if not reverse and not iterate and source != rtype:
        raise _bad(f"'{raw}' does not start from {rtype}; use {key}:iterate.", key)
    return Include(source, (param,), target, iterate, reverse)


def _includes(
    ctx: Context, matches: list[StoredVersion], includes: list[Include], guard: Guard
) -> list[StoredVersion]:
    """_include/_revinclude, repeated for :iterate until nothing new turns up (search.html#include)."""
    if not includes or not matches:
        return []
    seen = {(v.type, v.id) for v in matches}
    out: list[StoredVersion] = []
    frontier = [(v.type, v.id) for v in matches]
    for round in range(MAX_INCLUDE_ROUNDS):
        found: list[tuple[str, str]] = []
        for inc in includes:
            if round > 0 and not inc.iterate:
                continue
            if inc.reverse:
                statement = revinclude_statement(frontier, inc.source, inc.params, inc.target)
            else:
                if not any(t == inc.source for t, _ in frontier):
                    continue
                statement = include_statement(frontier, inc.source, inc.params, inc.target)
            for t, i in ctx.store.select(statement):
                if (t, i) not in seen:
                    seen.add((t, i))
                    found.append((t, i))
        found = guard.keep_visible(found)
        if not found:
            break
        fetched = ctx.store.fetch(found[: MAX_INCLUDED - len(out)])
        out.extend(fetched)
        frontier = [(v.type, v.id) for v in fetched]
        if len(out) >= MAX_INCLUDED or not any(i.iterate for i in includes):
            break
    return out


# -- paging -----------------------------------------------------------------------------------


def _signature(sort: Sequence[SortKey]) -> str:
    text = ",".join(f"{'-' if k.descending else ''}{k.param}" for k in sort)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _cursor(direction: str, sort: Sequence[SortKey], row: Sequence[Any]) -> str:
    return encode_cursor([direction, _signature(sort), list(row[1:]), row[0]])


def _read_cursor(cursor: str | None, sort: Sequence[SortKey]) -> tuple[list[Any] | None, bool]:
    if cursor is None:
        return None, False
    try:
        direction, signature, values, last_id = decode_cursor(cursor)
        valid = (
            direction in ("n", "p")
            and signature == _signature(sort)
            and isinstance(values, list)
            and len(values) == len(sort)
            and isinstance(last_id, str)
            and all(v is None or type(v) in (int, float, str) for v in values)
        )
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise _bad(
            "The _cursor is not valid for this search; start from the first page.", "_cursor"
        )
    return [*values, last_id], direction == "p"


def _page_links(
    base: str,
    path: str,
    query: list[tuple[str, str]],
    result: ResultParams,
    rows: Sequence[Sequence[Any]],
    after: list[Any] | None,
    backwards: bool,
    more: bool,
) -> list[tuple[str, str]]:
    links = []
    plain = [(k, v) for k, v in query if k not in ("_count",)]
    plain.append(("_count", str(result.count)))
    if after is not None:
        links.append(("first", link(base, path, plain)))
    if not rows:
        return links
    if (backwards and more) or (not backwards and after is not None):
        cursor = _cursor("p", result.sort, rows[0])
        links.append(("previous", link(base, path, [*plain, ("_cursor", cursor)])))
    if (not backwards and more) or backwards:
        cursor = _cursor("n", result.sort, rows[-1])
        links.append(("next", link(base, path, [*plain, ("_cursor", cursor)])))
    return links


def matching_ids(ctx: Context, rtype: str, criteria: str, ids: Collection[str]) -> set[str]:
    """Which of ``ids`` (current resources of ``rtype``) match the search ``criteria``.

    ``criteria`` is a query string (``code=http://loinc.org|8867-4&subject=Patient/1``); invalid
    criteria raise a FhirError (like a search would). Runs as SQL on the index tables; used by
    subscriptions to decide which new versions to notify about."""
    check_type(rtype)
    parsed = ctx.criteria.parse(rtype, parse_qsl(criteria, keep_blank_values=True))
    if not ids:
        return set()
    return set(match_ids(ctx.store, rtype, [*parsed, Ids(tuple(ids))], len(ids)))
