"""Maps a FhirRequest to its interaction (https://hl7.org/fhir/R4/http.html#summary).

Both the HTTP layer and batch/transaction entries come through ``dispatch``.
"""

from __future__ import annotations

import logging

from fhir_server import history, interactions, operations, search_type
from fhir_server.capabilities import capability_statement
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.store import StoreUnavailable, VersionConflict
from fhir_server.transaction import process_bundle

log = logging.getLogger(__name__)


def dispatch(request: FhirRequest, ctx: Context) -> FhirResponse:
    """Runs the interaction; every failure becomes an OperationOutcome response."""
    if ctx.audit is not None:  # audit hook (H3): records the request's AuditEvents once answered
        return ctx.audit.audited(request, lambda: _answer(request, ctx))
    return _answer(request, ctx)


def _answer(request: FhirRequest, ctx: Context) -> FhirResponse:
    try:
        return route(request, ctx)
    except FhirError as error:
        return FhirResponse.error(error)
    except VersionConflict:
        return FhirResponse.error(
            FhirError(Category.CONFLICT, "The resource was changed concurrently; please retry.")
        )
    except StoreUnavailable:
        log.warning("database unavailable", exc_info=True)
        return FhirResponse.error(
            FhirError(Category.BUSY, "The record store is not available right now; please retry.")
        )


def route(request: FhirRequest, ctx: Context) -> FhirResponse:
    parts = [p for p in request.path.split("/") if p]
    method = request.method
    n = len(parts)
    if n == 0:
        _allow(method, "POST")
        return process_bundle(request, ctx, dispatch)
    if n == 1 and parts[0] == "metadata":
        _allow(method, "GET")
        statement = capability_statement(request.base, ctx.registry, ctx.clock(), ctx.version)
        return FhirResponse.json(200, statement)
    if n == 1 and parts[0] == "_history":
        _allow(method, "GET")
        return history.history(request, ctx)
    rtype = parts[0]
    if n == 1:
        return _type_level(request, ctx, rtype)
    if n == 2:
        return _two(request, ctx, rtype, parts[1])
    if n == 3 and parts[1] != "_history" and parts[2] == "_history":
        _allow(method, "GET")
        return history.history(request, ctx, rtype, parts[1])
    if n == 3 and parts[0] == "Patient" and parts[2][:1].isupper():
        _allow(method, "GET")
        return search_type.search(request, ctx, parts[2], compartment=("Patient", parts[1]))
    if n == 3 and parts[2].startswith("$"):
        return _operation(request, ctx, parts[2][1:], "instance", rtype, parts[1])
    if n == 4 and parts[2] == "_history":
        _allow(method, "GET")
        return interactions.vread(request, ctx, rtype, parts[1], parts[3])
    raise FhirError(Category.NOT_FOUND, f"No FHIR interaction at '{request.path}'.")


def _type_level(request: FhirRequest, ctx: Context, rtype: str) -> FhirResponse:
    method = request.method
    if method == "GET":
        return search_type.search(request, ctx, rtype)
    _allow(method, "GET", "POST", "PUT", "PATCH", "DELETE")
    return interactions.run_write(request, ctx, rtype, None)


def _two(request: FhirRequest, ctx: Context, rtype: str, second: str) -> FhirResponse:
    method = request.method
    if second == "_history":
        _allow(method, "GET")
        return history.history(request, ctx, rtype)
    if second == "_search":
        _allow(method, "POST")
        return search_type.search(request, ctx, rtype)
    if second.startswith("$"):
        return _operation(request, ctx, second[1:], "type", rtype, None)
    if method == "GET":
        return interactions.read(request, ctx, rtype, second)
    _allow(method, "GET", "PUT", "PATCH", "DELETE")
    return interactions.run_write(request, ctx, rtype, second)


def _operation(
    request: FhirRequest, ctx: Context, code: str, level: str, rtype: str | None, id: str | None
) -> FhirResponse:
    operation = operations.find(code, level)
    _allow(request.method, *sorted(operation.methods))
    return operation.handler(request, ctx, rtype, id)


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise FhirError(
            Category.METHOD_NOT_ALLOWED, f"{method} is not allowed here; use {', '.join(allowed)}."
        )
