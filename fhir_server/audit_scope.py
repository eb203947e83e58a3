"""The request being answered, as the audit trail sees it, and what the access layer notes on it.

A leaf module (it imports no other part of the record core except the request type), so the
access layer can call :func:`note_refusal` and :func:`note_break_glass` without importing the
audit trail. The router's audit hook (audit.AuditTrail.audited) opens a :class:`Scope` per request
in a context variable; batch entries nest their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compliance.principal import Principal
    from fhir_server.request import FhirRequest

__all__ = ["Refusal", "Scope", "current", "note_break_glass", "note_refusal"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An access refusal the access layer noted (answered as 404/403): why, and whose data."""

    reason: str
    patients: tuple[str, ...] = ()


@dataclass(slots=True)
class Scope:
    """The request being answered on this thread."""

    request: FhirRequest
    principal: Principal | None
    staged: int = 0  # change events staged in a transaction during this request
    refusal: Refusal | None = None
    emergency: str | None = None  # the reason of a break-the-glass access


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
