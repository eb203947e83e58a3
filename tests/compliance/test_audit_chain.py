"""The audit hash chain: every kind of tampering is found at the right index and named."""

from __future__ import annotations

import base64
import dataclasses
import json
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given
from hypothesis import strategies as st

from compliance.audit_chain import (
    GENESIS,
    GENESIS_HEAD,
    AuditRecord,
    ChainHead,
    MemoryAuditStore,
    Problem,
    SignedHead,
    VerifyResult,
    append,
    canonical_json,
    ed25519_key_id,
    log_event,
    sign_head,
    verify,
)

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))
KEYS = {1: KEY_1}
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
OTHER_SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
KID = ed25519_key_id(SIGNER.public_key())
PUBLIC = {KID: SIGNER.public_key()}
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
events = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
chains = st.lists(events, min_size=1, max_size=12)
hashes = st.binary(min_size=32, max_size=32)


def build(evts: Sequence[Mapping[str, object]], key_version: int = 1) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev = GENESIS
    for seq, event in enumerate(evts, start=1):
        records.append(append(prev, seq, event, KEYS[key_version], key_version))
        prev = records[-1].hash
    return records


def head_of(records: Sequence[AuditRecord], index: int) -> ChainHead:
    return ChainHead(index, records[index - 1].hash) if index else GENESIS_HEAD


def signed(records: Sequence[AuditRecord], index: int) -> SignedHead:
    return sign_head(head_of(records, index), T0 + timedelta(minutes=index), SIGNER)


def check(records: Sequence[AuditRecord], heads: Sequence[SignedHead] = ()) -> VerifyResult:
    return verify(records, KEYS, heads, PUBLIC)


def assert_fails(result: VerifyResult, problem: Problem, index: int) -> None:
    assert (result.problem, result.index) == (problem, index), result.detail
    assert not result.ok
    assert result.head.index == index - 1  # everything before the bad record is proven good


# --- untampered chains --------------------------------------------------------------------


@given(st.lists(events, max_size=12), st.data())
def test_untampered_chain_verifies(evts: list[dict[str, Any]], data: st.DataObject) -> None:
    records = build(evts)
    indexes = data.draw(st.lists(st.integers(0, len(records)), max_size=3))
    result = check(records, [signed(records, i) for i in indexes])
    assert result.ok, result.detail
    assert (result.problem, result.index) == (None, None)
    assert result.head == head_of(records, len(records))
    assert result.heads_checked == len(indexes)


# --- modified, deleted, reordered, inserted ----------------------------------------------


@given(chains, st.data())
def test_modifying_one_field_is_found_at_that_record(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    i = data.draw(st.integers(0, len(records) - 1))
    original = records[i]
    field = data.draw(st.sampled_from(["seq", "key_version", "event", "hash"]))
    if field == "seq":
        value: Any = data.draw(st.integers(-5, 50).filter(lambda s: s != original.seq))
    elif field == "key_version":
        value = data.draw(st.integers(0, 9).filter(lambda v: v != original.key_version))
    elif field == "event":
        value = data.draw(events)
        assume(canonical_json(value) != canonical_json(original.event))
    else:
        value = data.draw(hashes.filter(lambda h: h != original.hash))
    records[i] = dataclasses.replace(original, **{field: value})
    assert_fails(check(records, [signed(build(evts), len(evts))]), Problem.MODIFIED, i + 1)


def test_changing_one_nested_value_is_found() -> None:
    evts: list[dict[str, Any]] = [{"agent": [{"who": {"id": f"u{n}"}}]} for n in range(5)]
    records = build(evts)
    tampered = {"agent": [{"who": {"id": "someone else"}}]}
    records[3] = dataclasses.replace(records[3], event=tampered)
    assert_fails(check(records), Problem.MODIFIED, 4)


@given(st.lists(events, min_size=2, max_size=12), st.data())
def test_deleting_records_is_found_at_the_first_gap(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    i = data.draw(st.integers(0, len(records) - 2))
    count = data.draw(st.integers(1, len(records) - 1 - i))  # keep at least one after the gap
    del records[i : i + count]
    assert_fails(check(records), Problem.DELETED, i + 1)


@given(st.lists(events, min_size=2, max_size=12), st.data())
def test_swapping_two_records_is_found_at_the_first(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    i = data.draw(st.integers(0, len(records) - 2))
    j = data.draw(st.integers(i + 1, len(records) - 1))
    records[i], records[j] = records[j], records[i]
    assert_fails(check(records), Problem.REORDERED, i + 1)


@given(chains, st.data())
def test_inserting_a_forged_record_is_found_where_it_stands(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    p = data.draw(st.integers(0, len(records) - 1))  # before an existing record
    seq = data.draw(st.sampled_from([p + 1, p, p + 2]) | st.integers(-3, 40))
    forged = AuditRecord(seq, 1, data.draw(events), data.draw(hashes))
    renumber = data.draw(st.booleans())  # a careful forger also shifts the later seq numbers
    later = (
        [dataclasses.replace(r, seq=r.seq + 1) for r in records[p:]] if renumber else records[p:]
    )
    tampered = [*records[:p], forged, *later]
    assert_fails(check(tampered), Problem.INSERTED, p + 1)


@given(st.lists(events, min_size=2, max_size=12), st.data())
def test_replaying_an_earlier_record_is_an_insertion(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    p = data.draw(st.integers(1, len(records) - 1))
    k = data.draw(st.integers(0, p - 1))
    tampered = [*records[:p], records[k], *records[p:]]
    assert_fails(check(tampered), Problem.INSERTED, p + 1)


def test_an_event_that_cannot_be_canonicalised_is_a_modification() -> None:
    records = build([{"n": n} for n in range(3)])
    records[1] = dataclasses.replace(records[1], event={"n": 1.0})  # as a lax JSON store may return
    assert_fails(check(records), Problem.MODIFIED, 2)


def test_a_forged_record_appended_at_the_end_is_reported_as_modified() -> None:
    # Nothing follows it, so nothing tells an extra record from a changed last one.
    records = build([{"n": n} for n in range(3)])
    records.append(AuditRecord(4, 1, {"n": 3}, bytes(32)))
    assert_fails(check(records), Problem.MODIFIED, 4)


@given(st.lists(events, min_size=2, max_size=12), st.data())
def test_contents_swapped_between_seq_numbers_are_a_reordering(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    # What a store ordered by seq shows when someone swaps two rows' contents (seq stays put).
    records = build(evts)
    i = data.draw(st.integers(0, len(records) - 2))
    j = data.draw(st.integers(i + 1, len(records) - 1))
    a, b = records[i], records[j]
    records[i], records[j] = dataclasses.replace(b, seq=a.seq), dataclasses.replace(a, seq=b.seq)
    assert_fails(check(records), Problem.REORDERED, i + 1)


def test_renumbering_after_a_deletion_is_reported_as_modified() -> None:
    records = build([{"n": n} for n in range(5)])
    del records[1]
    renumbered = [records[0], *(dataclasses.replace(r, seq=r.seq - 1) for r in records[1:])]
    assert_fails(check(renumbered), Problem.MODIFIED, 2)


# --- truncation and signed heads ----------------------------------------------------------


@given(chains, st.data())
def test_truncation_is_found_against_a_signed_head(
    evts: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    m = data.draw(st.integers(1, len(records)))
    k = data.draw(st.integers(0, len(records) - 1))
    result = check(records[:k], [signed(records, m)])
    if k < m:
        assert_fails(result, Problem.TRUNCATED, k + 1)
    else:  # the tail after the last signed head is not protected: sign often
        assert result.ok, result.detail


@given(chains, st.lists(events, min_size=1, max_size=12), st.data())
def test_a_chain_cut_and_regrown_differs_at_the_signed_head(
    evts: list[dict[str, Any]], regrowth: list[dict[str, Any]], data: st.DataObject
) -> None:
    records = build(evts)
    k = data.draw(st.integers(0, len(records) - 1))
    assume(canonical_json(regrowth[0]) != canonical_json(evts[k]))
    grown = build([*evts[:k], *regrowth])  # re-appended with the key, so every MAC is valid
    assume(len(grown) >= len(records))
    result = check(grown, [signed(records, len(records))])
    assert_fails(result, Problem.TRUNCATED, len(records))


@given(chains, st.data())
def test_a_forged_signed_head_is_refused(evts: list[dict[str, Any]], data: st.DataObject) -> None:
    records = build(evts)
    genuine = signed(records, data.draw(st.integers(0, len(records))))
    how = data.draw(
        st.sampled_from(["hash", "index", "signed_at", "key_id", "other_key", "signature"])
    )
    if how == "hash":
        forged = dataclasses.replace(genuine, head_hash=data.draw(hashes))
        assume(forged.head_hash != genuine.head_hash)
    elif how == "index":
        forged = dataclasses.replace(genuine, index=data.draw(st.integers(0, 20)))
        assume(forged.index != genuine.index)
    elif how == "signed_at":
        forged = dataclasses.replace(genuine, signed_at=genuine.signed_at + timedelta(seconds=1))
    elif how == "key_id":
        forged = dataclasses.replace(genuine, key_id="unknown")
    elif how == "other_key":  # signed by someone else, claiming our key id
        forged = sign_head(head_of(records, genuine.index), T0, OTHER_SIGNER, KID)
    else:
        forged = dataclasses.replace(genuine, signature=data.draw(st.binary(max_size=64)))
        assume(forged.signature != genuine.signature)
    result = check(records, [genuine, forged])
    assert (result.problem, result.index) == (Problem.BAD_SIGNATURE, forged.index)


def test_heads_need_the_public_key() -> None:
    records = build([{"n": 1}])
    result = verify(records, KEYS, [signed(records, 1)], public_keys=None)
    assert (result.problem, result.index) == (Problem.BAD_SIGNATURE, 1)


def test_a_signed_head_survives_storage_as_json_in_another_time_zone() -> None:
    records = build([{"n": n} for n in range(3)])
    head = signed(records, 2)
    stored = head.to_json()
    cet = timezone(timedelta(hours=1))
    stored["signed_at"] = head.signed_at.astimezone(cet).isoformat()  # as a database returns it
    loaded = SignedHead.from_json(stored)
    assert loaded.signed_at == head.signed_at
    assert check(records, [loaded]).ok
    tampered = {**head.to_json(), "head_hash": bytes(32).hex()}
    assert check(records, [SignedHead.from_json(tampered)]).problem is Problem.BAD_SIGNATURE


@pytest.mark.parametrize(
    "change",
    [
        {"index": "1"},
        {"signature": "!!"},
        {"signed_at": "2025-03-01T08:00:00"},
        {"head_hash": "zz"},
        {"key_id": None},
    ],
)
def test_malformed_signed_head_json_is_refused(change: dict[str, object]) -> None:
    stored: dict[str, object] = {**signed(build([{}]), 1).to_json(), **change}
    with pytest.raises(ValueError):
        SignedHead.from_json(stored)


def test_signing_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        sign_head(GENESIS_HEAD, datetime(2025, 1, 1), SIGNER)


def test_key_id_is_the_rfc_8037_jwk_thumbprint() -> None:
    # RFC 8037 Appendix A.1 (key) and A.3 (its RFC 7638 thumbprint).
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    key = Ed25519PrivateKey.from_private_bytes(d).public_key()
    assert ed25519_key_id(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


# --- keys, resuming, storage, streaming ---------------------------------------------------


def test_master_key_rotation_keeps_the_chain_verifiable() -> None:
    old = build([{"n": 1}, {"n": 2}])
    record = append(old[-1].hash, 3, {"n": 3}, KEY_2, 2)
    chain = [*old, record]
    assert verify(chain, {1: KEY_1, 2: KEY_2}).ok
    assert_fails(verify(chain, {1: KEY_1}), Problem.MODIFIED, 3)  # key 2 unknown: unprovable


def test_verification_resumes_from_a_trusted_head() -> None:
    records = build([{"n": n} for n in range(6)])
    heads = [signed(records, 2), signed(records, 5)]
    assert verify(records[3:], KEYS, heads, PUBLIC, start=head_of(records, 3)).ok
    tampered = [*records[3:4], dataclasses.replace(records[4], event={"n": "x"}), records[5]]
    result = verify(tampered, KEYS, heads, PUBLIC, start=head_of(records, 3))
    assert_fails(result, Problem.MODIFIED, 5)
    wrong_start = verify(
        records[3:], KEYS, [signed(records, 3)], PUBLIC, start=ChainHead(3, GENESIS)
    )
    assert (wrong_start.problem, wrong_start.index) == (Problem.TRUNCATED, 3)


def test_the_memory_store_appends_and_verifies() -> None:
    store = MemoryAuditStore()
    assert store.head() == GENESIS_HEAD
    for n in range(4):
        log_event(store, {"n": n}, KEY_1, 1)
    store.put_signed_head(sign_head(store.head(), T0, SIGNER))
    assert store.head().index == 4
    assert verify(store.records(), KEYS, store.signed_heads(), PUBLIC).ok
    assert [r.seq for r in store.records(after=2)] == [3, 4]
    with pytest.raises(ValueError):
        store.put(append(GENESIS, 1, {}, KEY_1, 1))  # a concurrent writer lost the race


def _lazy_chain(n: int, payload_bytes: int) -> Iterator[AuditRecord]:
    prev = GENESIS
    for seq in range(1, n + 1):
        payload = f"{seq:08d}".ljust(payload_bytes, "x")  # a new string per record, not shared
        record = append(prev, seq, {"seq": seq, "payload": payload}, KEY_1, 1)
        prev = record.hash
        yield record


def _peak_bytes(n: int) -> int:
    tracemalloc.start()
    try:
        result = verify(_lazy_chain(n, 2000), KEYS)
        assert result.ok and result.head.index == n
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verification_streams_in_constant_memory() -> None:
    # Holding the records would cost ≥ 2 kB each: 8 MB more for 4,000 than for 400.
    small, large = _peak_bytes(400), _peak_bytes(4000)
    assert large < small + 256 * 1024, (small, large)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((b"short", 1, {}, KEY_1, 1), "prev_hash"),
        ((GENESIS, 0, {}, KEY_1, 1), "seq"),
        ((GENESIS, 1, {}, b"k" * 31, 1), "at least 32"),
    ],
)
def test_append_refuses_bad_input(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        append(*args)


# --- canonical JSON ----------------------------------------------------------------------


def test_canonical_json_sorts_keys_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33, unlike code points.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    expected = "{" + ",".join(f'"{k}":"{value[k]}"' for k in keys) + "}"
    expected = expected.replace("\r", "\\r")  # the one key JSON must escape
    assert canonical_json(value) == expected.encode("utf-8")


def test_canonical_json_has_no_whitespace_and_minimal_escapes() -> None:
    value = {"b": [1, True, None, 'q"\\\n\x01é€'], "a": {}, "c": -0}
    assert (
        canonical_json(value)
        == b'{"a":{},"b":[1,true,null,"q\\"\\\\\\n\\u0001\xc3\xa9\xe2\x82\xac"],"c":0}'
    )


@pytest.mark.parametrize(
    "value",
    [{"x": 1.5}, {"x": 2**53}, {1: "x"}, {"x": b"bytes"}, {"x": "\ud800"}, {"x": {1, 2}}],
)
def test_canonical_json_refuses_what_it_cannot_represent_exactly(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)


@given(events)
def test_canonical_json_ignores_key_insertion_order(event: dict[str, Any]) -> None:
    reversed_event = dict(reversed(list(event.items())))
    assert canonical_json(reversed_event) == canonical_json(event)


@given(events)
def test_canonical_json_survives_a_json_round_trip(event: dict[str, Any]) -> None:
    # What the record core relies on: stored as JSON, parsed back, the MAC input is the same.
    encoded = canonical_json(event)
    assert canonical_json(json.loads(encoded)) == encoded
