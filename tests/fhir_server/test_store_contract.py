"""The Store port's contract (fhir_server/store.py), the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fhir_server._sqlstore import SqlStore
from fhir_server.criteria import Criterion, Match, Token
from fhir_server.search.rows import IndexRows, TokenRow
from fhir_server.search.sql import count_statement, match_ids
from fhir_server.store import HistoryQuery, NewVersion, Store, VersionConflict


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    opened = SqlStore.open(database_url)
    yield opened
    opened.close()


def version(
    id: str,
    n: int,
    *,
    prior: int | None = None,
    content: bytes | None = b"{}",
    method: str = "PUT",
    at: int = 1_000,
    code: str | None = None,
) -> NewVersion:
    rows = IndexRows.empty()
    if code is not None:
        rows = IndexRows(tokens=(TokenRow("identifier", "urn:x", code, None),))
    return NewVersion("Patient", id, n, at + n, method, content, rows, prior=prior)


def test_put_then_read_current_and_every_version(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.put(version("a", 1, content=b'{"v":1}'))
    with store.unit_of_work() as uow:
        current = uow.current("Patient", "a")
        assert current is not None and current.version == 1
        uow.put(version("a", 2, prior=1, content=b'{"v":2}'))
    read = store.read("Patient", "a")
    assert read is not None and (read.version, read.content) == (2, b'{"v":2}')
    first = store.vread("Patient", "a", 1)
    assert first is not None and first.content == b'{"v":1}'
    assert store.vread("Patient", "a", 3) is None
    assert store.read("Patient", "missing") is None


def test_stale_prior_is_a_version_conflict_and_rolls_back(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.put(version("a", 1))
    with pytest.raises(VersionConflict), store.unit_of_work() as uow:
        uow.put(version("b", 1, method="POST"))
        uow.put(version("a", 2, prior=5))
    assert store.read("Patient", "b") is None  # the whole unit of work is gone
    current = store.read("Patient", "a")
    assert current is not None and current.version == 1


def test_creating_an_existing_id_is_a_version_conflict(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.put(version("a", 1))
    with pytest.raises(VersionConflict), store.unit_of_work() as uow:
        uow.put(version("a", 1))


def test_exception_rolls_back_everything(store: SqlStore) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        uow.put(version("a", 1, method="POST"))
        uow.flush()  # written to the database, not yet committed
        raise RuntimeError("fault injected")
    assert store.read("Patient", "a") is None
    assert store.history(HistoryQuery()) == []


def test_delete_is_a_version_and_hides_from_existing_and_match(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.put(version("a", 1, code="1"))
        uow.put(version("b", 1, code="1"))
    criteria: list[Criterion] = [Match("identifier", "token", None, (Token("urn:x", "1", True),))]
    with store.unit_of_work() as uow:
        assert sorted(match_ids(uow, "Patient", criteria, 10)) == ["a", "b"]
        uow.put(version("a", 2, prior=1, content=None, method="DELETE"))
        assert uow.existing({("Patient", "a"), ("Patient", "b"), ("Patient", "c")}) == {
            ("Patient", "b")
        }
        assert match_ids(uow, "Patient", criteria, 10) == ["b"]
    deleted = store.read("Patient", "a")
    assert deleted is not None and deleted.deleted and deleted.content is None
    assert store.select(count_statement("Patient", criteria)) == [(1,)]


def test_history_newest_first_with_since_at_and_keyset_paging(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.put(version("a", 1, at=100))
        uow.put(version("b", 1, at=200))
    with store.unit_of_work() as uow:
        uow.put(version("a", 2, prior=1, at=300))
    everything = store.history(HistoryQuery())
    assert [(v.id, v.version) for v in everything] == [("a", 2), ("b", 1), ("a", 1)]
    page = store.history(HistoryQuery(count=2))
    rest = store.history(HistoryQuery(count=2, before_seq=page[-1].seq))
    assert [(v.id, v.version) for v in page + rest] == [("a", 2), ("b", 1), ("a", 1)]
    assert [v.version for v in store.history(HistoryQuery(type="Patient", id="a", since=302))] == [
        2
    ]
    at = store.history(HistoryQuery(type="Patient", at=250))
    assert sorted((v.id, v.version) for v in at) == [("a", 1), ("b", 1)]


def test_index_rows_are_replaced_on_update(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.put(version("a", 1, code="old"))
    with store.unit_of_work() as uow:
        uow.put(version("a", 2, prior=1, code="new"))

    def hits(code: str) -> int:
        token = Match("identifier", "token", None, (Token(None, code, False),))
        return int(store.select(count_statement("Patient", [token]))[0][0])

    assert (hits("old"), hits("new")) == (0, 1)


def test_ping(store: Store) -> None:
    store.ping()
