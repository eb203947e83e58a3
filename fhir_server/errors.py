"""Errors of the record core and their OperationOutcome form (https://hl7.org/fhir/R4/operationoutcome.html).

Domain code raises :class:`FhirError` with a :class:`Category`; one table turns the category into an
HTTP status and an issue code, so no module below the HTTP layer knows about status codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Category(Enum):
    """What went wrong, with the HTTP status and OperationOutcome issue code it maps to."""

    INVALID = (400, "invalid")
    NOT_SUPPORTED = (400, "not-supported")
    UNAUTHORIZED = (401, "login")
    FORBIDDEN = (403, "forbidden")
    NOT_FOUND = (404, "not-found")
    METHOD_NOT_ALLOWED = (405, "not-supported")
    NOT_ACCEPTABLE = (406, "not-supported")
    CONFLICT = (409, "conflict")
    GONE = (410, "deleted")
    PRECONDITION_FAILED = (412, "conflict")
    TOO_LARGE = (413, "too-long")
    UNSUPPORTED_MEDIA_TYPE = (415, "not-supported")
    UNPROCESSABLE = (422, "processing")
    BUSY = (503, "transient")
    FAULT = (500, "exception")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def code(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class FhirError(Exception):
    """The one error type of the record core; carries everything needed for an OperationOutcome."""

    def __init__(
        self,
        category: Category,
        diagnostics: str,
        *,
        expression: tuple[str, ...] = (),
        issues: tuple[Issue, ...] = (),
    ) -> None:
        super().__init__(diagnostics)
        self.category = category
        self.diagnostics = diagnostics
        first = Issue("error", category.code, diagnostics, expression)
        self.issues = issues or (first,)
        # Set for an unknown search parameter, which lenient handling may skip.
        self.unknown_parameter = False

    @property
    def status(self) -> int:
        return self.category.status

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: tuple[Issue, ...] | list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information(diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome that reports success (``Prefer: return=OperationOutcome``)."""
    return operation_outcome([Issue("information", "informational", diagnostics)])
