"""The replicated-load and search benchmarks (``python -m bench big|search``) at tiny scale.

Transactions: https://hl7.org/fhir/R4/http.html#transaction — searches:
https://hl7.org/fhir/R4/search.html. A real ``medikus serve`` on a real database; the figures are
not checked (they depend on the machine), only that every code path runs and reports.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import big, replicate, search
from bench.search import Catalogue, Query
from medikus.loader import SHARED_TYPES, read_bundle, synthea_bundles

BUNDLES = 2
COPIES = 2
ROUNDS = 3
BOGUS = "definitely-not-a-search-param"
# Unknown parameters are an error (the server is strict): this search must be reported as failed.
FAILING = Query(
    "bogus", lambda c: f"Patient?{BOGUS}=…", False, lambda c, r: ("Patient", [(BOGUS, "x")])
)


def _identifiers(bundle: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    return Counter(
        (e["resource"]["resourceType"], i.get("system", ""), i["value"])
        for e in bundle["entry"]
        for i in e["resource"].get("identifier", [])
    )


def test_copies_get_fresh_ids_and_identifiers_with_consistent_references() -> None:
    for path in synthea_bundles()[:BUNDLES]:
        original = read_bundle(path)
        tpl = replicate.template(path)
        copies = [orjson.loads(replicate.copy(tpl, n, seed=7)) for n in range(COPIES)]
        for bundle in copies:
            assert len(bundle["entry"]) == len(original["entry"]) == tpl.resources
            full_urls = {e["fullUrl"] for e in bundle["entry"]}
            references = re.findall(
                r'"reference":"(urn:uuid:[^"]+)"', orjson.dumps(bundle).decode()
            )
            assert references and set(references) <= full_urls
            assert [e["request"] for e in bundle["entry"] if "ifNoneExist" in e["request"]] == [
                e["request"] for e in original["entry"] if "ifNoneExist" in e["request"]
            ]
        own = [{k for k in _identifiers(b) if k[0] not in SHARED_TYPES} for b in copies]
        shared = [{k for k in _identifiers(b) if k[0] in SHARED_TYPES} for b in copies]
        assert own[0] and not own[0] & own[1] and not own[0] & set(_identifiers(original))
        assert shared[0] == shared[1] == {k for k in _identifiers(original) if k[0] in SHARED_TYPES}
        patients = [
            {e["fullUrl"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient"}
            for b in copies
        ]
        assert patients[0] and not patients[0] & patients[1]


def test_copies_are_deterministic_per_seed() -> None:
    tpl = replicate.template(synthea_bundles()[0])
    assert replicate.copy(tpl, 1, seed=3) == replicate.copy(tpl, 1, seed=3)
    assert replicate.copy(tpl, 1, seed=3) != replicate.copy(tpl, 1, seed=4)


def test_no_values_to_draw_is_reported_not_raised() -> None:
    empty = Catalogue((), search.HEART_RATE)
    with pytest.raises(search.NoValues):
        search.QUERIES[0].draw(empty, random.Random(0))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_search_command_loads_and_reports_every_search(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    if kind == "postgresql":
        request.getfixturevalue("pg_dsn")  # skips (or fails in CI) without PostgreSQL
    argv = ["--bundles", str(BUNDLES), "--scale", str(COPIES), "--db", kind]
    argv += ["--rounds", str(ROUNDS), "--levels", "1,2", "--seconds", "60"]
    argv += ["--stats-wait", "0", "--workers", "1", "--results", str(tmp_path)]
    code = big.main("search", argv, lambda _: None, queries=(*search.QUERIES, FAILING))

    assert code == 1  # the failing search
    [written] = tmp_path.glob("search-*.json")
    [result] = orjson.loads(written.read_bytes())["results"]
    expected = sum(len(read_bundle(p)["entry"]) for p in synthea_bundles()[:BUNDLES]) * COPIES
    ingest = result["ingest"]
    assert (ingest["resources"], ingest["bundles_failed"], ingest["complete"]) == (
        expected,
        0,
        True,
    )
    assert result["patients"] == BUNDLES * COPIES
    searches = {s["name"]: s for s in result["searches"]}
    assert list(searches) == [q.name for q in (*search.QUERIES, FAILING)]
    for found in searches.values():
        assert not found["no_values"]
        assert [lv["clients"] for lv in found["levels"]] == [1, 2]
        for level in found["levels"]:
            requests = ROUNDS * level["clients"]
            assert level["requests"] == requests and 0 <= level["errors"] <= requests
            if level["errors"]:
                assert re.fullmatch(r"HTTP \d{3}: .+", level["first_error"], re.DOTALL)
            else:
                assert level["matches"] is not None and level["p99_ms"] >= level["p50_ms"] > 0
        assert (found["index_use"] is not None) == (kind == "postgresql")
        if kind == "postgresql" and not any(lv["errors"] for lv in found["levels"]):
            assert "Execution Time:" in found["plan"], found["plan"]
    bogus = searches["bogus"]
    assert all(lv["errors"] == lv["requests"] == ROUNDS * lv["clients"] for lv in bogus["levels"])
    assert bogus["levels"][0]["first_error"].startswith("HTTP 400: ")
    assert BOGUS in bogus["levels"][0]["first_error"]
    printed = capsys.readouterr().out
    assert f"ingest   {kind}" in printed and f"search   {kind}" in printed
    assert all(name in printed for name in searches)
    assert f"FAILED {ROUNDS}/{ROUNDS} with 1 client(s): HTTP 400: " in printed
