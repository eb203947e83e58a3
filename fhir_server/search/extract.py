"""Write-time extraction of search index rows from a resource.

Runs in the same transaction as the resource write, so a search never sees a
resource without its index rows (https://hl7.org/fhir/R4/search.html#current).
Every parameter the registry defines for the resource's type is evaluated,
base parameters included (``_lastUpdated``, ``_tag``, ``_security``,
``_profile``, ``_source``, https://hl7.org/fhir/R4/search.html#all).

``_text`` (https://hl7.org/fhir/R4/search.html#text) gets one
:class:`~fhir_server.search.rows.TextRow` with the narrative's text and
``_content`` (#content) one with all string values of the resource.

Composite parameters (https://hl7.org/fhir/R4/search.html#composite): the
composite's expression selects its elements (the Observation itself, each
``Observation.component``…); element number ``g`` (1-based, counted per
resource and composite) gets the rows of each component ``k``, built by the
component parameter's type, under the code ``<composite>$<k>`` with
``grp=g``. A search then pairs values of the same element only: the systolic
code never with the diastolic value. An element lacking a value for some
component gets no rows (it cannot match). R4's ``DocumentReference-relationship``
swaps its two component expressions (``relatesto``, a reference, on
``relatesTo.code``); the indexer uses them the right way round.

Not indexed here, by design:

* ``_id``: the storage layer's id column serves it;
* ``_query``, ``_list``, ``_has``, ``_type``, ``_filter``: named queries and
  query-time-only features.

Expressions the compiler cannot handle end up in :attr:`Indexer.unsupported`
(with the R4 definitions: ``Bundle-composition`` and ``Bundle-message``, whose
``Bundle.entry[0].resource`` is a whole resource, not a reference value) and
produce no rows.

Performance: per resource type, the compiled plans are grouped by the first
JSON key they read, and extraction loops over the *resource's* keys, so the
cost follows the data present rather than the ~40 parameters of a type. A
composite runs only if the resource has a top-level key its values need, and
components shared by composites (``code`` of code-value-quantity and
combo-code-value-quantity) are evaluated once per element.
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
    compile_component,
    compile_expression,
    compile_groups,
    evaluate,
)
from fhir_server.search.emit import EMITTER_OUTPUTS, EMITTERS, Accumulator, Emitter
from fhir_server.search.registry import SearchParamDef, SearchParamRegistry
from fhir_server.search.rows import IndexRows
from fhir_server.search.values import content_text, make_reference_parser, narrative_text

__all__ = ["SKIPPED_PARAMS", "Indexer", "UnsupportedParam"]

#: Parameter codes that never produce index rows (see the module docstring).
SKIPPED_PARAMS: Final = frozenset({"_id", "_query", "_list", "_has", "_type", "_filter"})

# Composite URL -> corrected component expressions (see the module docstring).
_COMPONENT_FIXES: Final = {
    "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship": ("target", "code"),
}

# (param code, steps after the first key, value type hint, row builder)
_Bound = tuple[str, tuple[Step, ...], str | None, Emitter]
# A component plan: (first key, further steps, value type hint, runs on the
# resource rather than on the composite's element).
_Relative = tuple[str | None, tuple[Step, ...], str | None, bool]
# A component's values, the same in every composite of a type that uses it
# (code-value-quantity and combo-code-value-quantity share "code" on the
# Observation): (id for the memo, row builder, plans, Accumulator lists filled).
_Part = tuple[int, Emitter, tuple[_Relative, ...], tuple[str, ...]]
# A composite: per branch of its expression, the plan selecting its elements
# and its components as (row code "c$k", part), last first.
_Composite = tuple[tuple[PathPlan, tuple[tuple[str, _Part], ...]], ...]
# A composite with the top-level keys of which a resource needs one for the
# composite to produce rows (None: no such test), so most are skipped cheaply.
_Triggered = tuple[frozenset[str] | None, _Composite]
# A part's rows for one element: (Accumulator list, rows with param "" or
# ":identifier"...); empty if the element has no value for it.
_PartRows = tuple[tuple[list[Any], list[tuple[Any, ...]]], ...]


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
    composites: tuple[_Triggered, ...]
    narrative: bool  # index _text
    content: bool  # index _content


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
        if plan.composites:
            memo: dict[tuple[int, int], _PartRows] = {}
            keys = resource.keys()
            for trigger, composite in plan.composites:
                if trigger is None or not keys.isdisjoint(trigger):
                    _run_composite(acc, composite, resource, memo)
        if plan.narrative:
            _narrative(acc, resource)
        if plan.content:
            content = content_text(resource)
            if content:
                acc.texts.append(("_content", content))
        return acc.freeze()

    def _compile_type(self, resource_type: str) -> _TypePlan:
        by_first_key: dict[str, list[_Bound]] = {}
        from_root: list[_Bound] = []
        predicates: list[tuple[str, Predicate]] = []
        composites: list[_Triggered] = []
        parts: dict[tuple[str, str, str], _Part] = {}
        params = self.registry.params_for(resource_type)
        for param in params.values():
            try:
                if param.type == "composite":
                    composite = self._compile_composite(param, resource_type, parts)
                    composites.append((_trigger(composite), composite))
                    continue
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
            composites=tuple(composites),
            narrative="_text" in params,
            content="_content" in params,
        )

    def _compile_param(
        self, param: SearchParamDef, resource_type: str
    ) -> tuple[tuple[PathPlan, ...], Predicate | None] | None:
        """Plans for ``param``, ``None`` if it is not indexed by design."""
        if param.code in SKIPPED_PARAMS or param.code in ("_text", "_content"):
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

    def _compile_composite(
        self, param: SearchParamDef, resource_type: str, parts: dict[tuple[str, str, str], _Part]
    ) -> _Composite:
        """Plans of a composite; ``parts`` collects the components of the type."""
        if param.expression is None:
            raise UnsupportedExpression("no expression")
        kinds = [self._component_part(param, k) for k in range(len(param.components))]
        if not kinds:
            raise UnsupportedExpression("composite without components")
        registry = self.registry
        args = (resource_type, registry.choice_elements, registry.resource_types)
        branches = []
        for group in compile_groups(param.expression, *args, self._parse_reference):
            components = []
            for k, (kind, expression) in enumerate(kinds):
                part = parts.get((kind, expression, group.path))
                if part is None:
                    plans = compile_component(expression, group.path, *args, self._parse_reference)
                    relative = tuple((p.first_key, p.steps, p.hint, root) for p, root in plans)
                    part = (len(parts), EMITTERS[kind], relative, EMITTER_OUTPUTS[kind])
                    parts[kind, expression, group.path] = part
                components.append((f"{param.code}${k}", part))
            # Last first: the value components are the ones most often absent.
            branches.append((group.plan, tuple(reversed(components))))
        return tuple(branches)

    def _component_part(self, param: SearchParamDef, k: int) -> tuple[str, str]:
        """(parameter type, expression) of component ``k`` of composite ``param``."""
        component = param.components[k]
        definition = self.registry.by_url(component.definition)
        if definition is None or definition.type not in EMITTERS:
            raise UnsupportedExpression(f"component {component.definition} is not indexable")
        fixed = _COMPONENT_FIXES.get(param.url)
        return definition.type, fixed[k] if fixed else component.expression


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


def _trigger(composite: _Composite) -> frozenset[str] | None:
    """Top-level keys one of which a resource must have for ``composite`` to match."""
    keys: set[str] = set()
    for group_plan, components in composite:
        if group_plan.first_key is not None:
            keys.add(group_plan.first_key)  # the composite's elements
            continue
        if group_plan.steps:
            return None
        # The elements are the resource itself: a component's keys (the
        # last component's, whose values are absent most often) decide.
        _, (_, _, plans, _) = components[0]
        if not plans or any(key is None or root for key, _, _, root in plans):
            return None
        keys.update(key for key, _, _, _ in plans if key is not None)
    return frozenset(keys)


def _run_composite(
    acc: Accumulator,
    composite: _Composite,
    resource: Mapping[str, Any],
    memo: dict[tuple[int, int], _PartRows],
) -> None:
    """Emit the component rows of each element of a composite, tagged with ``grp``.

    Plain loops rather than comprehensions: this runs several times for most
    Observations, and the comprehensions' call overhead was measurable.
    """
    grp = 0
    for group_plan, components in composite:
        for node in evaluate(group_plan, resource):
            if type(node) is not dict:
                continue
            grp += 1
            node_id = id(node)
            found: list[tuple[str, _PartRows]] = []
            for code, part in components:
                rows = memo.get((part[0], node_id))
                if rows is None:
                    rows = memo[part[0], node_id] = _part_rows(acc, part, node, resource)
                if not rows:
                    break  # this element cannot match the composite
                found.append((code, rows))
            else:
                for code, rows in reversed(found):
                    for out, new in rows:
                        for row in new:
                            out.append((code + row[0], *row[1:], grp))


def _part_rows(
    acc: Accumulator, part: _Part, node: Mapping[str, Any], resource: Mapping[str, Any]
) -> _PartRows:
    """A component's rows for one element, emitted with the param code ``""``."""
    _, emit, plans, outputs = part
    hits: list[tuple[list[Any], str | None]] | None = None
    for first_key, steps, hint, on_resource in plans:
        source = resource if on_resource else node
        if first_key is None:
            nodes: list[Any] = [source]
        else:
            value = source.get(first_key)
            if value is None:
                continue
            nodes = value if type(value) is list else [value]
        for step in steps:
            nodes = step(nodes)
            if not nodes:
                break
        if nodes:
            if hits is None:
                hits = []
            hits.append((nodes, hint))
    if hits is None:
        return ()
    marks: list[tuple[list[Any], int]] = []
    for name in outputs:
        rows = getattr(acc, name)
        marks.append((rows, len(rows)))
    for nodes, hint in hits:
        emit(acc, "", nodes, hint)
    found = []
    for rows, mark in marks:
        if len(rows) > mark:
            found.append((rows, rows[mark:]))
            del rows[mark:]  # the caller adds them under the composite's codes
    return tuple(found)


def _narrative(acc: Accumulator, resource: Mapping[str, Any]) -> None:
    narrative = resource.get("text")
    div = narrative.get("div") if type(narrative) is dict else None
    if type(div) is str:
        text = narrative_text(div)
        if text:
            acc.texts.append(("_text", text))
