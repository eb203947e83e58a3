"""Runtime pieces of compiled search expressions: plans, steps, predicates.

A :class:`PathPlan` is one union branch of a SearchParameter expression
(https://hl7.org/fhir/R4/searchparameter.html#expression), compiled by
:mod:`fhir_server.search.compiler`. Each step maps a list of JSON values to
the next list, flattening arrays like FHIRPath collections do
(http://hl7.org/fhirpath/N1/#paths-and-polymorphic-items). Steps loop, they
never recurse, so the depth of a resource does not matter. Booleans follow
FHIRPath's three-valued logic, ``None`` being the empty collection
(http://hl7.org/fhirpath/N1/#boolean-logic); values they produce feed token
parameters (https://hl7.org/fhir/R4/search.html#token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from fhir_server.search.values import ParsedReference

__all__ = [
    "PathPlan",
    "Predicate",
    "RefParser",
    "Step",
    "as_step",
    "both",
    "child_step",
    "compare",
    "either",
    "evaluate",
    "evaluate_all",
    "extension_step",
    "resolves_to",
    "resource_type_filter",
    "slice_step",
    "where_equals",
]

Step: TypeAlias = Callable[[list[Any]], list[Any]]
Predicate: TypeAlias = Callable[[Mapping[str, Any]], bool | None]
RefParser: TypeAlias = Callable[[str], ParsedReference | None]


@dataclass(frozen=True, slots=True)
class PathPlan:
    """One union branch: ``resource[first_key]`` then ``steps``.

    ``first_key`` is ``None`` if the branch does not start with a child step;
    the steps then run on ``[resource]``.
    """

    first_key: str | None
    steps: tuple[Step, ...]
    hint: str | None
    source: str


def evaluate(plan: PathPlan, resource: Mapping[str, Any]) -> list[Any]:
    """The values ``plan`` selects from ``resource`` (lists flattened)."""
    if plan.first_key is None:
        nodes: list[Any] = [resource]
    else:
        value = resource.get(plan.first_key)
        if value is None:
            return []
        nodes = value if type(value) is list else [value]
    for step in plan.steps:
        if not nodes:
            break
        nodes = step(nodes)
    return nodes


def evaluate_all(plans: list[PathPlan], resource: Mapping[str, Any]) -> list[Any]:
    """The values of several plans (a union), in order, duplicates kept."""
    return [node for plan in plans for node in evaluate(plan, resource)]


def as_step(step: Step | str) -> Step:
    """A step as is, or the child step for a JSON key."""
    return child_step(step) if isinstance(step, str) else step


def child_step(key: str) -> Step:
    def child(nodes: list[Any]) -> list[Any]:
        out: list[Any] = []
        for node in nodes:
            if type(node) is dict:
                value = node.get(key)
                if type(value) is list:
                    out.extend(value)
                elif value is not None:
                    out.append(value)
        return out

    return child


def where_equals(field: str, literal: object) -> Step:
    def where(nodes: list[Any]) -> list[Any]:
        return [n for n in nodes if type(n) is dict and n.get(field) == literal]

    return where


def resolves_to(type_name: str, parse_reference: RefParser) -> Step:
    # Without a database, resolve() can only read the type off the literal
    # reference (or the Reference.type hint of a logical/urn reference).
    def resolves(nodes: list[Any]) -> list[Any]:
        out: list[Any] = []
        for node in nodes:
            if type(node) is not dict:
                continue
            reference = node.get("reference")
            parsed = parse_reference(reference) if type(reference) is str else None
            target = parsed.target_type if parsed else node.get("type")
            if target == type_name:
                out.append(node)
        return out

    return resolves


def extension_step(url: str) -> Step:
    def extension(nodes: list[Any]) -> list[Any]:
        return [
            ext
            for node in nodes
            if type(node) is dict
            for ext in node.get("extension") or ()
            if type(ext) is dict and ext.get("url") == url
        ]

    return extension


def resource_type_filter(type_name: str) -> Step:
    def of_type(nodes: list[Any]) -> list[Any]:
        return [n for n in nodes if type(n) is dict and n.get("resourceType") == type_name]

    return of_type


def slice_step(index: int) -> Step:
    return lambda nodes: nodes[index : index + 1]


def compare(
    collect: Callable[[Mapping[str, Any]], list[Any]], literal: object, op: str
) -> Predicate:
    def compared(resource: Mapping[str, Any]) -> bool | None:
        values = collect(resource)
        if len(values) != 1:
            return None  # empty propagates; many is an error in FHIRPath
        # Values of different types are unequal (true != 1 in FHIRPath).
        equal = type(values[0]) is type(literal) and values[0] == literal
        return equal if op == "=" else not equal

    return compared


def both(left: Predicate, right: Predicate) -> Predicate:
    def conjunction(resource: Mapping[str, Any]) -> bool | None:
        a, b = left(resource), right(resource)
        if a is False or b is False:
            return False
        return True if a and b else None

    return conjunction


def either(left: Predicate, right: Predicate) -> Predicate:
    def disjunction(resource: Mapping[str, Any]) -> bool | None:
        a, b = left(resource), right(resource)
        if a is True or b is True:
            return True
        return False if a is False and b is False else None

    return disjunction
