"""The instance and type level interactions (https://hl7.org/fhir/R4/http.html).

Reads answer from the stored JSON directly. Writes are split in two: ``prepare_write`` checks the
request without touching the database (so validation runs outside any lock), and the returned
:class:`PreparedWrite` is applied inside a unit of work — alone, or as one entry of a transaction.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fhir_server._time import parse_http_date
from fhir_server.access import CREATE, DELETE, SEARCH, UPDATE, Guard
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError
from fhir_server.request import (
    JSON_PATCH,
    FhirRequest,
    FhirResponse,
    is_whole_number,
    parse_json,
    version_headers,
    write_response,
)
from fhir_server.search.sql import match_ids
from fhir_server.store import StaleGuess, StoredVersion
from fhir_server.writes import (
    Rendered,
    Writes,
    absent,
    check_id,
    check_type,
    parse_etag,
    prepare,
    render,
)


def read(request: FhirRequest, ctx: Context, rtype: str, id: str) -> FhirResponse:
    check_type(rtype)
    check_id(id)
    Guard(ctx, request.principal).readable(rtype, id)
    stored = ctx.store.read(rtype, id)
    return _serve(request, rtype, id, stored)


def vread(request: FhirRequest, ctx: Context, rtype: str, id: str, version: str) -> FhirResponse:
    check_type(rtype)
    check_id(id)
    # Versions are visible when the resource is (its current version decides).
    Guard(ctx, request.principal).readable(rtype, id)
    if not is_whole_number(version):
        raise FhirError(Category.NOT_FOUND, f"{rtype}/{id} has no version '{version}'.")
    stored = ctx.store.vread(rtype, id, int(version))
    if stored is None:
        raise FhirError(Category.NOT_FOUND, f"{rtype}/{id} has no version {version}.")
    return _serve(request, rtype, id, stored)


def _serve(request: FhirRequest, rtype: str, id: str, stored: StoredVersion | None) -> FhirResponse:
    if stored is None or stored.content is None:
        error = absent(rtype, id, stored)
        response = FhirResponse.error(error)
        if stored is not None:
            response.headers.update(version_headers(stored, ""))
        return response
    headers = version_headers(stored, "")
    if _not_modified(request, stored):
        return FhirResponse(304, b"", headers)
    return FhirResponse(200, stored.content, headers)


def _not_modified(request: FhirRequest, stored: StoredVersion) -> bool:
    """Conditional read (http.html#cread): If-None-Match wins over If-Modified-Since."""
    none_match = request.header("if-none-match")
    if none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in none_match.split(",")}
        return "*" in tags or f'"{stored.version}"' in tags
    since = request.header("if-modified-since")
    if since is not None:
        when = parse_http_date(since)
        # HTTP dates have whole seconds: compare at that precision.
        return when is not None and stored.last_updated // 1_000_000 <= when // 1_000_000
    return False


@dataclass
class PreparedWrite:
    """A checked write request, ready to be applied to a unit of work."""

    request: FhirRequest
    method: str
    rtype: str
    id: str | None = None
    criteria: list[tuple[str, str]] | None = None
    resource: dict[str, Any] | None = None
    operations: Any = None
    if_match: int | None = None
    exists: bool = False  # conditional create found a match
    rendered: Rendered | None = None  # a plain create's version, rendered before the lock
    guessed: bool = False  # id and exists come from a match made before the unit of work

    def guess(self, ctx: Context) -> None:
        """Conditional create: match before the unit of work (no lock) so that the create and the
        references to it can be prepared early; ``resolve`` checks the guess under the lock."""
        if self.method != "POST" or self.criteria is None:
            return
        guard = Guard(ctx, self.request.principal)
        parsed = guard.narrow(self.rtype, ctx.criteria.parse(self.rtype, self.criteria))
        matches = match_ids(ctx.store, self.rtype, parsed, 2)
        if len(matches) < 2:
            self.exists = bool(matches)
            self.id = matches[0] if matches else ctx.new_id()
            self.guessed = True

    def assign_id(self, ctx: Context) -> None:
        """A plain create's id needs no database: assign it early, so others can refer to it."""
        if self.method == "POST" and self.criteria is None and self.id is None:
            self.id = ctx.new_id()

    def pre_render(self, ctx: Context, now: int) -> None:
        """Renders a create ahead of the unit of work (its references must be final)."""
        plain = self.criteria is None or (self.guessed and not self.exists)
        if self.method == "POST" and plain and self.resource is not None:
            assert self.id is not None, "assign_id() or guess() first"
            self.rendered = render(ctx, self.resource, self.id, 1, None, "POST", now)

    def resolve(self, writes: Writes) -> None:
        """Fixes the target id (conditional interactions search here, inside the unit of work)."""
        if self.criteria is None:
            self.assign_id(writes.ctx)
            return
        # Conditional interactions search: only among what the caller may see.
        parsed = writes.guard.narrow(
            self.rtype, writes.ctx.criteria.parse(self.rtype, self.criteria)
        )
        writes.uow.lock(f"{self.rtype}?{sorted(self.criteria)}")
        matches = match_ids(writes.uow, self.rtype, parsed, 2)
        if len(matches) > 1:
            raise FhirError(
                Category.PRECONDITION_FAILED,
                f"The conditional {self.method} criteria match more than one {self.rtype}.",
            )
        self._resolved(writes, matches[0] if matches else None)

    def _resolved(self, writes: Writes, match: str | None) -> None:
        if self.method == "POST" and self.guessed:
            if (match is not None) != self.exists or (match is not None and match != self.id):
                raise StaleGuess(f"{self.rtype}?{self.criteria}")
        elif self.method == "POST":
            self.exists = match is not None
            self.id = match or writes.ctx.new_id()
        elif self.method == "PUT":
            given = self.resource.get("id") if self.resource else None
            if match is not None and given is not None and given != match:
                raise FhirError(
                    Category.INVALID, f"The resource id '{given}' differs from the match {match}."
                )
            self.id = match or given or writes.ctx.new_id()
            if self.resource is not None:
                self.resource["id"] = self.id
        elif match is None and self.method == "PATCH":
            raise FhirError(
                Category.NOT_FOUND, f"No {self.rtype} matches the conditional patch criteria."
            )
        else:
            self.id = match

    def apply(self, writes: Writes) -> FhirResponse:
        assert self.method == "DELETE" or self.id is not None, "resolve() first"
        if self.method == "POST":
            return self._create(writes)
        if self.method == "PUT":
            assert self.resource is not None and self.id is not None
            stored, created = writes.update(self.rtype, self.id, self.resource, self.if_match)
            return write_response(self.request, stored, 201 if created else 200, "Updated.")
        if self.method == "PATCH":
            assert self.id is not None
            stored = writes.patch(self.rtype, self.id, self.operations, self.if_match)
            return write_response(self.request, stored, 200, "Patched.")
        return self._delete(writes)

    def _create(self, writes: Writes) -> FhirResponse:
        assert self.id is not None and self.resource is not None
        if self.exists:
            current = writes.uow.current(self.rtype, self.id)
            assert current is not None
            return write_response(
                self.request, current, 200, "A matching resource exists (If-None-Exist)."
            )
        if self.rendered is not None:
            stored = writes.put(self.rendered)
        else:
            stored = writes.create(self.resource, self.id)
        return write_response(self.request, stored, 201, "Created.")

    def _delete(self, writes: Writes) -> FhirResponse:
        if self.id is None:  # conditional delete without a match
            return FhirResponse(204)
        stored = writes.delete(self.rtype, self.id, self.if_match)
        if stored is None:
            return FhirResponse(204)
        return FhirResponse(204, b"", {"etag": f'W/"{stored.version}"'})


def prepare_write(request: FhirRequest, ctx: Context, rtype: str, id: str | None) -> PreparedWrite:
    """Checks a create/update/patch/delete request without database access."""
    check_type(rtype)
    if id is not None:
        check_id(id)
    method = request.method
    criteria = _criteria(request, method, id)
    guard = Guard(ctx, request.principal)
    guard.require({"POST": CREATE, "DELETE": DELETE}.get(method, UPDATE), rtype)
    if criteria is not None:
        guard.require(SEARCH, rtype)
    if_match = parse_etag(request.header("if-match"))
    if method == "DELETE":
        return PreparedWrite(request, method, rtype, id, criteria, if_match=if_match)
    if method == "PATCH":
        return PreparedWrite(
            request, method, rtype, id, criteria, operations=_patch_body(request), if_match=if_match
        )
    if method == "POST" and request.query:
        shown = ", ".join(sorted({k for k, _ in request.query}))
        raise FhirError(
            Category.INVALID,
            f"A create takes no query parameters ({shown}); for a conditional create use If-None-Exist.",
        )
    resource = prepare(ctx, request.resource_body(), rtype)
    if method == "POST":
        resource.pop("id", None)  # create: the server assigns the id (http.html#create)
        return PreparedWrite(request, method, rtype, None, criteria, resource)
    return PreparedWrite(request, method, rtype, id, criteria, resource, if_match=if_match)


def _criteria(request: FhirRequest, method: str, id: str | None) -> list[tuple[str, str]] | None:
    if method == "POST":
        header = request.header("if-none-exist")
        if header is None:
            return None
        query = parse_qsl(header.split("?", 1)[-1], keep_blank_values=True)
        if not query:
            raise FhirError(Category.INVALID, "If-None-Exist must carry search criteria.")
        return query
    if id is not None:
        return None
    if not request.query:
        raise FhirError(
            Category.INVALID if method != "DELETE" else Category.PRECONDITION_FAILED,
            f"A conditional {method} needs search criteria.",
        )
    return request.query


def _patch_body(request: FhirRequest) -> Any:
    if request.parsed is not None:
        return _binary_patch(request.parsed)
    if request.media_type() != JSON_PATCH:
        raise FhirError(
            Category.UNSUPPORTED_MEDIA_TYPE,
            f"PATCH needs Content-Type {JSON_PATCH} (RFC 6902), not '{request.media_type() or 'none'}'.",
        )
    operations = parse_json(request.body)
    if not isinstance(operations, list):
        raise FhirError(Category.INVALID, "A JSON Patch is a JSON array of operations.")
    return operations


def _binary_patch(resource: Any) -> Any:
    """In a bundle, a JSON Patch travels as a Binary resource (http.html#patch)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise FhirError(
            Category.INVALID, "A PATCH entry in a bundle carries a Binary with a JSON Patch."
        )
    data = resource.get("data", "")
    if not isinstance(data, str):
        raise FhirError(Category.INVALID, "The Binary's data must be a base64 string.")
    try:
        return parse_json(base64.b64decode(data, validate=True))
    except ValueError as exc:
        raise FhirError(Category.INVALID, "The Binary's data is not base64.") from exc


def run_write(request: FhirRequest, ctx: Context, rtype: str, id: str | None) -> FhirResponse:
    """A single write interaction in a unit of work of its own."""
    with ctx.store.write_slot():
        prepared = prepare_write(request, ctx, rtype, id)
        with ctx.store.unit_of_work() as uow:
            writes = Writes(ctx, uow, ctx.clock(), Guard(ctx, request.principal))
            prepared.resolve(writes)
            response = prepared.apply(writes)
            writes.finish()
    return response
