"""The CapabilityStatement at ``/metadata`` (https://hl7.org/fhir/R4/capabilitystatement.html),
generated from what the router, the operation registry and the search registry implement."""

from __future__ import annotations

from typing import Any

from fhir_server._time import format_instant
from fhir_server.operations import OPERATIONS
from fhir_server.resource_types import supported_types
from fhir_server.search.registry import SearchParamRegistry

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
SEARCHABLE_KINDS = frozenset(
    {"token", "string", "reference", "date", "uri", "number", "quantity", "composite", "special"}
)


def capability_statement(
    base: str, registry: SearchParamRegistry, now: int, version: str
) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(now),
        "publisher": "Medi-KUS",
        "kind": "instance",
        "software": {"name": "Medi-KUS record core", "version": version},
        "implementation": {"description": "Medi-KUS FHIR R4 record core", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                # Subscriptions with channel websocket bind at this URL (subscription.html#ws).
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                        "valueUri": "ws" + base.removeprefix("http") + "/ws",
                    }
                ],
                "resource": [_resource(t, registry) for t in sorted(supported_types())],
                "interaction": [{"code": c} for c in SYSTEM_INTERACTIONS],
            }
        ],
    }


def _resource(rtype: str, registry: SearchParamRegistry) -> dict[str, Any]:
    operations = [
        {"name": op.code, "definition": op.definition}
        for op in OPERATIONS
        if op.types is None or rtype in op.types
    ]
    params = [{"name": "_id", "type": "token"}]
    params += [
        {"name": code, "type": d.type, "definition": d.url}
        for code, d in sorted(registry.params_for(rtype).items())
        if d.type in SEARCHABLE_KINDS and code != "_id"
    ]
    return {
        "type": rtype,
        "interaction": [{"code": c} for c in TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "local", "enforced"],
        "searchParam": params,
        "operation": operations,
    }
