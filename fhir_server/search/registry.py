"""The FHIR R4 SearchParameter definitions, loaded once and indexed by type.

Source: ``fhir_server/definitions/search-parameters.json``, the official R4
(4.0.1) bundle of 1,378 SearchParameter resources
(https://hl7.org/fhir/R4/searchparameter-registry.html). Parameters with base
``Resource`` apply to every resource type and those with base
``DomainResource`` to every type except Bundle, Binary and Parameters
(https://hl7.org/fhir/R4/search.html#all).

Besides the parameters, the registry derives the *choice element* table the
FHIRPath compiler needs: ``Observation.effective`` is stored in JSON as
``effectiveDateTime``, ``effectivePeriod``… (https://hl7.org/fhir/R4/formats.html#choice).
The definitions carry no StructureDefinitions, but each one's ``xpath`` spells
out the concrete element names, so the table is built from those.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson

__all__ = [
    "FHIR_TYPE_NAMES",
    "NON_DOMAIN_RESOURCES",
    "SearchParamComponent",
    "SearchParamDef",
    "SearchParamRegistry",
]

#: Resource types that derive from Resource, not DomainResource.
NON_DOMAIN_RESOURCES: Final = frozenset({"Bundle", "Binary", "Parameters"})

#: Data type names as they appear as choice-element suffixes ("open type" list,
#: https://hl7.org/fhir/R4/datatypes.html#open), capitalised like in JSON keys.
FHIR_TYPE_NAMES: Final = (
    "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime",
    "Decimal", "Id", "Instant", "Integer", "Markdown", "Oid", "PositiveInt",
    "String", "Time", "UnsignedInt", "Uri", "Url", "Uuid", "Address", "Age",
    "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactPoint",
    "Count", "Distance", "Duration", "HumanName", "Identifier", "Money",
    "Period", "Quantity", "Range", "Ratio", "Reference", "SampledData",
    "Signature", "Timing", "ContactDetail", "Contributor", "DataRequirement",
    "Expression", "ParameterDefinition", "RelatedArtifact",
    "TriggerDefinition", "UsageContext", "Dosage", "Meta",
)  # fmt: skip

# Longest first, so "effectiveDateTime" splits as effective + DateTime.
_SUFFIXES: Final = tuple(sorted(FHIR_TYPE_NAMES, key=len, reverse=True))
_XPATH_STEP: Final = re.compile(r"f:([A-Za-z]+)(?:\[[^\]]*\])?")
_BASE_TYPES: Final = ("Resource", "DomainResource")


@dataclass(frozen=True, slots=True)
class SearchParamComponent:
    """One part of a composite parameter (``SearchParameter.component``)."""

    definition: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParamDef:
    """The fields of a SearchParameter that indexing and searching need."""

    url: str
    code: str
    type: str
    expression: str | None
    base: tuple[str, ...]
    target: tuple[str, ...] = ()
    components: tuple[SearchParamComponent, ...] = ()

    @classmethod
    def from_json(cls, resource: Mapping[str, Any]) -> SearchParamDef:
        """Build from a SearchParameter resource (already parsed JSON)."""
        return cls(
            url=resource["url"],
            code=resource["code"],
            type=resource["type"],
            expression=resource.get("expression"),
            base=tuple(resource.get("base", ())),
            target=tuple(resource.get("target", ())),
            components=tuple(
                SearchParamComponent(c["definition"], c["expression"])
                for c in resource.get("component", ())
            ),
        )


@dataclass(frozen=True, eq=False)  # identity: it is built once and shared
class SearchParamRegistry:
    """All search parameters, per resource type. Build with :meth:`load`."""

    params: tuple[SearchParamDef, ...]
    #: FHIRPath element path -> concrete JSON keys, e.g.
    #: ``"Observation.effective" -> ("effectiveDateTime", "effectivePeriod", …)``.
    choice_elements: Mapping[str, tuple[str, ...]]
    _by_type: Mapping[str, Mapping[str, SearchParamDef]] = field(repr=False)
    _by_url: Mapping[str, SearchParamDef] = field(repr=False)

    @classmethod
    def load(cls, path: Path | None = None) -> SearchParamRegistry:
        """Load the bundled R4 definitions (cached) or the bundle at ``path``."""
        if path is None:
            return _load_default()
        return cls.from_bundle(orjson.loads(path.read_bytes()))

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any]) -> SearchParamRegistry:
        """Build from a Bundle of SearchParameter resources."""
        resources = [e["resource"] for e in bundle.get("entry", ())]
        params = tuple(SearchParamDef.from_json(r) for r in resources)
        xpaths = (r.get("xpath") or "" for r in resources)
        return cls(
            params=params,
            choice_elements=MappingProxyType(_choice_elements(xpaths)),
            _by_type=MappingProxyType(_index_by_type(params)),
            _by_url=MappingProxyType({p.url: p for p in params}),
        )

    @property
    def resource_types(self) -> frozenset[str]:
        """Every resource type some parameter is defined for."""
        return frozenset(t for t in self._by_type if t not in _BASE_TYPES)

    def params_for(self, resource_type: str) -> Mapping[str, SearchParamDef]:
        """Parameters by code for ``resource_type``, base parameters included."""
        known = self._by_type.get(resource_type)
        if known is not None:
            return known
        # An unknown type still gets the Resource (and DomainResource) ones.
        return _merge(self._by_type, resource_type)

    def by_url(self, url: str) -> SearchParamDef | None:
        """The parameter with canonical ``url`` (composites name theirs so)."""
        return self._by_url.get(url)


@functools.cache
def _load_default() -> SearchParamRegistry:
    resource = importlib.resources.files("fhir_server").joinpath(
        "definitions", "search-parameters.json"
    )
    return SearchParamRegistry.from_bundle(orjson.loads(resource.read_bytes()))


def _index_by_type(
    params: Iterable[SearchParamDef],
) -> dict[str, Mapping[str, SearchParamDef]]:
    own: dict[str, dict[str, SearchParamDef]] = {}
    for param in params:
        for base in param.base:
            own.setdefault(base, {})[param.code] = param
    return {
        resource_type: _merge(own, resource_type)
        for resource_type in own
        if resource_type not in _BASE_TYPES
    } | {base: MappingProxyType(dict(own.get(base, {}))) for base in _BASE_TYPES}


def _merge(
    own: Mapping[str, Mapping[str, SearchParamDef]], resource_type: str
) -> Mapping[str, SearchParamDef]:
    merged = dict(own.get("Resource", {}))
    if resource_type not in NON_DOMAIN_RESOURCES:
        merged.update(own.get("DomainResource", {}))
    merged.update(own.get(resource_type, {}))
    return MappingProxyType(merged)


def _choice_elements(xpaths: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Map ``Type.path.base`` to the concrete ``base<Type>`` JSON keys.

    A step such as ``f:effectiveDateTime`` yields ``Observation.effective ->
    effectiveDateTime``. Non-choice names that happen to end in a type name
    (``birthDate``) create keys like ``Patient.birth`` that no FHIRPath
    expression names, so they are harmless; the tests check the table against
    an independent R4 model for every path the expressions use.
    """
    found: dict[str, dict[str, None]] = {}
    for xpath in xpaths:
        for branch in xpath.split("|"):
            steps = _XPATH_STEP.findall(branch.strip())
            for i in range(1, len(steps)):
                base = _strip_type_suffix(steps[i])
                if base is not None:
                    key = ".".join((*steps[:i], base))
                    found.setdefault(key, {})[steps[i]] = None
    return {key: tuple(names) for key, names in found.items()}


def _strip_type_suffix(name: str) -> str | None:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None
