"""Operations as data (https://hl7.org/fhir/R4/operations.html): one record per operation drives
the router and the CapabilityStatement alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.break_glass import break_glass
from fhir_server.context import Context
from fhir_server.errors import Category, FhirError, Issue, information, operation_outcome
from fhir_server.everything import everything
from fhir_server.export import record_export
from fhir_server.lastn import lastn
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.writes import check_type, prepare

Handler = Callable[[FhirRequest, Context, str | None, str | None], FhirResponse]


@dataclass(frozen=True, slots=True)
class Operation:
    code: str
    definition: str
    levels: frozenset[str]  # "system", "type", "instance"
    methods: frozenset[str]
    handler: Handler
    types: frozenset[str] | None = None  # None: every resource type


def validate(request: FhirRequest, ctx: Context, rtype: str | None, id: str | None) -> FhirResponse:
    """$validate (https://hl7.org/fhir/R4/resource-operation-validate.html): always 200 when it ran;
    the OperationOutcome says whether the resource is valid."""
    assert rtype is not None
    check_type(rtype)
    resource, mode = _validate_input(request.json_body())
    if mode not in (None, "create", "update", "delete"):
        raise FhirError(Category.INVALID, f"Unknown $validate mode '{mode}'.", expression=("mode",))
    if mode == "delete":
        return FhirResponse.json(200, information("The resource may be deleted."))
    if resource is None:
        raise FhirError(Category.INVALID, "$validate needs a resource to validate.")
    if id is not None and resource.get("id") not in (None, id):
        return _invalid((Issue("error", "invalid", f"The resource id does not match {id}."),))
    try:
        prepare(ctx, resource, rtype)
    except FhirError as error:
        if error.category not in (Category.UNPROCESSABLE, Category.INVALID):
            raise
        return _invalid(error.issues)
    return FhirResponse.json(200, information("The resource is valid FHIR R4."))


def _invalid(issues: tuple[Issue, ...]) -> FhirResponse:
    return FhirResponse.json(200, operation_outcome(list(issues)))


def _validate_input(body: Any) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(body, dict):
        raise FhirError(Category.INVALID, "$validate takes a resource or a Parameters resource.")
    if body.get("resourceType") != "Parameters":
        return body, None
    resource, mode = None, None
    parameters = body.get("parameter") or []
    if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
        raise FhirError(Category.INVALID, "Parameters.parameter must be a list of parameters.")
    for parameter in parameters:
        if parameter.get("name") == "resource":
            resource = parameter.get("resource")
            if not isinstance(resource, dict):
                raise FhirError(Category.INVALID, "The 'resource' parameter must carry a resource.")
        elif parameter.get("name") == "mode":
            mode = parameter.get("valueCode")
    return resource, mode


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "validate",
        "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        frozenset({"type", "instance"}),
        frozenset({"POST"}),
        validate,
    ),
    Operation(
        "everything",
        "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        frozenset({"instance"}),
        frozenset({"GET"}),
        everything,
        frozenset({"Patient"}),
    ),
    Operation(
        "lastn",
        "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
        frozenset({"type"}),
        frozenset({"GET"}),
        lastn,
        frozenset({"Observation"}),
    ),
    Operation(
        "record-export",
        "https://medi-kus.de/fhir/OperationDefinition/Patient-record-export",
        frozenset({"instance"}),
        frozenset({"GET"}),
        record_export,
        frozenset({"Patient"}),
    ),
    Operation(
        "break-glass",
        "https://medi-kus.de/fhir/OperationDefinition/Patient-break-glass",
        frozenset({"instance"}),
        frozenset({"POST"}),
        break_glass,
        frozenset({"Patient"}),
    ),
)


def find(code: str, level: str) -> Operation:
    for operation in OPERATIONS:
        if operation.code == code and level in operation.levels:
            return operation
    raise FhirError(Category.NOT_FOUND, f"Operation ${code} is not supported at {level} level.")
