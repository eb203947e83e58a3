"""Compiles SearchParameter FHIRPath expressions into fast JSON walkers.

An interpreter such as fhirpathpy costs milliseconds per resource; the ingest
path has tens of microseconds. The expressions of the R4 definitions
(https://hl7.org/fhir/R4/searchparameter.html#expression) are, per resource
type, unions of simple paths, so each branch is compiled once into a
:class:`PathPlan`: the first JSON key plus a tuple of list-to-list steps.

Supported: ``|``, paths, ``[n]``, ``first()``, ``ofType(T)``/``as(T)``/
``as T`` (choice elements and resource types), ``where(field='literal')``,
``where(resolve() is Type)``, ``extension('url')`` and boolean expressions
built from ``exists()``, ``=``/``!=`` against a literal, ``and``/``or``
(``Patient.deceased.exists() and Patient.deceased != false``).

Choice elements (``Observation.effective``) are expanded at compile time into
one plan per concrete JSON key (``effectiveDateTime``…); the plan's ``hint``
is then the FHIR type name of the value (``"DateTime"``, ``"Period"``…), which
lets the row builders tell e.g. ``performedString`` from ``performedDateTime``.

Composite parameters (https://hl7.org/fhir/R4/search.html#composite) compile in
two parts: :func:`compile_groups` gives the plans selecting the composite's
elements together with their element paths, and :func:`compile_component`
compiles a component expression relative to such a path (``%resource`` roots
a branch at the resource instead, as MolecularSequence's components do).

Anything else raises :class:`UnsupportedExpression`; the indexer records it
and produces no rows for that branch rather than wrong ones. The runtime side
(plans, steps, boolean combinators) lives in :mod:`fhir_server.search.steps`;
which row a value becomes is decided by :mod:`fhir_server.search.emit` per
parameter type (https://hl7.org/fhir/R4/search.html#ptypes).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from fhir_server.search.fhirpath import (
    Binary,
    EnvVar,
    FhirPathSyntaxError,
    Index,
    Invoke,
    Literal,
    Node,
    TypeOp,
    Union,
    parse,
)
from fhir_server.search.registry import FHIR_TYPE_NAMES
from fhir_server.search.steps import (
    PathPlan,
    Predicate,
    RefParser,
    Step,
    as_step,
    both,
    compare,
    either,
    evaluate,
    evaluate_all,
    extension_step,
    resolves_to,
    resource_type_filter,
    slice_step,
    where_equals,
)

__all__ = [
    "Compiled",
    "GroupPlan",
    "PathPlan",
    "Predicate",
    "Step",
    "UnsupportedExpression",
    "compile_component",
    "compile_expression",
    "compile_groups",
    "evaluate",
]


#: Elements whose type is a whole Resource: a search value cannot come from them.
RESOURCE_ELEMENTS: Final = frozenset({"Bundle.entry.resource", "Parameters.parameter.resource"})
_BASE_ROOTS: Final = ("Resource", "DomainResource")
_EXTENSION_ELEMENTS: Final = ("extension", "modifierExtension")
_CONTEXT: Final = ""  # root of a branch that starts with an element name
_RESOURCE: Final = "%resource"  # root of a branch that starts with %resource


class UnsupportedExpression(Exception):
    """The expression (branch) uses FHIRPath outside the compiled subset."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """What one expression compiles to for one resource type."""

    plans: tuple[PathPlan, ...] = ()
    predicate: Predicate | None = None


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A branch of a composite's expression and the element path it selects."""

    plan: PathPlan
    path: str


# An abstract operation before choice expansion: ("child", name), ("oftype", T),
# ("where_eq", (field, literal)), ("resolve_is", T), ("extension", url),
# ("first", None), ("index", n).
_Op: TypeAlias = tuple[str, Any]


def compile_expression(
    expression: str,
    resource_type: str,
    choices: Mapping[str, tuple[str, ...]],
    resource_types: Collection[str],
    parse_reference: RefParser,
) -> Compiled:
    """Compile the branches of ``expression`` that apply to ``resource_type``."""
    tree = _parse(expression)
    ctx = _Context(resource_type, choices, resource_types, parse_reference)
    if isinstance(tree, Binary) or _is_exists(tree):
        return Compiled(predicate=ctx.predicate(tree))
    plans: list[PathPlan] = []
    for root, ops in _linearize(tree):
        if root == _RESOURCE:
            raise UnsupportedExpression("%resource outside a composite's component")
        if root == _CONTEXT:
            root = resource_type
        if root == resource_type or root in _BASE_ROOTS:
            plans.extend(ctx.expand(root, ops, expression))
    return Compiled(plans=tuple(plans))


def compile_groups(
    expression: str,
    resource_type: str,
    choices: Mapping[str, tuple[str, ...]],
    resource_types: Collection[str],
    parse_reference: RefParser,
) -> tuple[GroupPlan, ...]:
    """The branches of a composite's ``expression`` with their element paths."""
    tree = _parse(expression)
    ctx = _Context(resource_type, choices, resource_types, parse_reference)
    groups: list[GroupPlan] = []
    for root, ops in _linearize(tree):
        if root == _RESOURCE:
            raise UnsupportedExpression("%resource outside a composite's component")
        if root == _CONTEXT:
            root = resource_type
        if root == resource_type or root in _BASE_ROOTS:
            groups.extend(
                GroupPlan(ctx.plan(v, expression), v.path) for v in ctx.variants(root, ops)
            )
    return tuple(groups)


def compile_component(
    expression: str,
    context: str,
    resource_type: str,
    choices: Mapping[str, tuple[str, ...]],
    resource_types: Collection[str],
    parse_reference: RefParser,
) -> tuple[tuple[PathPlan, bool], ...]:
    """Plans of a component ``expression`` relative to the element path ``context``.

    Each plan comes with a flag: ``True`` if it runs on the resource
    (``%resource.…``), ``False`` if it runs on the composite's element.
    """
    tree = _parse(expression)
    ctx = _Context(resource_type, choices, resource_types, parse_reference)
    if isinstance(tree, Binary) or _is_exists(tree):
        raise UnsupportedExpression(f"boolean component expression {expression}")
    plans: list[tuple[PathPlan, bool]] = []
    for root, ops in _linearize(tree):
        if root == _CONTEXT:
            plans.extend((plan, False) for plan in ctx.expand(context, ops, expression))
        elif root in (_RESOURCE, resource_type):
            plans.extend((plan, True) for plan in ctx.expand(resource_type, ops, expression))
        else:
            raise UnsupportedExpression(f"{root} in a component of {context}")
    return tuple(plans)


def _parse(expression: str) -> Node:
    try:
        return parse(expression)
    except FhirPathSyntaxError as exc:
        raise UnsupportedExpression(str(exc)) from exc


def _is_exists(node: Node) -> bool:
    return isinstance(node, Invoke) and node.name == "exists" and node.args == ()


def _linearize(node: Node) -> list[tuple[str, list[_Op]]]:
    """Flatten an expression into ``(root type, operations)`` per union branch."""
    if isinstance(node, Union):
        return [branch for item in node.items for branch in _linearize(item)]
    if isinstance(node, EnvVar) and node.name == "resource":
        # Only composite components use it; elsewhere the root check rejects it.
        return [(_RESOURCE, [])]
    if isinstance(node, Invoke) and node.base is None:
        if node.args is not None:
            raise UnsupportedExpression(f"unsupported function {node.name}() at root")
        if not node.name[:1].isupper():
            # A path relative to the context resource ("name | alias" of
            # InsurancePlan-name): the root is the resource itself.
            return [(_CONTEXT, [("child", node.name)])]
        return [(node.name, [])]
    if isinstance(node, Invoke):
        op = _operation(node)
        base = node.base
    elif isinstance(node, Index):
        op, base = ("index", node.index), node.base
    elif isinstance(node, TypeOp) and node.op == "as":
        op, base = ("oftype", node.type_name), node.base
    else:
        raise UnsupportedExpression(f"unsupported construct {node}")
    assert base is not None
    return [(root, [*ops, op]) for root, ops in _linearize(base)]


def _operation(node: Invoke) -> _Op:
    args = node.args
    if args is None:
        return ("child", node.name)
    if node.name in ("ofType", "as") and len(args) == 1:
        return ("oftype", _type_argument(args[0]))
    if node.name == "where" and len(args) == 1:
        return _where(args[0])
    if node.name == "extension" and len(args) == 1:
        arg = args[0]
        if isinstance(arg, Literal) and isinstance(arg.value, str):
            return ("extension", arg.value)
    if node.name == "first" and not args:
        return ("first", None)
    raise UnsupportedExpression(f"unsupported function {node.name}()")


def _type_argument(arg: Node) -> str:
    if isinstance(arg, Invoke) and arg.base is None and arg.args is None:
        return arg.name
    raise UnsupportedExpression(f"expected a type name, got {arg}")


def _where(cond: Node) -> _Op:
    if isinstance(cond, TypeOp) and cond.op == "is":
        base = cond.base
        if isinstance(base, Invoke) and base.name == "resolve" and base.args == ():
            return ("resolve_is", cond.type_name)
    if isinstance(cond, Binary) and cond.op == "=":
        left, right = cond.left, cond.right
        if (
            isinstance(left, Invoke)
            and left.base is None
            and left.args is None
            and isinstance(right, Literal)
        ):
            return ("where_eq", (left.name, right.value))
    raise UnsupportedExpression(f"unsupported where() condition {cond}")


@dataclass(frozen=True, slots=True)
class _Variant:
    """A branch being expanded: concrete steps so far, element path, type."""

    steps: tuple[Step | str, ...]
    path: str
    hint: str | None


class _Context:
    def __init__(
        self,
        resource_type: str,
        choices: Mapping[str, tuple[str, ...]],
        resource_types: Collection[str],
        parse_reference: RefParser,
    ) -> None:
        self.resource_type = resource_type
        self.choices = choices
        self.resource_types = resource_types
        self.parse_reference = parse_reference

    def expand(self, root: str, ops: list[_Op], source: str) -> list[PathPlan]:
        """Turn abstract operations into plans, one per choice combination."""
        return [self.plan(v, source) for v in self.variants(root, ops)]

    def variants(self, root: str, ops: list[_Op]) -> list[_Variant]:
        """Apply abstract operations from element path ``root``, expanding choices."""
        variants = [_Variant((), root, None)]
        i = 0
        while i < len(ops):
            kind, arg = ops[i]
            fused = kind == "child" and i + 1 < len(ops) and ops[i + 1][0] == "oftype"
            if fused and ops[i + 1][1] not in self.resource_types:
                variants = [self._typed_child(v, arg, ops[i + 1][1]) for v in variants]
                i += 2
                continue
            variants = [new for v in variants for new in self._apply(v, kind, arg)]
            i += 1
        return variants

    def plan(self, variant: _Variant, source: str) -> PathPlan:
        hint = variant.hint
        if hint == "Resource" or hint in self.resource_types:
            raise UnsupportedExpression(f"{variant.path} is a whole resource")
        steps = variant.steps
        first = steps[0] if steps and isinstance(steps[0], str) else None
        rest = steps[1:] if first is not None else steps
        return PathPlan(first, tuple(as_step(s) for s in rest), variant.hint, source)

    def _typed_child(self, v: _Variant, name: str, type_name: str) -> _Variant:
        # value.ofType(Quantity) is the JSON key valueQuantity.
        path = f"{v.path}.{name}"
        if path not in self.choices and path != "Extension.value":
            # E.g. name.ofType(HumanName): a type test, not a choice: unsupported.
            raise UnsupportedExpression(f"ofType({type_name}) on non-choice {path}")
        suffix = type_name[:1].upper() + type_name[1:]
        return _Variant((*v.steps, name + suffix), path, suffix)

    def _apply(self, v: _Variant, kind: str, arg: Any) -> list[_Variant]:
        if kind == "child":
            return self._child(v, arg)
        if kind == "oftype":
            if arg not in self.resource_types:
                raise UnsupportedExpression(f"ofType({arg}) on a non-choice element")
            return [_Variant((*v.steps, resource_type_filter(arg)), arg, arg)]
        if kind == "extension":
            return [_Variant((*v.steps, extension_step(arg)), "Extension", "Extension")]
        return [_Variant((*v.steps, self._filter(kind, arg)), v.path, v.hint)]

    def _child(self, v: _Variant, name: str) -> list[_Variant]:
        path = f"{v.path}.{name}"
        if path == "Extension.value":
            keys: tuple[str, ...] = tuple("value" + t for t in FHIR_TYPE_NAMES)
        else:
            keys = self.choices.get(path, ())
        if not keys:
            hint = "Resource" if path in RESOURCE_ELEMENTS else None
            if name in _EXTENSION_ELEMENTS:
                path = "Extension"  # so that ".value" expands to value[x]
            return [_Variant((*v.steps, name), path, hint)]
        return [_Variant((*v.steps, key), path, key[len(name) :]) for key in keys]

    def _filter(self, kind: str, arg: Any) -> Step:
        if kind == "where_eq":
            return where_equals(*arg)
        if kind == "resolve_is":
            return resolves_to(arg, self.parse_reference)
        if kind == "first":
            return slice_step(0)
        if kind == "index":
            return slice_step(arg)
        raise UnsupportedExpression(f"unsupported operation {kind}")

    def predicate(self, node: Node) -> Predicate:
        """Compile a boolean expression (three-valued: ``None`` is empty)."""
        if isinstance(node, Binary) and node.op in ("and", "or"):
            left, right = self.predicate(node.left), self.predicate(node.right)
            return both(left, right) if node.op == "and" else either(left, right)
        if isinstance(node, Binary) and isinstance(node.right, Literal):
            return compare(self._collect(node.left), node.right.value, node.op)
        if _is_exists(node):
            assert isinstance(node, Invoke) and node.base is not None
            collect = self._collect(node.base)
            return lambda resource: bool(collect(resource))
        raise UnsupportedExpression(f"unsupported boolean expression {node}")

    def _collect(self, node: Node) -> Callable[[Mapping[str, Any]], list[Any]]:
        plans: list[PathPlan] = []
        for root, ops in _linearize(node):
            if root == _CONTEXT:
                root = self.resource_type
            if root != self.resource_type and root not in _BASE_ROOTS:
                raise UnsupportedExpression(f"{root} in a boolean of {self.resource_type}")
            plans.extend(self.expand(root, ops, str(node)))
        return lambda resource: evaluate_all(plans, resource)
