"""Tampering with the stored audit trail is found at the right record, on the real tables.

A trail of audited requests is chained once per test (SQLite and PostgreSQL); each hypothesis
example changes the real rows of ``audit_log``, the stored AuditEvents or the signed heads with
plain SQL, as someone with database access would, runs the verification and puts the rows back.
Finally ``medikus audit verify`` runs as a process on a real SQLite file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.audit_chain import GENESIS, ChainHead, Problem, SignedHead, append, sign_head
from compliance.keyring import Keyring, generate_key_file
from fhir_server.audit_keys import AuditKeys
from fhir_server.audit_verify import TrailReport, verify_trail
from fhir_server.writes import render
from tests.conftest import Clock
from tests.fhir_server.audit_support import Audited, open_audited

N = 10  # records in the trail
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
positions = st.integers(1, N)
hashes = st.binary(min_size=32, max_size=32)


@dataclass
class Trail:
    """An audit trail of N records on a real database, with its original rows to restore."""

    audited: Audited
    saved: dict[str, list[dict[str, Any]]]
    keys: AuditKeys

    def run(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        with self.audited.store.engine.begin() as conn:
            for text, params in statements:
                conn.execute(sa.text(text), params)

    def verify(self, anchors: list[SignedHead] | None = None) -> TrailReport:
        audited = self.audited
        return verify_trail(audited.store, audited.log, self.keys, anchors=anchors or [], page=3)

    def link(self, seq: int) -> dict[str, Any]:
        (row,) = [r for r in self.saved["audit_log"] if r["seq"] == seq]
        return row

    def restore(self) -> None:
        with self.audited.store.engine.begin() as conn:
            for table, where in _SAVED.items():
                conn.execute(sa.text(f"DELETE FROM {table} {where}"))
                rows = self.saved[table]
                if rows:
                    columns = list(rows[0])
                    values = ", ".join(f":{c}" for c in columns)
                    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
                    conn.execute(sa.text(insert), rows)
        assert self.verify().ok

    def tampered(self, *statements: tuple[str, dict[str, Any]]) -> TrailReport:
        self.run(list(statements))
        try:
            return self.verify()
        finally:
            self.restore()


# Every row the verification reads, by table (the AuditEvents live with all other resources).
_SAVED = {
    "audit_log": "",
    "audit_signed_head": "",
    "resource": "WHERE res_type = 'AuditEvent'",
    "resource_version": "WHERE res_type = 'AuditEvent'",
}


def build_trail(database_url: str, clock: Clock, keyring: Keyring) -> Generator[Trail]:
    audited = open_audited(database_url, clock, keyring)
    try:
        patient = audited.created({"resourceType": "Patient", "name": [{"family": "Roth"}]})
        for n in range(N - 1):
            audited.call("GET", f"Patient/{patient}", request_id=f"req-{n}")
        audited.chain()
        audited.system.chainer.sign_now()
        assert [h.index for h in audited.log.signed_heads()] == [N]  # the head, signed
        saved = {
            table: [dict(r._mapping) for r in audited.sql(f"SELECT * FROM {table} {where}")]
            for table, where in _SAVED.items()
        }
        assert len(saved["audit_log"]) == N
        trail = Trail(audited, saved, AuditKeys(keyring))
        assert trail.verify().ok
        yield trail
    finally:
        audited.system.stop()
        audited.core.close()


@pytest.fixture
def trail(database_url: str, clock: Clock, keyring: Keyring) -> Iterator[Trail]:
    yield from build_trail(database_url, clock, keyring)


def assert_found(report: TrailReport, problem: Problem, index: int) -> None:
    result = report.result
    assert (result.problem, result.index) == (problem, index), result.detail
    assert result.head.index == index - 1  # everything before is proven good


def event_row(trail: Trail, seq: int) -> dict[str, Any]:
    event_id = trail.link(seq)["event_id"]
    (row,) = [r for r in trail.saved["resource_version"] if r["res_id"] == event_id]
    return row


# --- modified ------------------------------------------------------------------------------


@EXAMPLES
@given(i=positions, data=st.data())
def test_a_changed_link_is_modified_at_its_index(trail: Trail, i: int, data: st.DataObject) -> None:
    column = data.draw(st.sampled_from(["hash", "key_version", "event_id"]))
    if column == "hash":
        value: Any = data.draw(hashes.filter(lambda h: h != trail.link(i)["hash"]))
    elif column == "key_version":
        value = data.draw(st.integers(2, 9))  # a version the keyring does not hold
    else:
        other = data.draw(positions.filter(lambda j: j != i))
        value = trail.link(other)["event_id"]  # another record's event
    report = trail.tampered(
        (f"UPDATE audit_log SET {column} = :v WHERE seq = :i", {"v": value, "i": i})
    )
    assert_found(report, Problem.MODIFIED, i)


@EXAMPLES
@given(i=positions, data=st.data())
def test_a_changed_audit_event_is_modified_at_its_index(
    trail: Trail, i: int, data: st.DataObject
) -> None:
    row = event_row(trail, i)
    content = bytes(row["content"])
    try:  # plain JSON: change what it says; encrypted: change a byte of the ciphertext
        event = orjson.loads(content)
        event["outcome"] = data.draw(st.sampled_from(["4", "8", "12"]))
        changed = orjson.dumps(event)
    except orjson.JSONDecodeError:
        at = data.draw(st.integers(0, len(content) - 1))
        changed = content[:at] + bytes([content[at] ^ 0x01]) + content[at + 1 :]
    report = trail.tampered(
        ("UPDATE resource_version SET content = :c WHERE seq = :s", {"c": changed, "s": row["seq"]})
    )
    assert_found(report, Problem.MODIFIED, i)


@EXAMPLES
@given(i=positions)
def test_a_deleted_audit_event_is_modified_at_its_index(trail: Trail, i: int) -> None:
    event_id = trail.link(i)["event_id"]
    where = "WHERE res_type = 'AuditEvent' AND res_id = :e"
    report = trail.tampered(
        (f"DELETE FROM resource {where}", {"e": event_id}),
        (f"DELETE FROM resource_version {where}", {"e": event_id}),
    )
    assert_found(report, Problem.MODIFIED, i)
    assert "missing" in report.result.detail


def test_an_audit_event_rewritten_as_a_new_version_is_modified(trail: Trail) -> None:
    # Through the storage layer, as someone holding the key file could (the API refuses it).
    ctx = replace(trail.audited.core.ctx, audit=None)
    event_id = trail.link(4)["event_id"]
    with ctx.store.unit_of_work() as uow:
        prior = uow.current("AuditEvent", event_id)
        assert prior is not None and prior.content is not None
        event = orjson.loads(prior.content)
        event["outcome"] = "4"
        now = ctx.clock()
        uow.put(render(ctx, event, event_id, 2, 1, "PUT", now).version)
    try:
        report = trail.verify()
    finally:
        trail.restore()
    assert_found(report, Problem.MODIFIED, 4)
    assert "version 2" in report.result.detail


# --- deleted, reordered, inserted ------------------------------------------------------------


@EXAMPLES
@given(i=st.integers(1, N - 1), data=st.data())
def test_deleted_links_are_found_at_the_first_gap(
    trail: Trail, i: int, data: st.DataObject
) -> None:
    count = data.draw(st.integers(1, N - i))  # at least one record stays after the gap
    report = trail.tampered(
        ("DELETE FROM audit_log WHERE seq >= :i AND seq < :j", {"i": i, "j": i + count})
    )
    assert_found(report, Problem.DELETED, i)


@EXAMPLES
@given(i=st.integers(1, N - 1), data=st.data())
def test_swapped_links_are_reordered_at_the_first(
    trail: Trail, i: int, data: st.DataObject
) -> None:
    j = data.draw(st.integers(i + 1, N))
    swap = "UPDATE audit_log SET seq = :to WHERE seq = :at"
    report = trail.tampered(
        (swap, {"at": i, "to": -1}), (swap, {"at": j, "to": i}), (swap, {"at": -1, "to": j})
    )
    assert_found(report, Problem.REORDERED, i)


@EXAMPLES
@given(i=st.integers(1, N - 1), data=st.data())
def test_contents_swapped_between_links_are_reordered(
    trail: Trail, i: int, data: st.DataObject
) -> None:
    # The rows keep their seq, their contents (event and hash) trade places.
    j = data.draw(st.integers(i + 1, N))
    a, b = trail.link(i), trail.link(j)
    move = "UPDATE audit_log SET event_id = :event_id, hash = :hash WHERE seq = :s"
    report = trail.tampered((move, {**b, "s": i}), (move, {**a, "s": j}))
    assert_found(report, Problem.REORDERED, i)


@EXAMPLES
@given(i=st.integers(1, N - 1), data=st.data())
def test_events_swapped_under_the_hashes_are_modified(
    trail: Trail, i: int, data: st.DataObject
) -> None:
    # Only the event references trade places: each link's hash no longer fits its event.
    j = data.draw(st.integers(i + 1, N))
    set_event = "UPDATE audit_log SET event_id = :e WHERE seq = :s"
    report = trail.tampered(
        (set_event, {"e": trail.link(j)["event_id"], "s": i}),
        (set_event, {"e": trail.link(i)["event_id"], "s": j}),
    )
    assert_found(report, Problem.MODIFIED, i)


def _make_room(p: int) -> list[tuple[str, dict[str, Any]]]:
    """Shifts the links from ``p`` on by one (in two steps: seq is the primary key)."""
    return [
        ("UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= :p", {"p": p}),
        ("UPDATE audit_log SET seq = -seq WHERE seq < 0", {}),
    ]


@EXAMPLES
@given(p=positions, forged_hash=hashes, data=st.data())
def test_a_forged_link_is_inserted_where_it_stands(
    trail: Trail, p: int, forged_hash: bytes, data: st.DataObject
) -> None:
    event_id = data.draw(
        st.sampled_from([r["event_id"] for r in trail.saved["audit_log"]])
        | st.from_regex(r"[a-z0-9]{8}", fullmatch=True)
    )
    insert = "INSERT INTO audit_log (seq, event_id, key_version, hash) VALUES (:s, :e, 1, :h)"
    report = trail.tampered(*_make_room(p), (insert, {"s": p, "e": event_id, "h": forged_hash}))
    assert_found(report, Problem.INSERTED, p)


@EXAMPLES
@given(p=st.integers(2, N), data=st.data())
def test_a_replayed_link_is_inserted(trail: Trail, p: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, p - 1))
    copy = {**trail.link(k), "seq": p}
    insert = "INSERT INTO audit_log (seq, event_id, key_version, hash) VALUES (:seq, :event_id, :key_version, :hash)"
    report = trail.tampered(*_make_room(p), (insert, copy))
    assert_found(report, Problem.INSERTED, p)


def test_a_forged_link_at_the_end_is_reported_as_modified(trail: Trail) -> None:
    # Nothing follows it, so nothing tells an extra record from a changed last one.
    insert = "INSERT INTO audit_log (seq, event_id, key_version, hash) VALUES (:s, 'x', 1, :h)"
    report = trail.tampered((insert, {"s": N + 1, "h": bytes(32)}))
    assert_found(report, Problem.MODIFIED, N + 1)


# --- truncated, rewritten, signatures ----------------------------------------------------------


@EXAMPLES
@given(i=positions)
def test_a_truncated_chain_is_found_against_the_signed_head(trail: Trail, i: int) -> None:
    report = trail.tampered(("DELETE FROM audit_log WHERE seq >= :i", {"i": i}))
    assert_found(report, Problem.TRUNCATED, i)


@EXAMPLES
@given(i=positions)
def test_truncation_with_the_heads_deleted_is_found_by_the_anchors(trail: Trail, i: int) -> None:
    anchors = trail.audited.log.signed_heads()  # exported earlier, kept off-site
    trail.run(
        [("DELETE FROM audit_log WHERE seq >= :i", {"i": i}), ("DELETE FROM audit_signed_head", {})]
    )
    try:
        assert trail.verify().ok  # the database alone can no longer tell: keep anchors
        report = trail.verify(anchors)
    finally:
        trail.restore()
    assert_found(report, Problem.TRUNCATED, i)


@EXAMPLES
@given(i=positions, drop=st.booleans(), data=st.data())
def test_a_chain_rewritten_with_the_key_differs_from_the_anchored_head(
    trail: Trail, i: int, drop: bool, data: st.DataObject
) -> None:
    # Someone with the key file drops record i (or changes its event), recomputes every later
    # link and re-signs the head: consistent again, but not what was anchored off-site.
    plain = _is_plain_json(event_row(trail, i)["content"])
    drop = drop or not plain  # encrypted events cannot be changed with SQL alone
    anchors = trail.audited.log.signed_heads()  # exported earlier, kept off-site
    statements: list[tuple[str, dict[str, Any]]] = []
    if drop:
        statements += [
            ("DELETE FROM audit_log WHERE seq = :i", {"i": i}),
            ("UPDATE audit_log SET seq = -(seq - 1) WHERE seq > :i", {"i": i}),
            ("UPDATE audit_log SET seq = -seq WHERE seq < 0", {}),
        ]
    prev = GENESIS if i == 1 else bytes(trail.link(i - 1)["hash"])
    end = N - 1 if drop else N
    for seq in range(i, end + 1):
        row = event_row(trail, seq + 1 if drop else seq)
        (stored,) = trail.audited.store.fetch([("AuditEvent", row["res_id"])])  # decrypted
        event = orjson.loads(stored.content or b"")
        if seq == i and not drop:
            event["outcome"] = data.draw(st.sampled_from(["4", "8", "12"]))
            statements.append(
                (
                    "UPDATE resource_version SET content = :c WHERE seq = :s",
                    {"c": orjson.dumps(event), "s": row["seq"]},
                )
            )
        prev = append(prev, seq, event, trail.keys.hmac_key(), 1).hash
        statements.append(("UPDATE audit_log SET hash = :h WHERE seq = :s", {"h": prev, "s": seq}))
    forged = sign_head(ChainHead(end, prev), anchors[-1].signed_at, trail.keys.signer())
    statements.append(
        (
            "UPDATE audit_signed_head SET head_index = :i, head_hash = :h, signature = :s",
            {"i": end, "h": forged.head_hash, "s": forged.signature},
        )
    )
    trail.run(statements)
    try:
        assert trail.verify().ok  # consistent again, re-signed with the key …
        report = trail.verify(anchors)  # … but not what was anchored
    finally:
        trail.restore()
    assert_found(report, Problem.TRUNCATED, N)


@EXAMPLES
@given(data=st.data())
def test_a_forged_signed_head_is_refused(trail: Trail, data: st.DataObject) -> None:
    signature = data.draw(st.binary(min_size=64, max_size=64))
    report = trail.tampered(("UPDATE audit_signed_head SET signature = :s", {"s": signature}))
    assert (report.result.problem, report.result.index) == (Problem.BAD_SIGNATURE, N)


def _is_plain_json(content: Any) -> bool:
    try:
        orjson.loads(bytes(content))
    except orjson.JSONDecodeError:
        return False
    return True


# --- the command line, on a real SQLite file ---------------------------------------------------


def _medikus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medikus", "audit", *args],
        env={**os.environ, **(env or {})},  # the session's key file: MEDIKUS_KEY_FILE
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_verify_command_names_the_first_bad_record(
    tmp_path: Path, clock: Clock, keyring: Keyring
) -> None:
    url = f"sqlite:///{tmp_path / 'medikus.sqlite3'}"
    trails = build_trail(url, clock, keyring)
    trail = next(trails)
    try:
        ok = _medikus("verify", "--database-url", url)
        assert ok.returncode == 0, ok.stderr
        assert f"OK: {N} Einträge" in ok.stdout
        anchors = tmp_path / "heads.jsonl"
        anchors.write_text(_medikus("export-heads", "--database-url", url).stdout)
        key = _medikus("export-public-key").stdout
        assert key.startswith("-----BEGIN PUBLIC KEY-----")
        (tmp_path / "audit.pem").write_text(key)

        trail.run([("DELETE FROM audit_log WHERE seq = 3", {})])
        bad = _medikus("verify", "--database-url", url)
        assert bad.returncode == 1
        assert "record 3: deleted" in bad.stderr and "1–2" in bad.stderr
        trail.restore()

        trail.run(
            [("DELETE FROM audit_log WHERE seq >= 7", {}), ("DELETE FROM audit_signed_head", {})]
        )
        pinned = ["--anchors", str(anchors), "--public-key", str(tmp_path / "audit.pem")]
        assert _medikus("verify", "--database-url", url).returncode == 0  # needs the anchors
        cut = _medikus("verify", "--database-url", url, *pinned)
        assert cut.returncode == 1 and "record 7: truncated" in cut.stderr
        trail.restore()

        other = tmp_path / "other-keys.json"
        generate_key_file(other)
        wrong_key = _medikus("verify", "--database-url", url, "--key-file", str(other))
        assert wrong_key.returncode != 0 and "OK" not in wrong_key.stdout
        nowhere = {"MEDIKUS_KEY_FILE": str(tmp_path / "absent.json")}
        missing = _medikus("verify", "--database-url", url, env=nowhere)
        assert missing.returncode == 2 and "absent.json" in missing.stderr
    finally:
        trails.close()
