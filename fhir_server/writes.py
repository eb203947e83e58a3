"""The write path shared by single interactions and bundles: create, update, patch, delete.

https://hl7.org/fhir/R4/http.html#create … #delete. A :class:`Writes` lives for one unit of work;
it assigns versions and metadata, extracts search index rows for the same transaction and, at the
end, checks that every local reference resolves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import jsonpatch

from compliance.policy import Interaction
from fhir_server import fhir_json, relations
from fhir_server._time import format_instant
from fhir_server.access import CREATE, DELETE, UPDATE, Guard, not_known
from fhir_server.audit_scope import note_refusal
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError, Issue
from fhir_server.references import is_unresolved, local_target, references_in
from fhir_server.request import is_whole_number
from fhir_server.resource_types import REFUSED, r4_types, supported_types
from fhir_server.store import NewVersion, StoredVersion, UnitOfWork, VersionConflict
from fhir_server.subscription_owner import with_owner

ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ETAG = re.compile(r'^(?:W/)?"(?P<v>[^"]+)"$')


def check_type(rtype: str) -> None:
    """404 for types this server does not store, with the reason for R4 types it refuses."""
    if rtype in supported_types():
        return
    if rtype in REFUSED:
        raise FhirError(
            Category.NOT_FOUND,
            f"Resource type {rtype} is not supported: {REFUSED[rtype]}, so it cannot be validated "
            "with the FHIR R4B models this server uses.",
        )
    known = "an R4 resource type" if rtype in r4_types() else "a FHIR R4 resource type"
    raise FhirError(Category.NOT_FOUND, f"'{rtype}' is not {known} this server supports.")


def check_id(id: str) -> None:
    if not ID.match(id):
        raise FhirError(
            Category.INVALID, f"'{id}' is not a valid FHIR id ([A-Za-z0-9-.], 1–64 characters)."
        )


def parse_etag(value: str | None) -> int | None:
    """The version in an If-Match header (``W/"3"``), or None if absent."""
    if value is None:
        return None
    match = _ETAG.match(value.strip())
    if match is None or not is_whole_number(match["v"]):
        raise FhirError(
            Category.PRECONDITION_FAILED,
            f"If-Match value '{value}' names no version of this server.",
        )
    return int(match["v"])


def prepare(ctx: Context, resource: dict[str, Any], rtype: str) -> dict[str, Any]:
    """Checks that the body is a valid resource of the type the URL names (no database work)."""
    check_type(rtype)
    if resource.get("resourceType") != rtype:
        raise FhirError(
            Category.INVALID,
            f"The body is a {resource.get('resourceType')} but the URL names {rtype}.",
            expression=("resourceType",),
        )
    ctx.validator.validate(resource)
    return resource


class Writes:
    """The writes of one unit of work."""

    def __init__(self, ctx: Context, uow: UnitOfWork, now: int, guard: Guard | None = None) -> None:
        self.uow = uow
        self.now = now
        self.guard = guard or Guard(ctx, None)
        # Ids this unit of work assigns (ctx.new_id) are new by construction: a restricted
        # caller may create them by PUT (a conditional update without a match), see _check_visible.
        self._new_id = ctx.new_id
        self._assigned: set[str] = set()
        self.ctx = replace(ctx, new_id=self._assign_id)
        # Versions written, checked against the caller's access once relations are current.
        self._written: dict[tuple[str, str], bool] = {}  # (type, id) -> created
        self._relations = relations.Tracker()
        # Each local reference target, with the bundle entry that first named it (for errors).
        self._targets: dict[tuple[str, str], str | None] = {}
        self.entry: str | None = None  # set by the transaction processor: "Bundle.entry[i]"
        # Audit hook (H3): each version written with the version it replaced, for AuditEvents.
        self.audited: list[tuple[NewVersion, StoredVersion | None]] = []

    def create(self, resource: dict[str, Any], id: str) -> StoredVersion:
        return self._store(resource, id, None, "POST")

    def update(
        self, rtype: str, id: str, resource: dict[str, Any], if_match: int | None
    ) -> tuple[StoredVersion, bool]:
        """Update, or update-as-create for a new id; returns (stored, created)."""
        if resource.get("id") != id:
            raise FhirError(
                Category.INVALID,
                f"The resource id '{resource.get('id')}' does not match the id '{id}' in the URL.",
                expression=(f"{rtype}.id",),
            )
        prior = self.uow.current(rtype, id)
        self._check_visible(rtype, id, prior, UPDATE)
        self._check_match(rtype, id, prior, if_match)
        try:
            stored = self._store(resource, id, prior, "PUT")
        except VersionConflict:
            # Created by a concurrent writer between our read and insert: update it instead.
            prior = self.uow.current(rtype, id)
            self._check_match(rtype, id, prior, if_match)
            stored = self._store(resource, id, prior, "PUT")
        return stored, prior is None or prior.deleted

    def patch(self, rtype: str, id: str, operations: Any, if_match: int | None) -> StoredVersion:
        prior = self.uow.current(rtype, id)
        self._check_visible(rtype, id, prior, UPDATE)
        if prior is None or prior.content is None:
            raise absent(rtype, id, prior)
        self._check_match(rtype, id, prior, if_match)
        try:
            patched = jsonpatch.apply_patch(fhir_json.loads(prior.content), operations)
        except (
            jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException,
            TypeError,
            KeyError,
        ) as exc:
            raise FhirError(
                Category.UNPROCESSABLE, f"The JSON Patch cannot be applied: {exc}"
            ) from exc
        except RecursionError as exc:
            raise FhirError(
                Category.UNPROCESSABLE, "The patched resource is nested too deeply."
            ) from exc
        if not isinstance(patched, dict) or patched.get("id") != id:
            raise FhirError(
                Category.UNPROCESSABLE, "A patch must not change the resource's id or type."
            )
        prepare(self.ctx, patched, rtype)
        return self._store(patched, id, prior, "PATCH")

    def delete(self, rtype: str, id: str, if_match: int | None) -> StoredVersion | None:
        """Deletes (as a new version); None if there was nothing to delete."""
        prior = self.uow.current(rtype, id)
        self._check_visible(rtype, id, prior, DELETE)
        self._check_match(rtype, id, prior, if_match)
        if prior is None or prior.deleted:
            return None
        version = NewVersion(
            rtype, id, prior.version + 1, self.now, "DELETE", None, prior=prior.version
        )
        self._relations.before_change(self.uow, version)
        self.uow.put(version)
        self.audited.append((version, prior))
        return StoredVersion(rtype, id, version.version, self.now, True, "DELETE", None)

    def finish(self) -> None:
        """Refuses the whole unit of work if a local reference does not resolve (references.html)
        or if the caller may not see what was written; brings access grants up to date."""
        self._check_references()
        self._relations.refresh(self.uow, self.now)
        self._check_written()
        if self.ctx.audit is not None:  # audit hook (H3): change events, in this transaction
            self.ctx.audit.changes(self.uow, self.audited)

    def _assign_id(self) -> str:
        id = self._new_id()
        self._assigned.add(id)
        return id

    def _check_visible(
        self, rtype: str, id: str, prior: StoredVersion | None, interaction: Interaction
    ) -> None:
        """An existing resource the caller may not see is "not known" (like a missing one). For a
        caller who does not see every row of the type, a missing or deleted one is "not known"
        too: no update-as-create, no 204 for deleting nothing, or the answers would tell hidden
        ids from unused ones. Ids this unit of work assigned itself may be created."""
        if self.guard.restriction(interaction, rtype) is None:  # 403 if not allowed at all
            return
        if prior is None or prior.deleted:
            if interaction is UPDATE and prior is None and id in self._assigned:
                return
            raise not_known(rtype, id)
        if id not in self.guard.visible(rtype, (id,), interaction, db=self.uow):
            raise not_known(rtype, id)

    def _check_written(self) -> None:
        """Every written version must lie within what the caller may see: a doctor cannot file
        an Observation for a patient without a treatment relation, a patient cannot write into
        someone else's record. Checked after the relations are refreshed, so a new Patient
        managed by the doctor's own MVZ counts as theirs."""
        if self.guard.unrestricted or not self._written:
            return
        by_type: dict[tuple[str, Interaction], list[str]] = {}
        for (rtype, id), created in self._written.items():
            by_type.setdefault((rtype, CREATE if created else UPDATE), []).append(id)
        for (rtype, interaction), ids in by_type.items():
            visible = self.guard.visible(rtype, ids, interaction, db=self.uow)
            if len(visible) < len(set(ids)):
                note_refusal(f"writing {rtype} outside the caller's access")
                raise FhirError(
                    Category.FORBIDDEN,
                    f"You may not write this {rtype}: it would lie outside the records you "
                    "have access to (no treatment relation or consent for this patient).",
                )

    def _check_references(self) -> None:
        if not self.ctx.settings.enforce_references or not self._targets:
            return
        missing = sorted(set(self._targets) - self.uow.existing(self._targets.keys()))
        if not missing:
            return
        issues = tuple(_missing_issue(self._targets[key], key) for key in missing[:20])
        shown = ", ".join(f"{t}/{i}" for t, i in missing[:10])
        summary = _where(
            self._targets[missing[0]],
            f"References to resources that do not exist on this server: {shown}.",
        )
        first = Issue("error", "processing", summary, issues[0].expression)
        raise FhirError(Category.UNPROCESSABLE, summary, issues=(first, *issues))

    def _collect_targets(self, content: bytes) -> None:
        for reference in references_in(content):
            if is_unresolved(reference):
                raise FhirError(
                    Category.UNPROCESSABLE,
                    f"The reference '{reference}' does not resolve: it is only valid inside a "
                    "transaction that contains (or can find) its target.",
                )
            target = local_target(reference)
            if target is not None:
                self._targets.setdefault(target, self.entry)

    def _check_match(
        self, rtype: str, id: str, prior: StoredVersion | None, if_match: int | None
    ) -> None:
        if if_match is None:
            return
        current = None if prior is None else prior.version
        if current != if_match:
            raise FhirError(
                Category.PRECONDITION_FAILED,
                f"{rtype}/{id} is at version {current or 'none'}, not {if_match} (If-Match): "
                "it was changed by someone else; read it again.",
            )

    def _store(
        self, resource: dict[str, Any], id: str, prior: StoredVersion | None, method: str
    ) -> StoredVersion:
        version = 1 if prior is None else prior.version + 1
        prior_version = None if prior is None else prior.version
        rendered = render(self.ctx, resource, id, version, prior_version, method, self.now)
        return self.put(rendered, prior)

    def put(self, rendered: Rendered, prior: StoredVersion | None = None) -> StoredVersion:
        """Writes a version rendered earlier (possibly before the unit of work began);
        ``prior``: the version it replaces, as read (for the audit)."""
        version = rendered.version
        self.guard.require(CREATE if version.prior is None else UPDATE, version.type)
        if version.type == "Subscription":
            rendered = self._owned(rendered)
            version = rendered.version
        self._relations.before_change(self.uow, version)
        self.uow.put(version)
        self.audited.append((version, prior))
        self._relations.changed(version)
        self._written.setdefault((version.type, version.id), version.prior is None)
        if self.ctx.settings.enforce_references:
            self._collect_targets(rendered.version.content or b"")
        return rendered.stored

    def _owned(self, rendered: Rendered) -> Rendered:
        """A Subscription carries its writer's access (subscription_owner), so that its
        notifications stay within what the writer may read."""
        v = rendered.version
        resource = with_owner(self.ctx, self.guard, fhir_json.loads(v.content or b"{}"))
        return render(self.ctx, resource, v.id, v.version, v.prior, v.method, v.last_updated)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A version's stored JSON and index rows, computed without the database."""

    version: NewVersion
    stored: StoredVersion


def render(
    ctx: Context,
    resource: dict[str, Any],
    id: str,
    version: int,
    prior: int | None,
    method: str,
    now: int,
) -> Rendered:
    """Sets id and meta, serialises and extracts the index rows (CPU only: no lock needed)."""
    rtype = resource["resourceType"]
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(now)
    body = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    stored_json = {"resourceType": rtype, "id": id, "meta": meta, **body}
    content = fhir_json.dumps(stored_json)
    index = ctx.indexer.extract(stored_json)
    new = NewVersion(rtype, id, version, now, method, content, index, prior=prior)
    return Rendered(new, StoredVersion(rtype, id, version, now, False, method, content))


def _missing_issue(entry: str | None, key: tuple[str, str]) -> Issue:
    message = _where(entry, f"{key[0]}/{key[1]} does not exist on this server.")
    return Issue("error", "processing", message, (entry,) if entry else ())


def _where(entry: str | None, message: str) -> str:
    return f"{entry}: {message}" if entry else message


def absent(rtype: str, id: str, prior: StoredVersion | None) -> FhirError:
    if prior is not None:
        return FhirError(Category.GONE, f"{rtype}/{id} was deleted.")
    return FhirError(Category.NOT_FOUND, f"{rtype}/{id} is not known.")
