"""The request being answered, as the audit trail sees it, and what the access layer notes on it.

A leaf module (it imports no other part of the record core except the request type), so the
access layer can call :func:`note_refusal`, :func:`note_break_glass` and
:func:`note_emergency_grants` without importing the audit trail. The router's audit hook
(audit.AuditTrail.audited) opens a :class:`Scope` per request in a context variable; batch
entries nest their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compliance.principal import Principal
    from fhir_server.request import FhirRequest

__all__ = [
    "EmergencyGrants",
    "Refusal",
    "Scope",
    "current",
    "emergency_grants_unknown",
    "note_break_glass",
    "note_emergency_grants",
    "note_refusal",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An access refusal the access layer noted (answered as 404/403): why, and whose data."""

    reason: str
    patients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EmergencyGrants:
    """The patients the caller reaches through their own break-the-glass grant and through no
    other grant for all their data, each with the stated reason (fhir_server/access.py finds
    them once per request). An answer that holds such a patient's data is an emergency access:
    the audit trail labels it once it knows whose data the answer held."""

    reasons: Mapping[str, str]

    def reason(self, patients: Iterable[str]) -> str | None:
        """The reason of the first of ``patients`` reached only in an emergency, if any."""
        return next((self.reasons[p] for p in patients if p in self.reasons), None)


@dataclass(slots=True)
class Scope:
    """The request being answered on this thread."""

    request: FhirRequest
    principal: Principal | None
    staged: int = 0  # change events staged in a transaction during this request
    refusal: Refusal | None = None
    emergency: str | None = None  # the reason of a break-the-glass access
    emergency_grants: EmergencyGrants | None = None  # None: not looked up (yet)


SCOPE: ContextVar[Scope | None] = ContextVar("medikus_audit_scope", default=None)


def current() -> Scope | None:
    return SCOPE.get()


def note_refusal(reason: str, patients: Iterable[str] = ()) -> None:
    """Marks the request being answered as an access refusal (for the access layer: call it
    where it answers 404/403 for data the caller may not see, not where it only filters): its
    failure event gets outcome 8 and the reason, plus a BALP AuthZ decision (deny) per patient
    named. No effect outside a request or without an audit trail."""
    scope = SCOPE.get()
    if scope is None:
        return
    known = scope.refusal.patients if scope.refusal is not None else ()
    first = scope.refusal.reason if scope.refusal is not None else reason
    scope.refusal = Refusal(first, tuple(dict.fromkeys((*known, *patients))))


def note_break_glass(reason: str) -> None:
    """Marks the request being answered as an emergency access (for the access layer: call it
    when data is reached only through a break-the-glass grant): its events get purpose BTG with
    ``reason`` and the security label BTG, plus a BALP AuthZ decision (permit) per patient."""
    scope = SCOPE.get()
    if scope is not None and reason.strip():
        scope.emergency = reason.strip()


def emergency_grants_unknown() -> bool:
    """Whether the request being answered is audited and its caller's emergency grants have not
    been looked up yet (for the access layer: look them up at most once per request)."""
    scope = SCOPE.get()
    return scope is not None and scope.emergency_grants is None


def note_emergency_grants(grants: EmergencyGrants) -> None:
    """Hands the caller's emergency-only patients to the audit trail (for the access layer):
    the events of an answer holding data of one of them get purpose BTG with its reason, the
    security label BTG and a BALP AuthZ decision (permit) per patient, as after
    :func:`note_break_glass`. No effect outside a request or without an audit trail."""
    scope = SCOPE.get()
    if scope is not None:
        scope.emergency_grants = grants
