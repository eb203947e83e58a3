"""The key hierarchy: versioned master keys and one HKDF subkey per purpose (BSI TR-03161 O.Cryp_1, O.Cryp_4).

Reference: compliance.md §3 "Encryption at rest"; HKDF per RFC 5869 (https://www.rfc-editor.org/rfc/rfc5869).

Hierarchy (documented as O.Cryp_4 asks)::

    master key, version N          32 random bytes, from a key file or the environment
     └─ HKDF-SHA256(salt = none, info = "medikus keyring v1" 0x00 purpose)  → 32-byte subkey
         ├─ "envelope:resource-payload"   KEK wrapping the resource-payload DEK (envelope.py)
         ├─ "envelope:index-text"         KEK wrapping the index-text DEK (envelope.py)
         ├─ "blind-index:index-text"      HMAC key of the search tokens (blind_index.py)
         ├─ "audit-hmac"                  the audit hash chain
         └─ "pseudonym:study:<id>"        research pseudonyms, unlinkable between studies

The mechanisms prefix their purpose ("envelope:", "blind-index:") so that one purpose string can
never yield the same key for two mechanisms. No salt: the master key is uniformly random, so
HKDF-Extract needs none (RFC 5869 §3.1).

Several master key versions are held at once: the *current* one derives keys for new data, the
others only read old data. Rotation adds a new version and makes it current
(:func:`rotate_key_file`); data moves to it lazily (``envelope.rewrap``). A key file can also
stage a version (``activate=False``) so every process knows it before any of them writes with it.

Keys never come from the repository: a key file inside a git work tree is refused, as is one that
group or others may access. Losing the key file loses the data: back it up, apart from the
database backups.

Python cannot zeroise secrets: ``bytes`` are immutable, the garbage collector frees (but does not
wipe) them, and copies are made freely (base64 decoding, HKDF, OpenSSL contexts). The keys stay
in process memory for the process's lifetime; protect the process (no core dumps, no swap of
secrets) instead.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "AUDIT_HMAC",
    "ENV_CURRENT",
    "ENV_KEYS",
    "INDEX_TEXT",
    "KEY_BYTES",
    "RESOURCE_PAYLOAD",
    "Keyring",
    "KeyringError",
    "activate_key_version",
    "generate_key_file",
    "load_keyring",
    "pseudonym_purpose",
    "rotate_key_file",
]

KEY_BYTES: Final = 32
RESOURCE_PAYLOAD: Final = "resource-payload"
INDEX_TEXT: Final = "index-text"
AUDIT_HMAC: Final = "audit-hmac"
# ``1:<base64>,2:<base64>`` (or one bare base64 key, version 1); current = highest unless
# ENV_CURRENT names another.
ENV_KEYS: Final = "MEDIKUS_MASTER_KEYS"
ENV_CURRENT: Final = "MEDIKUS_MASTER_KEY_CURRENT"

_FILE_FORMAT: Final = "medikus-master-keys/1"
_INFO_LABEL: Final = b"medikus keyring v1\x00"


class KeyringError(Exception):
    """A key file or environment value is missing, unsafe or malformed, or a version is unknown."""


def pseudonym_purpose(study_id: str) -> str:
    """The purpose string of a study's pseudonym key (compliance.md §3, pseudonymisation)."""
    return f"pseudonym:study:{study_id}"


class Keyring:
    """Master key versions, one of them current; derives per-purpose subkeys (cached)."""

    __slots__ = ("_current", "_keys", "_subkeys")

    def __init__(self, keys: Mapping[int, bytes], current: int) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one master key")
        for version, secret in keys.items():
            if version < 1:
                raise KeyringError(f"master key version {version} is not a positive integer")
            if len(secret) != KEY_BYTES:
                raise KeyringError(f"master key version {version} is not {KEY_BYTES} bytes")
        if current not in keys:
            raise KeyringError(f"current master key version {current} is not in the keyring")
        self._keys: dict[int, bytes] = dict(keys)
        self._current = current
        self._subkeys: dict[tuple[str, int], bytes] = {}

    def __repr__(self) -> str:  # never the secrets
        return f"Keyring(versions={self.versions}, current={self._current})"

    @property
    def current_version(self) -> int:
        return self._current

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def subkey(self, purpose: str, version: int | None = None) -> bytes:
        """The 32-byte key for ``purpose`` under master key ``version`` (default: current)."""
        version = self._current if version is None else version
        cached = self._subkeys.get((purpose, version))
        if cached is not None:
            return cached
        if not purpose:
            raise KeyringError("a key purpose must not be empty")
        master = self._keys.get(version)
        if master is None:
            raise KeyringError(
                f"master key version {version} is not in the keyring {self.versions}"
            )
        info = _INFO_LABEL + purpose.encode()
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)
        self._subkeys[(purpose, version)] = key
        return key

    def with_version(self, version: int, secret: bytes, *, activate: bool = True) -> Keyring:
        """A new keyring with ``version`` added (and made current if ``activate``)."""
        if version in self._keys:
            raise KeyringError(f"master key version {version} exists already")
        return Keyring({**self._keys, version: secret}, version if activate else self._current)

    def with_current(self, version: int) -> Keyring:
        """A new keyring whose current version is ``version`` (which must exist)."""
        return Keyring(self._keys, version)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        """Load a key file; refused if group or others may access it or it lies in a git tree."""
        _refuse_repository(path)
        try:
            # O_NONBLOCK: a FIFO at the path must not hang the start; no effect on files.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise KeyringError(f"cannot open key file {path}: {exc.strerror}") from exc
        try:
            # fstat on the open file: the mode checked is the mode of the bytes read.
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise KeyringError(f"key file {path} is not a regular file")
            if mode & 0o077:
                raise KeyringError(
                    f"key file {path} has mode {stat.S_IMODE(mode):o}: group or others may access "
                    f"it; run chmod 600 {path}"
                )
            with os.fdopen(os.dup(fd), "rb") as file:
                text = file.read()
        finally:
            os.close(fd)
        return cls._from_document(text, path)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Keyring:
        """Load from ``MEDIKUS_MASTER_KEYS`` (and optionally ``MEDIKUS_MASTER_KEY_CURRENT``)."""
        value = environ.get(ENV_KEYS, "").strip()
        if not value:
            raise KeyringError(f"{ENV_KEYS} is not set")
        keys: dict[int, bytes] = {}
        for entry in value.split(","):
            version_text, sep, encoded = entry.strip().rpartition(":")
            version = _parse_version(version_text, ENV_KEYS) if sep else 1
            if version in keys:
                raise KeyringError(f"{ENV_KEYS} names version {version} twice")
            keys[version] = _decode_key(encoded, f"{ENV_KEYS} version {version}")
        current_text = environ.get(ENV_CURRENT, "").strip()
        current = _parse_version(current_text, ENV_CURRENT) if current_text else max(keys)
        return cls(keys, current)

    @classmethod
    def _from_document(cls, text: bytes, path: Path) -> Keyring:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise KeyringError(f"key file {path} is not JSON") from exc
        if not isinstance(document, dict) or document.get("format") != _FILE_FORMAT:
            raise KeyringError(f"key file {path} is not a {_FILE_FORMAT} document")
        entries, current = document.get("keys"), document.get("current")
        if not isinstance(entries, dict) or not isinstance(current, int):
            raise KeyringError(f"key file {path} needs 'keys' (an object) and 'current' (a number)")
        keys: dict[int, bytes] = {}
        for version_text, encoded in entries.items():
            version = _parse_version(version_text, f"key file {path}")
            keys[version] = _decode_key(encoded, f"key file {path} version {version}")
        return cls(keys, current)

    def _document(self) -> bytes:
        entries = {str(v): base64.b64encode(self._keys[v]).decode() for v in self.versions}
        document: dict[str, Any] = {"format": _FILE_FORMAT, "current": self._current}
        document["keys"] = entries
        return (json.dumps(document, indent=2) + "\n").encode()


def load_keyring(path: Path | None, environ: Mapping[str, str]) -> Keyring:
    """The keyring from ``path`` if given, else from the environment."""
    return Keyring.from_file(path) if path is not None else Keyring.from_environment(environ)


def generate_key_file(path: Path) -> Keyring:
    """Create a new key file (mode 600) with master key version 1; never overwrites."""
    _refuse_repository(path)
    keyring = Keyring({1: os.urandom(KEY_BYTES)}, 1)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyringError(f"key file {path} exists already; it is never overwritten") from exc
    with os.fdopen(fd, "wb") as file:
        file.write(keyring._document())
        file.flush()
        os.fsync(file.fileno())
    _fsync_directory(path.parent)
    return keyring


def rotate_key_file(path: Path, *, activate: bool = True) -> Keyring:
    """Add a new master key version to the key file, current unless ``activate`` is false.

    With ``activate=False`` the version is only staged: reload every process, then
    :func:`activate_key_version`, so no process meets data under a version it does not know.
    """
    with _locked(path):
        keyring = Keyring.from_file(path)
        rotated = keyring.with_version(
            max(keyring.versions) + 1, os.urandom(KEY_BYTES), activate=activate
        )
        _replace(path, rotated)
    return rotated


def activate_key_version(path: Path, version: int) -> Keyring:
    """Make an existing (staged) version current in the key file."""
    with _locked(path):
        keyring = Keyring.from_file(path).with_current(version)
        _replace(path, keyring)
    return keyring


def _parse_version(text: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise KeyringError(f"{where}: key version {text!r} is not a positive integer")
    return int(text)


def _decode_key(encoded: object, where: str) -> bytes:
    if not isinstance(encoded, str):
        raise KeyringError(f"{where}: the key is not a base64 string")
    try:
        secret = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise KeyringError(f"{where}: the key is not valid base64") from exc
    if len(secret) != KEY_BYTES:
        raise KeyringError(f"{where}: the key is {len(secret)} bytes, not {KEY_BYTES}")
    return secret


def _refuse_repository(path: Path) -> None:
    # A key file in a git work tree is one `git add .` away from the repository.
    directories = {*path.absolute().parents, *path.resolve().parents}
    for directory in sorted(directories):
        if (directory / ".git").exists():
            raise KeyringError(
                f"key file {path} lies inside the git work tree {directory}; keep keys outside "
                "the repository"
            )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A sidecar lock: the key file itself is replaced (new inode), so it cannot carry the lock.
    # Two rotations at once would otherwise both write "version N+1" and one key would be lost.
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _replace(path: Path, keyring: Keyring) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(keyring._document())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
