"""Resource payloads encrypted at rest, and key rotation without downtime (GDPR Art. 32, O.Data_1).

Reference: compliance.md §3 "Encryption at rest"; the envelope itself is ``compliance.envelope``
(AES-256-GCM, a data key per purpose and master key version, wrapped in the ``data_key`` table).

Every ``resource_version.content`` is an envelope blob whose associated data binds the table, the
resource's type, id and version, the column and the key version: a blob copied to another row
does not decrypt (a swapped or replayed version is detected, never served). Decryption gives back
the exact bytes written, so reads still serve the stored JSON as it is.

Payloads written before the database was first opened with keys stay readable in plain text —
only those: ``protection_state.plaintext_below`` is the highest ``seq`` such a row can have, so
plain text in any later row is refused as tampering. :func:`rewrap` encrypts them.

Rotation (:func:`rewrap`, run while the server runs): after a new master key version became
current (``compliance.keyring.rotate_key_file``, every process restarted), payloads under older
versions are re-encrypted and the blind-index tokens of every resource re-computed, in small
transactions. Old data stays readable throughout (the keyring still holds the old version, and
searches look up the tokens of every version). When :func:`rewrap` has nothing left to do, the
old version can be removed from the key file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from compliance.envelope import Aad, DataKeyStore, DecryptionError, Envelope, key_version
from compliance.keyring import RESOURCE_PAYLOAD, Keyring
from fhir_server.search.rows import IndexRows

__all__ = [
    "PayloadCipher",
    "Payloads",
    "PlainPayloads",
    "RewrapStore",
    "payload_aad",
    "rewrap",
]

TABLE: Final = "resource_version"
_PLAIN_JSON: Final = b"{"


def payload_aad(type: str, id: str, version: int) -> Aad:
    """Where a payload is stored: its table, resource and version, and the column."""
    return Aad(TABLE, f"{type}/{id}/_history/{version}", "content")


class Payloads(Protocol):
    """How payloads are stored: sealed on write, opened on read."""

    def seal(self, type: str, id: str, version: int, content: bytes) -> bytes: ...

    def open(self, type: str, id: str, version: int, seq: int, stored: bytes) -> bytes: ...


class PlainPayloads:
    """A store without keys (tests, tools): payloads in plain text."""

    def seal(self, type: str, id: str, version: int, content: bytes) -> bytes:
        return content

    def open(self, type: str, id: str, version: int, seq: int, stored: bytes) -> bytes:
        if stored[:1] != _PLAIN_JSON:
            raise DecryptionError(
                f"{type}/{id}/_history/{version} is encrypted: open the record with its key file"
            )
        return stored


class PayloadCipher:
    """Payloads under the AES-GCM envelope of purpose "resource-payload"."""

    __slots__ = ("envelope", "plaintext_below")

    def __init__(self, keyring: Keyring, keys: DataKeyStore, plaintext_below: int) -> None:
        self.envelope = Envelope(keyring, keys, RESOURCE_PAYLOAD)
        self.plaintext_below = plaintext_below

    def seal(self, type: str, id: str, version: int, content: bytes) -> bytes:
        return self.envelope.encrypt(content, payload_aad(type, id, version))

    def open(self, type: str, id: str, version: int, seq: int, stored: bytes) -> bytes:
        if stored[:1] == _PLAIN_JSON:
            if seq <= self.plaintext_below:
                return stored  # written before encryption was switched on; rewrap encrypts it
            raise DecryptionError(
                f"{type}/{id}/_history/{version} holds plain text where only ciphertext can be: "
                "the database was altered"
            )
        return self.envelope.decrypt(stored, payload_aad(type, id, version))

    def needs_rewrap(self, stored: bytes) -> bool:
        return stored[:1] == _PLAIN_JSON or self.envelope.needs_rewrap(stored)

    def rewrap(self, type: str, id: str, version: int, seq: int, stored: bytes) -> bytes:
        """``stored`` under the current key version (plain text: encrypted)."""
        if stored[:1] == _PLAIN_JSON:
            return self.seal(type, id, version, self.open(type, id, version, seq, stored))
        return self.envelope.rewrap(stored, payload_aad(type, id, version))


def stored_key_version(stored: bytes) -> int | None:
    """The master key version of a stored payload (None: plain text)."""
    return None if stored[:1] == _PLAIN_JSON else key_version(stored)


class RewrapStore(Protocol):
    """What :func:`rewrap` needs of the store (``fhir_server._sqlstore.SqlStore``)."""

    def rewrap_payloads(self, after: int, batch: int) -> tuple[int, int | None]:
        """Re-encrypts up to ``batch`` payloads with ``seq > after`` not under the current
        version: (rows changed, the last seq looked at, None when none was left)."""
        ...

    def stale_index(
        self, after: tuple[str, str] | None, batch: int
    ) -> list[tuple[str, str, int, bytes]]:
        """Current resources after ``after`` whose tokens are not under the current version:
        (type, id, version, payload)."""
        ...

    def replace_index(self, items: Sequence[tuple[str, str, int, IndexRows]]) -> int:
        """Replaces the index rows of each (type, id) still at ``version``; how many."""
        ...

    def finish_plaintext(self) -> None:
        """Notes that no payload is in plain text any more (when none is)."""
        ...


def rewrap(
    store: RewrapStore,
    extract: Callable[[dict[str, Any]], IndexRows],
    parse: Callable[[bytes], dict[str, Any]],
    batch: int = 500,
) -> int:
    """Brings every payload and index token to the current master key version; the number of
    rows changed (0: nothing was left under an older version)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    changed, after_seq = 0, 0
    while True:
        count, last = store.rewrap_payloads(after_seq, batch)
        changed += count
        if last is None:
            break
        after_seq = last
    after: tuple[str, str] | None = None
    while stale := store.stale_index(after, batch):
        items = [(t, i, v, extract(parse(content))) for t, i, v, content in stale]
        changed += store.replace_index(items)
        after = (stale[-1][0], stale[-1][1])
    store.finish_plaintext()
    return changed
