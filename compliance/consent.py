"""FHIR R4 Consent evaluation: sharing between network providers and telemonitoring (https://hl7.org/fhir/R4/consent.html).

Pure: Consent resources (JSON dicts) of one patient in, a verdict out; time is an argument.

Which consents count (``kind``):
- ``network-sharing``: ``scope`` consentscope#patient-privacy and a ``category`` of
  ``https://medi-kus.de/fhir/CodeSystem/consent-kind#network-sharing`` — or LOINC 59284-0
  ("Patient Consent") when no Medi-KUS kind code is given (a generic privacy consent).
- ``telemonitoring``: ``scope`` patient-privacy or treatment and the category
  ``consent-kind#telemonitoring``.
Only ``status`` = active counts; draft, proposed, rejected, inactive (revoked) and
entered-in-error consents never permit.

How one request (actor, resource type, purpose, instant) is decided:
- A provision *fires* when its criteria match and its parent fired; nested provisions are
  exceptions inside their parent's scope. Criteria: ``period`` (start inclusive, end inclusive
  at its precision), ``actor.reference`` (absent: everyone in the network; the role is not
  checked), ``class`` (resource types, system http://hl7.org/fhir/resource-types), ``purpose``
  (v3-ActReason codes, e.g. TREAT), ``action`` (access, use and disclose match a read; collect
  and correct do not).
- Most specific wins: of all fired provisions of all applicable consents, those at the greatest
  depth decide; among them deny wins over permit. Nothing fired: no permit (sharing needs
  consent). So opt-in = root deny + nested permits, opt-out = root permit + nested denies, and
  a later consent adding a nested exception overrides an earlier consent's root.
- A provision without ``type`` inherits its parent's; the root's default comes from
  ``policyRule`` (v3-ActCode OPTIN/OPTINR → permit, OPTOUT/OPTOUTE → deny), else deny.
- When unsure, share less: criteria that cannot be judged at the level of a whole resource type
  (``data``, ``dataPeriod``, ``securityLabel``, ``code``, an actor given only by identifier, an
  unknown purpose, class codes of other systems, a malformed period) make a permit provision not
  fire and a deny provision fire.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Final, Literal

from compliance import fhir_dates

__all__ = [
    "KIND_SYSTEM",
    "Grant",
    "Kind",
    "Verdict",
    "build",
    "code_system",
    "evaluate",
    "grants",
    "is_applicable",
    "kinds",
    "revoke",
]

Kind = Literal["network-sharing", "telemonitoring"]
KINDS: Final[tuple[Kind, ...]] = ("network-sharing", "telemonitoring")
KIND_SYSTEM: Final = "https://medi-kus.de/fhir/CodeSystem/consent-kind"
SCOPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
LOINC: Final = "http://loinc.org"
PATIENT_CONSENT: Final = "59284-0"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
PURPOSE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACTION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
POLICY_RULE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
POLICY_BASE: Final = "https://medi-kus.de/fhir/policy/"

_SCOPES: Final[Mapping[Kind, frozenset[str]]] = {
    "network-sharing": frozenset({"patient-privacy"}),
    "telemonitoring": frozenset({"patient-privacy", "treatment"}),
}
_READ_ACTIONS: Final = frozenset({"access", "use", "disclose"})
_KNOWN_ACTIONS: Final = _READ_ACTIONS | {"collect", "correct"}
# Criteria that name single resources, data periods, labels or codes: unknowable for a grant.
_UNJUDGEABLE: Final = ("data", "dataPeriod", "securityLabel", "code")
# Stand-ins for "any actor / type not named in a consent" (no reference or type contains NUL).
_OTHER_ACTOR: Final = "\x00other-actor"
_OTHER_TYPE: Final = "\x00other-type"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``permit``: may the actor see the type now. ``basis``: ids of the consents whose deciding
    provisions gave the verdict. ``until``: the verdict holds at least until then (the next
    instant a provision period of an applicable consent starts or ends); None: no such instant."""

    permit: bool
    basis: tuple[str, ...]
    until: datetime | None


@dataclass(frozen=True, slots=True)
class Grant:
    """A permit flattened for storage: ``actor`` (None: every actor not in ``except_actors``)
    may see ``types`` (None: every type not in ``except_types``) from ``valid_from`` until
    ``valid_until`` (exclusive; None: open)."""

    actor: str | None
    types: frozenset[str] | None
    valid_from: datetime
    valid_until: datetime | None
    except_actors: frozenset[str] = field(default_factory=frozenset)
    except_types: frozenset[str] = field(default_factory=frozenset)

    def allows(self, actor: str, resource_type: str, at: datetime) -> bool:
        if at < self.valid_from or (self.valid_until is not None and at >= self.valid_until):
            return False
        actor_ok = actor not in self.except_actors if self.actor is None else actor == self.actor
        if self.types is None:
            return actor_ok and resource_type not in self.except_types
        return actor_ok and resource_type in self.types


class _Match(Enum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class _Request:
    actor: str
    resource_type: str
    purpose: str | None
    at: datetime


# --- which consents count ---------------------------------------------------------------------


def kinds(consent: Mapping[str, Any]) -> frozenset[Kind]:
    """The kinds of sharing ``consent`` is about (by scope and category; status not checked)."""
    scopes = _codes(consent.get("scope"), SCOPE_SYSTEM)
    categories = [c for concept in _list(consent.get("category")) for c in _codings(concept)]
    named = {code for system, code in categories if system == KIND_SYSTEM}
    if not named and (LOINC, PATIENT_CONSENT) in categories:
        named = {"network-sharing"}
    return frozenset(k for k in KINDS if k in named and scopes & _SCOPES[k])


def is_applicable(consent: Mapping[str, Any], kind: Kind) -> bool:
    """Does ``consent`` take part in decisions of ``kind`` (active and of that kind)?"""
    return consent.get("status") == "active" and kind in kinds(consent)


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(
    consents: Iterable[Mapping[str, Any]],
    *,
    actor: str,
    resource_type: str,
    purpose: str | None,
    at: datetime,
    kind: Kind,
) -> Verdict:
    """May ``actor`` (``Organization/<id>``, or ``Practitioner/<id>``) see ``resource_type`` of
    the patient whose ``consents`` these are, for ``purpose`` (a v3-ActReason code such as TREAT;
    None: unknown) at ``at`` (timezone-aware)? Semantics: module docstring."""
    _check_aware(at)
    request = _Request(actor, resource_type, purpose, at)
    deepest = -1
    deciding: list[tuple[str, str]] = []  # (type, consent id) at the deepest level
    boundaries: list[datetime] = []
    for index, consent in enumerate(consents):
        if not is_applicable(consent, kind):
            continue
        root = consent.get("provision")
        root = root if isinstance(root, Mapping) else {}
        boundaries.extend(_boundaries(root))
        name = consent.get("id") if isinstance(consent.get("id"), str) else f"#{index}"
        for depth, decision in _fired(root, request, _policy_default(consent), 0):
            if depth > deepest:
                deepest, deciding = depth, []
            if depth == deepest:
                deciding.append((decision, str(name)))
    later = [b for b in boundaries if b > at]
    until = min(later) if later else None
    if not deciding:
        return Verdict(False, (), until)
    denied = [name for decision, name in deciding if decision == "deny"]
    if denied:
        return Verdict(False, tuple(dict.fromkeys(denied)), until)
    return Verdict(True, tuple(dict.fromkeys(name for _, name in deciding)), until)


def _fired(
    node: Mapping[str, Any], request: _Request, inherited: str, depth: int
) -> Iterator[tuple[int, str]]:
    decision = node.get("type", inherited)
    if decision not in ("permit", "deny"):
        decision = "deny"  # an unknown type permits nothing
    match = _matches(node, request)
    if match is _Match.NO or (match is _Match.UNKNOWN and decision == "permit"):
        return
    yield depth, decision
    for child in _list(node.get("provision")):
        if isinstance(child, Mapping):
            yield from _fired(child, request, decision, depth + 1)


def _matches(node: Mapping[str, Any], request: _Request) -> _Match:
    results = [
        _period_match(node.get("period"), request.at),
        _actor_match(node.get("actor"), request.actor),
        _action_match(node.get("action")),
        _purpose_match(node.get("purpose"), request.purpose),
        _class_match(node.get("class"), request.resource_type),
    ]
    if any(node.get(key) for key in _UNJUDGEABLE):
        results.append(_Match.UNKNOWN)
    if _Match.NO in results:
        return _Match.NO
    return _Match.UNKNOWN if _Match.UNKNOWN in results else _Match.YES


def _period_match(period: Any, at: datetime) -> _Match:
    if period is None:
        return _Match.YES
    if not isinstance(period, Mapping):
        return _Match.UNKNOWN
    result = _Match.YES
    for key in ("start", "end"):
        if key not in period:
            continue
        parsed = fhir_dates.parse(period[key])
        if parsed is None:
            result = _Match.UNKNOWN
        elif (key == "start" and at < parsed.low) or (key == "end" and at >= parsed.high):
            return _Match.NO
    return result


def _actor_match(actors: Any, actor: str) -> _Match:
    entries = _list(actors)
    if not entries:
        return _Match.YES
    unknown = False
    for entry in entries:
        reference = _reference(entry.get("reference") if isinstance(entry, Mapping) else None)
        if reference is None:
            unknown = True
        elif reference == actor:
            return _Match.YES
    return _Match.UNKNOWN if unknown else _Match.NO


def _action_match(actions: Any) -> _Match:
    concepts = _list(actions)
    if not concepts:
        return _Match.YES
    unknown = False
    for concept in concepts:
        codings = _codings(concept)
        judged = [(s, c) for s, c in codings if s in (ACTION_SYSTEM, None) and c in _KNOWN_ACTIONS]
        if any(c in _READ_ACTIONS for _, c in judged):
            return _Match.YES
        unknown = unknown or len(judged) < len(codings) or not codings
    return _Match.UNKNOWN if unknown else _Match.NO


def _purpose_match(purposes: Any, purpose: str | None) -> _Match:
    codings = [_coding(c) for c in _list(purposes)]
    if not codings:
        return _Match.YES
    if purpose is None:
        return _Match.UNKNOWN
    unknown = False
    for system, code in codings:
        if system not in (PURPOSE_SYSTEM, None) or code is None:
            unknown = True
        elif code == purpose:
            return _Match.YES
    return _Match.UNKNOWN if unknown else _Match.NO


def _class_match(classes: Any, resource_type: str) -> _Match:
    codings = [_coding(c) for c in _list(classes)]
    if not codings:
        return _Match.YES
    unknown = False
    for system, code in codings:
        if system not in (RESOURCE_TYPES, None) or code is None:
            unknown = True
        elif code == resource_type:
            return _Match.YES
    return _Match.UNKNOWN if unknown else _Match.NO


def _policy_default(consent: Mapping[str, Any]) -> str:
    # v3 ActConsentDirective: OPTIN / OPTINR (with restrictions) assent to sharing, OPTOUT /
    # OPTOUTE (with exceptions) dissent.
    codes = _codes(consent.get("policyRule"), POLICY_RULE_SYSTEM)
    assent = codes & {"OPTIN", "OPTINR"}
    return "permit" if assent and not codes & {"OPTOUT", "OPTOUTE"} else "deny"


def _boundaries(node: Mapping[str, Any]) -> Iterator[datetime]:
    period = node.get("period")
    if isinstance(period, Mapping):
        start, end = fhir_dates.parse(period.get("start")), fhir_dates.parse(period.get("end"))
        if start is not None:
            yield start.low
        if end is not None:
            yield end.high
    for child in _list(node.get("provision")):
        if isinstance(child, Mapping):
            yield from _boundaries(child)


# --- flattening for storage ---------------------------------------------------------------------


def grants(
    consents: Sequence[Mapping[str, Any]],
    at: datetime,
    *,
    kind: Kind = "network-sharing",
    purpose: str | None = "TREAT",
) -> list[Grant]:
    """The permits of one patient's ``consents`` from ``at`` on, flattened for storage.

    Exact: for every actor, resource type and instant ``t >= at``, ``evaluate(consents,
    actor=…, resource_type=…, purpose=purpose, at=t, kind=kind).permit`` is true exactly when
    some returned grant ``allows`` it. Actors and types named in the consents get their own
    grants where they differ from everybody else; the others share one grant with ``actor``
    None (and ``except_actors`` naming those with their own). Consecutive periods with the same
    grants are merged. Recompute whenever a Consent of the patient is written, and at the
    latest at the earliest ``valid_until`` (nothing else changes the result)."""
    _check_aware(at)
    applicable = [c for c in consents if is_applicable(c, kind)]
    actors, types, boundaries = _named(applicable)
    points = [at, *sorted({b for b in boundaries if b > at})]
    result: list[Grant] = []
    previous: list[Grant] = []
    for start, end in zip(points, [*points[1:], None], strict=True):
        current = _interval_grants(applicable, actors, types, start, kind, purpose)
        if previous and _same(previous, current):
            previous = [_extend(g, end) for g in previous]
            result[-len(previous) :] = previous
            continue
        previous = [_extend(g, end) for g in current]
        result.extend(previous)
    return result


def _named(consents: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[datetime]]:
    actors: dict[str, None] = {}
    types: dict[str, None] = {}
    boundaries: list[datetime] = []
    for consent in consents:
        root = consent.get("provision")
        if not isinstance(root, Mapping):
            continue
        boundaries.extend(_boundaries(root))
        for node in _nodes(root):
            for entry in _list(node.get("actor")):
                ref = _reference(entry.get("reference") if isinstance(entry, Mapping) else None)
                if ref is not None:
                    actors[ref] = None
            for coding in _list(node.get("class")):
                system, code = _coding(coding)
                if system in (RESOURCE_TYPES, None) and code is not None:
                    types[code] = None
    return list(actors), list(types), boundaries


def _interval_grants(
    consents: Sequence[Mapping[str, Any]],
    actors: list[str],
    types: list[str],
    at: datetime,
    kind: Kind,
    purpose: str | None,
) -> list[Grant]:
    def permitted(actor: str) -> tuple[frozenset[str] | None, frozenset[str]]:
        allowed = {
            t
            for t in [*types, _OTHER_TYPE]
            if evaluate(
                consents, actor=actor, resource_type=t, purpose=purpose, at=at, kind=kind
            ).permit
        }
        if _OTHER_TYPE in allowed:
            return None, frozenset(types) - allowed
        return frozenset(allowed), frozenset()

    nothing: tuple[frozenset[str] | None, frozenset[str]] = (frozenset(), frozenset())
    everyone = permitted(_OTHER_ACTOR)
    rights = {actor: permitted(actor) for actor in actors}
    own = [
        Grant(actor, types_, at, None, frozenset(), except_types)
        for actor, (types_, except_types) in rights.items()
        if (types_, except_types) not in (everyone, nothing)
    ]
    if everyone == nothing:
        return own
    excepted = frozenset(a for a, r in rights.items() if r != everyone)
    return [Grant(None, everyone[0], at, None, excepted, everyone[1]), *own]


def _same(a: list[Grant], b: list[Grant]) -> bool:
    return [_shape(g) for g in a] == [_shape(g) for g in b]


def _shape(g: Grant) -> tuple[object, ...]:
    return (g.actor, g.types, g.except_actors, g.except_types)


def _extend(grant: Grant, until: datetime | None) -> Grant:
    return Grant(
        grant.actor,
        grant.types,
        grant.valid_from,
        until,
        grant.except_actors,
        grant.except_types,
    )


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in _list(node.get("provision")):
        if isinstance(child, Mapping):
            yield from _nodes(child)


# --- writing consents -----------------------------------------------------------------------------


def build(
    patient: str,
    kind: Kind,
    *,
    mode: Literal["opt-in", "opt-out"] = "opt-in",
    actors: Sequence[str] = (),
    types: Sequence[str] = (),
    start: str | None = None,
    end: str | None = None,
    purposes: Sequence[str] = (),
    date_time: str | None = None,
) -> dict[str, Any]:
    """A Consent of ``kind`` for ``patient`` ("Patient/<id>"). ``opt-in``: nobody but
    ``actors`` (everyone if empty) may see ``types`` (all if empty); ``opt-out``: everyone
    except ``actors`` (restricted to ``types`` if given). ``start``/``end``: FHIR dateTimes."""
    exception: dict[str, Any] = {"type": "permit" if mode == "opt-in" else "deny"}
    if actors:
        exception["actor"] = [
            {"role": {"coding": [_PRIMARY_RECIPIENT]}, "reference": {"reference": a}}
            for a in actors
        ]
    if types:
        exception["class"] = [{"system": RESOURCE_TYPES, "code": t} for t in types]
    if purposes:
        exception["purpose"] = [{"system": PURPOSE_SYSTEM, "code": p} for p in purposes]
    root: dict[str, Any] = {"type": "deny" if mode == "opt-in" else "permit"}
    if start is not None or end is not None:
        root["period"] = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    if mode == "opt-in" or len(exception) > 1:
        root["provision"] = [exception]
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "category": [
            {"coding": [{"system": KIND_SYSTEM, "code": kind}]},
            {"coding": [{"system": LOINC, "code": PATIENT_CONSENT}]},
        ],
        "patient": {"reference": patient},
        # R4 ppc-1 needs a policy or a policyRule; the root's type states the default itself.
        "policy": [{"uri": f"{POLICY_BASE}{kind}"}],
        "provision": root,
    }
    if date_time is not None:
        consent["dateTime"] = date_time
    return consent


_PRIMARY_RECIPIENT: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
    "code": "PRCP",
}


def code_system() -> dict[str, Any]:
    """The Medi-KUS CodeSystem of consent kinds (Consent.category), to load into the server."""
    return {
        "resourceType": "CodeSystem",
        "id": "consent-kind",
        "url": KIND_SYSTEM,
        "name": "MediKusConsentKind",
        "title": "Medi-KUS Einwilligungsarten / consent kinds",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "concept": [
            {
                "code": "network-sharing",
                "display": "Austausch zwischen den Leistungserbringern des Versorgungsnetzes",
                "definition": "Sharing of the record between the providers of the Medi-KUS "
                "care network (scope patient-privacy).",
            },
            {
                "code": "telemonitoring",
                "display": "Telemonitoring durch das Pilotzentrum",
                "definition": "Transmission of vital signs to, and their review by, the "
                "telemonitoring centre and the treating practice (scope patient-privacy or "
                "treatment; G-BA MVV-RL Anlage I Nr. 37).",
            },
        ],
    }


def revoke(consent: Mapping[str, Any]) -> dict[str, Any]:
    """The consent revoked, as the body of an update: ``active`` becomes ``inactive`` (a draft
    or proposed one ``rejected``); the provisions stay, so the version history shows what was
    consented to and when it ended. An inactive or rejected consent is returned unchanged; one
    entered in error cannot be revoked (ValueError)."""
    revoked = copy.deepcopy(dict(consent))
    status = revoked.get("status")
    if status == "entered-in-error":
        raise ValueError("a consent entered in error cannot be revoked")
    if status == "active":
        revoked["status"] = "inactive"
    elif status in ("draft", "proposed"):
        revoked["status"] = "rejected"
    return revoked


# --- JSON helpers ------------------------------------------------------------------------------


def _check_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the instant of a consent decision must be timezone-aware")


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _coding(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, Mapping):
        return None, None
    system, code = value.get("system"), value.get("code")
    return (
        system if isinstance(system, str) else None,
        code if isinstance(code, str) else None,
    )


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, Mapping):
        return []
    return [_coding(c) for c in _list(concept.get("coding"))]


def _codes(concept: Any, system: str) -> set[str]:
    return {c for s, c in _codings(concept) if s == system and c is not None}


def _reference(value: Any) -> str | None:
    """``Type/id`` of a literal reference (absolute URLs and ``_history`` suffixes reduced)."""
    if not isinstance(value, Mapping):
        return None
    text = value.get("reference")
    if not isinstance(text, str) or text.startswith(("#", "urn:")):
        return None
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2] or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"
