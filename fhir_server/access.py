"""Access control on every path into the data (the decisions: compliance/policy.py).

The policy answers, per interaction and type, which rows the caller may touch; this module turns
the answer into search criteria, so one mechanism serves reads, searches, counts, ``_include``,
chains, ``_has``, ``$everything``, ``$lastn``, conditional interactions, batch and transaction
entries and the checks after a write:
- a type the caller may not use at all is refused (403) — also when it appears only inside a
  chain, ``_has`` or ``_include`` (refused, not silently filtered: HAPI #6065);
- rows are narrowed by ANDing the restriction into the criteria (and into every chained or
  reverse-chained type), so totals and pages never count what the caller may not see;
- a resource the caller may not see answers exactly like one that does not exist (404).

Break-the-glass grants are personal (the caller's Practitioner). When a request of such a caller
is audited, the first granted restriction also looks up, once, which patients the caller reaches
through an active emergency grant and through no other grant for all their data, and hands them
with the stated reasons to the audit trail, which labels an answer holding their data BTG
(audit_scope.note_emergency_grants): one small indexed query per request, none for callers
without a Practitioner or requests that are not audited.

``Guard(ctx, None)`` is the system itself (in-process callers): no restriction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from compliance.policy import Alternative, Interaction, Rows, TypeAccess, decide
from compliance.principal import Principal
from fhir_server.audit_scope import (
    EmergencyGrants,
    emergency_grants_unknown,
    note_emergency_grants,
    note_refusal,
)
from fhir_server.compartments import in_own_records, patient_compartment
from fhir_server.context import Context
from fhir_server.criteria import (
    AllOf,
    AnyOf,
    Chain,
    Criterion,
    Granted,
    Has,
    Ids,
    InList,
    Not,
)
from fhir_server.errors import Category, FhirError
from fhir_server.search.sql import Compiler, Selecting, Statement, match_ids

READ = Interaction.READ
SEARCH = Interaction.SEARCH
CREATE = Interaction.CREATE
UPDATE = Interaction.UPDATE
DELETE = Interaction.DELETE

_VERBS = {
    READ: "read",
    SEARCH: "search",
    CREATE: "create",
    UPDATE: "update",
    DELETE: "delete",
}
# Types written only by the server: the audit trail is evidence (§22 BDSG, BALP).
READ_ONLY_TYPES = frozenset({"AuditEvent"})
BREAK_GLASS: Final = "btg"  # access_grant.basis of an emergency grant (break_glass.py)
# What the label says: the stated reason itself is in the (encrypted) AuditEvent of the
# $break-glass call; access_grant is not encrypted, so it must not hold free text.
UNSTATED: Final = (
    "Notfallzugriff, Begründung beim $break-glass-Aufruf protokolliert / emergency access, "
    "reason recorded with the $break-glass call"
)


def forbidden(interaction: Interaction, rtype: str) -> FhirError:
    note_refusal(f"{_VERBS[interaction]} {rtype} not permitted")
    return FhirError(
        Category.FORBIDDEN,
        f"You are not allowed to {_VERBS[interaction]} {rtype} resources.",
    )


def not_known(rtype: str, id: str) -> FhirError:
    """The answer for a resource the caller may not see: the same as for one that never existed
    (interactions.absent), so existence does not leak. The audit trail records the refusal."""
    note_refusal(f"{rtype} outside the caller's access", (id,) if rtype == "Patient" else ())
    return FhirError(Category.NOT_FOUND, f"{rtype}/{id} is not known.")


@dataclass
class Guard:
    """The access decisions of one request (one principal, one instant)."""

    ctx: Context
    principal: Principal | None
    _decisions: dict[tuple[Interaction, str], TypeAccess] = field(default_factory=dict)
    _now: int | None = None
    _emergency_checked: bool = False

    @property
    def unrestricted(self) -> bool:
        return self.principal is None

    @property
    def now(self) -> int:
        if self._now is None:
            self._now = self.ctx.clock()
        return self._now

    def decision(self, interaction: Interaction, rtype: str) -> TypeAccess:
        key = (interaction, rtype)
        found = self._decisions.get(key)
        if found is None:
            assert self.principal is not None
            clinical = rtype in patient_compartment()
            found = decide(self.principal, interaction, rtype, clinical=clinical)
            self._decisions[key] = found
        return found

    def require(self, interaction: Interaction, rtype: str) -> None:
        """Refuses (403) an interaction the caller may not perform on ``rtype`` at all."""
        if not self.may_see(interaction, rtype):
            raise forbidden(interaction, rtype)

    def restriction(self, interaction: Interaction, rtype: str) -> Criterion | None:
        """The criterion every ``rtype`` resource the caller touches must meet (None: any);
        raises 403 when the interaction is not allowed on the type at all."""
        self.require(interaction, rtype)
        if self.principal is None:
            return None
        decision = self.decision(interaction, rtype)
        if decision.unrestricted:
            return None
        parts = [self._alternative(rtype, a, decision.grantees) for a in decision.alternatives]
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def _alternative(
        self, rtype: str, alternative: Alternative, grantees: tuple[str, ...]
    ) -> Criterion:
        parts: list[Criterion] = []
        params = patient_compartment().get(rtype)
        if alternative.patient is not None:
            member = in_own_records(rtype, alternative.patient)
            parts.append(member if member is not None else Ids(()))
        if alternative.rows is Rows.GRANTED:
            parts.append(self._granted(rtype, grantees) if params else Ids(()))
        elif alternative.rows is Rows.OWN and not params:
            parts.append(Ids(()))  # fail closed: no compartment to be "own" in
        if alternative.criteria:
            parts.append(self._scope_criteria(rtype, alternative.criteria))
        if not parts:
            return Not(Ids(()))
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def _granted(self, rtype: str, grantees: tuple[str, ...]) -> Criterion:
        self._note_emergency_grants(grantees)
        granted = Granted(grantees, rtype, self.now)
        if rtype == "Patient":
            return granted
        params = patient_compartment().get(rtype, ())
        chains = tuple(Chain(p, (("Patient", granted),)) for p in params if p != "{def}")
        return chains[0] if len(chains) == 1 else AnyOf(chains)

    def _note_emergency_grants(self, grantees: tuple[str, ...]) -> None:
        """Hands the caller's emergency-only patients to the audit trail (once per request)."""
        if self._emergency_checked:
            return
        self._emergency_checked = True
        personal = tuple(g for g in grantees if g.startswith("Practitioner/"))
        if not personal or not emergency_grants_unknown():
            return
        rows = self.ctx.store.select(emergency_statement(grantees, personal, self.now))
        note_emergency_grants(emergency_only(rows))

    def _scope_criteria(self, rtype: str, pairs: tuple[tuple[str, str], ...]) -> Criterion:
        # A wildcard scope's restriction may name a parameter this type lacks
        # (patient/*.rs?category=…): then no resource of the type is covered — fail closed.
        known = self.ctx.criteria.params(rtype)
        if any(name.partition(":")[0].partition(".")[0] not in known for name, _ in pairs):
            return Ids(())
        criteria = self.ctx.criteria.parse(rtype, list(pairs))
        return criteria[0] if len(criteria) == 1 else AllOf(tuple(criteria))

    # -- applying --------------------------------------------------------------------------

    def narrow(
        self, rtype: str, criteria: Sequence[Criterion], interaction: Interaction = SEARCH
    ) -> list[Criterion]:
        """The criteria of a search (or conditional interaction) restricted to what the caller
        may see, including inside chains and ``_has``."""
        if self.principal is None:
            return list(criteria)
        out = [self._narrow(c) for c in criteria]
        restriction = self.restriction(interaction, rtype)
        if restriction is not None:
            out.append(restriction)
        return out

    def _narrow(self, criterion: Criterion) -> Criterion:
        if isinstance(criterion, Chain):
            branches = tuple(
                (target, self._within(target, self._narrow(inner)))
                for target, inner in criterion.branches
            )
            return Chain(criterion.param, branches)
        if isinstance(criterion, Has):
            inner = self._within(criterion.source, self._narrow(criterion.criterion))
            return Has(criterion.source, criterion.param, inner)
        if isinstance(criterion, AnyOf):
            return AnyOf(tuple(self._narrow(c) for c in criterion.criteria))
        if isinstance(criterion, AllOf):
            return AllOf(tuple(self._narrow(c) for c in criterion.criteria))
        if isinstance(criterion, Not):
            return Not(self._narrow(criterion.criterion))
        if isinstance(criterion, InList):
            # A list the caller may not see behaves like one that does not exist.
            visible = self.visible("List", criterion.list_ids, READ)
            return InList(tuple(i for i in criterion.list_ids if i in visible))
        return criterion

    def _within(self, rtype: str, criterion: Criterion) -> Criterion:
        restriction = self.restriction(SEARCH, rtype)
        return criterion if restriction is None else AllOf((restriction, criterion))

    def visible(
        self,
        rtype: str,
        ids: Collection[str],
        interaction: Interaction = READ,
        db: Selecting | None = None,
    ) -> set[str]:
        """Which of ``ids`` (current resources) the caller may see; raises 403 if the type is
        out of reach altogether."""
        restriction = self.restriction(interaction, rtype)
        if restriction is None or not ids:
            return set(ids)
        unique = tuple(dict.fromkeys(ids))
        source = db if db is not None else self.ctx.store
        return set(match_ids(source, rtype, [Ids(unique), restriction], len(unique)))

    def readable(self, rtype: str, id: str, interaction: Interaction = READ) -> None:
        """Raises "not known" (404) unless the caller may see ``rtype/id`` — whether or not it
        exists."""
        if self.principal is None:
            return
        if id not in self.visible(rtype, (id,), interaction):
            raise not_known(rtype, id)

    def keep_visible(self, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (type, id) keys the caller may read, in order; others are left out as if absent
        (included and referenced resources: they are results, not filters)."""
        if self.principal is None:
            return list(keys)
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        allowed: set[tuple[str, str]] = set()
        for t, ids in by_type.items():
            if self.may_see(READ, t):
                allowed.update((t, i) for i in self.visible(t, ids, READ))
        return [k for k in keys if k in allowed]

    def may_see(self, interaction: Interaction, rtype: str) -> bool:
        """Whether the interaction on the type is within reach at all."""
        # Only the system itself (in process, e.g. the audit chainer) may add to them.
        written = interaction in (CREATE, UPDATE, DELETE) and rtype in READ_ONLY_TYPES
        if written and (self.principal is not None or interaction is not CREATE):
            return False
        return self.principal is None or self.decision(interaction, rtype).allowed


def emergency_statement(grantees: Sequence[str], personal: Sequence[str], at: int) -> Statement:
    """The grants of ``grantees`` valid at ``at`` for the patients one of ``personal`` holds an
    emergency grant for: (patient, basis, res_class, source, valid_from) rows. Both lookups use
    an index (``ix_access_grant_grantee``, ``ix_access_grant_patient``); without an emergency
    grant the answer is empty at once."""
    c = Compiler()
    anyone = ", ".join(c.bind(g) for g in grantees)
    own = ", ".join(c.bind(g) for g in personal)
    at_ = c.bind(at)
    return c.statement(
        "SELECT g.patient_id, g.basis, g.res_class, g.source, g.valid_from "  # nosec B608 # fixed names, bound values
        f"FROM access_grant g WHERE g.grantee IN ({anyone}) AND g.valid_from <= {at_} "
        f"AND (g.valid_until IS NULL OR g.valid_until > {at_}) AND g.patient_id IN ("
        f"SELECT b.patient_id FROM access_grant b WHERE b.grantee IN ({own}) "
        f"AND b.basis = {c.bind(BREAK_GLASS)} AND b.valid_from <= {at_} "
        f"AND b.valid_until > {at_})"
    )


def emergency_only(rows: Iterable[Sequence[Any]]) -> EmergencyGrants:
    """The patients of :func:`emergency_statement`'s rows that no other grant opens for all
    their data (``res_class`` ``*``), with the reason of their latest emergency grant."""
    latest: dict[str, tuple[int, str]] = {}
    covered: set[str] = set()
    for patient, basis, res_class, source, valid_from in rows:
        if basis == BREAK_GLASS:
            known = latest.get(patient)
            if known is None or valid_from >= known[0]:
                latest[patient] = (valid_from, _stated_reason(source))
        elif res_class == "*":
            covered.add(patient)
    return EmergencyGrants({p: reason for p, (_, reason) in latest.items() if p not in covered})


def _stated_reason(source: str) -> str:
    del source  # "btg": the grant holds no reason (see UNSTATED)
    return UNSTATED
