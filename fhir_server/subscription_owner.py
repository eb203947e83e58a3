"""The owner of a Subscription: whose access bounds its notifications (https://hl7.org/fhir/R4/subscription.html).

R4 leaves to the server who may be notified of what. Here every stored Subscription carries, in
an extension only the server writes, the principal who last wrote it (account or client, roles,
scopes, organisation, fhirUser, patient in context), or "system" for in-process writers. The
writer must be allowed to search the criteria's type (and every type its chains and ``_has``
name); the dispatcher notifies only about resources the owner may read, decided when it matches
(so grants count as they are then). Known limit: the owner is a snapshot of the writer at the
time of writing; a later role change or a disabled account does not reach it until the
Subscription is written again (or deleted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from compliance.principal import Principal, Role
from compliance.scopes import ScopeError, parse_scopes
from fhir_server.access import SEARCH, Guard
from fhir_server.context import Context

OWNER_URL: Final = "https://medi-kus.de/fhir/StructureDefinition/subscription-owner"
_SYSTEM: Final = "system"
# Principal field -> sub-extension url (all strings; roles repeat).
_FIELDS: Final = (
    ("subject", "subject"),
    ("client_id", "client"),
    ("organization", "organization"),
    ("fhir_user", "fhirUser"),
    ("patient", "patient"),
)


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose access bounds a Subscription's notifications; ``principal`` None: the system."""

    principal: Principal | None


def with_owner(ctx: Context, guard: Guard, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` (a Subscription about to be written under ``guard``) with its owner: the
    writing principal, replacing whatever owner the body named. The system (in process) keeps
    the recorded owner (the dispatcher setting status error/off) or becomes the owner. Raises
    403 when the criteria name a type the writer may not search."""
    principal = guard.principal
    recorded = [e for e in resource.get("extension") or () if _is_owner(e)]
    if principal is None and recorded:
        return resource
    if principal is not None:
        _check_reach(ctx, guard, resource.get("criteria"))
    others = [e for e in resource.get("extension") or () if not _is_owner(e)]
    return {**resource, "extension": [*others, owner_extension(principal)]}


def owner_extension(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {"url": OWNER_URL, "extension": [{"url": _SYSTEM, "valueBoolean": True}]}
    parts: list[dict[str, Any]] = []
    for name, url in _FIELDS:
        value = getattr(principal, name)
        if value:
            parts.append({"url": url, "valueString": value})
    parts.extend({"url": "role", "valueCode": role.value} for role in sorted(principal.roles))
    scope = str(principal.scopes)
    if scope:
        parts.append({"url": "scope", "valueString": scope})
    return {"url": OWNER_URL, "extension": parts}


def owner_of(resource: dict[str, Any]) -> Owner | None:
    """The recorded owner of a stored Subscription; None if none is recorded (or it is
    malformed): such a Subscription is not served."""
    found = [e for e in resource.get("extension") or () if _is_owner(e)]
    if len(found) != 1 or not isinstance(found[0].get("extension"), list):
        return None
    values: dict[str, list[Any]] = {}
    for part in found[0]["extension"]:
        if isinstance(part, dict) and isinstance(part.get("url"), str):
            value = next((v for k, v in part.items() if k.startswith("value")), None)
            values.setdefault(part["url"], []).append(value)
    if values.get(_SYSTEM) == [True]:
        return Owner(None)
    try:
        fields = {name: _single(values, url) for name, url in _FIELDS}
        subject, client_id = fields.pop("subject"), fields.pop("client_id")
        if subject is None or client_id is None:
            return None
        roles = frozenset(Role(r) for r in values.get("role", ()))
        scopes = parse_scopes(_single(values, "scope") or "")
    except (ValueError, ScopeError):
        return None
    return Owner(
        Principal(
            subject,
            client_id,
            scopes,
            roles,
            patient=fields["patient"],
            fhir_user=fields["fhir_user"],
            organization=fields["organization"],
        )
    )


def _single(values: dict[str, list[Any]], url: str) -> str | None:
    found = values.get(url, [])
    if len(found) > 1 or (found and not isinstance(found[0], str)):
        raise ValueError(f"owner {url}: {found!r}")
    return found[0] if found else None


def _is_owner(extension: Any) -> bool:
    return isinstance(extension, dict) and extension.get("url") == OWNER_URL


def _check_reach(ctx: Context, guard: Guard, criteria: Any) -> None:
    """403 unless the writer may search the criteria's type and every type it chains to."""
    if not isinstance(criteria, str):
        return  # refused with 422 by subscriptions.accept
    rtype, _, query = criteria.partition("?")
    guard.require(SEARCH, rtype)
    guard.narrow(rtype, ctx.criteria.parse(rtype, parse_qsl(query, keep_blank_values=True)))
