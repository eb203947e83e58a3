"""SMART App Launch v2 scopes and what they allow (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A resource scope is ``(patient|user|system)/(Type|*).<permissions>[?param=value&…]`` where the
permissions are a non-empty, in-order subset of ``cruds`` (create, read, update, delete, search).
SMART v1 suffixes are accepted and mapped: ``.read`` → ``.rs``, ``.write`` → ``.cud``,
``.*`` → ``.cruds``; a scope is always rendered in v2 form.

:func:`allows` answers whether a set of scopes permits one interaction on one resource type, and
under which restrictions the record core must carry it out: the patient compartment for
``patient/`` scopes (SMART: a patient scope establishes the patient in context) and the query
parameters of granular scopes, which the server ANDs to a search (or requires the resource to
match, for the other interactions). Scopes only ever narrow: roles, relations and consent are
decided elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise
from urllib.parse import parse_qsl, quote

__all__ = [
    "NON_RESOURCE_SCOPES",
    "Decision",
    "Grant",
    "Interaction",
    "Level",
    "ResourceScope",
    "ScopeContext",
    "ScopeError",
    "Scopes",
    "allows",
    "parse_scope",
    "parse_scopes",
]


class ScopeError(ValueError):
    """A scope string is malformed (OAuth 2 error ``invalid_scope``)."""

    error = "invalid_scope"


class Level(Enum):
    PATIENT = "patient"
    USER = "user"
    SYSTEM = "system"


class Interaction(Enum):
    """The SMART v2 permission letters, in their required order."""

    CREATE = "c"
    READ = "r"
    UPDATE = "u"
    DELETE = "d"
    SEARCH = "s"


_ORDER = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(
    r"(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<perms>[cruds]{1,5}|read|write|\*)(?:\?(?P<query>.+))?",
    re.ASCII,
)
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+", re.ASCII)
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]{0,127}", re.ASCII)
# Result parameters change what a search returns, not which resources match: they must not
# ride in on a scope (an _include could even widen the result).
_RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_contained",
        "_containedType",
        "_total",
        "_format",
        "_pretty",
        "_cursor",
    }
)

NON_RESOURCE_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)
"""Identity and launch-context scopes (scopes-and-launch-context.html#scopes-for-requesting-context-data)."""


@dataclass(frozen=True, slots=True)
class ResourceScope:
    level: Level
    resource_type: str  # a FHIR type name or "*"
    interactions: frozenset[Interaction]
    criteria: tuple[tuple[str, str], ...] = ()  # query restriction, (name, value) pairs

    def __str__(self) -> str:
        perms = "".join(i.value for i in sorted(self.interactions, key=_rank))
        text = f"{self.level.value}/{self.resource_type}.{perms}"
        if self.criteria:
            text += "?" + "&".join(f"{_enc(n)}={_enc(v)}" for n, v in self.criteria)
        return text

    def covers_type(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)


@dataclass(frozen=True, slots=True)
class Scopes:
    """A parsed ``scope`` parameter: resource scopes plus identity/launch scopes."""

    resource: tuple[ResourceScope, ...]
    other: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return " ".join([*(str(s) for s in self.resource), *sorted(self.other)])


def parse_scope(text: str) -> ResourceScope:
    """Parse one resource scope; raises :class:`ScopeError` when it is malformed."""
    m = _RESOURCE_SCOPE.fullmatch(text) if _SCOPE_TOKEN.fullmatch(text) else None
    if m is None:
        raise ScopeError(f"malformed scope: {text!r}")
    perms = _V1.get(m["perms"], m["perms"])
    if m["perms"] in _V1 and m["query"] is not None:
        raise ScopeError(f"SMART v1 scopes take no query: {text!r}")
    if not _in_order(perms):
        raise ScopeError(f"permissions must be an in-order subset of 'cruds': {text!r}")
    return ResourceScope(
        level=Level(m["level"]),
        resource_type=m["type"],
        interactions=frozenset(Interaction(c) for c in perms),
        criteria=_parse_query(m["query"], text) if m["query"] is not None else (),
    )


def parse_scopes(text: str, *, ignore_unknown: bool = False) -> Scopes:
    """Parse a space-separated ``scope`` value (RFC 6749 §3.3).

    Unknown scopes are refused, or dropped with ``ignore_unknown`` (the authorization server may
    grant less than was asked, RFC 6749 §3.3). Malformed resource scopes are always refused.
    """
    resource: list[ResourceScope] = []
    other: set[str] = set()
    for token in text.split(" "):
        if token == "":  # nosec B105 # a scope token, not a password
            continue
        if token in NON_RESOURCE_SCOPES:
            other.add(token)
        elif token.startswith(("patient/", "user/", "system/")):
            scope = parse_scope(token)
            if scope not in resource:
                resource.append(scope)
        elif not ignore_unknown:
            raise ScopeError(f"unknown scope: {token!r}")
    return Scopes(tuple(resource), frozenset(other))


# --- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScopeContext:
    """Launch context of the token: the patient a ``patient/`` scope is bound to."""

    patient: str | None = None  # a Patient id


@dataclass(frozen=True, slots=True)
class Grant:
    """One way the interaction is allowed.

    ``patient``: only within this patient's compartment (``patient/`` scopes).
    ``criteria``: only resources matching all these search parameters.
    """

    level: Level
    patient: str | None
    criteria: tuple[tuple[str, str], ...]

    @property
    def unrestricted(self) -> bool:
        return self.patient is None and not self.criteria


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether scopes allow an interaction, and the restrictions that then apply.

    The interaction is allowed within the union of ``grants``: a search must be ANDed with
    (grant₁ OR grant₂ …), each grant being its patient compartment AND its criteria; a read,
    update or delete must touch a resource that satisfies at least one grant.
    """

    allowed: bool
    grants: tuple[Grant, ...] = ()

    @property
    def unrestricted(self) -> bool:
        return any(g.unrestricted for g in self.grants)


def allows(
    scopes: Scopes | Iterable[ResourceScope],
    context: ScopeContext,
    interaction: Interaction,
    resource_type: str,
) -> Decision:
    """Decide one interaction on ``resource_type`` under ``scopes`` (deny unless a scope grants it)."""
    items = scopes.resource if isinstance(scopes, Scopes) else tuple(scopes)
    grants: list[Grant] = []
    for scope in items:
        if interaction not in scope.interactions or not scope.covers_type(resource_type):
            continue
        if scope.level is Level.PATIENT:
            if context.patient is None:
                continue  # a patient scope without a patient in context grants nothing
            grants.append(Grant(scope.level, context.patient, scope.criteria))
        else:
            grants.append(Grant(scope.level, None, scope.criteria))
    kept = _simplify(grants)
    return Decision(bool(kept), kept)


def _simplify(grants: list[Grant]) -> tuple[Grant, ...]:
    """Drop duplicates and grants implied by a broader one (same level and patient, fewer criteria)."""
    kept: list[Grant] = []
    for g in sorted(grants, key=lambda g: len(g.criteria)):
        if not any(_implies(k, g) for k in kept):
            kept.append(g)
    return tuple(kept)


def _implies(broader: Grant, narrower: Grant) -> bool:
    return (
        broader.level is narrower.level
        and broader.patient == narrower.patient
        and set(broader.criteria) <= set(narrower.criteria)
    )


def _parse_query(query: str, text: str) -> tuple[tuple[str, str], ...]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise ScopeError(f"malformed query in scope: {text!r}") from exc
    for name, value in pairs:
        if _PARAM_NAME.fullmatch(name) is None or value == "":
            raise ScopeError(f"malformed query in scope: {text!r}")
        if name.split(":")[0] in _RESULT_PARAMETERS:
            raise ScopeError(f"scope queries may not use result parameter {name!r}")
    return tuple(pairs)


def _enc(text: str) -> str:
    # Characters FHIR token and URL values use literally stay readable ("system|code").
    return quote(text, safe=":/|,.-_~$")


def _in_order(perms: str) -> bool:
    return all(_ORDER.find(a) < _ORDER.find(b) for a, b in pairwise(perms))


def _rank(interaction: Interaction) -> int:
    return _ORDER.index(interaction.value)
