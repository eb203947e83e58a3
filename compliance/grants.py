"""Which scopes a user is granted (SMART App Launch v2, scopes-and-launch-context.html).

Never more than requested, than the client is registered for (:func:`scope_within`), or than the
account's role can use: ``patient/…`` and ``launch/patient`` for patients, ``user/…`` for staff,
``online_access`` for both; ``system/…`` only through client credentials. Anything else asked
for (``openid``, ``fhirUser``, ``offline_access``, EHR ``launch``) is not implemented and is left
out of the grant, as RFC 6749 §3.3 allows.
"""

from __future__ import annotations

from compliance.accounts import Account
from compliance.scopes import Level, ResourceScope, ScopeError, Scopes, parse_scopes

__all__ = ["grant_user_scope", "narrowed", "scope_within"]

_PATIENT_EXTRAS = frozenset({"launch/patient", "online_access"})
_STAFF_EXTRAS = frozenset({"online_access"})


def scope_within(requested: ResourceScope, allowed: ResourceScope) -> bool:
    """Whether ``allowed`` covers ``requested``: same level, a type it covers, no more
    permissions, and at least the allowed scope's query restriction."""
    return (
        requested.level is allowed.level
        and allowed.covers_type(requested.resource_type)
        and requested.interactions <= allowed.interactions
        and set(allowed.criteria) <= set(requested.criteria)
    )


def grant_user_scope(requested: str, client_scopes: str, account: Account) -> str:
    """The part of ``requested`` this client may have and this account's role can use; raises
    :class:`~compliance.scopes.ScopeError` (``invalid_scope``) when no resource scope is left."""
    wanted = parse_scopes(requested, ignore_unknown=True)
    allowed = parse_scopes(client_scopes)
    patient = account.patient is not None
    level = Level.PATIENT if patient else Level.USER
    extras = (_PATIENT_EXTRAS if patient else _STAFF_EXTRAS) & allowed.other
    resource = tuple(
        s
        for s in wanted.resource
        if s.level is level and any(scope_within(s, a) for a in allowed.resource)
    )
    if not resource:
        raise ScopeError("none of the requested scopes may be granted")
    return str(Scopes(resource, wanted.other & extras))


def narrowed(granted: str, requested: str | None) -> str:
    """RFC 6749 §6: a refresh may ask for less than was granted, never more (ScopeError)."""
    if requested is None:
        return granted
    wanted = [s for s in requested.split(" ") if s]
    if not wanted or not set(wanted) <= set(granted.split()):
        raise ScopeError("scope exceeds the original grant")
    return " ".join(wanted)
