"""A parser for the FHIRPath subset used by R4 SearchParameter expressions.

Every search parameter type (https://hl7.org/fhir/R4/search.html#ptypes) is
defined by such an expression; this module only parses, see
:mod:`fhir_server.search.compiler` for turning the tree into evaluators.

Grammar and operator precedence follow http://hl7.org/fhirpath/N1/#grammar
(referenced from https://hl7.org/fhir/R4/searchparameter.html#expression), cut
down to what search definitions use: paths, function calls, indexers, unions
``|``, ``as``/``is``, ``=``/``!=``, ``and``/``or``, string/number/boolean
literals and ``%environment`` variables. Anything else raises
:class:`FhirPathSyntaxError`; the compiler then records the expression as
unsupported instead of guessing.

Recursion depth is bounded by the *expression* (at most a few dozen levels for
the definitions), never by the resource being indexed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "Binary",
    "EnvVar",
    "FhirPathSyntaxError",
    "Index",
    "Invoke",
    "Literal",
    "Node",
    "TypeOp",
    "Union",
    "parse",
]


class FhirPathSyntaxError(ValueError):
    """The expression is outside the supported subset (or malformed)."""


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | bool | int | float


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str


@dataclass(frozen=True, slots=True)
class Invoke:
    """``base.name`` (``args is None``) or ``base.name(args)``; root if no base."""

    base: Node | None
    name: str
    args: tuple[Node, ...] | None


@dataclass(frozen=True, slots=True)
class Index:
    base: Node
    index: int


@dataclass(frozen=True, slots=True)
class Union:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class TypeOp:
    """``base as Type`` or ``base is Type``."""

    base: Node
    op: str
    type_name: str


@dataclass(frozen=True, slots=True)
class Binary:
    """``=``, ``!=``, ``and``, ``or``."""

    op: str
    left: Node
    right: Node


Node: TypeAlias = Literal | EnvVar | Invoke | Index | Union | TypeOp | Binary

_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<number>\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
      | (?P<env>%[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>!=|[.()\[\]|=,])
    )""",
    re.VERBOSE,
)
_KEYWORDS: Final = frozenset({"and", "or", "as", "is", "true", "false"})


def parse(expression: str) -> Node:
    """Parse ``expression`` into an AST of the node classes above."""
    parser = _Parser(_tokenize(expression))
    node = parser.expression()
    if parser.peek() is not None:
        raise FhirPathSyntaxError(f"unexpected {parser.peek()!r} in {expression!r}")
    return node


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip():
                raise FhirPathSyntaxError(f"cannot tokenize {text[pos:]!r}")
            break
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent, one method per precedence level (lowest first)."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self._tokens = tokens
        self._pos = 0

    def peek(self) -> str | None:
        if self._pos < len(self._tokens):
            return self._tokens[self._pos][1]
        return None

    def _next(self) -> tuple[str, str]:
        if self._pos >= len(self._tokens):
            raise FhirPathSyntaxError("unexpected end of expression")
        token = self._tokens[self._pos]
        self._pos += 1
        return token

    def _expect(self, text: str) -> None:
        value = self._next()[1]
        if value != text:
            raise FhirPathSyntaxError(f"expected {text!r}, got {value!r}")

    def expression(self) -> Node:
        node = self._and()
        while self.peek() == "or":
            self._next()
            node = Binary("or", node, self._and())
        return node

    def _and(self) -> Node:
        node = self._equality()
        while self.peek() == "and":
            self._next()
            node = Binary("and", node, self._equality())
        return node

    def _equality(self) -> Node:
        node = self._type_op()
        if self.peek() in ("=", "!="):
            op = self._next()[1]
            node = Binary(op, node, self._type_op())
        return node

    def _type_op(self) -> Node:
        node = self._union()
        if self.peek() in ("as", "is"):
            op = self._next()[1]
            node = TypeOp(node, op, self._type_name())
        return node

    def _union(self) -> Node:
        items = [self._postfix()]
        while self.peek() == "|":
            self._next()
            items.append(self._postfix())
        return items[0] if len(items) == 1 else Union(tuple(items))

    def _postfix(self) -> Node:
        node = self._term()
        while self.peek() in (".", "["):
            if self._next()[1] == ".":
                node = self._invocation(node)
            else:
                kind, value = self._next()
                if kind != "number" or not value.isdigit():
                    raise FhirPathSyntaxError(f"unsupported indexer {value!r}")
                self._expect("]")
                node = Index(node, int(value))
        return node

    def _term(self) -> Node:
        kind, value = self._tokens[self._pos] if self.peek() else ("", "")
        if value == "(":
            self._next()
            node = self.expression()
            self._expect(")")
            return node
        if kind == "string":
            self._next()
            return Literal(_unquote(value))
        if kind == "number":
            self._next()
            return Literal(float(value) if "." in value else int(value))
        if kind == "env":
            self._next()
            return EnvVar(value[1:])
        if value in ("true", "false"):
            self._next()
            return Literal(value == "true")
        return self._invocation(None)

    def _invocation(self, base: Node | None) -> Node:
        kind, name = self._next()
        # "as"/"is" are also functions: X.as(Quantity), X.is(Quantity).
        is_call = base is not None and self.peek() == "("
        if kind != "ident" or (name in _KEYWORDS and not is_call):
            raise FhirPathSyntaxError(f"expected a name, got {name!r}")
        name = name.strip("`")
        if self.peek() != "(":
            return Invoke(base, name, None)
        self._next()
        args: list[Node] = []
        while self.peek() != ")":
            args.append(self.expression())
            if self.peek() == ",":
                self._next()
        self._expect(")")
        return Invoke(base, name, tuple(args))

    def _type_name(self) -> str:
        kind, name = self._next()
        if kind != "ident":
            raise FhirPathSyntaxError(f"expected a type name, got {name!r}")
        # "FHIR.Quantity" / "System.String": keep the unqualified name.
        while self.peek() == ".":
            self._next()
            name = self._next()[1]
        return name.strip("`")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body) if "\\" in body else body
