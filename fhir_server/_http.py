"""The FHIR RESTful API over HTTP (https://hl7.org/fhir/R4/http.html), bound to FastAPI.

The only module of the record core that imports FastAPI/Starlette. Each route reads the body
(bounded), builds a FhirRequest and runs the framework-free ``dispatch`` in a worker thread.
No stack trace or SQL text ever reaches a client: unexpected errors become a generic
OperationOutcome and are logged here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from compliance.principal import Principal, Unauthenticated
from fhir_server.access import READ, Guard
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.notifications import WebSocketHub
from fhir_server.request import FHIR_JSON, FhirRequest, FhirResponse, is_whole_number
from fhir_server.router import dispatch

log = logging.getLogger(__name__)
PREFIX = "/fhir"
_MEDIA = f"{FHIR_JSON}; charset=utf-8"
_BODY = {"requestBody": {"content": {FHIR_JSON: {"schema": {"type": "object"}}}}}
_PATCH_BODY = {
    "requestBody": {"content": {"application/json-patch+json": {"schema": {"type": "array"}}}}
}

# (method, path, summary, OpenAPI request body): one route per method, so each has its own
# operation id in the OpenAPI description.
_ROUTES: tuple[tuple[str, str, str, dict[str, Any] | None], ...] = (
    ("GET", "/metadata", "capabilities", None),
    ("POST", "", "batch or transaction", _BODY),
    ("GET", "/_history", "history (system)", None),
    ("POST", "/{type}/_search", "search via POST", None),
    ("GET", "/{type}/_history", "history (type)", None),
    ("POST", "/{type}/$validate", "$validate", _BODY),
    ("GET", "/{type}", "search", None),
    ("DELETE", "/{type}", "conditional delete", None),
    ("POST", "/{type}", "create", _BODY),
    ("PUT", "/{type}", "conditional update", _BODY),
    ("PATCH", "/{type}", "conditional patch", _PATCH_BODY),
    ("GET", "/{type}/{id}/_history/{vid}", "vread", None),
    ("GET", "/{type}/{id}/_history", "history (instance)", None),
    ("GET", "/{type}/{id}/$everything", "$everything", None),
    ("POST", "/{type}/{id}/$break-glass", "$break-glass (emergency access)", _BODY),
    ("GET", "/{type}/{id}/$record-export", "$record-export (the whole record)", None),
    ("GET", "/{type}/$lastn", "$lastn", None),
    ("GET", "/{type}/{id}/{compartment_type}", "compartment search", None),
    ("POST", "/{type}/{id}/$validate", "$validate (instance)", _BODY),
    ("GET", "/{type}/{id}", "read", None),
    ("DELETE", "/{type}/{id}", "delete", None),
    ("PUT", "/{type}/{id}", "update", _BODY),
    ("PATCH", "/{type}/{id}", "patch", _PATCH_BODY),
)
_PATH_PARAMETERS = {
    "type": "resource type",
    "id": "logical id",
    "vid": "version id",
    "compartment_type": "resource type in the compartment",
}


Authenticate = Callable[[str | None, str | None], Principal]
# Public without a token: the CapabilityStatement (clients discover the server and its
# SMART endpoints from it).
_PUBLIC = frozenset({("GET", "metadata")})
# Declares the SMART access token in the OpenAPI description (securitySchemes and each
# operation's security); it refuses nothing itself (auto_error=False): the endpoint answers 401.
_BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="SMART on FHIR access token (RFC 6750)",
    auto_error=False,
)


def install(
    app: FastAPI,
    ctx: Context,
    websocket: WebSocketHub | None = None,
    authenticate: Authenticate | None = None,
) -> None:
    """Adds the FHIR API under /fhir and turns every HTTP-level error into an OperationOutcome;
    with a hub, the subscriptions' websocket channel at /fhir/ws. With ``authenticate`` every
    request but the CapabilityStatement needs a bearer token (without: in-process test apps
    that act as the system)."""
    router = APIRouter(prefix=PREFIX)
    endpoint = _endpoint(ctx, authenticate)
    for method, path, summary, body in _ROUTES:
        secured = authenticate is not None and (method, path.strip("/")) not in _PUBLIC
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            summary=summary,
            openapi_extra=_openapi(path, body),
            response_class=Response,
            operation_id=re.sub(r"[^a-z0-9]+", "-", summary).strip("-"),
            dependencies=[Depends(_BEARER)] if secured else None,
        )
    # Clients post bundles to the base with or without a trailing slash.
    router.add_api_route("/", endpoint, methods=["POST"], include_in_schema=False)
    if websocket is not None:
        router.add_api_websocket_route("/ws", _websocket(websocket, ctx, authenticate))
    app.include_router(router)
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


def _openapi(path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    extra: dict[str, Any] = dict(body or {})
    names = [n for n in _PATH_PARAMETERS if "{" + n + "}" in path]
    if names:
        extra["parameters"] = [
            {
                "name": n,
                "in": "path",
                "required": True,
                "description": _PATH_PARAMETERS[n],
                "schema": {"type": "string"},
            }
            for n in names
        ]
    return extra


def _endpoint(
    ctx: Context, authenticate: Authenticate | None
) -> Callable[[Request], Awaitable[Response]]:
    limit = ctx.settings.max_body_bytes

    async def endpoint(request: Request) -> Response:
        # The raw scope path: request.url re-parses it and drops decoded tab/CR/LF.
        path = request.scope["path"][len(PREFIX) :].strip("/")
        principal = None
        if authenticate is not None and (request.method, path) not in _PUBLIC:
            address = request.client.host if request.client else None
            try:
                principal = await run_in_threadpool(
                    authenticate, request.headers.get("authorization"), address
                )
            except Unauthenticated as failure:
                refused = _unauthenticated(failure)
                if ctx.audit is not None:  # the caller is unknown, not the system
                    bare = FhirRequest(method=request.method, path=path, base=_base(request))
                    await run_in_threadpool(ctx.audit.unauthenticated, bare, refused, address)
                return _response(refused)
        try:
            body = await _read_body(request, limit)
        except FhirError as error:
            return _response(FhirResponse.error(error))
        fhir_request = FhirRequest(
            method=request.method,
            path=path,
            principal=principal,
            query=request.query_params.multi_items(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            base=_base(request),
        )
        return _response(await run_in_threadpool(dispatch, fhir_request, ctx))

    return endpoint


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


def _unauthenticated(failure: Unauthenticated) -> FhirResponse:
    """401 with an RFC 6750 challenge; the body says no more than the challenge (which check
    failed stays in the audit trail, not with the caller)."""
    challenge = 'Bearer realm="medikus"'
    if failure.error:
        challenge += f', error="{failure.error}"'
    response = FhirResponse.error(
        FhirError(Category.UNAUTHORIZED, "Authentication required: a valid bearer token.")
    )
    response.headers["www-authenticate"] = challenge
    return response


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if is_whole_number(declared, 2**63 - 1) and int(declared) > limit:
        raise FhirError(Category.TOO_LARGE, f"The body is larger than {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError(Category.TOO_LARGE, f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _response(response: FhirResponse) -> Response:
    if not response.body:
        return Response(status_code=response.status, headers=response.headers)
    return Response(response.body, response.status, response.headers, media_type=_MEDIA)


def _outcome(category: Category, message: str) -> Response:
    return _response(FhirResponse.error(FhirError(category, message)))


async def _http_error(_request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return _outcome(Category.NOT_FOUND, "There is nothing at this URL.")
    if exc.status_code == 405:
        return _outcome(Category.METHOD_NOT_ALLOWED, "This HTTP method is not allowed at this URL.")
    response = _outcome(Category.INVALID, str(exc.detail))
    response.status_code = exc.status_code
    return response


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    return _outcome(Category.INVALID, "The request is malformed.")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _outcome(Category.FAULT, "An internal error occurred; it has been logged.")


def _websocket(
    hub: WebSocketHub, ctx: Context, authenticate: Authenticate | None
) -> Callable[[WebSocket], Awaitable[None]]:
    """The R4 websocket channel (https://hl7.org/fhir/R4/subscription.html#channels): the client
    sends ``bind <id>``, the server answers ``bound <id>`` and then ``ping <id>`` per notification."""

    async def endpoint(socket: WebSocket) -> None:
        if authenticate is not None:
            # The handshake carries the bearer token; only callers who may read
            # subscriptions (backend services) may bind to one.
            address = socket.client.host if socket.client else None
            try:
                principal = await run_in_threadpool(
                    authenticate, socket.headers.get("authorization"), address
                )
                Guard(ctx, principal).require(READ, "Subscription")
            except (Unauthenticated, FhirError):
                await socket.close(code=1008)  # policy violation
                return
        await socket.accept()
        session = hub.session()

        async def send() -> None:
            while True:
                await socket.send_text(await session.next_message())

        sender = asyncio.create_task(send())
        try:
            while True:
                await session.receive(await socket.receive_text())
        except WebSocketDisconnect:
            pass
        finally:
            session.close()
            sender.cancel()
            await asyncio.wait({sender})  # ends it without raising what ended it

    return endpoint
