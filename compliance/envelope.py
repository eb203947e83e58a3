"""AES-256-GCM envelope encryption of stored values, bound to their place (GDPR Art. 32, O.Data_1).

Reference: compliance.md §3 "Encryption at rest"; AES-GCM per NIST SP 800-38D; AES key wrap per
RFC 3394 (https://www.rfc-editor.org/rfc/rfc3394).

Keys: for each purpose ("resource-payload", "index-text") and master key version there is one
data key (DEK, 32 random bytes). It is stored only wrapped (AES key wrap) under the KEK
``keyring.subkey("envelope:" + purpose, version)`` in a :class:`DataKeyStore` the record core
implements (a table next to the data); a stolen database holds wrapped DEKs that are useless
without the key file. Deleting a DEK row makes everything under it unreadable (crypto-shredding).

Blob format (33 bytes overhead)::

    offset 0   1 byte    format version (1)
           1   4 bytes   key version (big-endian): the master key version of the DEK
           5  12 bytes   nonce, random (96 bits, NIST SP 800-38D §8.2.2)
          17   n+16      ciphertext and GCM tag

The associated data is the header (format and key version), the purpose, and the table, row and
column of :class:`Aad`: a blob copied to another row or column, or relabelled with another key
version, does not decrypt.

Rotation without downtime: new blobs use the keyring's current version; older blobs stay
readable while their master key version is in the keyring; :meth:`Envelope.rewrap` re-encrypts
one blob under the current version (a background job walks the table with
:meth:`Envelope.needs_rewrap`). Random nonces allow at most 2^32 encryptions per DEK (SP 800-38D
§8.3): rotate well before that (each rotation brings fresh DEKs).
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from compliance.keyring import Keyring, KeyringError

__all__ = [
    "FORMAT_VERSION",
    "OVERHEAD",
    "Aad",
    "DataKeyStore",
    "DecryptionError",
    "Envelope",
    "EnvelopeError",
    "MemoryDataKeyStore",
    "key_version",
]

FORMAT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">BI")
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_PREFIX_BYTES: Final = _HEADER.size + _NONCE_BYTES
OVERHEAD: Final = _PREFIX_BYTES + _TAG_BYTES
_DEK_BYTES: Final = 32
_FIELD: Final = struct.Struct(">I")


class EnvelopeError(Exception):
    """Encryption at rest failed (a data key cannot be loaded or created)."""


class DecryptionError(EnvelopeError):
    """A blob cannot be decrypted: malformed, unknown key version, missing data key, or it does
    not authenticate (tampered, or read with another table, row, column or purpose)."""


@dataclass(frozen=True, slots=True)
class Aad:
    """Where a blob is stored; bound into its tag so it decrypts only there."""

    table: str
    row: str
    column: str

    def encode(self, header: bytes, purpose: bytes) -> bytes:
        # Length prefixes: ("ab", "c") and ("a", "bc") must differ.
        parts = (purpose, self.table.encode(), self.row.encode(), self.column.encode())
        return header + b"".join(_FIELD.pack(len(part)) + part for part in parts)


class DataKeyStore(Protocol):
    """Wrapped data keys, one per (purpose, key version); the record core keeps them in a table."""

    def load(self, purpose: str, version: int) -> bytes | None:
        """The wrapped key, or None if there is none."""
        ...

    def insert_if_absent(self, purpose: str, version: int, wrapped: bytes) -> bytes:
        """Store ``wrapped`` unless a key exists already; return the stored one (the first
        writer wins, so concurrent processes agree on one DEK)."""
        ...


class MemoryDataKeyStore:
    """A :class:`DataKeyStore` in a dict (tests, tools)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()

    def load(self, purpose: str, version: int) -> bytes | None:
        return self._keys.get((purpose, version))

    def insert_if_absent(self, purpose: str, version: int, wrapped: bytes) -> bytes:
        with self._lock:
            return self._keys.setdefault((purpose, version), wrapped)

    def delete(self, purpose: str, version: int) -> None:
        """Crypto-shredding: everything under this DEK becomes unreadable."""
        with self._lock:
            self._keys.pop((purpose, version), None)


def key_version(blob: bytes) -> int:
    """The master key version a blob was written under."""
    if len(blob) < OVERHEAD:
        raise DecryptionError(
            f"blob of {len(blob)} bytes is shorter than the {OVERHEAD}-byte minimum"
        )
    fmt, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_VERSION:
        raise DecryptionError(f"blob format version {fmt} is unknown (expected {FORMAT_VERSION})")
    return int(version)


class Envelope:
    """Encrypts and decrypts the values of one purpose (e.g. "resource-payload")."""

    __slots__ = ("_aeads", "_keyring", "_purpose", "_purpose_bytes", "_store")

    def __init__(self, keyring: Keyring, store: DataKeyStore, purpose: str) -> None:
        if not purpose:
            raise EnvelopeError("an envelope purpose must not be empty")
        self._keyring = keyring
        self._store = store
        self._purpose = purpose
        self._purpose_bytes = purpose.encode()
        self._aeads: dict[int, AESGCM] = {}

    @property
    def purpose(self) -> str:
        return self._purpose

    def encrypt(self, plaintext: bytes, aad: Aad) -> bytes:
        """``plaintext`` sealed under the current key version, bound to ``aad``."""
        version = self._keyring.current_version
        aead = self._aeads.get(version) or self._data_key(version, create=True)
        header = _HEADER.pack(FORMAT_VERSION, version)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = aead.encrypt(nonce, plaintext, aad.encode(header, self._purpose_bytes))
        return header + nonce + sealed

    def decrypt(self, blob: bytes, aad: Aad) -> bytes:
        """The plaintext of ``blob``; :class:`DecryptionError` if it is not the blob of ``aad``."""
        version = key_version(blob)
        aead = self._aeads.get(version) or self._data_key(version, create=False)
        associated = aad.encode(blob[: _HEADER.size], self._purpose_bytes)
        try:
            return aead.decrypt(
                blob[_HEADER.size : _PREFIX_BYTES], blob[_PREFIX_BYTES:], associated
            )
        except InvalidTag:
            raise DecryptionError(
                f"blob does not authenticate for {self._purpose} {aad.table}/{aad.column} row "
                f"{aad.row!r}: tampered, or stored at another place"
            ) from None

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether ``blob`` is under an older key version than the current one."""
        return key_version(blob) != self._keyring.current_version

    def rewrap(self, blob: bytes, aad: Aad) -> bytes:
        """``blob`` re-encrypted under the current key version (unchanged if it is already)."""
        if not self.needs_rewrap(blob):
            return blob
        return self.encrypt(self.decrypt(blob, aad), aad)

    def _data_key(self, version: int, *, create: bool) -> AESGCM:
        try:
            kek = self._keyring.subkey("envelope:" + self._purpose, version)
        except KeyringError as exc:
            raise DecryptionError(
                f"blob is under master key version {version}, which the keyring "
                f"{self._keyring.versions} does not hold"
            ) from exc
        wrapped = self._store.load(self._purpose, version)
        if wrapped is None:
            if not create:
                raise DecryptionError(
                    f"the {self._purpose} data key of version {version} is missing (shredded?)"
                )
            fresh = aes_key_wrap(kek, os.urandom(_DEK_BYTES))
            wrapped = self._store.insert_if_absent(self._purpose, version, fresh)
        try:
            dek = aes_key_unwrap(kek, wrapped)
        except InvalidUnwrap as exc:
            error = DecryptionError if not create else EnvelopeError
            raise error(
                f"the stored {self._purpose} data key of version {version} does not unwrap under "
                "this master key: wrong key file, or the key row was altered"
            ) from exc
        aead = self._aeads[version] = AESGCM(dek)
        return aead
