"""Write-time extraction of search index rows from a resource.

Runs in the same transaction as the resource write, so a search never sees a
resource without its index rows (https://hl7.org/fhir/R4/search.html#current).
Every parameter the registry defines for the resource's type is evaluated,
base parameters included (``_lastUpdated``, ``_tag``, ``_security``,
``_profile``, ``_source``, https://hl7.org/fhir/R4/search.html#all).

Not indexed here, by design:

* ``_id``: the storage layer's id column serves it;
* ``_text``, ``_content``, ``_query``, ``_list``, ``_has``, ``_type``,
  ``_filter``: full-text, named queries and query-time-only features;
* composite parameters (https://hl7.org/fhir/R4/search.html#composite): they
  are answered from their component parameters' rows, which are indexed as
  ordinary parameters. Rows do not record *which* element a value came from,
  so a composite match over a repeating element (``Observation.component``)
  can pair a code and a value from different components.

Expressions the compiler cannot handle end up in :attr:`Indexer.unsupported`
(with the R4 definitions: ``Bundle-composition`` and ``Bundle-message``, whose
``Bundle.entry[0].resource`` is a whole resource, not a reference value) and
produce no rows.

Performance: per resource type, the compiled plans are grouped by the first
JSON key they read, and extraction loops over the *resource's* keys, so the
cost follows the data present rather than the ~40 parameters of a type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir_server.search.compiler import (
    PathPlan,
    Predicate,
    Step,
    UnsupportedExpression,
    compile_expression,
)
from fhir_server.search.emit import EMITTERS, Accumulator, Emitter
from fhir_server.search.registry import SearchParamDef, SearchParamRegistry
from fhir_server.search.rows import IndexRows
from fhir_server.search.values import make_reference_parser

__all__ = ["SKIPPED_PARAMS", "Indexer", "UnsupportedParam"]

#: Parameter codes that never produce index rows (see the module docstring).
SKIPPED_PARAMS: Final = frozenset(
    {"_id", "_text", "_content", "_query", "_list", "_has", "_type", "_filter"}
)

# (param code, steps after the first key, value type hint, row builder)
_Bound = tuple[str, tuple[Step, ...], str | None, Emitter]


@dataclass(frozen=True, slots=True)
class UnsupportedParam:
    """A parameter (for one resource type) whose expression is not compiled."""

    resource_type: str
    code: str
    url: str
    expression: str
    reason: str


@dataclass(frozen=True, slots=True)
class _TypePlan:
    by_first_key: Mapping[str, tuple[_Bound, ...]]
    from_root: tuple[_Bound, ...]
    predicates: tuple[tuple[str, Predicate], ...]


class Indexer:
    """Extracts :class:`IndexRows` from resources; build one and reuse it.

    Construction compiles every parameter of every resource type (well under
    a second); :meth:`extract` is then thread-safe and allocation-light.
    """

    def __init__(self, registry: SearchParamRegistry | None = None) -> None:
        self.registry = registry if registry is not None else SearchParamRegistry.load()
        self._parse_reference = make_reference_parser(self.registry.resource_types)
        self._unsupported: list[UnsupportedParam] = []
        self._plans: dict[str, _TypePlan] = {
            resource_type: self._compile_type(resource_type)
            for resource_type in sorted(self.registry.resource_types)
        }

    @property
    def unsupported(self) -> tuple[UnsupportedParam, ...]:
        """Parameters whose expression produced no evaluator, with reasons."""
        return tuple(self._unsupported)

    def extract(self, resource: Mapping[str, Any]) -> IndexRows:
        """All index rows of ``resource`` (parsed JSON of a valid R4 resource)."""
        resource_type = resource.get("resourceType")
        if type(resource_type) is not str:
            raise ValueError("not a FHIR resource: resourceType is missing")
        plan = self._plans.get(resource_type)
        if plan is None:
            # Not in the registry (e.g. Binary): only base parameters apply.
            plan = self._plans[resource_type] = self._compile_type(resource_type)
        acc = Accumulator(self._parse_reference)
        by_first_key = plan.by_first_key
        for key, value in resource.items():
            bound = by_first_key.get(key)
            if bound is not None:
                _run(acc, bound, value if type(value) is list else [value])
        if plan.from_root:
            _run(acc, plan.from_root, [resource])
        for code, predicate in plan.predicates:
            result = predicate(resource)
            if result is not None:
                acc.tokens.append((code, None, "true" if result else "false", None))
        return acc.freeze()

    def _compile_type(self, resource_type: str) -> _TypePlan:
        by_first_key: dict[str, list[_Bound]] = {}
        from_root: list[_Bound] = []
        predicates: list[tuple[str, Predicate]] = []
        for param in self.registry.params_for(resource_type).values():
            try:
                compiled = self._compile_param(param, resource_type)
            except UnsupportedExpression as exc:
                expression = param.expression or ""
                self._unsupported.append(
                    UnsupportedParam(resource_type, param.code, param.url, expression, str(exc))
                )
                continue
            if compiled is None:
                continue
            plans, predicate = compiled
            if predicate is not None:
                predicates.append((param.code, predicate))
            emitter = EMITTERS[param.type]
            for plan in plans:
                bound = (param.code, plan.steps, plan.hint, emitter)
                if plan.first_key is None:
                    from_root.append(bound)
                else:
                    by_first_key.setdefault(plan.first_key, []).append(bound)
        return _TypePlan(
            by_first_key={key: tuple(b) for key, b in by_first_key.items()},
            from_root=tuple(from_root),
            predicates=tuple(predicates),
        )

    def _compile_param(
        self, param: SearchParamDef, resource_type: str
    ) -> tuple[tuple[PathPlan, ...], Predicate | None] | None:
        """Plans for ``param``, ``None`` if it is not indexed by design."""
        if param.code in SKIPPED_PARAMS or param.type == "composite":
            return None
        if param.expression is None:
            raise UnsupportedExpression("no expression")
        if param.type == "special" and param.code != "near":
            raise UnsupportedExpression(f"special parameter {param.code}")
        compiled = compile_expression(
            param.expression,
            resource_type,
            self.registry.choice_elements,
            self.registry.resource_types,
            self._parse_reference,
        )
        if compiled.predicate is not None and param.type != "token":
            raise UnsupportedExpression(f"boolean expression for a {param.type}")
        return compiled.plans, compiled.predicate


def _run(acc: Accumulator, bound: tuple[_Bound, ...], start: list[Any]) -> None:
    """Evaluate plans that share their start values and emit their rows."""
    for code, steps, hint, emit in bound:
        nodes = start
        for step in steps:
            nodes = step(nodes)
            if not nodes:
                break
        if nodes:
            emit(acc, code, nodes, hint)
