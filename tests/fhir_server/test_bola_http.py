"""BOLA matrix over HTTP: callers × interactions × resource types against the whole app with real
tokens, on SQLite and PostgreSQL (https://owasp.org/API-Security/editions/2023/en/0xa1-broken-object-level-authorization/).

Every cell sends one request aimed at patient B's data and checks:
- the exact status (``expected``: REACH says what each caller may do on each type, ROWS what
  each interaction answers for that);
- that no id, name or value of B reaches a caller not entitled to it (raw bytes, page cursors
  decoded; what the caller sent itself does not count);
- that a caller entitled to the data gets it (and counts: ``_total``/``_summary=count``);
- that an answer for B's data is byte-identical to the answer for a truly missing id (the
  "twin": the same request with every id of B replaced by one nobody has);
- that 401 carries the RFC 6750 challenge, that refused writes changed nothing, and (in the last
  test) that each refusal left a failure AuditEvent.

The world (bola_support.World) is built once per database: see its docstrings for who is who.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from fastapi import WebSocketDisconnect

from compliance.keyring import Keyring
from tests.fhir_server.bola_support import (
    BRIDGES,
    FHIR_BASE,
    IDENTIFIER_SYSTEM,
    TYPES,
    Req,
    World,
    backend_token,
    cursors,
    exposed,
    fake_id,
    open_world,
    pg_schema,
    receiver,
)

# --- who may do what ------------------------------------------------------------------------------
#
# Per caller and type, three letters: read/search, update (and create), delete of B's resources.
#   A  every resource of the type is within reach (B's among them)
#   B  B's resources of the type are within reach
#   o  the interaction is allowed on the type, B's resources are not within reach
#   -  the interaction is not allowed on the type at all (403)
#   x  no valid token (401)
# patientB: their own record (patient/ scopes, own compartment; Consents they may write).
# doctorRel: B's general practitioner (a personal relation); doctorA: her colleague in MVZ A,
# related to A only; doctorB: another MVZ, no relation. careStaff: the pilot centre, in A's care
# team; reads every Patient (registration at the pilot centre). backend: a station's client
# with system/Observation.rs?category=laboratory (B has vital signs only).
REACH_TABLE = """
            Patient Observation Condition MedicationRequest Encounter DocumentReference Consent AuditEvent
patientA    o--     o--         o--       o--               o--       o--               oo-     o--
patientB    B--     B--         B--       B--               B--       B--               BB-     B--
doctorA     ooo     ooo         ooo       ooo               ooo       ooo               ooo     ---
doctorRel   BBB     BBB         BBB       BBB               BBB       BBB               BBB     ---
doctorB     ooo     ooo         ooo       ooo               ooo       ooo               ooo     ---
careStaff   Ao-     oo-         oo-       oo-               oo-       oo-               oo-     ---
backend     ---     o--         ---       ---               ---       ---               ---     ---
expired     xxx     xxx         xxx       xxx               xxx       xxx               xxx     xxx
wrongAud    xxx     xxx         xxx       xxx               xxx       xxx               xxx     xxx
noToken     xxx     xxx         xxx       xxx               xxx       xxx               xxx     xxx
"""


def _reach(table: str) -> dict[str, dict[str, dict[str, str]]]:
    header, *lines = [line.split() for line in table.strip().splitlines()]
    assert tuple(header) == TYPES
    return {
        actor: {
            t: dict(zip("RUD", cell, strict=True)) for t, cell in zip(header, cells, strict=True)
        }
        for actor, *cells in lines
    }


REACH = _reach(REACH_TABLE)
ACTORS = tuple(REACH)
ANONYMOUS = ("expired", "wrongAud", "noToken")
_WORST_FIRST = "x-oBA"

# --- what each interaction answers ----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a row's request names: B's ids (or, for the twin, ids nobody has)."""

    type: str
    ids: Mapping[str, str]
    content: Callable[[], dict[str, Any]]  # B's current resource of ``type``, id = ids[type]

    @property
    def id(self) -> str:
        return self.ids[self.type]

    @property
    def patient(self) -> str:
        return self.ids["Patient"]

    def owner(self) -> tuple[str, str]:
        """The search parameter naming B's resources of the type."""
        if self.type == "Patient":
            return ("_id", self.patient)
        return ("patient", f"Patient/{self.patient}")

    def body(self, with_id: bool = True) -> bytes:
        resource = self.content()
        if not with_id:
            resource.pop("id")
        return orjson.dumps(resource)


@dataclass(frozen=True)
class Row:
    """One interaction. ``expect`` maps the letter of ``on`` (the worst of them; with ``pair``
    both letters) to the status; a letter missing from it means the cell is not run (deleting
    B's data for real). ``shows``: an entitled caller must find the target in the answer
    ("pinned": also for AuditEvent, whose pages hold many events); ``counts``: ``total`` is
    ≥ 1 for an entitled caller and 0 otherwise; ``writes``: a refused request must leave B's
    resource as it was; ``noted``: a 404 is an access refusal (audit outcome 8)."""

    name: str
    build: Callable[[Target], Req]
    expect: Mapping[str, int]
    on: tuple[str, ...] = ("T.R",)
    types: tuple[str, ...] = TYPES
    pair: bool = False
    shows: str | None = None
    counts: bool = False
    writes: bool = False
    noted: bool = True
    only: Mapping[str, int] | None = None  # status by caller, regardless of REACH


READ = {"B": 200, "o": 404, "-": 403}
SEARCH = {"B": 200, "o": 200, "-": 403}
REFUSED = {"B": 403, "o": 403, "-": 403}
WRITE = {"B": 200, "o": 404, "-": 403}
DELETE = {"o": 404, "-": 403}
COND_UPDATE = {"BB": 200, "Bo": 404, "B-": 403, "oo": 403, "o-": 403, "--": 403}
COND_PATCH = {"BB": 200, "Bo": 404, "B-": 403, "oo": 404, "o-": 403, "--": 403}
COND_DELETE = {"Bo": 404, "B-": 403, "oo": 204, "o-": 403, "--": 403}
COND_CREATE = {"BB": 200, "Bo": 200, "B-": 403, "oo": 403, "o-": 403, "--": 403}
FHIR_JSON = (("content-type", "application/fhir+json"),)
FORM = (("content-type", "application/x-www-form-urlencoded"),)
JSON_PATCH = (("content-type", "application/json-patch+json"),)
CLINICAL = TYPES[1:]
ANY = ("",)  # type-free rows

INCLUDES = {
    "Patient": ("Patient:general-practitioner", "Patient:organization"),
    "Observation": ("Observation:patient:Patient", "Observation:derived-from"),
    "Condition": ("Condition:patient:Patient", "Condition:evidence-detail"),
    "MedicationRequest": ("MedicationRequest:patient:Patient",),
    "Encounter": ("Encounter:patient:Patient", "Encounter:part-of"),
    "DocumentReference": ("DocumentReference:patient:Patient", "DocumentReference:relatesto"),
    "Consent": ("Consent:patient:Patient",),
    "AuditEvent": ("AuditEvent:patient:Patient",),
}


def _search(t: Target, *extra: tuple[str, str]) -> Req:
    return Req("GET", t.type, (t.owner(), *extra))


def _patch(t: Target) -> bytes:
    return orjson.dumps([{"op": "test", "path": "/resourceType", "value": t.type}])


def _bundle(kind: str, *entries: dict[str, Any]) -> Req:
    body = {"resourceType": "Bundle", "type": kind, "entry": list(entries)}
    return Req("POST", "", body=orjson.dumps(body), headers=FHIR_JSON)


def _subscription(t: Target) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "BOLA",
            "criteria": f"{t.type}?{t.owner()[0]}={t.owner()[1]}",
            "channel": {
                "type": "rest-hook",
                "endpoint": "https://hook.example/fhir",
                "payload": "application/fhir+json",
            },
        }
    )


ROWS: tuple[Row, ...] = (
    Row("read", lambda t: Req("GET", f"{t.type}/{t.id}"), READ, shows="pinned"),
    Row("vread", lambda t: Req("GET", f"{t.type}/{t.id}/_history/1"), READ, shows="pinned"),
    Row(
        "history-instance", lambda t: Req("GET", f"{t.type}/{t.id}/_history"), READ, shows="pinned"
    ),
    # Old versions have no index rows to narrow by: only for callers who see every row.
    Row("history-type", lambda t: Req("GET", f"{t.type}/_history"), {**REFUSED, "A": 200}),
    Row("history-system", lambda t: Req("GET", "_history"), REFUSED, types=ANY, only={}),
    Row(
        "search-id",
        lambda t: Req("GET", t.type, (("_id", t.id),)),
        SEARCH,
        shows="pinned",
        counts=True,
    ),
    Row(
        "search-post",
        lambda t: Req("POST", f"{t.type}/_search", body=f"_id={t.id}".encode(), headers=FORM),
        SEARCH,
        shows="pinned",
        counts=True,
    ),
    Row(
        "search-patient",
        lambda t: (
            Req("GET", "Patient", (("identifier", f"{IDENTIFIER_SYSTEM}|{t.ids['identifier']}"),))
            if t.type == "Patient"
            else _search(t)
        ),
        SEARCH,
        shows="page",
        counts=True,
    ),
    Row("search-all", lambda t: Req("GET", t.type, (("_count", "500"),)), SEARCH, shows="page"),
    Row(
        "include",
        lambda t: Req(
            "GET", t.type, (("_count", "500"), *(("_include", i) for i in INCLUDES[t.type]))
        ),
        SEARCH,
        on=("T.R", "Patient.R"),
        shows="page",
    ),
    Row(
        "revinclude",
        lambda t: Req("GET", "Patient", (("_count", "500"), ("_revinclude", f"{t.type}:patient"))),
        SEARCH,
        on=("Patient.R", "T.R"),
        types=CLINICAL,
        shows="page",
    ),
    Row(
        "chain",
        lambda t: Req(
            "GET", t.type, (("patient.identifier", f"{IDENTIFIER_SYSTEM}|{t.ids['identifier']}"),)
        ),
        SEARCH,
        on=("T.R", "Patient.R"),
        types=CLINICAL,
        shows="page",
        counts=True,
    ),
    Row(
        "has",
        lambda t: Req("GET", "Patient", ((f"_has:{t.type}:patient:_id", t.id),)),
        SEARCH,
        on=("Patient.R", "T.R"),
        types=CLINICAL,
        counts=True,
    ),
    Row(
        "sort",
        lambda t: _search(t, ("_sort", "-_lastUpdated,_id")),
        SEARCH,
        shows="page",
        counts=True,
    ),
    Row(
        "total", lambda t: _search(t, ("_total", "accurate"), ("_count", "1")), SEARCH, counts=True
    ),
    Row("count", lambda t: _search(t, ("_summary", "count")), SEARCH, counts=True),
    Row(
        "compartment",
        lambda t: Req("GET", f"Patient/{t.patient}/{t.type}"),
        SEARCH,
        types=CLINICAL,
        shows="page",
        counts=True,
    ),
    Row(
        "everything",
        lambda t: Req(
            "GET", f"Patient/{t.patient}/$everything", (("_type", t.type), ("_count", "1"))
        ),
        READ,
        on=("Patient.R",),
        shows="page",
    ),
    Row(
        "everything-paged",
        lambda t: Req("GET", f"Patient/{t.patient}/$everything", (("_count", "1"),)),
        READ,
        on=("Patient.R",),
        types=ANY,
    ),
    Row(
        "lastn",
        lambda t: Req("GET", "Observation/$lastn", (t.owner(), ("category", "vital-signs"))),
        SEARCH,
        types=("Observation",),
        shows="page",
    ),
    Row(
        "batch",
        lambda t: _bundle(
            "batch",
            {"request": {"method": "GET", "url": f"{t.type}/{t.id}"}},
            {"request": {"method": "GET", "url": f"{t.type}?_id={t.id}"}},
        ),
        {"B": 200, "o": 200, "-": 200},
        shows="pinned",
    ),
    Row(
        "transaction",
        lambda t: _bundle(
            "transaction",
            {
                "resource": orjson.loads(t.body()),
                "request": {"method": "PUT", "url": f"{t.type}/{t.id}"},
            },
        ),
        WRITE,
        on=("T.U",),
        writes=True,
    ),
    Row(
        "update",
        lambda t: Req("PUT", f"{t.type}/{t.id}", body=t.body(), headers=FHIR_JSON),
        WRITE,
        on=("T.U",),
        writes=True,
    ),
    Row(
        "patch",
        lambda t: Req("PATCH", f"{t.type}/{t.id}", body=_patch(t), headers=JSON_PATCH),
        WRITE,
        on=("T.U",),
        writes=True,
    ),
    Row("delete", lambda t: Req("DELETE", f"{t.type}/{t.id}"), DELETE, on=("T.D",), writes=True),
    Row(
        "conditional-update",
        lambda t: Req("PUT", t.type, (("_id", t.id),), t.body(with_id=False), FHIR_JSON),
        COND_UPDATE,
        on=("T.R", "T.U"),
        pair=True,
        writes=True,
    ),
    Row(
        "conditional-patch",
        lambda t: Req("PATCH", t.type, (("_id", t.id),), _patch(t), JSON_PATCH),
        COND_PATCH,
        on=("T.R", "T.U"),
        pair=True,
        writes=True,
        noted=False,  # "no match": the search was narrowed, nothing was refused
    ),
    Row(
        "conditional-delete",
        lambda t: Req("DELETE", t.type, (("_id", t.id),)),
        COND_DELETE,
        on=("T.R", "T.D"),
        pair=True,
        writes=True,
    ),
    Row(
        "conditional-create",
        lambda t: Req(
            "POST",
            t.type,
            body=t.body(with_id=False),
            headers=(*FHIR_JSON, ("if-none-exist", f"_id={t.id}")),
        ),
        COND_CREATE,
        on=("T.R", "T.U"),
        pair=True,
        writes=True,
    ),
    Row(
        "subscription",
        lambda t: Req("POST", "Subscription", body=_subscription(t), headers=FHIR_JSON),
        REFUSED,
    ),
    Row(
        "record-export",
        lambda t: Req("GET", f"Patient/{t.patient}/$record-export"),
        READ,
        types=ANY,
        only={"patientB": 200},  # the patient themself (or the privacy officer), nobody else
    ),
)


def expected(actor: str, row: Row, rtype: str) -> int | None:
    if actor in ANONYMOUS:
        return 401
    if row.only is not None:
        return row.only.get(actor, 403)
    letters = [letter(actor, dep, rtype) for dep in row.on]
    key = "".join(letters) if row.pair else min(letters, key=_WORST_FIRST.index)
    return answer(row.expect, key)


def answer(expect: Mapping[str, int], key: str) -> int | None:
    """Seeing every row answers like seeing B's, unless the row says otherwise."""
    return expect.get(key, expect.get(key.replace("A", "B")))


def letter(actor: str, dep: str, rtype: str) -> str:
    name, kind = dep.split(".")
    return REACH[actor][rtype if name == "T" else name][kind]


def entitled(actor: str, rtype: str) -> bool:
    return REACH[actor][rtype]["R"] in "AB"


@dataclass(frozen=True)
class Cell:
    actor: str
    row: Row
    type: str

    def __str__(self) -> str:
        return "-".join(p for p in (self.actor, self.row.name, self.type) if p)


def _cells() -> Iterator[Any]:
    for row in ROWS:
        for rtype in row.types:
            for actor in ACTORS:
                if expected(actor, row, rtype or "Patient") is None:
                    continue
                cell = Cell(actor, row, rtype)
                yield pytest.param(cell, id=str(cell))


CELLS = list(_cells())

# --- the world, once per database -----------------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keyring: Keyring
) -> Iterator[World]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('bola') / 'bola.sqlite3'}"
        yield from open_world("sqlite", url, keyring)
    else:
        for url in pg_schema(request.getfixturevalue("pg_dsn")):
            yield from open_world("postgresql", url, keyring)


# --- one cell -------------------------------------------------------------------------------------


@dataclass
class Sent:
    req: Req
    response: httpx.Response
    named: dict[str, str] = field(default_factory=dict)  # B's keys the request names


def _b_ids(world: World) -> dict[str, str]:
    return {**world.b}


def _twin_ids(world: World) -> dict[str, str]:
    """Every id of B replaced by one no resource has; the identifier by one nobody has."""
    ids = {k: fake_id() for k in world.b}
    ids["identifier"] = "B" + fake_id().replace("-", "")[: len(world.b["identifier"]) - 2] + "K"
    return ids


def _target(world: World, rtype: str, ids: Mapping[str, str]) -> Target:
    real = rtype or "Patient"

    def content() -> dict[str, Any]:
        resource = world.current(real, world.b[real])
        resource["id"] = ids[real]
        return resource

    return Target(real, ids, content)


def _named(world: World, req: Req) -> dict[str, str]:
    raw = req.raw().decode()
    return {k: v for k, v in world.b.items() if v in raw}


def _forbidden_markers(world: World, actor: str) -> dict[bytes, str]:
    """B's markers this caller must never get, with what they are. Ids of B's resources that
    A's resources refer to (BRIDGES) are visible to whoever sees A's: only their texts count."""
    out: dict[bytes, str] = {}
    for rtype, marker in world.markers.items():
        if entitled(actor, rtype):
            continue
        for text in marker.secrets:
            out[text.encode()] = f"{rtype} text"
        if rtype not in BRIDGES:
            out[marker.id.encode()] = f"{rtype} id"
    return out


def check_no_leak(world: World, actor: str, req: Req, response: httpx.Response) -> None:
    body = exposed(response.content) + b"\n" + str(dict(response.headers)).encode()
    sent = req.raw()
    # A patient's own audit trail records what they asked for (their earlier requests).
    earlier = world.sent[actor] if b'"AuditEvent"' in response.content else set()
    leaks = {
        marker: what
        for marker, what in _forbidden_markers(world, actor).items()
        if marker in body and marker not in sent and marker not in earlier
    }
    assert not leaks, f"B's data reached {actor}: {_where(response, leaks)}"


def _where(response: httpx.Response, leaks: Mapping[bytes, str]) -> list[str]:
    """Which resources of the answer hold the leaked markers, with some context."""
    found = []
    try:
        resources = _resources(response)
    except ValueError:
        resources = []
    for marker, what in leaks.items():
        holders = [r for r in resources if marker in orjson.dumps(r)]
        for resource in holders or [{"resourceType": "?", "id": "?"}]:
            text = orjson.dumps(resource) if holders else response.content
            at = text.find(marker)
            context = text[max(0, at - 300) : at + 100].decode(errors="replace")
            found.append(f"{what} in {resource['resourceType']}/{resource['id']}: …{context}…")
    return found


def _total(response: httpx.Response) -> int:
    return int(response.json()["total"])


def _unchanged(world: World, rtype: str) -> Callable[[], None]:
    before = world.current(rtype, world.b[rtype])

    def check() -> None:
        after = world.current(rtype, world.b[rtype])
        assert after == before, "a refused write changed B's resource"

    return check


def _twin_matches(world: World, actor: str, cell: Cell, sent: Sent) -> None:
    """Forbidden and non-existent answer alike: the same request for ids nobody has."""
    ids = _twin_ids(world)
    twin_req = cell.row.build(_target(world, cell.type, ids))
    twin = world.send(actor, twin_req)
    body = twin.content
    for key, fake in ids.items():
        body = body.replace(fake.encode(), world.b[key].encode())
    assert (twin.status_code, body) == (sent.response.status_code, sent.response.content), (
        f"B's data answers unlike a missing one:\n{sent.response.status_code} "
        f"{sent.response.content[:600]!r}\n{twin.status_code} {twin.content[:600]!r}"
    )
    for header in ("content-type", "www-authenticate"):
        assert twin.headers.get(header) == sent.response.headers.get(header)


def _entries(response: httpx.Response) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = response.json().get("entry", [])
    return entries


@pytest.mark.parametrize("cell", CELLS)
def test_matrix(world: World, cell: Cell) -> None:
    actor, row = cell.actor, cell.row
    rtype = cell.type or "Patient"
    status = expected(actor, row, rtype)
    req = row.build(_target(world, cell.type, _b_ids(world)))
    full = actor not in ANONYMOUS and all(letter(actor, d, rtype) in "AB" for d in row.on)
    unchanged = _unchanged(world, rtype) if row.writes and not full else None
    request_id = world.request_id()
    response = world.send(actor, req, request_id)
    sent = Sent(req, response, _named(world, req))

    assert response.status_code == status, response.text[:1000]
    check_no_leak(world, actor, req, response)
    world.sent[actor].update(marker.encode() for marker in sent.named.values())
    if status == 401:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="medikus"'), challenge
        assert ("error=" in challenge) is (actor != "noToken")
    # A patient's audit trail holds their own attempts on B: about B, but theirs.
    own_trail = rtype == "AuditEvent" and "AuditEvent" not in sent.named
    if response.status_code == 200:
        _check_audit_events_are_own(world, actor, response)
        _check_cursors_name_readable(world, actor, response)
        pinned = row.shows == "pinned" or rtype != "AuditEvent"
        if row.shows and full and entitled(actor, rtype) and pinned:
            assert world.b[rtype] in response.text, f"{actor} should see B's {rtype}"
        if row.counts and not (own_trail and not full):
            total = _total(response)
            assert total >= 1 if full else total == 0, total
        if row.name == "batch":
            _check_batch(world, cell, response)
    # Compare with a missing id unless the caller may know everything the request names.
    hidden = any(not entitled(actor, "Patient" if k == "identifier" else k) for k in sent.named)
    if sent.named and (actor in ANONYMOUS or hidden) and not (own_trail and not full):
        _twin_matches(world, actor, cell, sent)
    if unchanged is not None:
        unchanged()
    if status == 401:
        world.ledger.anonymous.append((req.path, str(cell)))
    elif status in (403, 404):
        noted = status == 403 or row.noted
        world.ledger.by_request_id[request_id] = f"{cell}|{'8' if noted else '48'}"


def _resources(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    if body.get("resourceType") != "Bundle":
        return [body]
    return [e["resource"] for e in body.get("entry", []) if "resource" in e]


def _check_audit_events_are_own(world: World, actor: str, response: httpx.Response) -> None:
    """Callers other than B get no AuditEvent of B's: each names the caller's own patient."""
    if entitled(actor, "AuditEvent") or b'"AuditEvent"' not in response.content:
        return
    own = f"Patient/{world.a['Patient']}".encode()
    for resource in _resources(response):
        if resource.get("resourceType") == "AuditEvent":
            assert own in orjson.dumps(resource), f"{actor} got someone else's {resource['id']}"


def _check_cursors_name_readable(world: World, actor: str, response: httpx.Response) -> None:
    """$everything's page cursor names the (type, id) a page ended with: one the caller can
    read, or it tells them what they may not see."""
    for payload in cursors(response.content):
        if (
            isinstance(payload, list)
            and len(payload) == 2
            and all(isinstance(p, str) for p in payload)
        ):
            shown = world.send(actor, Req("GET", f"{payload[0]}/{payload[1]}"))
            assert shown.status_code == 200, f"the page cursor names hidden {payload}"


def _check_batch(world: World, cell: Cell, response: httpx.Response) -> None:
    rtype = cell.type or "Patient"
    got = [e["response"]["status"].split()[0] for e in _entries(response)]
    reach = letter(cell.actor, "T.R", rtype)
    want = [str(answer(READ, reach)), str(answer(SEARCH, reach))]
    assert got == want, response.text[:1000]
    if want[0] in ("403", "404"):
        entry = (world.subjects[cell.actor], f"{rtype}/{world.b[rtype]}", str(cell))
        world.ledger.entries.append(entry)


def test_everything_pages_do_not_enumerate_hidden_resources(world: World) -> None:
    """Care staff may read Patient B (registration), nothing else of B's: following the next
    links of ``$everything`` page by page must not walk them through B's record."""
    types = ",".join(t for t in TYPES if t != "AuditEvent")
    query: tuple[tuple[str, str], ...] = (("_type", types), ("_count", "1"))
    walked: list[str] = []
    for _ in range(30):
        page = world.send(
            "careStaff", Req("GET", f"Patient/{world.b['Patient']}/$everything", query)
        )
        assert page.status_code == 200, page.text
        walked += [f"{r['resourceType']}/{r['id']}" for r in _resources(page)]
        walked += ["/".join(c) for c in cursors(page.content)]
        following = [link["url"] for link in page.json()["link"] if link["relation"] == "next"]
        if not following:
            break
        query = tuple(httpx.URL(following[0]).params.multi_items())
    readable = {"Patient", "Practitioner", "Organization"}  # B's own and directory data
    hidden = sorted({w.split("/")[0] for w in walked} - readable)
    assert not hidden, f"the pages name B's hidden {hidden}"


def _deliveries_after_writes(world: World, received: list[tuple[str, bytes]]) -> str:
    """Writes a vital-signs Observation of B (with a new secret), then a laboratory one of A;
    returns the secret once the laboratory one (which the subscriber may read) arrived."""
    secret = f"B-secret-subscription-{fake_id()}"
    vital = {**world.current("Observation", world.b["Observation"]), "note": [{"text": secret}]}
    lab = world.current("Observation", world.a["lab"])
    for resource in (vital, lab):
        del resource["id"], resource["meta"]
    assert world.system("POST", "Observation", vital).status == 201
    control = orjson.loads(world.system("POST", "Observation", lab).body)["id"]
    deadline = time.monotonic() + 30
    while not any(path.endswith(control) for path, _ in received):
        assert time.monotonic() < deadline, "the readable Observation was never delivered"
        time.sleep(0.1)
    return secret


def test_subscription_payloads_stay_within_the_subscribers_reach(world: World) -> None:
    scope = "system/Subscription.cruds system/Observation.rs?category=laboratory"
    world.headers["subscriber"] = {
        "Authorization": f"Bearer {backend_token(world, 'station-subscriber', scope)}"
    }
    with receiver() as (endpoint, received):
        subscription = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "Laborwerte",
            "criteria": "Observation",
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
            },
        }
        created = world.send(
            "subscriber",
            Req("POST", "Subscription", body=orjson.dumps(subscription), headers=FHIR_JSON),
        )
        if created.status_code != 201:  # refusing criteria beyond the caller's reach is fine
            assert created.status_code in (403, 422), created.text
            return
        try:
            secret = _deliveries_after_writes(world, received)
        finally:
            world.system("DELETE", f"Subscription/{created.json()['id']}")
    delivered = b"\n".join(body for _, body in received)
    assert secret.encode() not in delivered, "B's vital signs went to the laboratory station"


# --- the websocket channel of subscriptions ------------------------------------------------------


@pytest.mark.parametrize("actor", ACTORS)
def test_websocket_refused(world: World, actor: str) -> None:
    """Only callers who may read Subscriptions may bind to one: none of these."""
    bind = world.http.websocket_connect("/fhir/ws", headers=world.headers[actor])
    with pytest.raises(WebSocketDisconnect) as closed, bind:
        pass
    assert closed.value.code == 1008


# --- the audit trail (runs after the matrix of its database) -------------------------------------


def _request_ids(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in event.get("entity", ())
        if e.get("type", {}).get("code") == "XrequestId"
    ]


def _locators(event: dict[str, Any]) -> set[str]:
    """Where an event points: the data entity's reference or type, the raw query's path."""
    out: set[str] = set()
    for entity in event.get("entity", ()):
        what = entity.get("what") or {}
        if entity.get("role", {}).get("code") == "4":
            out.add(what.get("reference") or what.get("type") or "")
        if entity.get("query"):
            url = base64.b64decode(entity["query"]).decode()
            out.add(url.removeprefix(FHIR_BASE).strip("/").partition("?")[0])
    return out or {""}  # a bundle posted to the base


def _requestor(event: dict[str, Any]) -> str | None:
    for agent in event.get("agent", ()):
        if agent.get("requestor"):
            value = agent.get("who", {}).get("identifier", {}).get("value")
            return str(value) if value is not None else None
    return None


def test_each_refusal_left_a_failure_audit_event(world: World) -> None:
    ledger = world.ledger
    if not (ledger.by_request_id or ledger.anonymous):
        pytest.skip("no matrix cell of this database ran before")
    events = world.audit_events()
    outcomes: dict[str, set[str]] = {}
    for event in events:
        for request_id in _request_ids(event):
            outcomes.setdefault(request_id, set()).add(event["outcome"])
    missing = []
    for request_id, entry in ledger.by_request_id.items():
        cell, wanted = entry.split("|")
        if not outcomes.get(request_id, set()) & set(wanted):
            missing.append(f"{cell}: {sorted(outcomes.get(request_id, ()))}")
    assert not missing, f"{len(missing)} refusals without a failure event: {missing[:20]}"

    def counted(agent: str | None) -> dict[str, int]:
        found: dict[str, int] = {}
        for event in events:
            if _requestor(event) == agent and event["outcome"] == "8":
                for locator in _locators(event):
                    found[locator] = found.get(locator, 0) + 1
        return found

    anonymous = counted("anonymous")
    wanted_anonymous: dict[str, list[str]] = {}
    for path, cell in ledger.anonymous:
        wanted_anonymous.setdefault(path, []).append(cell)
    short = {p: c for p, c in wanted_anonymous.items() if anonymous.get(p, 0) < len(c)}
    assert not short, f"401s without an anonymous failure event: {list(short.items())[:10]}"
    for agent in {a for a, _, _ in ledger.entries}:
        found = counted(agent)
        refs: dict[str, list[str]] = {}
        for who, ref, cell in ledger.entries:
            if who == agent:
                refs.setdefault(ref, []).append(cell)
        short = {r: c for r, c in refs.items() if found.get(r, 0) < len(c)}
        assert not short, f"batch entries refused without a failure event: {short}"
