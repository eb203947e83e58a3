"""Blind index: equality and prefix tokens, normalisation, key versions (compliance.blind_index)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import unicodedata
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from hypothesis import assume, given
from hypothesis import strategies as st

from compliance.blind_index import BlindIndex, normalize, words
from compliance.keyring import Keyring
from fhir_server.search.values import normalize_string

MASTER_1 = bytes(range(32))
MASTER_2 = bytes(range(32, 64))
KEYRING = Keyring({1: MASTER_1}, 1)
NAME = "Patient.name"

names = st.text(st.characters(categories=["Lu", "Ll", "Nd", "Mn", "Zs", "Pd", "Po"]), max_size=40)


def index(
    keyring: Keyring = KEYRING, *, min_prefix: int = 1, max_prefix: int = 12, token_bytes: int = 16
) -> BlindIndex:
    return BlindIndex(
        keyring, min_prefix=min_prefix, max_prefix=max_prefix, token_bytes=token_bytes
    )


def matches(idx: BlindIndex, stored: list[str], query: str) -> bool:
    """What the record core's lookup answers: every query word has a token among ``stored``."""
    return all(
        set(alternatives) & set(stored) for alternatives in idx.prefix_search(NAME, query).words
    )


def test_equality_token_is_the_documented_hmac() -> None:
    key = KEYRING.subkey("blind-index:index-text")
    message = b"E" + struct.pack(">I", len("kvnr")) + b"kvnr" + b"A123456780"
    digest = hmac.new(key, message, hashlib.sha256).digest()[:16]
    expected = "1." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert index().equality_token("kvnr", "A123456780") == expected
    assert len(expected) == 2 + 22


def test_equality_is_deterministic_and_exact() -> None:
    idx = index()
    token = idx.equality_token("kvnr", "A123456780")
    assert idx.equality_token("kvnr", "A123456780") == token
    assert index().equality_token("kvnr", "A123456780") == token  # another process
    assert idx.equality_token("kvnr", "a123456780") != token  # token search is case-sensitive
    assert idx.equality_token("kvnr", "A12345678") != token
    assert idx.equality_search("kvnr", "A123456780") == (token,)


@given(st.text(), st.text())
def test_equal_tokens_iff_equal_values(a: str, b: str) -> None:
    idx = index()
    assert (idx.equality_token("c", a) == idx.equality_token("c", b)) == (a == b)


@given(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_contexts_are_unlinkable(context_a: str, context_b: str, value: str) -> None:
    assume(context_a != context_b)
    idx = index()
    assert idx.equality_token(context_a, value) != idx.equality_token(context_b, value)
    # Context and value boundaries cannot shift: ("ab", "c") differs from ("a", "bc").
    assert idx.equality_token(context_a + "x", value) != idx.equality_token(context_a, "x" + value)


def test_equality_and_prefix_tokens_differ() -> None:
    idx = index()
    assert idx.equality_token(NAME, "muller") not in idx.prefix_tokens(NAME, "Müller")


def test_other_key_gives_other_tokens() -> None:
    other = Keyring({1: MASTER_2}, 1)
    assert index().equality_token("kvnr", "A1") != index(other).equality_token("kvnr", "A1")
    assert set(index().prefix_tokens(NAME, "Anna")).isdisjoint(
        index(other).prefix_tokens(NAME, "Anna")
    )


def test_prefix_tokens_of_each_word() -> None:
    idx = index()
    stored = idx.prefix_tokens(NAME, "Anna-Lena Müller")
    # anna: 4, lena: 4, muller: 6 prefixes; "a" of anna and "l"… are not shared: 14 distinct.
    assert len(stored) == 4 + 4 + 6
    for query in ["mül", "MÜL", "mul", "Muller", "m", "anna", "Lena", "ann lena", "anna-lena m"]:
        assert matches(idx, stored, query), query
    for query in ["mülle r", "mueller", "ullr", "anna x", "lenam", "müllers"]:
        assert not matches(idx, stored, query), query


def test_prefixes_are_capped_and_long_queries_truncated() -> None:
    idx = index(max_prefix=5)
    stored = idx.prefix_tokens(NAME, "Schmidtbauer")
    assert len(stored) == 5
    query = idx.prefix_search(NAME, "schmidtbaum")
    assert query.truncated
    assert matches(idx, stored, "schmidtbaum")  # a superset: the core filters after decrypting
    assert not idx.prefix_search(NAME, "schmi").truncated
    assert not matches(idx, stored, "schma")


def test_min_prefix_refuses_short_searches() -> None:
    idx = index(min_prefix=2)
    stored = idx.prefix_tokens(NAME, "Müller")
    assert len(stored) == 5
    assert matches(idx, stored, "mü")
    with pytest.raises(ValueError, match="at least 2 characters"):
        idx.prefix_search(NAME, "m")
    with pytest.raises(ValueError, match="at least one letter"):
        idx.prefix_search(NAME, " - ")


@pytest.mark.parametrize(
    ("min_prefix", "max_prefix", "token_bytes", "message"),
    [(0, 12, 16, "min_prefix"), (5, 4, 16, "min_prefix"), (1, 12, 4, "token_bytes")],
)
def test_invalid_options_are_refused(
    min_prefix: int, max_prefix: int, token_bytes: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        index(min_prefix=min_prefix, max_prefix=max_prefix, token_bytes=token_bytes)


@given(st.text())
def test_normalisation_is_idempotent(text: str) -> None:
    assert normalize(normalize(text)) == normalize(text)


@given(st.text())
def test_normalisation_is_no_finer_than_the_record_core_string_index(text: str) -> None:
    # Whatever the string index folds together, the blind index folds together too.
    assert normalize(normalize_string(text)) == normalize(text)


@given(names)
def test_normalisation_equals_the_string_index_on_names(text: str) -> None:
    assume(normalize_string(normalize_string(text)) == normalize_string(text))
    assert normalize(text) == normalize_string(text)


def test_record_core_string_search_is_case_insensitive_for_compatibility_capitals(
    client: TestClient,
) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "\u212cerg"}]}  # ℬerg
    assert client.post("/fhir/Patient", json=patient).status_code == 201
    found = client.get("/fhir/Patient", params={"name": "berg"}).json()
    assert found["total"] == 1


def test_normalisation_examples() -> None:
    assert normalize("Müller") == "muller"
    assert normalize("STRAßE") == "strasse"
    assert normalize("Ångström") == "angstrom"
    assert words("  O'Brien-Smith, Anna ") == ["o", "brien", "smith", "anna"]


spellings = st.sampled_from(
    [str, str.upper, str.lower, str.title, lambda s: unicodedata.normalize("NFD", s)]
)


@given(names, spellings, names)
def test_prefix_search_finds_every_fhir_string_match(
    query: str, spelling: Callable[[str], str], rest: str
) -> None:
    # FHIR string search: the normalised value starts with the normalised query. Every such
    # value must be found (the token lookup may find more; never fewer).
    assume(words(query))
    value = spelling(query) + rest
    assume(normalize_string(value).startswith(normalize_string(query)))
    idx = index(max_prefix=6)
    assert matches(idx, idx.prefix_tokens(NAME, value), query)


@given(names, st.data())
def test_every_word_prefix_is_found(value: str, data: st.DataObject) -> None:
    assume(words(value))
    word = data.draw(st.sampled_from(words(value)))
    prefix = word[: data.draw(st.integers(1, len(word)))]
    idx = index()
    assert matches(idx, idx.prefix_tokens(NAME, value), prefix)


def test_rotation_searches_all_versions_until_reindexed() -> None:
    v1 = Keyring({1: MASTER_1}, 1)
    v2 = v1.with_version(2, MASTER_2)
    old_eq = index(v1).equality_token("kvnr", "A1")
    old_prefix = index(v1).prefix_tokens(NAME, "Müller")
    idx = index(v2)
    new_eq = idx.equality_token("kvnr", "A1")
    assert new_eq.startswith("2.") and new_eq != old_eq
    assert idx.equality_search("kvnr", "A1") == (old_eq, new_eq)
    assert matches(idx, old_prefix, "mül")
    assert matches(idx, idx.prefix_tokens(NAME, "Müller"), "mül")
    assert idx.needs_reindex(old_eq) and all(idx.needs_reindex(t) for t in old_prefix)
    assert not idx.needs_reindex(new_eq)
    assert idx.equality_token("kvnr", "A1", version=1) == old_eq
