"""Differential test of FHIR search (https://hl7.org/fhir/R4/search.html) against a brute force.

Six Synthea patients (plus RiskAssessments derived from their Observations: Synthea has no
``number`` parameter) are loaded through the HTTP API and read back. Searches are generated at
random from the R4 SearchParameter definitions and from the values fhirpathpy finds in the
stored resources: tokens (``code``, ``system|code``, ``|code``, ``system|``, ``:not``), strings
(prefix, ``:exact``, ``:contains``), references (``Type/id``), dates, numbers and quantities with
every prefix, uris, ``:missing``, OR-ed values and AND-ed parameters, plus values that match
nothing. Each search's ids and ``total`` must equal what tests/fhir_server/search/oracle.py
decides over all resources (the semantics are documented there).

The seed is fixed in CI and random elsewhere; a failure names it (``ORACLE_SEED=<n>`` repeats a
run). A failure lists every difference, grouped by the feature that was searched, and every
"not supported" refusal, grouped by parameter type and modifier: all of them are required.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from fhir_server.protection import protected
from fhir_server.search.registry import SearchParamDef, SearchParamRegistry
from medikus.loader import read_bundle, synthea_bundles
from tests.conftest import IN_CI
from tests.fhir_server.search.oracle import (
    OPEN_HIGH,
    OPEN_LOW,
    Amount,
    Atom,
    Oracle,
    Span,
    Token,
    escape,
    normalize,
    written,
)

BUNDLES = ("patient-001", "patient-003", "patient-004", "patient-006", "patient-011", "patient-015")
SEARCHES = 400
SEED = int(os.environ.get("ORACLE_SEED") or (20_240_601 if IN_CI else random.randrange(1, 10**9)))
NO_SUCH_ID = "00000000-0000-7000-8000-000000000000"
_LITERAL = re.compile(r"^([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]+)?$")
_ZONES = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)))
_PREFIXES = ("", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_MAX_PAGES = 100


# -- loading --------------------------------------------------------------------------------


def post(client: TestClient, bundle: Mapping[str, Any] | bytes) -> list[str]:
    """POSTs a transaction; the stored resources' paths ``Type/id``."""
    body = bundle if isinstance(bundle, bytes) else orjson.dumps(bundle)
    response = client.post("/fhir", content=body, headers={"content-type": "application/fhir+json"})
    assert response.status_code == 200, response.text[:500]
    paths = []
    for entry in response.json()["entry"]:
        location = entry["response"]["location"].split("/_history/")[0]
        paths.append("/".join(location.split("/")[-2:]))
    return paths


def read_all(client: TestClient, paths: Sequence[str]) -> list[dict[str, Any]]:
    """The stored JSON; decimals as Decimal, so their precision is the written one."""
    resources = []
    for path in dict.fromkeys(paths):  # shared Organizations come back more than once
        response = client.get(f"/fhir/{path}")
        assert response.status_code == 200, response.text[:500]
        resources.append(json.loads(response.content, parse_float=Decimal))
    return resources


def risk_assessments(observations: Sequence[Mapping[str, Any]]) -> bytes:
    """RiskAssessments (``probability`` is a number parameter) made from Observation values.

    Probabilities get 0 to 3 decimals, trailing zeros included, so precision ranges matter;
    every third one has a second prediction. Decimals are spliced into the JSON text as written.
    """
    entries: list[dict[str, Any]] = []
    decimals: list[str] = []
    for i, observation in enumerate(observations):
        value = observation["valueQuantity"]["value"]
        places = i % 4
        probability = (Decimal(value) % 1).quantize(Decimal(1).scaleb(-places))
        predictions = [f"@{len(decimals)}@"]
        decimals.append(str(probability))
        if i % 3 == 0:
            predictions.append(f"@{len(decimals)}@")
            decimals.append(str((1 - probability).quantize(Decimal(1).scaleb(-places))))
        resource = {
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": observation["subject"],
            "encounter": observation["encounter"],
            "occurrenceDateTime": observation["effectiveDateTime"],
            "prediction": [{"probabilityDecimal": p} for p in predictions],
        }
        entries.append(
            {"resource": resource, "request": {"method": "POST", "url": "RiskAssessment"}}
        )
    text = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return re.sub(rb'"@(\d+)@"', lambda m: decimals[int(m[1])].encode(), text)


def load(client: TestClient) -> list[dict[str, Any]]:
    paths: list[str] = []
    for bundle_path in synthea_bundles():
        if bundle_path.name.split(".")[0] in BUNDLES:
            paths += post(client, read_bundle(bundle_path))
    resources = read_all(client, paths)
    with_values = [
        r for r in resources if r["resourceType"] == "Observation" and "valueQuantity" in r
    ]
    extra = post(client, risk_assessments(with_values[::12]))
    return resources + read_all(client, extra)


# -- generation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    key: str
    value: str
    label: str  # the feature searched, for grouping differences


@dataclass(frozen=True)
class Search:
    resource_type: str
    criteria: tuple[Criterion, ...]
    count: int = 1000  # page size; smaller ones make the test follow next links

    def query(self) -> list[tuple[str, str]]:
        return [(c.key, c.value) for c in self.criteria]

    def text(self) -> str:
        paging = f"&_count={self.count}" if self.count != 1000 else ""
        query = "&".join(f"{c.key}={c.value}" for c in self.criteria)
        return f"{self.resource_type}?{query}{paging}"

    def label(self) -> str:
        return " & ".join(c.label for c in self.criteria)


class Generator:
    """Random searches whose values come from the stored resources (and some that match none)."""

    def __init__(self, oracle: Oracle, rng: random.Random) -> None:
        self.oracle = oracle
        self.rng = rng
        self.with_values: list[tuple[str, SearchParamDef]] = []
        self.without_values: list[tuple[str, SearchParamDef]] = []
        for rtype in sorted(oracle.by_type):
            for param in oracle.params(rtype):
                values = oracle.values(rtype, param.code)
                assert values is not None
                has = any(values.values())
                (self.with_values if has else self.without_values).append((rtype, param))

    def search(self) -> Search:
        rng = self.rng
        rtype, param = self.pick(self.with_values if rng.random() < 0.85 else self.without_values)
        criteria = [self.criterion(rtype, param)]
        roll = rng.random()
        if roll < 0.06 and param.type == "date" and self.atoms(rtype, param):
            criteria = [self.date_criterion(rtype, param, p) for p in ("ge", "le")]
        elif roll < 0.25:
            _, other = self.pick([(t, p) for t, p in self.with_values if t == rtype])
            criteria.append(self.criterion(rtype, other))
        return Search(rtype, tuple(criteria), 1000 if rng.random() < 0.85 else 40)

    def pick(self, pool: list[tuple[str, SearchParamDef]]) -> tuple[str, SearchParamDef]:
        # Every type has _id, _tag and _lastUpdated: less of them. Few parameters are numbers
        # or quantities, and their prefixes have the most cases: more of them.
        weights = [
            0.3 if param.code.startswith("_") else 3 if param.type in ("number", "quantity") else 1
            for _, param in pool
        ]
        return self.rng.choices(pool, weights)[0]

    def atoms(self, rtype: str, param: SearchParamDef) -> list[Atom]:
        values = self.oracle.values(rtype, param.code)
        assert values is not None
        return [a for found in values.values() for a in found]

    def atom(self, rtype: str, param: SearchParamDef, keep: Callable[[Atom], bool]) -> Atom | None:
        """A value of a random resource that has one (so frequent values are not favoured)."""
        values = self.oracle.values(rtype, param.code)
        assert values is not None
        holders = [found for found in values.values() if any(map(keep, found))]
        if not holders:
            return None
        return self.rng.choice([a for a in self.rng.choice(holders) if keep(a)])

    def criterion(self, rtype: str, param: SearchParamDef) -> Criterion:
        rng = self.rng
        if rng.random() < (0.08 if self.atoms(rtype, param) else 0.5):
            return Criterion(
                f"{param.code}:missing", rng.choice(("true", "false")), f"{param.type} :missing"
            )
        make: Callable[[str, SearchParamDef], tuple[str, str, str | None] | None] = getattr(
            self, f"_{param.type}"
        )
        first = make(rtype, param)
        if first is None:  # nothing to draw from: a value that matches nothing
            return self.no_match(param)
        value, label, modifier = first
        key = f"{param.code}:{modifier}" if modifier else param.code
        if modifier != "not" and rng.random() < 0.2:
            more = [make(rtype, param) for _ in range(rng.randint(1, 2))]
            extra = [m[0] for m in more if m is not None and m[2] == modifier]
            if rng.random() < 0.3:
                extra.append(self.no_match(param).value)
            values = list(dict.fromkeys([value, *extra]))
            if len(values) > 1:
                return Criterion(key, ",".join(values), f"{label} OR")
        return Criterion(key, value, label)

    def no_match(self, param: SearchParamDef) -> Criterion:
        kind = param.type
        value = {
            "token": "http://example.org/nothing|no-such-code",
            "string": "Zzyzx Qwv",
            "reference": f"{(param.target or ('Patient',))[0]}/{NO_SUCH_ID}",
            "date": "eq1700-01-01",
            "number": "eq123456789.5",
            "quantity": "eq123456789.5||no-such-unit",
            "uri": "http://example.org/no-such-uri",
        }[kind]
        return Criterion(param.code, value, f"{kind} (no match)")

    # One function per parameter type: (search value, label, modifier) or None.

    def _token(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        rng = self.rng
        found = self.atom(rtype, param, lambda a: isinstance(a, Token))
        if not isinstance(found, Token):
            return None
        forms: list[tuple[str, float]] = []
        if found.code is not None:
            forms += [("code", 4), ("|code", 0.6)]
        if found.system is not None and found.code is not None:
            forms.append(("system|code", 4))
        if found.system is not None:
            forms.append(("system|", 1))
        form = rng.choices([f for f, _ in forms], [w for _, w in forms])[0]
        system, code = escape(found.system or ""), escape(found.code or "")
        value = {"code": code, "|code": f"|{code}", "system|code": f"{system}|{code}"}.get(
            form, f"{system}|"
        )
        modifier = "not" if rng.random() < 0.15 else None
        return value, f"token {':not ' if modifier else ''}{form}", modifier

    def _string(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        rng = self.rng
        found = self.atom(rtype, param, lambda a: isinstance(a, str) and bool(a.strip()))
        if not isinstance(found, str):
            return None
        if protected(rtype, param.code, "string"):
            # Keyed word-prefix tokens (fhir_server/protection.py): no ':contains'; a plain
            # search may start at any word.
            modifier = rng.choices([None, "exact"], [5, 2])[0]
            starts = [0, *(m.start() for m in re.finditer(r"(?<=\W)\w", found))]
        else:
            modifier = rng.choices([None, "exact", "contains"], [5, 2, 2])[0]
            starts = [0]
        if modifier == "exact":
            text = found if rng.random() < 0.85 else found.swapcase()
        else:
            start = rng.choice(starts) if modifier is None else rng.randrange(len(found))
            end = rng.randint(start + 1, len(found))
            text = self.vary(found[start:end]).strip() or found
        return escape(text), f"string{' :' + modifier if modifier else ''}", modifier

    def vary(self, text: str) -> str:
        """Another spelling the search must ignore: case, accents."""
        change = self.rng.choice(("same", "upper", "lower", "normal", "accents"))
        if change == "accents":
            return text.translate(str.maketrans("aeiouAEIOU", "áéíóúÀÉÎÖÜ"))
        return {"upper": text.upper(), "lower": text.lower(), "normal": normalize(text)}.get(
            change, text
        )

    def _reference(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        found = self.atom(rtype, param, lambda a: isinstance(a, str) and bool(_LITERAL.match(a)))
        if not isinstance(found, str):
            return None
        match = _LITERAL.match(found)
        assert match is not None
        return match[1], "reference Type/id", None

    def _uri(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        found = self.atom(rtype, param, lambda a: isinstance(a, str))
        return None if not isinstance(found, str) else (escape(found), "uri", None)

    def _date(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        prefix = self.rng.choice(_PREFIXES) if self.rng.random() > 0.03 else "ap"
        made = self.date_value(rtype, param, prefix)
        return None if made is None else (*made, None)

    def date_criterion(self, rtype: str, param: SearchParamDef, prefix: str) -> Criterion:
        made = self.date_value(rtype, param, prefix)
        assert made is not None
        return Criterion(param.code, *made)

    def date_value(self, rtype: str, param: SearchParamDef, prefix: str) -> tuple[str, str] | None:
        rng = self.rng
        found = self.atom(rtype, param, lambda a: isinstance(a, Span))
        if not isinstance(found, Span):
            return None
        ends = [end for end in (found.low, found.high) if OPEN_LOW < end < OPEN_HIGH]
        nanos = rng.choice(ends)
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)
        precision = rng.choices(["year", "month", "day", "second"], [2, 2, 4, 3])[0]
        if rng.random() < 0.2:
            moment = shift(moment, precision, rng.choice((-1, 1)))
        if precision == "second":
            local = moment.astimezone(rng.choice(_ZONES))
            text = local.strftime("%Y-%m-%dT%H:%M:%S") + (
                local.strftime("%z") if local.utcoffset() else "Z"
            )
            text = text[:-2] + ":" + text[-2:] if local.utcoffset() else text
        else:
            text = moment.strftime({"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d"}[precision])
        return prefix + text, f"date {prefix or '(eq)'} @{precision}"

    def _number(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        found = self.atom(rtype, param, lambda a: isinstance(a, Span))
        if not isinstance(found, Span):
            return None
        prefix, number = self.number_text(found)
        return prefix + number, f"number {prefix or '(eq)'}", None

    def number_text(self, span: Span) -> tuple[str, str]:
        rng = self.rng
        value = written(span)
        places = rng.choice((None, 0, 1, 2))
        if places is not None:
            value = value.quantize(Decimal(1).scaleb(-places))
            if rng.random() < 0.2:
                value += rng.choice((-1, 1)) * Decimal(1).scaleb(-places)
        return rng.choice(_PREFIXES), f"{value:f}"

    def _quantity(self, rtype: str, param: SearchParamDef) -> tuple[str, str, str | None] | None:
        rng = self.rng
        found = self.atom(rtype, param, lambda a: isinstance(a, Amount))
        if not isinstance(found, Amount):
            return None
        prefix, number = self.number_text(found.span)
        forms = ["number"]
        if found.system and found.code:
            forms += ["|system|code"] * 3
        if found.code or found.unit:
            forms += ["||code"] * 2
        form = rng.choice(forms)
        if form == "|system|code":
            number += f"|{escape(found.system or '')}|{escape(found.code or '')}"
        elif form == "||code":
            unit = rng.choice([u for u in (found.code, found.unit) if u])
            number += f"||{escape(unit)}"
        return prefix + number, f"quantity {prefix or '(eq)'} {form}", None


def shift(moment: datetime, precision: str, step: int) -> datetime:
    if precision == "year":
        return moment.replace(year=moment.year + step, month=1, day=1)
    if precision == "month":
        months = moment.year * 12 + moment.month - 1 + step
        return moment.replace(year=months // 12, month=months % 12 + 1, day=1)
    return moment + (timedelta(days=step) if precision == "day" else timedelta(seconds=step))


# -- running and comparing ------------------------------------------------------------------


@dataclass
class Outcome:
    ids: list[str] = field(default_factory=list)
    total: int | None = None
    status: int = 200
    issue: Mapping[str, Any] = field(default_factory=dict)
    total_refused: bool = False


def execute(client: TestClient, search: Search) -> Outcome:
    params = [*search.query(), ("_count", str(search.count)), ("_total", "accurate")]
    response = client.get(f"/fhir/{search.resource_type}", params=params)
    outcome = Outcome()
    if response.status_code == 400 and "_total" in refused(first_issue(response)):
        # _total is required too, but must not hide what the criteria do.
        outcome.total_refused = True
        response = client.get(f"/fhir/{search.resource_type}", params=params[:-1])
    for _page in range(_MAX_PAGES):
        if response.status_code != 200:
            outcome.status = response.status_code
            outcome.issue = first_issue(response)
            return outcome
        page = response.json()
        if outcome.total is None:
            outcome.total = page.get("total")
        outcome.ids += [e["resource"]["id"] for e in page.get("entry", [])]
        following = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not following:
            return outcome
        response = client.get(following[0])
    outcome.status = 0
    outcome.issue = {"diagnostics": f"still a next link after {_MAX_PAGES} pages"}
    return outcome


def first_issue(response: Any) -> Mapping[str, Any]:
    try:
        issues = response.json().get("issue") or [{}]
    except ValueError:  # not JSON: a crash page
        return {"diagnostics": response.text[:200]}
    return dict(issues[0])


def refused(issue: Mapping[str, Any]) -> list[str]:
    """What a not-supported issue names."""
    if issue.get("code") != "not-supported":
        return []
    return list(issue.get("expression") or [issue.get("diagnostics", "?")])


def describe(atom: Atom) -> str:
    if isinstance(atom, Token):
        return f"{atom.system or ''}|{atom.code or ''}" if atom.system else f"{atom.code}"
    if isinstance(atom, Amount):
        return f"{written(atom.span):f} {atom.system or ''}|{atom.code} ({atom.unit})"
    if isinstance(atom, Span):
        if isinstance(atom.low, Decimal):
            return f"{written(atom):f}"
        return f"{instant(atom.low)}..{instant(atom.high)}"
    return repr(atom)


def instant(nanos: int) -> str:
    if not OPEN_LOW < nanos < OPEN_HIGH:
        return "open"
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Report:
    database: str
    searches: int = 0
    agreed: int = 0
    refusals: int = 0
    differences: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unsupported: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)

    def compare(self, oracle: Oracle, search: Search, outcome: Outcome) -> None:
        self.searches += 1
        if outcome.total_refused:
            self.unsupported["result parameter _total"].append(search.text())
        if outcome.status != 200:
            self.refusal(oracle.registry, search, outcome)
            return
        expected = oracle.search(search.resource_type, search.query())
        got = set(outcome.ids)
        problems = []
        if len(got) != len(outcome.ids):
            problems.append(f"duplicates {len(outcome.ids) - len(got)}")
        if outcome.total != len(expected) and not outcome.total_refused:
            problems.append(f"total {outcome.total} (expected {len(expected)})")
        if got == expected and not problems:
            self.agreed += 1
            return
        line = f"{search.text()}\n      {len(expected)} expected, {len(got)} got"
        for name, ids in (("expected-only", expected - got), ("got-only", got - expected)):
            if ids:
                shown = sorted(ids)[:3]
                line += f"; {name} {len(ids)}: {' '.join(shown)}"
                line += f" [{self.values(oracle, search, shown[0])}]"
        self.differences[search.label()].append(line + "".join(f"; {p}" for p in problems))

    @staticmethod
    def values(oracle: Oracle, search: Search, rid: str) -> str:
        parts = []
        for code in dict.fromkeys(c.key.split(":")[0] for c in search.criteria):
            values = oracle.values(search.resource_type, code) or {}
            shown = ", ".join(describe(a) for a in values.get(rid, ())[:4]) or "no value"
            parts.append(f"{code}: {shown}"[:160])
        return "; ".join(parts)

    def refusal(self, registry: SearchParamRegistry, search: Search, outcome: Outcome) -> None:
        issue = outcome.issue
        if outcome.status == 400 and refused(issue):
            self.refusals += 1
            params = registry.params_for(search.resource_type)
            for named in refused(issue):
                code, _, modifier = str(named).partition(":")
                kind = params[code].type if code in params else f"parameter {code}"
                group = f"{kind}{':' + modifier if modifier else ''}"
                self.unsupported[group].append(f"{search.text()}  ({issue.get('diagnostics')})")
            return
        diagnostics = str(issue.get("diagnostics", ""))[:200]
        self.errors.append(f"{outcome.status} {search.text()}  ({diagnostics})")

    def failed(self) -> bool:
        return bool(self.differences or self.unsupported or self.errors)

    def render(self, oracle: Oracle) -> str:
        lines = [
            f"Search oracle on {self.database}, seed {SEED} (ORACLE_SEED={SEED} repeats it): "
            f"{self.searches} searches over {sum(map(len, oracle.by_type.values()))} resources; "
            f"{self.agreed} agree, {sum(map(len, self.differences.values()))} differ, "
            f"{self.refusals} refused as not supported, "
            f"{len(self.errors)} failed otherwise."
        ]
        if self.unsupported:
            lines.append("NOT SUPPORTED (400 not-supported), by parameter type:modifier:")
            for group, queries in sorted(self.unsupported.items(), key=lambda g: -len(g[1])):
                lines.append(f"  {group}: {len(queries)} searches, e.g. {queries[0]}")
        if self.errors:
            lines.append("OTHER ERRORS:")
            lines += [f"  {error}" for error in self.errors[:30]]
        if self.differences:
            lines.append("DIFFERENCES, by feature searched:")
            for label, items in sorted(self.differences.items()):
                lines.append(f"  [{label}] {len(items)}:")
                lines += [f"    {item}" for item in items[:8]]
                if len(items) > 8:
                    lines.append(f"    ... and {len(items) - 8} more")
        return "\n".join(lines)


def test_search_matches_brute_force(client: TestClient, database_url: str) -> None:
    resources = load(client)
    oracle = Oracle(resources, SearchParamRegistry.load())
    generator = Generator(oracle, random.Random(SEED))
    # The oracle must cover what the searches need (a guard against a silently narrow test).
    assert len(generator.with_values) > 150, oracle.unevaluable
    report = Report(database_url.split(":")[0])
    for _ in range(SEARCHES):
        search = generator.search()
        report.compare(oracle, search, execute(client, search))
    if report.failed():
        pytest.fail(report.render(oracle), pytrace=False)


# -- the oracle itself, on examples worked out from the spec text -----------------------------

UCUM = "http://unitsofmeasure.org"
EXAMPLES: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "name": [{"family": "Müller", "given": ["Evelyn"]}],
        "gender": "female",
        "birthDate": "1980-05-04",
        "identifier": [{"system": "http://acme.org/patient", "value": "2345"}, {"value": "a,b"}],
        "telecom": [{"system": "phone", "value": "555-1"}],
        "address": [{"line": ["1 Main St"], "city": "Kusel"}],
    },
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Eve", "given": ["Séverine"]}],
     "gender": "male"},
    {"resourceType": "Patient", "id": "p3", "name": [{"given": ["Zoë"]}], "birthDate": "1980"},
    {"resourceType": "Encounter", "id": "e1", "period": {"start": "2013-01-21", "end": "2013-03-15"}},
    {"resourceType": "Encounter", "id": "e2", "period": {"start": "2013-01-21"}},
    {"resourceType": "Encounter", "id": "e3",
     "period": {"start": "2013-01-14T10:00:00Z", "end": "2013-01-14T12:00:00+01:00"}},
    {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
     "valueQuantity": {"value": Decimal("5.4"), "unit": "mg", "system": UCUM, "code": "mg"}},
    {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p1/_history/2"},
     "valueQuantity": {"value": Decimal("5.40"), "unit": "milligram", "system": UCUM, "code": "mg"}},
    {"resourceType": "Observation", "id": "o3", "subject": {"display": "someone"},
     "valueQuantity": {"value": 100, "unit": "mg"}},
    {"resourceType": "Observation", "id": "o4",
     "subject": {"reference": "http://other.org/fhir/Patient/p1"}, "valueString": "high"},
    {"resourceType": "RiskAssessment", "id": "r1", "prediction": [
        {"probabilityDecimal": Decimal("0.5")}, {"probabilityDecimal": Decimal("0.25")}]},
    {"resourceType": "RiskAssessment", "id": "r2", "prediction": [{"probabilityDecimal": 1}]},
]  # fmt: skip


@pytest.mark.parametrize(
    ("resource_type", "query", "expected"),
    [
        ("Patient", "given=eve", "p1"),
        ("Patient", "family=eve", "p2"),
        ("Patient", "given:contains=EVE", "p1 p2"),
        ("Patient", "given:exact=Evelyn", "p1"),
        ("Patient", "given:exact=evelyn", ""),
        ("Patient", "given=zoe", "p3"),
        ("Patient", "name=MÜL", "p1"),
        ("Patient", "address=kus", "p1"),
        ("Patient", "address=1 main", "p1"),
        ("Patient", "gender=male,female", "p1 p2"),
        ("Patient", "gender:not=male", "p1 p3"),
        ("Patient", "gender:missing=true", "p3"),
        ("Patient", "gender:missing=false", "p1 p2"),
        ("Patient", "identifier=http://acme.org/patient|2345", "p1"),
        ("Patient", "identifier=2345", "p1"),
        ("Patient", "identifier=|2345", ""),
        ("Patient", "identifier=http://acme.org/patient|", "p1"),
        ("Patient", "identifier=a\\,b", "p1"),
        ("Patient", "phone=555-1", "p1"),
        ("Patient", "phone=phone|555-1", ""),
        ("Patient", "active=true", "p1"),
        ("Patient", "birthdate=1980", "p1 p3"),
        ("Patient", "birthdate=1980-05", "p1"),
        ("Patient", "birthdate=ne1980-05", "p3"),
        ("Patient", "birthdate=gt1980-05", "p3"),
        ("Patient", "birthdate=lt1980-05-05", "p1 p3"),
        ("Patient", "birthdate=ge1980-05-04T12:00:00Z", "p1 p3"),
        ("Patient", "birthdate=sa1979", "p1 p3"),
        ("Patient", "birthdate=eb1980-06", "p1"),
        ("Encounter", "date=ge2013-03-14", "e1 e2"),
        ("Encounter", "date=le2013-03-14", "e1 e2 e3"),
        ("Encounter", "date=eq2013-01-14", "e3"),
        ("Encounter", "date=lt2013-01-14T10:00:00Z", ""),
        ("Encounter", "date=lt2013-01-14T10:30:00Z", "e3"),
        ("Encounter", "date=gt2013-03-15", "e2"),
        ("Encounter", "date=sa2013-01-14", "e1 e2"),
        ("Encounter", "date=eb2013-01-21", "e3"),
        ("Encounter", "date=ap2013-02", "e1 e2"),
        ("Encounter", "date=eq2013-01-14T10:00:00Z", ""),
        ("Encounter", "date=2013-01-14T11:00:00%2B01:00,2013-01-14T10:00:00Z", ""),
        ("Encounter", "date=ge2013-01-14T10:00:00Z&date=le2013-01-14T10:00:00Z", "e3"),
        ("Observation", f"value-quantity=5.4|{UCUM}|mg", "o1 o2"),
        ("Observation", f"value-quantity=5.40|{UCUM}|mg", "o1 o2"),
        ("Observation", "value-quantity=5.4||mg", "o1 o2"),
        ("Observation", "value-quantity=100||mg", "o3"),
        ("Observation", f"value-quantity=100|{UCUM}|mg", ""),
        ("Observation", "value-quantity=gt5.4", "o3"),
        ("Observation", "value-quantity=lt6", "o1 o2"),
        ("Observation", "value-quantity=sa5.4", "o3"),
        ("Observation", "value-quantity=eb100", "o1 o2"),
        ("Observation", "value-quantity=ne5.4", "o3"),
        ("Observation", "value-quantity:missing=true", "o4"),
        ("Observation", "subject=Patient/p1", "o1 o2"),
        ("Observation", "patient=Patient/p1", "o1 o2"),
        ("Observation", "subject:missing=true", "o3"),
        ("Observation", "value-string=HI", "o4"),
        ("RiskAssessment", "probability=0.5", "r1"),
        ("RiskAssessment", "probability=0.25", "r1"),
        ("RiskAssessment", "probability=1", "r1 r2"),  # [0.5, 1.5) holds 0.5
        ("RiskAssessment", "probability=1.0", "r2"),
        ("RiskAssessment", "probability=gt0.9", "r2"),
        ("RiskAssessment", "probability=ne0.5", "r1 r2"),
    ],
)
def test_oracle_decides_the_spec_examples(resource_type: str, query: str, expected: str) -> None:
    oracle = Oracle(EXAMPLES, SearchParamRegistry.load())
    criteria = [tuple(part.split("=", 1)) for part in query.split("&")]
    decoded = [(key, value.replace("%2B", "+")) for key, value in criteria]
    assert oracle.search(resource_type, decoded) == set(expected.split())


def test_stored_decimals_keep_their_precision(client: TestClient) -> None:
    """The oracle reads precision from the stored JSON; it must be the precision written."""
    body = (
        b'{"resourceType":"RiskAssessment","status":"final","subject":{"display":"x"},'
        b'"prediction":[{"probabilityDecimal":0.70}]}'
    )
    headers = {"content-type": "application/fhir+json"}
    created = client.post("/fhir/RiskAssessment", content=body, headers=headers)
    assert created.status_code == 201, created.text
    stored = client.get(f"/fhir/RiskAssessment/{created.json()['id']}")
    assert b'"probabilityDecimal":0.70' in stored.content
