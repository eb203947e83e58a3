"""Search criteria as SQL over the index tables (https://hl7.org/fhir/R4/search.html).

Every criterion becomes ``r.res_id IN (SELECT res_id FROM ix_… WHERE res_type = … AND param = …)``:
an uncorrelated subquery that both SQLite and PostgreSQL drive from the index lookup
(``res_type, param, value…``) instead of scanning the resources of a type. Index rows exist only for
current, non-deleted versions, so subqueries need no join to ``resource``. Chains and ``_has`` nest
such subqueries through ``ix_reference``.

The SQL is plain text with named parameters (``:p0``), generated here so that the storage module
stays the only one that talks to the database driver. Table and column names come from fixed
tables below, values are always bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from fhir_server.criteria import (
    AllOf,
    AnyOf,
    Bound,
    Chain,
    Criterion,
    Granted,
    Has,
    Ids,
    InList,
    LastUpdated,
    Match,
    Missing,
    Near,
    Not,
    Quantity,
    Reference,
    Token,
    Value,
)
from fhir_server.errors import Category, FhirError  # H2: protected index values
from fhir_server.protection import SearchTokens, context, protected  # H2

_TABLES: Final = {
    "token": "ix_token",  # nosec B105 # a table name, not a password
    "string": "ix_string",
    "reference": "ix_reference",
    "date": "ix_date",
    "number": "ix_number",
    "quantity": "ix_quantity",
    "uri": "ix_uri",
    "special": "ix_position",
    "text": "ix_text",
}
# Above any character a search value can hold: "abc" <= x < "abc\U0010ffff" is the prefix range.
_TOP: Final = "\U0010ffff"
_EARTH_KM: Final = 6371.0088


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: dict[str, Any]
    # H2: conditions on protected index values; the store renders them (see ``render``).
    protected: tuple[Protected, ...] = ()

    def render(self, tokens: SearchTokens | None) -> Statement:
        """The statement the store runs: protected values looked up as the blind-index
        ``tokens`` of a store with keys, or in plain form (``None``: a store without keys)."""
        if not self.protected:
            rendered = self
        else:
            c = Compiler(dict(self.params))
            sql = self.sql
            for p in self.protected:
                sql = sql.replace(p.marker, p.plain if tokens is None else _blind(c, p, tokens))
            rendered = Statement(sql, c.params)
        if _MARKER in rendered.sql:  # SQL of one Compiler pasted into another's statement
            raise RuntimeError("a protected search condition lost its statement (search/sql.py)")
        return rendered


@dataclass(frozen=True, slots=True)
class SortKey:
    """``_sort`` key: an index parameter (kind from its definition) or ``_id``/``_lastUpdated``."""

    param: str
    kind: str
    descending: bool


@dataclass(slots=True)
class Compiler:
    """Builds one statement; holds its bound parameters."""

    params: dict[str, Any] = field(default_factory=dict)
    _aliases: int = 0
    protected: list[Protected] = field(default_factory=list)  # H2

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def alias(self) -> str:
        self._aliases += 1
        return f"a{self._aliases}"

    def statement(self, sql: str) -> Statement:
        return Statement(sql, dict(self.params), tuple(self.protected))

    # -- criteria ---------------------------------------------------------------------------

    def conditions(
        self, type: str, criteria: Sequence[Criterion], r: str, *, probe: bool = False
    ) -> list[str]:
        """Boolean SQL over ``r.res_id`` (a resource of ``type``) for all criteria. ``probe``:
        few candidate rows (another criterion drives), so each is checked by an index probe
        (EXISTS on the resource index) instead of materialising every match of the criterion."""
        return [self.condition(type, c, r, probe=probe) for c in criteria]

    def probe(self, type: str, criterion: Match, r: str) -> str:
        a = self.alias()
        table = _TABLES[criterion.kind]
        values = _any(self.value(a, criterion, v, type) for v in criterion.values)
        return (
            f"EXISTS (SELECT 1 FROM {table} {a} /*+INDEXED BY {table}_resource*/ "  # nosec B608 # fixed names, bound values (module docstring)
            f"WHERE {a}.res_type = {self.bind(type)} AND {a}.res_id = {r}.res_id "
            f"AND {a}.param = {self.bind(criterion.param)} AND {values})"
        )

    def condition(self, type: str, criterion: Criterion, r: str, *, probe: bool = False) -> str:
        if probe and isinstance(criterion, Match) and criterion.kind != "composite":
            if criterion.modifier == "not":
                positive = Match(criterion.param, criterion.kind, None, criterion.values)
                return f"NOT {self.probe(type, positive, r)}"
            return self.probe(type, criterion, r)
        if isinstance(criterion, Ids):
            if not criterion.ids:
                return "1 = 0"
            return f"{r}.res_id IN ({', '.join(self.bind(i) for i in criterion.ids)})"
        if isinstance(criterion, LastUpdated):
            column = f"{r}.last_updated"
            return _any(self.bound(column, column, column, v, "date") for v in criterion.values)
        if isinstance(criterion, AnyOf):
            return _any(self.condition(type, c, r, probe=probe) for c in criterion.criteria)
        if isinstance(criterion, AllOf):
            return _all(self.condition(type, c, r, probe=probe) for c in criterion.criteria)
        if isinstance(criterion, Not):
            return f"NOT ({self.condition(type, criterion.criterion, r, probe=probe)})"
        if isinstance(criterion, Missing):
            table = _TABLES["token" if criterion.kind == "composite" else criterion.kind]
            a = self.alias()
            param = f"{criterion.param}$0" if criterion.kind == "composite" else criterion.param
            sub = (
                f"SELECT {a}.res_id FROM {table} {a} "  # nosec B608 # fixed names, bound values (module docstring)
                f"WHERE {a}.res_type = {self.bind(type)} AND {a}.param = {self.bind(param)}"
            )
            return f"{r}.res_id {'NOT IN' if criterion.missing else 'IN'} ({sub})"
        if isinstance(criterion, Match) and criterion.modifier == "not":
            positive = Match(criterion.param, criterion.kind, None, criterion.values)
            return f"{r}.res_id NOT IN ({self.ids(type, positive)})"
        return f"{r}.res_id IN ({self.ids(type, criterion)})"

    def ids(self, type: str, criterion: Criterion) -> str:
        """A SELECT of the ids of ``type`` resources that match ``criterion``."""
        if isinstance(criterion, Match):
            if criterion.kind == "composite":
                return self._composite(type, criterion)
            a = self.alias()
            table = _TABLES[criterion.kind]
            values = _any(self.value(a, criterion, v, type) for v in criterion.values)
            return (
                f"SELECT {a}.res_id FROM {table} {a}{_lookup(table)} "  # nosec B608 # fixed names, bound values (module docstring)
                f"WHERE {a}.res_type = {self.bind(type)} "
                f"AND {a}.param = {self.bind(criterion.param)} AND {values}"
            )
        if isinstance(criterion, Chain):
            a = self.alias()
            branches = []
            for target, inner in criterion.branches:
                branches.append(
                    f"({a}.target_type = {self.bind(target)} "
                    f"AND {a}.target_id IN ({self.ids(target, inner)}))"
                )
            return (
                f"SELECT {a}.res_id FROM ix_reference {a}{_lookup('ix_reference')} "  # nosec B608 # fixed names, bound values (module docstring)
                f"WHERE {a}.res_type = {self.bind(type)} "
                f"AND {a}.param = {self.bind(criterion.param)} AND {_any(branches)}"
            )
        if isinstance(criterion, Has):
            a = self.alias()
            return (
                f"SELECT {a}.target_id AS res_id FROM ix_reference {a} "  # nosec B608 # fixed names, bound values (module docstring)
                f"WHERE {a}.res_type = {self.bind(criterion.source)} "
                f"AND {a}.param = {self.bind(criterion.param)} "
                f"AND {a}.target_type = {self.bind(type)} "
                f"AND {a}.res_id IN ({self.ids(criterion.source, criterion.criterion)})"
            )
        if isinstance(criterion, InList):
            a = self.alias()
            lists = ", ".join(self.bind(i) for i in criterion.list_ids)
            return (
                f"SELECT {a}.target_id AS res_id FROM ix_reference {a} WHERE {a}.res_type = 'List' "  # nosec B608 # fixed names, bound values (module docstring)
                f"AND {a}.param = 'item' AND {a}.res_id IN ({lists}) "
                f"AND {a}.target_type = {self.bind(type)}"
            )
        if isinstance(criterion, Granted):
            return self.granted(criterion)
        if isinstance(criterion, AllOf) and any(_positive(x) for x in criterion.criteria):
            # Driven by a positive member's index lookup; the others probe each candidate.
            driver = min((x for x in criterion.criteria if _positive(x)), key=_selectivity_rank)
            rest = [x for x in criterion.criteria if x is not driver]
            d = self.alias()
            where = " AND ".join(self.conditions(type, rest, d, probe=True)) or "1 = 1"
            return f"SELECT {d}.res_id FROM ({self.ids(type, driver)}) {d} WHERE {where}"  # nosec B608 # fixed names, bound values (module docstring)
        if isinstance(criterion, AnyOf) and _positive(criterion):
            return " UNION ".join(self.ids(type, x) for x in criterion.criteria)
        # Negations, id lists and other alternatives: through the resource table.
        x = self.alias()
        return (
            f"SELECT {x}.res_id FROM resource {x} WHERE {x}.res_type = {self.bind(type)} "  # nosec B608 # fixed names, bound values (module docstring)
            f"AND {x}.deleted = {self.bind(False)} AND {self.condition(type, criterion, x)}"
        )

    def granted(self, criterion: Granted) -> str:
        """Ids of the patients whose records the grantees may see (rows of ``access_grant``)."""
        g = self.alias()
        grantees = ", ".join(self.bind(x) for x in criterion.grantees) or "NULL"
        at = self.bind(criterion.at)
        return (
            f"SELECT {g}.patient_id AS res_id FROM access_grant {g} "  # nosec B608 # fixed names, bound values (module docstring)
            f"WHERE {g}.grantee IN ({grantees}) "
            f"AND {g}.res_class IN ('*', {self.bind(criterion.for_type)}) "
            f"AND {g}.valid_from <= {at} AND ({g}.valid_until IS NULL OR {g}.valid_until > {at})"
        )

    def _composite(self, type: str, criterion: Match) -> str:
        aliases = [self.alias() for _ in criterion.components]
        first = aliases[0]
        table = _TABLES[criterion.components[0]]
        joins = [f"{table} {first}{_lookup(table)}"]
        for k, (kind, a) in enumerate(zip(criterion.components, aliases, strict=True)):
            if k == 0:
                continue
            joins.append(
                f"JOIN {_TABLES[kind]} {a} ON {a}.res_type = {first}.res_type "
                f"AND {a}.res_id = {first}.res_id AND {a}.grp = {first}.grp "
                f"AND {a}.param = {self.bind(f'{criterion.param}${k}')}"
            )
        alternatives = []
        for value in criterion.values:
            assert isinstance(value, tuple)
            parts = [
                # Component rows are never protected (fhir_server/protection.py): no type.
                self.value(a, Match(criterion.param, kind, None, ()), part, "")
                for a, kind, part in zip(aliases, criterion.components, value, strict=True)
            ]
            alternatives.append(_all(parts))
        return (
            f"SELECT {first}.res_id FROM {' '.join(joins)} "  # nosec B608 # fixed names, bound values (module docstring)
            f"WHERE {first}.res_type = {self.bind(type)} "
            f"AND {first}.param = {self.bind(f'{criterion.param}$0')} AND {_any(alternatives)}"
        )

    # -- values -----------------------------------------------------------------------------

    def value(self, a: str, criterion: Match, value: Value, type: str) -> str:
        """The condition on index row ``a`` for one search value of ``criterion`` on ``type``."""
        # H2: identifying values are blind-index tokens in a store with keys: deferred to it.
        if protected(type, criterion.param, criterion.kind):
            return self._protect(self.plain_value(a, criterion, value), a, type, criterion, value)
        return self.plain_value(a, criterion, value)

    def _protect(self, plain: str, a: str, type: str, criterion: Match, value: Value | None) -> str:
        marker = f"{_MARKER}{len(self.protected)}*/"
        self.protected.append(Protected(marker, plain, a, type, criterion, value))
        return marker

    def plain_value(self, a: str, criterion: Match, value: Value) -> str:
        kind = criterion.kind
        if kind == "token":
            assert isinstance(value, Token)
            return self.token(a, criterion.modifier, value)
        if kind == "string":
            assert isinstance(value, str)
            if criterion.modifier == "exact":
                return f"{a}.exact = {self.bind(value)}"
            if criterion.modifier == "contains":
                return f"{a}.value LIKE {self.bind(_like(value))} ESCAPE '\\'"
            return self.prefix(f"{a}.value", value)
        if kind == "reference":
            assert isinstance(value, Reference)
            return self.reference(a, value)
        if kind in ("date", "number"):
            assert isinstance(value, Bound)
            return self.bound(f"{a}.low", f"{a}.high", f"{a}.value", value, kind)
        if kind == "quantity":
            assert isinstance(value, Quantity)
            parts = [self.bound(f"{a}.low", f"{a}.high", f"{a}.value", value.bound, "number")]
            if value.system is not None:
                parts.append(f"{a}.system = {self.bind(value.system)}")
                if value.code is not None:
                    parts.append(f"{a}.code = {self.bind(value.code)}")
            elif value.code is not None:
                code = self.bind(value.code)
                parts.append(f"({a}.code = {code} OR {a}.unit = {code})")
            return _all(parts)
        if kind == "uri":
            assert isinstance(value, str)
            if criterion.modifier == "below":
                return self.prefix(f"{a}.value", value)
            if criterion.modifier == "above":
                v = self.bind(value)
                return f"substr({v}, 1, length({a}.value)) = {a}.value"
            return f"{a}.value = {self.bind(value)}"
        if kind == "special":
            assert isinstance(value, Near)
            return self.near(a, value)
        if kind == "text":
            assert isinstance(value, str)
            words = value.split() or [""]
            return _all(f"{a}.value LIKE {self.bind(_like(w))} ESCAPE '\\'" for w in words)
        raise AssertionError(kind)

    def token(self, a: str, modifier: str | None, value: Token) -> str:
        if modifier == "text":
            return self.prefix(f"{a}.text", value.value or "")
        parts = []
        if value.code is not None:
            parts.append(f"{a}.code = {self.bind(value.code)}")
        else:
            parts.append(f"{a}.code IS NOT NULL")
        if value.system_given:
            parts.append(
                f"{a}.system = {self.bind(value.system)}"
                if value.system is not None
                else f"{a}.system IS NULL"
            )
        if modifier == "of-type":
            parts.append(f"{a}.text = {self.bind(value.value)}")
        return _all(parts)

    def reference(self, a: str, value: Reference) -> str:
        if value.id is not None:
            parts = [f"{a}.target_id = {self.bind(value.id)}"]
            if value.type is not None:
                parts.append(f"{a}.target_type = {self.bind(value.type)}")
            return _all(parts)
        parts = [f"{a}.url = {self.bind(value.url)}"]
        if value.version is not None:
            parts.append(f"{a}.version = {self.bind(value.version)}")
        return _all(parts)

    def prefix(self, column: str, value: str) -> str:
        if not value:
            return f"{column} IS NOT NULL"
        return f"{column} >= {self.bind(value)} AND {column} < {self.bind(value + _TOP)}"

    def bound(self, low: str, high: str, point: str, value: Bound, kind: str) -> str:
        """Prefix semantics of search.html#prefix. Dates compare ranges (a value covers its
        precision); numbers and quantities compare the stored value with the search value's
        precision range for eq/ne/ap, and exactly for the other prefixes (search.html#number)."""
        prefix = value.prefix
        if kind == "date":
            lo, hi = self.bind(int(value.low)), self.bind(int(value.high))
            return {
                "eq": f"({low} >= {lo} AND {high} <= {hi})",
                "ne": f"({low} < {lo} OR {high} > {hi})",
                "gt": f"{high} > {hi}",
                "lt": f"{low} < {lo}",
                "ge": f"{high} >= {lo}",
                "le": f"{low} <= {hi}",
                "sa": f"{low} > {hi}",
                "eb": f"{high} < {lo}",
                "ap": f"({low} <= {hi} AND {high} >= {lo})",
            }[prefix]
        if prefix in ("eq", "ne"):
            # [low, high) as in search.html#number; "= value" because for 17-digit values the
            # float bounds round to the value itself.
            inside = (
                f"({point} >= {self.bind(value.low)} AND ({point} < {self.bind(value.high)} "
                f"OR {point} = {self.bind(value.value)}))"
            )
            return inside if prefix == "eq" else f"NOT {inside}"
        if prefix == "ap":
            margin = abs(value.value) * 0.1
            return (
                f"({point} >= {self.bind(value.value - margin)} "
                f"AND {point} <= {self.bind(value.value + margin)})"
            )
        operator = {"gt": ">", "sa": ">", "lt": "<", "eb": "<", "ge": ">=", "le": "<="}[prefix]
        return f"{point} {operator} {self.bind(value.value)}"

    def near(self, a: str, value: Near) -> str:
        """Great-circle distance within ``km``; a bounding box first so the index narrows."""
        dlat = math.degrees(value.km / _EARTH_KM)
        cos_lat = max(math.cos(math.radians(value.latitude)), 1e-6)
        dlon = min(180.0, dlat / cos_lat)
        lat, lon = self.bind(value.latitude), self.bind(value.longitude)
        box = (
            f"{a}.latitude BETWEEN {self.bind(value.latitude - dlat)} "
            f"AND {self.bind(value.latitude + dlat)} "
            f"AND {a}.longitude BETWEEN {self.bind(value.longitude - dlon)} "
            f"AND {self.bind(value.longitude + dlon)}"
        )
        # Haversine; the CASE keeps asin's argument in range against rounding.
        hav = (
            f"(power(sin(radians({a}.latitude - {lat}) / 2), 2) + "
            f"cos(radians({lat})) * cos(radians({a}.latitude)) * "
            f"power(sin(radians({a}.longitude - {lon}) / 2), 2))"
        )
        haversine = f"2 * {_EARTH_KM} * asin(sqrt(CASE WHEN {hav} > 1.0 THEN 1.0 ELSE {hav} END))"
        return f"({box} AND {haversine} <= {self.bind(value.km)})"

    # -- sort -------------------------------------------------------------------------------

    def sort_expression(self, type: str, key: SortKey, r: str) -> str:
        if key.param == "_id":
            return f"{r}.res_id"
        if key.param == "_lastUpdated":
            return f"{r}.last_updated"
        column = {
            "date": "high" if key.descending else "low",
            "string": "value",
            "token": "code",  # nosec B105 # a column name, not a password
            "reference": "target_id",
            "number": "value",
            "quantity": "value",
            "uri": "value",
        }[key.kind]
        a = self.alias()
        aggregate = "MAX" if key.descending else "MIN"
        expression = (
            f"(SELECT {aggregate}({a}.{column}) FROM {_TABLES[key.kind]} {a} "  # nosec B608 # fixed names, bound values (module docstring)
            f"WHERE {a}.res_type = {self.bind(type)} AND {a}.res_id = {r}.res_id "
            f"AND {a}.param = {self.bind(key.param)})"
        )
        if protected(type, key.param, key.kind):  # H2: tokens have no order to sort by
            return self._protect(expression, a, type, Match(key.param, key.kind, "sort", ()), None)
        return expression


def _any(parts: Any) -> str:
    items = list(parts)
    if not items:
        return "1 = 0"
    return items[0] if len(items) == 1 else "(" + " OR ".join(items) + ")"


def _all(parts: Any) -> str:
    items = list(parts)
    if not items:
        return "1 = 1"
    return items[0] if len(items) == 1 else "(" + " AND ".join(items) + ")"


def _lookup(table: str) -> str:
    """A hint that the storage layer turns into SQLite's ``INDEXED BY`` (PostgreSQL ignores the
    comment). Without statistics SQLite prefers the (res_type, res_id, param) index under a
    DISTINCT — it yields ids in order — and reads every row of the type: 150 ms at 250,000
    resources instead of an index range."""
    return "" if table == "ix_text" else f" /*+INDEXED BY {table}_lookup*/"


def _literal(name: str) -> str:
    """A resource type or parameter name as an SQL literal (definitions only, never input)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"not a definition name: {name!r}")
    return f"'{name}'"


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# -- statements -------------------------------------------------------------------------------


class Selecting(Protocol):
    def select(self, statement: Statement) -> list[tuple[Any, ...]]: ...


def match_ids(db: Selecting, type: str, criteria: Sequence[Criterion], limit: int) -> list[str]:
    """Ids of current ``type`` resources matching all criteria (at most ``limit``)."""
    return [row[0] for row in db.select(match_statement(type, criteria, limit))]


def match_statement(type: str, criteria: Sequence[Criterion], limit: int) -> Statement:
    c = Compiler()
    source, where = _source(c, type, criteria, needs_resource=False)
    return c.statement(f"SELECT r.res_id FROM {source} WHERE {where} LIMIT {int(limit)}")  # nosec B608 # fixed names, bound values (module docstring)


def count_statement(type: str, criteria: Sequence[Criterion]) -> Statement:
    c = Compiler()
    source, where = _source(c, type, criteria, needs_resource=False)
    return c.statement(f"SELECT COUNT(*) FROM {source} WHERE {where}")  # nosec B608 # fixed names, bound values (module docstring)


def _source(
    c: Compiler, type: str, criteria: Sequence[Criterion], *, needs_resource: bool
) -> tuple[str, str]:
    """FROM and WHERE for the ids matching ``criteria``, aliased ``r``.

    Index rows exist only for current, non-deleted versions, so a search with a positive index
    criterion is driven from that criterion's index lookup (distinct ids) and never touches the
    ``resource`` table: filtering all resources of a type by ``res_id IN (…)`` made SQLite (and
    PostgreSQL for counts) read every Observation. ``_lastUpdated`` lives on ``resource``."""
    driver = None
    if not needs_resource and not any(isinstance(x, LastUpdated) for x in criteria):
        candidates = [x for x in criteria if _positive(x)]
        driver = min(candidates, key=_selectivity_rank) if candidates else None
    if driver is None:
        parts = [f"r.res_type = {c.bind(type)}", f"r.deleted = {c.bind(False)}"]
        parts.extend(c.conditions(type, criteria, "r"))
        return "resource r", " AND ".join(parts)
    rest = [x for x in criteria if x is not driver]
    source = f"(SELECT DISTINCT d.res_id FROM ({c.ids(type, driver)}) d) r"  # nosec B608 # fixed names, bound values (module docstring)
    return source, " AND ".join(c.conditions(type, rest, "r", probe=True)) or "1 = 1"


def _selectivity_rank(criterion: Criterion) -> int:
    """Which criterion drives: a guess without statistics (PostgreSQL re-plans anyway; SQLite
    follows the SQL): a reference to one resource (a patient's data) first, dates last."""
    if isinstance(criterion, Match):
        return {"reference": 0, "token": 1, "string": 3, "uri": 2}.get(criterion.kind, 4)  # nosec B105 # the token search type, not a password
    return 2


def _positive(criterion: Criterion) -> bool:
    """Answered from the resource's own index rows alone: no negation, no resource columns, and
    not _has/_list, whose ids come from other resources' references (possibly deleted ones)."""
    if isinstance(criterion, Match):
        return criterion.modifier != "not"
    if isinstance(criterion, AnyOf):
        return bool(criterion.criteria) and all(_positive(x) for x in criterion.criteria)
    # Not Granted: a grant may name a patient that has since been deleted.
    return isinstance(criterion, Chain)


def page_statement(
    type: str,
    criteria: Sequence[Criterion],
    sort: Sequence[SortKey],
    after: Sequence[Any] | None,
    backwards: bool,
    limit: int,
    with_total: bool = False,
) -> Statement:
    """One page in keyset order: rows of (res_id, sort values…[, total]), ``after`` the given key
    values (sort values then id) — or before them when paging ``backwards``. NULLs sort last.
    ``with_total`` (first page only) adds the number of all matches to every row."""
    c = Compiler()
    by_update = any(k.param == "_lastUpdated" for k in sort)
    source, where = _source(c, type, criteria, needs_resource=by_update)
    keys = [c.sort_expression(type, k, "r") for k in sort]
    columns = ", ".join(["r.res_id AS res_id", *(f"{e} AS k{i}" for i, e in enumerate(keys))])
    inner = f"SELECT {columns} FROM {source} WHERE {where}"  # nosec B608 # fixed names, bound values (module docstring)
    directions = [k.descending != backwards for k in sort]
    names = [f"q.k{i}" for i in range(len(sort))]
    order = [
        f"{n} {'DESC' if d else 'ASC'} NULLS {'FIRST' if backwards else 'LAST'}"
        for n, d in zip(names, directions, strict=True)
    ]
    order.append(f"q.res_id {'DESC' if backwards else 'ASC'}")
    condition = "1 = 1"
    if after is not None:
        condition = _keyset(c, names, directions, list(after), backwards)
    # The first page also counts all matches in the same pass (the sort reads them all anyway).
    total = ", COUNT(*) OVER () AS total" if with_total else ""
    return c.statement(
        f"SELECT q.*{total} FROM ({inner}) q WHERE {condition} "  # nosec B608 # fixed names, bound values (module docstring)
        f"ORDER BY {', '.join(order)} LIMIT {int(limit)}"
    )


def _keyset(
    c: Compiler, names: list[str], descending: list[bool], after: list[Any], backwards: bool
) -> str:
    """Rows strictly after ``after`` in the order (names…, res_id); NULLs last (first when
    going backwards, where the order is reversed)."""
    *values, last_id = after
    alternatives = []
    for i in range(len(names) + 1):
        parts = []
        for j in range(i):
            v = values[j]
            parts.append(f"{names[j]} IS NULL" if v is None else f"{names[j]} = {c.bind(v)}")
        if i == len(names):
            parts.append(f"q.res_id {'<' if backwards else '>'} {c.bind(last_id)}")
        else:
            v = values[i]
            operator = "<" if descending[i] else ">"
            if v is None:
                if not backwards:
                    continue  # nothing sorts after NULL
                parts.append(f"{names[i]} IS NOT NULL")
            elif backwards:
                parts.append(f"{names[i]} {operator} {c.bind(v)}")
            else:
                parts.append(f"({names[i]} {operator} {c.bind(v)} OR {names[i]} IS NULL)")
        alternatives.append(_all(parts))
    return _any(alternatives)


def include_statement(
    keys: Sequence[tuple[str, str]], source: str, params: Sequence[str] | None, target: str | None
) -> Statement:
    """Targets of the references ``params`` (None: all) of the ``source`` resources among keys."""
    c = Compiler()
    ids = [i for t, i in keys if t == source]
    sql = (
        f"SELECT DISTINCT i.target_type, i.target_id FROM ix_reference i "  # nosec B608 # fixed names, bound values (module docstring)
        f"WHERE i.res_type = {c.bind(source)} "
        f"AND i.res_id IN ({', '.join(c.bind(i) for i in ids)}) AND i.target_id IS NOT NULL"
    )
    if params is not None:
        sql += f" AND i.param IN ({', '.join(c.bind(p) for p in params)})"
    if target is not None:
        sql += f" AND i.target_type = {c.bind(target)}"
    return c.statement(sql)


def revinclude_statement(
    keys: Sequence[tuple[str, str]], source: str, params: Sequence[str] | None, target: str | None
) -> Statement:
    """``source`` resources whose references ``params`` (None: all) point at any of keys."""
    c = Compiler()
    by_type: dict[str, list[str]] = {}
    for t, i in keys:
        if target is None or t == target:
            by_type.setdefault(t, []).append(i)
    alternatives = [
        f"(i.target_type = {c.bind(t)} AND i.target_id IN ({', '.join(c.bind(i) for i in ids)}))"
        for t, ids in by_type.items()
    ]
    sql = (
        f"SELECT DISTINCT i.res_type, i.res_id FROM ix_reference i "  # nosec B608 # fixed names, bound values (module docstring)
        f"WHERE i.res_type = {c.bind(source)} AND {_any(alternatives)}"
    )
    if params is not None:
        sql += f" AND i.param IN ({', '.join(c.bind(p) for p in params)})"
    return c.statement(sql)


def everything_statement(
    patient_id: str,
    compartment: Sequence[tuple[str, Sequence[str]]],
    since: int | None,
    after: tuple[str, str] | None,
    limit: int,
    *,
    include_patient: bool = True,
) -> Statement:
    """Members of a patient's compartment (and the patient, unless left out), ordered by (type, id) for keyset
    paging. The (type, parameter) pairs are a VALUES list joined to ``ix_reference_lookup``: one
    index probe per pair, cheap to plan (a UNION of ~100 branches took 10 ms to plan), and the
    members drive the join to ``resource`` (a scan of ``resource`` in key order filtered by
    membership read 80,000 rows for one page at 250,000 resources)."""
    c = Compiler()
    patient = c.bind(patient_id)
    # The pairs come from the CompartmentDefinition, not from the request: inlined as literals
    # (200 bound parameters cost more than the query).
    pairs = [f"({_literal(t)}, {_literal(p)})" for t, params in compartment for p in params]
    where = [f"r.deleted = {c.bind(False)}"]
    if since is not None:
        where.append(f"r.last_updated >= {c.bind(since)}")
    if after is not None:
        t, i = c.bind(after[0]), c.bind(after[1])
        where.append(f"(r.res_type > {t} OR (r.res_type = {t} AND r.res_id > {i}))")
    conditions = " AND ".join(where)
    parts: list[str] = []
    if include_patient:
        parts.append(
            f"SELECT r.res_type, r.res_id FROM resource r WHERE r.res_type = 'Patient' "  # nosec B608 # fixed names, bound values (module docstring)
            f"AND r.res_id = {patient} AND {conditions}"
        )
    prefix = ""
    if pairs:
        prefix = f"WITH links(t, p) AS (VALUES {', '.join(pairs)}) "
        parts.append(
            f"SELECT r.res_type, r.res_id FROM links v JOIN ix_reference i "  # nosec B608 # fixed names, bound values (module docstring)
            f"ON i.res_type = v.t AND i.param = v.p AND i.target_id = {patient} "
            f"AND i.target_type = 'Patient' JOIN resource r "
            f"ON r.res_type = i.res_type AND r.res_id = i.res_id WHERE {conditions}"
        )
    if not parts:  # e.g. _type names only types outside the compartment
        return c.statement("SELECT res_type, res_id FROM resource WHERE 1 = 0")
    return c.statement(f"{prefix}{' UNION '.join(parts)} ORDER BY 1, 2 LIMIT {int(limit)}")


def lastn_statement(criteria: Sequence[Criterion], max_per_code: int) -> Statement:
    """The newest ``max_per_code`` Observations per code among those matching ``criteria``
    (https://hl7.org/fhir/R4/observation-operation-lastn.html), newest first within a code."""
    c = Compiler()
    source, where = _source(c, "Observation", criteria, needs_resource=False)
    newest = (
        "(SELECT MAX(d.high) FROM ix_date d WHERE d.res_type = 'Observation' "
        "AND d.res_id = t.res_id AND d.param = 'date')"
    )
    # The matching observations drive; their code rows are looked up by id.
    ranked = (
        f"SELECT t.res_id, t.system, t.code, {newest} AS effective, ROW_NUMBER() OVER "  # nosec B608 # fixed names, bound values (module docstring)
        f"(PARTITION BY t.system, t.code ORDER BY {newest} DESC NULLS LAST, t.res_id) AS n "
        f"FROM {source} JOIN ix_token t /*+INDEXED BY ix_token_resource*/ "
        f"ON t.res_type = 'Observation' AND t.res_id = r.res_id AND t.param = 'code' "
        f"WHERE {where} AND t.code IS NOT NULL"
    )
    return c.statement(
        f"SELECT q.res_id FROM ({ranked}) q WHERE q.n <= {int(max_per_code)} "  # nosec B608 # fixed names, bound values (module docstring)
        f"ORDER BY q.system, q.code, q.effective DESC NULLS LAST, q.res_id"
    )


def references_statement(keys: Sequence[tuple[str, str]]) -> Statement:
    """Every resource the ``keys`` refer to (``_include=*`` across types); one index range per
    type (SQLite scans the table for a row-value ``(res_type, res_id) IN``)."""
    c = Compiler()
    by_type: dict[str, list[str]] = {}
    for t, i in keys:
        by_type.setdefault(t, []).append(i)
    parts = [
        f"SELECT i.target_type, i.target_id FROM ix_reference i WHERE i.res_type = {c.bind(t)} "  # nosec B608 # fixed names, bound values (module docstring)
        f"AND i.res_id IN ({', '.join(c.bind(x) for x in ids)}) AND i.target_id IS NOT NULL"
        for t, ids in by_type.items()
    ]
    return c.statement(" UNION ".join(parts))


# -- protected index values (H2: encryption at rest, fhir_server/protection.py) ---------------
# A condition on a protected parameter is compiled twice over: its plain form now, and the
# blind-index form by the store that holds the keys (Statement.render), which looks up the tokens
# of every key version in its keyring. SQL text stays key-free; the tokens are bound values.


_MARKER: Final = "/*protected:"


@dataclass(frozen=True, slots=True)
class Protected:
    """A condition on index row ``alias`` (or, modifier "sort", a sort key) whose values are
    blind-index tokens in a store with keys; ``marker`` stands for it in the statement's SQL."""

    marker: str
    plain: str
    alias: str
    type: str
    criterion: Match
    value: Value | None


def _blind(c: Compiler, p: Protected, tokens: SearchTokens) -> str:
    criterion, where = p.criterion, context(p.type, p.criterion.param)
    if criterion.modifier == "sort":
        raise FhirError(
            Category.NOT_SUPPORTED,
            f"Sorting by '{criterion.param}' is not available: {p.type}.{criterion.param} is "
            "stored as keyed search tokens, which have no order (encryption at rest).",
            expression=("_sort",),
        )
    if criterion.kind == "string":
        assert isinstance(p.value, str)
        return _blind_string(c, p, where, p.value, tokens)
    if criterion.kind == "token":
        assert isinstance(p.value, Token)
        return _blind_token(c, p, where, p.value, tokens)
    assert criterion.kind == "text" and isinstance(p.value, str)
    if not p.value.split():
        return p.plain  # no words: every row, as in plain form
    alternatives = tokens.word_search(where, p.value)
    if not alternatives:
        return "1 = 0"
    # A row holds " <version>. t1 t2 … " (protection.py): a token has a space either side.
    return _all(
        _any(f"{p.alias}.value LIKE {c.bind(_like(f' {t} '))} ESCAPE '\\'" for t in found)
        for found in alternatives
    )


def _blind_string(c: Compiler, p: Protected, where: str, value: str, tokens: SearchTokens) -> str:
    a, param = p.alias, p.criterion.param
    if p.criterion.modifier == "contains":
        raise FhirError(
            Category.NOT_SUPPORTED,
            f"':contains' is not available for protected fields: {p.type}.{param} is stored as "
            "keyed word-prefix tokens (encryption at rest); search by the start of words.",
            expression=(f"{param}:contains",),
        )
    if p.criterion.modifier == "exact":
        return f"{a}.value IN ({_binds(c, tokens.equality_search(where, value))})"
    if not value:
        return p.plain
    try:
        query = tokens.prefix_search(where, value)
    except ValueError:  # no letter or digit: no word can start with it
        return "1 = 0"
    first, *others = query.words
    # Every word must start some word of the parameter's values: the first one on this row,
    # the others on any row of the same resource.
    parts = [f"{a}.value IN ({_binds(c, first)})"]
    for n, found in enumerate(others, 1):
        b = f"{a}w{n}"
        parts.append(
            f"{a}.res_id IN (SELECT {b}.res_id FROM ix_string {b} "  # nosec B608 # fixed names, bound values (module docstring)
            f"WHERE {b}.res_type = {c.bind(p.type)} AND {b}.param = {c.bind(param)} "
            f"AND {b}.value IN ({_binds(c, found)}))"
        )
    return _all(parts)


def _blind_token(c: Compiler, p: Protected, where: str, value: Token, tokens: SearchTokens) -> str:
    a, modifier = p.alias, p.criterion.modifier
    if modifier == "text":
        return p.plain  # the text column of these rows stays in clear (a type's text)
    if modifier == "of-type":
        assert value.value is not None
        return _all(
            [
                f"{a}.system = {c.bind(value.system)}",
                f"{a}.code = {c.bind(value.code)}",
                f"{a}.text IN ({_binds(c, tokens.equality_search(where, value.value))})",
            ]
        )
    parts = [
        f"{a}.code IN ({_binds(c, tokens.equality_search(where, value.code))})"
        if value.code is not None
        else f"{a}.code IS NOT NULL"
    ]
    if value.system_given:
        parts.append(
            f"{a}.system = {c.bind(value.system)}"
            if value.system is not None
            else f"{a}.system IS NULL"
        )
    return _all(parts)


def _binds(c: Compiler, values: Sequence[str]) -> str:
    return ", ".join(c.bind(v) for v in values)
