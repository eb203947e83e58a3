"""Batch and transaction (https://hl7.org/fhir/R4/http.html#transaction).

A transaction is one unit of work: every entry is checked and validated first (no lock held), then
identities are resolved (conditional creates/updates/deletes search here), ``urn:uuid`` fullUrls and
conditional references are rewritten, and the writes run in the order DELETE, POST, PUT/PATCH.
Any failure rolls back everything. GET entries run last, after the commit, so they see the writes.
A batch runs each entry on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from fhir_server._time import format_instant
from fhir_server.access import Guard
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError, Issue
from fhir_server.interactions import PreparedWrite, prepare_write
from fhir_server.references import reference_holders
from fhir_server.request import FhirRequest, FhirResponse, parse_json
from fhir_server.search.sql import match_ids
from fhir_server.store import StaleGuess
from fhir_server.writes import Writes

T = TypeVar("T")
_WRITES = ("DELETE", "POST", "PUT", "PATCH")
_PHASE = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2}
_HEADERS = {
    "ifMatch": "if-match",
    "ifNoneExist": "if-none-exist",
    "ifNoneMatch": "if-none-match",
    "ifModifiedSince": "if-modified-since",
}


Dispatch = Callable[[FhirRequest, Context], FhirResponse]


def process_bundle(request: FhirRequest, ctx: Context, dispatch: Dispatch) -> FhirResponse:
    """``dispatch`` runs one entry (the router's, passed in to keep the import graph acyclic)."""
    bundle = request.resource_body()
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("batch", "transaction"):
        raise FhirError(
            Category.INVALID, "POST to the base takes a Bundle of type batch or transaction."
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(
            Category.INVALID, "Bundle.entry must be a list.", expression=("Bundle.entry",)
        )
    if len(entries) > ctx.settings.max_bundle_entries:
        raise FhirError(
            Category.TOO_LARGE,
            f"A bundle may have at most {ctx.settings.max_bundle_entries} entries.",
        )
    if bundle["type"] == "batch":
        return _respond(
            "batch-response",
            [_batch_entry(request, ctx, dispatch, e, i) for i, e in enumerate(entries)],
        )
    return _respond("transaction-response", _transaction(request, ctx, dispatch, entries))


def _entry_request(outer: FhirRequest, entry: Any, index: int) -> FhirRequest:
    where = f"Bundle.entry[{index}]"
    spec = entry.get("request") if isinstance(entry, dict) else None
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("method"), str)
        or not isinstance(spec.get("url"), str)
    ):
        raise FhirError(
            Category.INVALID,
            f"{where}: request.method and request.url are required.",
            expression=(f"{where}.request",),
        )
    url = spec["url"]
    if outer.base and url.startswith(outer.base + "/"):
        url = url[len(outer.base) + 1 :]
    parts = urlsplit(url)
    headers = {"content-type": "application/fhir+json"}
    headers.update({h: str(spec[k]) for k, h in _HEADERS.items() if spec.get(k) is not None})
    headers["prefer"] = outer.header("prefer") or "return=minimal"
    return FhirRequest(
        method=spec["method"].upper(),
        path=parts.path,
        query=parse_qsl(parts.query, keep_blank_values=True),
        headers=headers,
        base=outer.base,
        principal=outer.principal,
        parsed=entry.get("resource"),
    )


def _batch_entry(
    outer: FhirRequest, ctx: Context, dispatch: Dispatch, entry: Any, index: int
) -> dict[str, Any]:
    try:
        request = _entry_request(outer, entry, index)
    except FhirError as error:
        return _response_entry(FhirResponse.error(error))
    return _response_entry(dispatch(request, ctx))


def _transaction(
    outer: FhirRequest, ctx: Context, dispatch: Dispatch, entries: list[Any]
) -> list[dict[str, Any]]:
    requests = [_entry_request(outer, e, i) for i, e in enumerate(entries)]
    # Guessing rewrites the entries in place; a body to parse again is needed to start over.
    guess = bool(outer.body)
    with ctx.store.write_slot():
        try:
            prepared, responses = _write_entries(ctx, entries, requests, guess=guess)
        except StaleGuess:
            # A concurrent writer changed a conditional match meanwhile: start again from the
            # request body, this time resolving everything under the lock.
            entries = parse_json(outer.body)["entry"]
            requests = [_entry_request(outer, e, i) for i, e in enumerate(entries)]
            prepared, responses = _write_entries(ctx, entries, requests, guess=False)
    for i, request in enumerate(requests):
        if i not in prepared:
            responses[i] = dispatch(request, ctx)
    return [_response_entry(responses[i]) for i in range(len(entries))]


def _write_entries(
    ctx: Context, entries: list[Any], requests: list[FhirRequest], *, guess: bool
) -> tuple[dict[int, PreparedWrite], dict[int, FhirResponse]]:
    """Checks every write entry, then runs them all in one unit of work."""
    prepared: dict[int, PreparedWrite] = {}
    for i, request in enumerate(requests):
        if request.method in _WRITES:
            prepared[i] = _in_entry(i, partial(_prepare, request, ctx))
        elif request.method not in ("GET", "HEAD"):
            raise FhirError(
                Category.INVALID, f"Bundle.entry[{i}]: method {request.method} is not allowed."
            )
    order = sorted(prepared, key=lambda i: _PHASE[prepared[i].method])
    # Before the unit of work (no database lock held): ids of plain creates, references to
    # entries whose identity is known, and the rendering of creates whose references are final.
    now = ctx.clock()
    for i, p in prepared.items():
        p.assign_id(ctx)
        if guess:
            _in_entry(i, partial(p.guess, ctx))
    urls = _full_urls(entries, prepared)
    pending = _rewrite_known(urls, prepared)
    for i, p in prepared.items():
        if i not in pending:
            p.pre_render(ctx, now)
    responses: dict[int, FhirResponse] = {}
    with ctx.store.unit_of_work() as uow:
        principal = requests[0].principal if requests else None
        writes = Writes(ctx, uow, now, Guard(ctx, principal))
        for i in order:
            _in_entry(i, partial(prepared[i].resolve, writes))
        _check_identities(prepared)
        _rewrite_pending(urls, prepared, pending, writes)
        for i in order:
            writes.entry = f"Bundle.entry[{i}]"
            responses[i] = _in_entry(i, partial(prepared[i].apply, writes))
        writes.finish()
    return prepared, responses


def _prepare(request: FhirRequest, ctx: Context) -> PreparedWrite:
    parts = [p for p in request.path.split("/") if p]
    if not 1 <= len(parts) <= 2:
        raise FhirError(
            Category.INVALID, f"'{request.path}' is not a create, update, patch or delete URL."
        )
    return prepare_write(request, ctx, parts[0], parts[1] if len(parts) == 2 else None)


def _in_entry(index: int, step: Callable[[], T]) -> T:
    """Runs one entry's step; a failure names the entry it came from."""
    try:
        result: T = step()
    except FhirError as error:
        where = f"Bundle.entry[{index}]"
        issues = tuple(
            Issue(i.severity, i.code, f"{where}: {i.diagnostics}", i.expression or (where,))
            for i in error.issues
        )
        raise FhirError(error.category, issues[0].diagnostics, issues=issues) from error
    return result


def _check_identities(prepared: dict[int, PreparedWrite]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, p in prepared.items():
        if p.id is None or p.exists:
            continue
        key = (p.rtype, p.id)
        if key in seen:
            raise FhirError(
                Category.INVALID,
                f"Bundle.entry[{seen[key]}] and Bundle.entry[{i}] both write {p.rtype}/{p.id}.",
            )
        seen[key] = i


def _full_urls(entries: list[Any], prepared: dict[int, PreparedWrite]) -> dict[str, int]:
    """fullUrl -> index of the write entry it names."""
    urls = {}
    for i in prepared:
        full_url = entries[i].get("fullUrl")
        if isinstance(full_url, str):
            urls[full_url] = i
    return urls


def _is_conditional(reference: str) -> bool:
    return "?" in reference and "://" not in reference and not reference.startswith("urn:")


def _rewrite_known(
    urls: dict[str, int], prepared: dict[int, PreparedWrite]
) -> dict[int, list[dict[str, Any]]]:
    """Rewrites references to entries whose id is already known (urn:uuid fullUrls become
    literal Type/id references); returns, per entry, the references that need the database:
    to conditional entries, or conditional references themselves."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for i, p in prepared.items():
        if p.resource is None:
            continue
        for holder in reference_holders(p.resource):
            reference = holder["reference"]
            target = urls.get(reference)
            if target is not None and prepared[target].id is not None:
                holder["reference"] = f"{prepared[target].rtype}/{prepared[target].id}"
            elif target is not None or _is_conditional(reference):
                pending.setdefault(i, []).append(holder)
    return pending


def _rewrite_pending(
    urls: dict[str, int],
    prepared: dict[int, PreparedWrite],
    pending: dict[int, list[dict[str, Any]]],
    writes: Writes,
) -> None:
    """After conditional entries are resolved: the references that waited for them."""
    resolved: dict[str, str] = {}
    for holders in pending.values():
        for holder in holders:
            reference = holder["reference"]
            if reference not in resolved:
                target = urls.get(reference)
                if target is None:
                    resolved[reference] = _resolve_conditional(reference, writes)
                elif prepared[target].id is not None:
                    resolved[reference] = f"{prepared[target].rtype}/{prepared[target].id}"
                else:  # e.g. a conditional delete that matched nothing: stays unresolved (422)
                    resolved[reference] = reference
            holder["reference"] = resolved[reference]


def _resolve_conditional(reference: str, writes: Writes) -> str:
    rtype, _, query = reference.partition("?")
    criteria = writes.ctx.criteria.parse(rtype, parse_qsl(query, keep_blank_values=True))
    matches = match_ids(writes.uow, rtype, writes.guard.narrow(rtype, criteria), 2)
    if len(matches) != 1:
        found = "no" if not matches else "more than one"
        raise FhirError(
            Category.PRECONDITION_FAILED,
            f"The conditional reference '{reference}' matches {found} resource.",
        )
    return f"{rtype}/{matches[0]}"


def _response_entry(response: FhirResponse) -> dict[str, Any]:
    status = f"{response.status} {HTTPStatus(response.status).phrase}"
    result: dict[str, Any] = {"status": status}
    headers = response.headers
    for header, key in (("location", "location"), ("etag", "etag")):
        if header in headers:
            result[key] = headers[header]
    if response.last_updated is not None:
        result["lastModified"] = format_instant(response.last_updated)
    out: dict[str, Any] = {"response": result}
    if response.body:
        body = orjson.Fragment(response.body)
        if response.status >= 400:
            result["outcome"] = body
        else:
            out["resource"] = body
    return out


def _respond(kind: str, entries: list[dict[str, Any]]) -> FhirResponse:
    return FhirResponse(
        200, orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": entries})
    )
