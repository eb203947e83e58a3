"""Emergency access ("break the glass"): ``POST Patient/[id]/$break-glass``.

A doctor without a treatment relation may open a patient's record in an emergency
(https://hl7.org/fhir/R4/operationoutcome-example-break-the-glass.json.html). They must state a
reason; the access is personal (granted to their Practitioner, not their MVZ), ends after
``BTG_DURATION_US`` and is recorded as an AuditEvent with purposeOfUse and security label BTG
and the stated reason, which the privacy officer reviews
(``AuditEvent?_security=http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG``, or
``medikus audit btg-report``).
"""

from __future__ import annotations

from typing import Any

from compliance.principal import Role
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError, information
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.store import GrantRow

BTG_DURATION_US = 60 * 60 * 1_000_000  # one hour
MIN_REASON = 10
MAX_REASON = 500


def break_glass(
    request: FhirRequest, ctx: Context, rtype: str | None, id: str | None
) -> FhirResponse:
    if rtype != "Patient" or id is None:
        raise FhirError(Category.NOT_FOUND, "$break-glass is defined on Patient/[id].")
    principal = request.principal
    if principal is None or not principal.has(Role.DOCTOR):
        raise FhirError(Category.FORBIDDEN, "Only doctors may use emergency access.")
    practitioner = principal.fhir_user
    if not practitioner or not practitioner.startswith("Practitioner/"):
        raise FhirError(Category.FORBIDDEN, "Emergency access needs a practitioner account.")
    _reason(request.json_body())  # the audit trail records it with the request
    now = ctx.clock()
    until = now + BTG_DURATION_US
    with ctx.store.write_slot(), ctx.store.unit_of_work() as uow:
        current = uow.current("Patient", id)
        if current is None or current.deleted:
            raise FhirError(Category.NOT_FOUND, f"Patient/{id} is not known.")
        uow.add_grant(GrantRow(id, practitioner, "*", now, until, "btg", "btg"))
    outcome = information(
        "Notfallzugriff freigegeben für 60 Minuten; der Zugriff wird protokolliert und vom "
        "Datenschutz geprüft. / Emergency access granted for 60 minutes; it is audited and "
        "reviewed by the privacy officer."
    )
    return FhirResponse.json(200, outcome)


def _reason(body: Any) -> str:
    reason = None
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter") or []:
            if isinstance(parameter, dict) and parameter.get("name") == "reason":
                reason = parameter.get("valueString")
    if not isinstance(reason, str) or not MIN_REASON <= len(reason.strip()) <= MAX_REASON:
        raise FhirError(
            Category.INVALID,
            f"State the reason for emergency access (Parameters 'reason', {MIN_REASON} to "
            f"{MAX_REASON} characters).",
            expression=("reason",),
        )
    return reason.strip()
