"""The with/without benchmark of authorisation, audit and encryption (``python -m bench compliance``)
at tiny scale: the plain server really lacks all three, and every workload runs and reports.

FHIR RESTful API: https://hl7.org/fhir/R4/http.html. The figures are not checked (they depend on
the machine), only that both sides did the same work without errors.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import orjson
import pytest

from bench import compliance, replicate
from bench.compliance import Options, PlainServer, Row
from medikus.loader import read_bundle, synthea_bundles

BUNDLES = 2
FAMILY = "Klartextmann"


def test_differences_are_percent_slower_for_ingest_and_added_ms_for_latency() -> None:
    assert Row("ingest rate", 1000.0, 800.0, "res/s").difference == pytest.approx(25.0)
    assert Row("ingest server CPU", 4.0, 5.0, "s").difference == pytest.approx(25.0)
    assert Row("read p50", 1.5, 2.25, "ms").difference == pytest.approx(0.75)
    printed = compliance.table(
        [
            compliance.Comparison(
                "sqlite",
                1,
                10,
                (Row("ingest rate", 1000.0, 700.0, "res/s"), Row("read p50", 1.0, 3.5, "ms")),
                0.0,
            )
        ]
    )
    assert "+42.9 %  MISSED" in printed and "+2.50 ms  MISSED" in printed


def test_the_plain_server_has_no_token_check_no_encryption_and_no_audit(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite3"
    patient = {"resourceType": "Patient", "name": [{"family": FAMILY}]}
    with PlainServer(f"sqlite:///{path}", workers=1) as server:
        created = httpx.post(
            f"{server.base}/fhir/Patient",
            content=orjson.dumps(patient),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert created.status_code == 201, created.text  # no bearer token sent
        found = httpx.get(f"{server.base}/fhir/Patient", params={"name:contains": FAMILY[2:6]})
        # :contains is refused on blind-index tokens: here the names are stored in clear.
        assert found.status_code == 200 and found.json()["total"] == 1, found.text
    with sqlite3.connect(path) as conn:
        contents = [bytes(row[0]) for row in conn.execute("SELECT content FROM resource_version")]
        assert any(FAMILY.encode() in content for content in contents)
        for table in ("audit_pending", "audit_log"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_both_sides_do_the_same_work_and_every_workload_reports(
    kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "postgresql":
        request.getfixturevalue("pg_dsn")  # skips (or fails in CI) without PostgreSQL
    paths = synthea_bundles()[:BUNDLES]
    templates = [replicate.template(p) for p in paths]
    options = Options(bundles=BUNDLES, chunks=2, clients=1, workers=1, reads=20, searches=5)
    result = compliance.run(kind, templates, options, lambda _: None)

    assert result.resources == sum(len(read_bundle(p)["entry"]) for p in paths)
    assert not result.failed, result.rows
    assert result.catch_up_s >= 0
    names = ["read", *compliance.SEARCHES]
    expected = ["ingest rate", "ingest server CPU", "ingest + audit chaining"]
    expected += [f"{name} p{q}" for name in names for q in (50, 99)]
    assert [row.workload for row in result.rows] == expected
    for row in result.rows:
        assert row.without > 0 and row.with_ > 0, row
    for name in names:
        p50, p99 = result.row(f"{name} p50"), result.row(f"{name} p99")
        assert p99.without >= p50.without and p99.with_ >= p50.with_
    printed = compliance.table([result])
    assert all(name in printed for name in expected)
