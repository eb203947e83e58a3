"""All 80 Synthea bundles load as transactions, with every reference resolved (https://hl7.org/fhir/R4/http.html#trules).

References are enforced (the default): each ``urn:uuid`` between entries must become a literal
``Type/id`` of a stored resource, and the Organizations and Practitioners that every bundle repeats
(conditional creates, https://hl7.org/fhir/R4/http.html#ccreate) are stored once each. One load per
database (~40 s each); the checks read everything back through the FHIR API.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest, FhirResponse
from medikus.loader import SHARED_TYPES, read_bundle, synthea_bundles
from tests.conftest import _pg_schema_url

pytestmark = pytest.mark.slow

BASE = "http://testserver/fhir"
# Facts of the data set: 80 bundles of 24,790 entries (medikus/demo_data/NOTICE.md), among them
# 127 Organization + 127 Practitioner entries with 64 + 64 distinct first identifiers.
BUNDLES = 80
ENTRIES = 24_790
SHARED_ENTRIES = 254
DISTINCT_SHARED = 128
STORED = ENTRIES - SHARED_ENTRIES + DISTINCT_SHARED  # 24,664
LITERAL = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")


@dataclass(frozen=True)
class Loaded:
    """The record core after the load, and the status of every response entry."""

    record: RecordCore
    statuses: Counter[str]
    shared_keys: frozenset[tuple[str, str, str]]  # (type, system, value) of the shared resources
    entries: int
    shared_entries: int


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like ``database_url``, but kept for the module: the load is done once per database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('synthea') / 'synthea.sqlite3'}"
    else:
        yield from _pg_schema_url(request.getfixturevalue("pg_dsn"))


def handle(record: RecordCore, method: str, path: str, **fields: Any) -> FhirResponse:
    headers = {"content-type": "application/fhir+json", **fields.pop("headers", {})}
    return record.handle(FhirRequest(method, path, headers=headers, base=BASE, **fields))


def shared_key(resource: dict[str, Any]) -> tuple[str, str, str]:
    first = resource["identifier"][0]
    return resource["resourceType"], first.get("system", ""), first["value"]


@pytest.fixture(scope="module")
def loaded(module_database_url: str) -> Iterator[Loaded]:
    record = RecordCore.open(module_database_url)
    statuses: Counter[str] = Counter()
    shared: set[tuple[str, str, str]] = set()
    entries = shared_entries = 0
    paths = synthea_bundles()
    assert len(paths) == BUNDLES
    for path in paths:
        bundle = read_bundle(path)
        for entry in bundle["entry"]:
            entries += 1
            if entry["resource"]["resourceType"] in SHARED_TYPES:
                shared_entries += 1
                shared.add(shared_key(entry["resource"]))
        response = handle(
            record, "POST", "", body=orjson.dumps(bundle), headers={"prefer": "return=minimal"}
        )
        assert response.status == 200, (path.name, response.body[:1000])
        statuses.update(e["response"]["status"] for e in orjson.loads(response.body)["entry"])
    yield Loaded(record, statuses, frozenset(shared), entries, shared_entries)
    record.close()


def follow(record: RecordCore, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """The entries of a search or history bundle, page after page (next links)."""
    while True:
        response = handle(record, "GET", path, query=query)
        assert response.status == 200, response.body[:500]
        bundle = orjson.loads(response.body)
        yield from bundle.get("entry", [])
        next_links = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not next_links:
            return
        url = urlsplit(next_links[0])
        path = url.path.removeprefix("/fhir/")
        query = parse_qsl(url.query)


@pytest.fixture(scope="module")
def stored(loaded: Loaded) -> list[dict[str, Any]]:
    """Every version on the server, from the system history."""
    entries = follow(loaded.record, "_history", [("_count", "1000")])
    return [entry["resource"] for entry in entries]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def test_data_set_is_as_documented(loaded: Loaded) -> None:
    assert (loaded.entries, loaded.shared_entries) == (ENTRIES, SHARED_ENTRIES)
    assert len(loaded.shared_keys) == DISTINCT_SHARED


def test_every_entry_succeeds(loaded: Loaded) -> None:
    # One create per stored resource; a repeated shared resource answers 200 (If-None-Exist).
    assert loaded.statuses == {"201 Created": STORED, "200 OK": ENTRIES - STORED}


def test_every_resource_is_stored_once(loaded: Loaded, stored: list[dict[str, Any]]) -> None:
    assert len(stored) == STORED
    assert {r["meta"]["versionId"] for r in stored} == {"1"}
    assert len({(r["resourceType"], r["id"]) for r in stored}) == STORED
    per_type = Counter(r["resourceType"] for r in stored)
    for rtype, count in per_type.items():
        response = handle(loaded.record, "GET", rtype, query=[("_count", "0")])
        assert orjson.loads(response.body)["total"] == count, rtype


def test_every_reference_resolves(stored: list[dict[str, Any]]) -> None:
    keys = {(r["resourceType"], r["id"]) for r in stored}
    unresolved, checked = [], 0
    for resource in stored:
        contained = {c.get("id") for c in resource.get("contained", [])}
        for reference in references(resource):
            checked += 1
            if reference.startswith("#") and reference[1:] in contained:
                continue
            literal = LITERAL.match(reference)
            if literal is None or (literal["type"], literal["id"]) not in keys:
                unresolved.append(f"{resource['resourceType']}/{resource['id']}: {reference}")
    assert unresolved == []
    assert checked > 86_067  # every urn:uuid of the bundles was rewritten, not dropped


def test_shared_resources_are_deduplicated(loaded: Loaded, stored: list[dict[str, Any]]) -> None:
    shared = [r for r in stored if r["resourceType"] in SHARED_TYPES]
    keys = Counter(shared_key(r) for r in shared)
    assert len(shared) == DISTINCT_SHARED
    assert set(keys) == loaded.shared_keys
    assert max(keys.values()) == 1
