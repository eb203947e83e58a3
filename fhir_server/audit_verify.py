"""Verification of the stored audit trail (``medikus audit verify``).

Streams ``audit_log`` in ``seq`` order (pages of ``page`` links, constant memory), fetches each
link's AuditEvent resource through the store (decrypted as any read) and hands the records to
compliance.audit_chain.verify with the keyring's HMAC keys and the signed heads: those stored in
the database and any kept outside it (``anchors``: JSON lines of SignedHead.to_json, the copies
that make a rewritten or truncated chain visible even to an attacker holding the key file). The
result names the first bad record: modified, deleted, reordered, inserted or truncated, or a
forged head (bad-signature). An AuditEvent missing or changed after it was chained (a later
version) is a modification of its record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from compliance.audit_chain import AuditRecord, SignedHead, VerifyResult, verify
from compliance.keyring import Keyring
from fhir_server.audit_keys import AuditKeys
from fhir_server.store import AuditLink, AuditLog, Store, StoredVersion, StoreUnavailable

__all__ = ["TrailReport", "open_trail", "read_anchors", "verify_trail"]


@dataclass(frozen=True, slots=True)
class TrailReport:
    """The verification result, with how many signed heads came from where."""

    result: VerifyResult
    stored_heads: int
    anchors: int

    @property
    def ok(self) -> bool:
        return self.result.ok


def verify_trail(
    store: Store,
    log: AuditLog,
    keys: AuditKeys,
    *,
    anchors: Iterable[SignedHead] = (),
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    page: int = 1000,
) -> TrailReport:
    """Verifies the chain; ``public_keys`` (e.g. exported earlier) replace the keys derived
    from the keyring for checking head signatures."""
    stored = log.signed_heads()
    outside = list(anchors)
    notes: dict[int, str] = {}
    result = verify(
        _records(store, log, page, notes),
        keys.hmac_keys(),
        [*stored, *outside],
        public_keys if public_keys is not None else keys.public_keys(),
    )
    if result.index is not None and result.index in notes:
        result = replace(result, detail=f"{result.detail} ({notes[result.index]})")
    return TrailReport(result, len(stored), len(outside))


def _records(
    store: Store, log: AuditLog, page: int, notes: dict[int, str]
) -> Iterator[AuditRecord]:
    after = 0
    while True:
        links = log.links(after, page)
        if not links:
            return
        found = _fetch(store, links, notes)
        for link in links:
            version = found.get(link.event_id)
            if version is None or version.content is None:
                notes.setdefault(link.seq, f"AuditEvent/{link.event_id} is missing or deleted")
                event: dict[str, object] = {}
            else:
                if version.version != 1:
                    notes[link.seq] = (
                        f"AuditEvent/{link.event_id} was changed after it was chained "
                        f"(version {version.version})"
                    )
                event = orjson.loads(version.content)
            yield AuditRecord(link.seq, link.key_version, event, link.hash)
        after = links[-1].seq


def _fetch(store: Store, links: list[AuditLink], notes: dict[int, str]) -> dict[str, StoredVersion]:
    try:
        return {v.id: v for v in store.fetch([("AuditEvent", k.event_id) for k in links])}
    except StoreUnavailable:
        raise
    except Exception:  # a row that no longer decrypts (its ciphertext was changed): find it
        found: dict[str, StoredVersion] = {}
        for link in links:
            try:
                found.update((v.id, v) for v in store.fetch([("AuditEvent", link.event_id)]))
            except StoreUnavailable:
                raise
            except Exception:
                notes[link.seq] = f"AuditEvent/{link.event_id} does not decrypt"
        return found


def read_anchors(path: Path) -> list[SignedHead]:
    """Signed heads kept outside the database: one JSON object per line (blank lines skipped);
    ``ValueError`` names the first malformed line."""
    heads = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            heads.append(SignedHead.from_json(orjson.loads(line)))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"{path}:{number}: not a signed head ({exc})") from exc
    return heads


def open_trail(database_url: str, keyring: Keyring) -> tuple[Store, AuditLog]:
    """The store and audit log of a database, without migrating it (for tools such as
    ``medikus audit verify``); ``keyring`` decrypts the stored AuditEvents."""
    from fhir_server._sqlstore import SqlAuditLog, SqlStore

    store = SqlStore.open(database_url, pool_size=2, migrate_schema=False, keyring=keyring)
    log = SqlAuditLog(store)
    try:
        log.head()  # the audit tables exist (the schema is migrated)
    except Exception:
        store.close()
        raise
    return store, log
