"""The tamper-evident audit log: a chained HMAC over the events, heads signed with Ed25519.

Reference: compliance.md §3 "Tamper-evident audit chain"; HMAC per RFC 2104, Ed25519 per
RFC 8032, canonical JSON per RFC 8785 (https://www.rfc-editor.org/rfc/rfc8785) for the subset
described at :func:`canonical_json`.

The chain (records are numbered from 1; ``h_0`` is :data:`GENESIS`)::

    h_i = HMAC-SHA256(k_v, h_{i-1} || canonical_json(e_i))

A record is ``(seq, key_version, event, hash)``: ``seq`` is its position (monotonic, no gaps),
``key_version`` names the HMAC key (the "audit-hmac" subkey of that master key version, so a
master key rotation starts using a new key without breaking the chain). ``seq`` and
``key_version`` are not MAC'd: the chain fixes each event's position, and a wrong
``key_version`` fails the MAC. Appending needs only the previous head (:func:`append`);
verification streams the records once, in ``seq`` order, in constant memory (:func:`verify`).

HMAC alone lets whoever holds the key rewrite the whole chain, and truncating the tail leaves a
valid chain. So the head is signed from time to time (:func:`sign_head`) and the
:class:`SignedHead` is kept outside the database too (WORM storage, a ticket, e-mail): the chain
must reach every signed head and hash to the signed value there.

What :func:`verify` reports (the first problem; ``index`` is the ``seq`` expected there, so
records ``1 .. index-1`` are proven good):

- ``bad-signature``: a signed head does not verify with the public key named by its ``key_id``
  (forged or altered head); reported before the records are read, at the head's index.
- ``modified``: the record at ``index`` fails its MAC (event, hash or key version changed) or
  authenticates but carries another ``seq``.
- ``inserted``: an extra record (forged, or a copy of an earlier one) sits at ``index``: the next
  record is the genuine continuation, or its ``seq`` was already verified.
- ``reordered``: the record at ``index`` belongs later, and record ``index`` (by ``seq``, or by
  content: the genuine continuation) appears later; this includes contents swapped between
  ``seq`` numbers.
- ``deleted``: ``seq`` jumps past ``index`` and record ``index`` appears nowhere.
- ``truncated``: the chain ends before a signed head's index, or its hash at a signed index
  differs from the signed one (the tail was cut and regrown, or the chain rewritten with the key).

Limits: records after the last signed head can be cut off unnoticed (sign often). Records
renumbered after a deletion are reported as ``modified`` at the first renumbered index, and a
forged record appended at the very end as ``modified`` too (nothing follows it to show it is
extra): the verifier sees changed records, not the intent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import json.encoder
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "GENESIS",
    "GENESIS_HEAD",
    "AuditRecord",
    "AuditStore",
    "ChainHead",
    "MemoryAuditStore",
    "Problem",
    "SignedHead",
    "VerifyResult",
    "append",
    "canonical_json",
    "ed25519_key_id",
    "log_event",
    "sign_head",
    "verify",
    "verify_head_signature",
]

GENESIS: Final = hashlib.sha256(b"medikus audit chain v1 genesis").digest()
HASH_BYTES: Final = 32
MIN_KEY_BYTES: Final = 32
# JCS serialises numbers as IEEE doubles; beyond 2**53 an integer would not round-trip.
_MAX_SAFE_INT: Final = 2**53 - 1
_HEAD_DOMAIN: Final = b"medikus audit head v1\x00"
# What json.dumps(ensure_ascii=False) uses (C-accelerated): escapes only '"', '\\' and control
# characters, short forms for \b \f \n \r \t and lower-case \u00XX otherwise, as JCS does.
_quote: Final = json.encoder.encode_basestring


def canonical_json(value: object) -> bytes:
    """UTF-8 bytes of ``value`` per RFC 8785 (JCS), restricted to JSON without floats.

    Object keys are sorted by their UTF-16 code units (RFC 8785 §3.2.3), no whitespace, strings
    escaped as ECMAScript's JSON.stringify does (only ``"``, ``\\``, and control characters;
    ``\\u00XX`` lower-case). Refused with ``TypeError``/``ValueError`` rather than guessed:
    floats (JCS needs ECMAScript number formatting, and AuditEvents carry none), integers
    beyond ±(2**53-1), non-string keys, lone surrogates, and types other than ``dict``,
    ``list``/``tuple``, ``str``, ``int``, ``bool`` and ``None``.
    """
    parts: list[str] = []
    _encode(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("lone surrogate in a string: not representable in UTF-8") from exc


def _encode(value: object, out: list[str]) -> None:
    # Most frequent first: an AuditEvent is mostly objects and strings.
    if isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, dict):
        _encode_object(value, out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif value is None or isinstance(value, bool):
        out.append("null" if value is None else "true" if value else "false")
    elif isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise ValueError(f"integer {value} is outside the range JCS can represent exactly")
        out.append(str(int(value)))
    else:
        raise TypeError(f"{type(value).__name__} is not allowed in canonical JSON")


def _encode_object(value: dict[object, object], out: list[str]) -> None:
    keys: list[str] = []
    ascii_only = True
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"object key {key!r} is not a string")
        keys.append(key)
        ascii_only = ascii_only and key.isascii()
    # For ASCII keys code-point order is UTF-16 order; only others pay for the encoding.
    keys.sort(key=None if ascii_only else _utf16_order)
    out.append("{")
    for i, key in enumerate(keys):
        if i:
            out.append(",")
        out.append(_quote(key))
        out.append(":")
        _encode(value[key], out)
    out.append("}")


def _utf16_order(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare like the code-unit sequence; surrogatepass keeps lone
    # surrogates sortable so that the UTF-8 step reports them.
    return key.encode("utf-16-be", "surrogatepass")


# --- records and appending ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record's position and hash (``index`` 0 and :data:`GENESIS` when empty)."""

    index: int
    hash: bytes


GENESIS_HEAD: Final = ChainHead(0, GENESIS)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored link of the chain; ``event`` is a JSON object (a FHIR AuditEvent)."""

    seq: int
    key_version: int
    event: Mapping[str, object]
    hash: bytes


def _mac(key: bytes, prev_hash: bytes, event: Mapping[str, object]) -> bytes:
    return hmac.new(key, prev_hash + canonical_json(event), hashlib.sha256).digest()


def append(
    prev_hash: bytes, seq: int, event: Mapping[str, object], key: bytes, key_version: int
) -> AuditRecord:
    """The record that follows ``prev_hash`` at position ``seq`` (the caller stores it).

    ``key`` is the HMAC key of ``key_version`` (≥ 32 bytes). The caller must serialise appends
    (one writer per chain, e.g. a row lock on the head or a unique ``seq`` plus retry).
    """
    if len(prev_hash) != HASH_BYTES:
        raise ValueError(f"prev_hash must be {HASH_BYTES} bytes, got {len(prev_hash)}")
    if seq < 1:
        raise ValueError(f"seq must be ≥ 1 (h_0 is the genesis value), got {seq}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the HMAC key must have at least {MIN_KEY_BYTES} bytes")
    return AuditRecord(seq, key_version, event, _mac(key, prev_hash, event))


# --- signed heads ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedHead:
    """An Ed25519 signature over (index, head_hash, signed_at, key_id); keep copies off-site."""

    index: int
    head_hash: bytes
    signed_at: datetime
    signature: bytes
    key_id: str

    def signed_bytes(self) -> bytes:
        return _head_message(self.index, self.head_hash, self.signed_at, self.key_id)

    def to_json(self) -> dict[str, str | int]:
        """A JSON object for the off-site copy (one line per head in a WORM file)."""
        return {
            "index": self.index,
            "head_hash": self.head_hash.hex(),
            "signed_at": self.signed_at.isoformat(),
            "signature": _b64url(self.signature),
            "key_id": self.key_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> SignedHead:
        """Parse :meth:`to_json` output; ``ValueError`` if a field is missing or malformed."""
        try:
            index, head_hash = data["index"], data["head_hash"]
            signed_at, signature, key_id = data["signed_at"], data["signature"], data["key_id"]
        except KeyError as exc:
            raise ValueError(f"signed head lacks {exc}") from exc
        if not (isinstance(index, int) and isinstance(key_id, str)):
            raise ValueError("signed head index must be an integer and key_id a string")
        if not (isinstance(head_hash, str) and isinstance(signed_at, str)):
            raise ValueError("signed head head_hash and signed_at must be strings")
        if not isinstance(signature, str):
            raise ValueError("signed head signature must be a string")
        padded = signature + "=" * (-len(signature) % 4)
        try:
            raw_signature = base64.b64decode(padded, altchars=b"-_", validate=True)
        except binascii.Error as exc:
            raise ValueError("signed head signature is not base64url") from exc
        when = datetime.fromisoformat(signed_at)
        if when.tzinfo is None:
            raise ValueError("signed head signed_at lacks a time zone")
        return cls(index, bytes.fromhex(head_hash), when, raw_signature, key_id)


def _head_message(index: int, head_hash: bytes, signed_at: datetime, key_id: str) -> bytes:
    body = {
        "index": index,
        "head_hash": head_hash.hex(),
        # UTC, so the message survives a database that returns another time zone.
        "signed_at": signed_at.astimezone(UTC).isoformat(),
        "key_id": key_id,
    }
    return _HEAD_DOMAIN + canonical_json(body)


def ed25519_key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of ``public_key`` (stable, derived, nothing to configure)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    return _b64url(hashlib.sha256(canonical_json(jwk)).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_head(
    head: ChainHead, signed_at: datetime, private_key: Ed25519PrivateKey, key_id: str | None = None
) -> SignedHead:
    """Sign ``head``; ``signed_at`` comes from the injected clock and must be timezone-aware."""
    if signed_at.tzinfo is None:
        raise ValueError("signed_at must be timezone-aware")
    kid = key_id if key_id is not None else ed25519_key_id(private_key.public_key())
    signature = private_key.sign(_head_message(head.index, head.hash, signed_at, kid))
    return SignedHead(head.index, head.hash, signed_at, signature, kid)


def verify_head_signature(head: SignedHead, public_keys: Mapping[str, Ed25519PublicKey]) -> bool:
    """Whether ``head`` is signed by the key its ``key_id`` names (unknown key: False)."""
    public_key = public_keys.get(head.key_id)
    if public_key is None:
        return False
    try:
        public_key.verify(head.signature, head.signed_bytes())
    except InvalidSignature:
        return False
    return True


# --- verification ------------------------------------------------------------------------


class Problem(StrEnum):
    """What :func:`verify` found first (see the module docstring)."""

    MODIFIED = "modified"
    DELETED = "deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    BAD_SIGNATURE = "bad-signature"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``problem`` is None when the chain verifies; ``head`` is the last proven-good head."""

    problem: Problem | None
    index: int | None
    detail: str
    head: ChainHead
    heads_checked: int

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Lookahead:
    """An iterator that can show its next item without consuming it (one item of memory)."""

    __slots__ = ("_it", "_next")

    def __init__(self, items: Iterable[AuditRecord]) -> None:
        self._it = iter(items)
        self._next: AuditRecord | None = None

    def __iter__(self) -> Iterator[AuditRecord]:
        return self

    def __next__(self) -> AuditRecord:
        if self._next is not None:
            item, self._next = self._next, None
            return item
        return next(self._it)

    def peek(self) -> AuditRecord | None:
        if self._next is None:
            self._next = next(self._it, None)
        return self._next


@dataclass(slots=True)
class _Verifier:
    keys: Mapping[int, bytes]
    heads: dict[int, list[SignedHead]]
    head: ChainHead
    heads_checked: int = 0

    def authentic_after(self, prev_hash: bytes, record: AuditRecord) -> bool:
        key = self.keys.get(record.key_version)
        if key is None or len(record.hash) != HASH_BYTES:
            return False
        try:
            mac = _mac(key, prev_hash, record.event)
        except (TypeError, ValueError):  # e.g. a float crept in: cannot be what was MAC'd
            return False
        return hmac.compare_digest(mac, record.hash)

    def result(self, problem: Problem | None, index: int | None, detail: str) -> VerifyResult:
        return VerifyResult(problem, index, detail, self.head, self.heads_checked)

    def check_signed_heads_at(self, candidate: ChainHead) -> VerifyResult | None:
        """A result if a signed head at ``candidate.index`` disagrees with its hash."""
        for signed in self.heads.get(candidate.index, ()):
            self.heads_checked += 1
            if not hmac.compare_digest(signed.head_hash, candidate.hash):
                last_good = max((i for i in self.heads if i < candidate.index), default=0)
                detail = (
                    f"the chain's hash at {candidate.index} differs from the head signed at "
                    f"{signed.signed_at.isoformat()}: cut and regrown after {last_good}, "
                    "or rewritten with the key"
                )
                return self.result(Problem.TRUNCATED, candidate.index, detail)
        return None

    def classify(self, record: AuditRecord, rest: _Lookahead) -> VerifyResult:
        """Name the first problem: ``record`` stands where ``self.head.index + 1`` should."""
        expected, prev = self.head.index + 1, self.head.hash
        if self.authentic_after(prev, record):
            return self.result(
                Problem.MODIFIED, expected, f"record {expected} carries seq {record.seq}"
            )
        following = rest.peek()
        if following is not None and self.authentic_after(prev, following):
            if self.authentic_after(following.hash, record):
                detail = f"record {expected + 1} stands before record {expected}"
                return self.result(Problem.REORDERED, expected, detail)
            return self.result(Problem.INSERTED, expected, "a record not in the chain")
        if record.seq < expected:
            detail = f"a second record {record.seq} (already verified)"
            return self.result(Problem.INSERTED, expected, detail)
        # One more pass over the rest (still constant memory): does record `expected` come later?
        if any(later.seq == expected or self.authentic_after(prev, later) for later in rest):
            detail = f"the record at {expected} belongs later; record {expected} comes later"
            return self.result(Problem.REORDERED, expected, detail)
        if record.seq > expected:
            return self.result(Problem.DELETED, expected, f"seq jumps to {record.seq}")
        return self.result(Problem.MODIFIED, expected, "the record fails its MAC")


def verify(
    records: Iterable[AuditRecord],
    keys: Mapping[int, bytes],
    signed_heads: Iterable[SignedHead] = (),
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    *,
    start: ChainHead = GENESIS_HEAD,
) -> VerifyResult:
    """Verify ``records`` (in ``seq`` order, from ``start.index + 1``) against the chain.

    ``keys`` maps key versions to HMAC keys. ``start`` resumes from a trusted head (e.g. one
    that verified last night, or a signed head whose signature you checked); heads signed
    before it are only signature-checked. Records are read once, in constant memory; signed
    heads are held in memory (one per signing interval).
    """
    heads: dict[int, list[SignedHead]] = {}
    for signed in signed_heads:
        heads.setdefault(signed.index, []).append(signed)
    verifier = _Verifier(keys, heads, start)
    forged = [i for i in sorted(heads) for h in heads[i] if not _signed_ok(h, public_keys)]
    if forged:
        return verifier.result(Problem.BAD_SIGNATURE, forged[0], "a signed head is forged")
    mismatch = verifier.check_signed_heads_at(start)
    if mismatch is not None:
        return mismatch
    return _walk(verifier, _Lookahead(records))


def _signed_ok(head: SignedHead, public_keys: Mapping[str, Ed25519PublicKey] | None) -> bool:
    return verify_head_signature(head, public_keys or {})


def _walk(verifier: _Verifier, records: _Lookahead) -> VerifyResult:
    for record in records:
        expected = verifier.head.index + 1
        if record.seq != expected or not verifier.authentic_after(verifier.head.hash, record):
            return verifier.classify(record, records)
        candidate = ChainHead(expected, record.hash)
        mismatch = verifier.check_signed_heads_at(candidate)
        if mismatch is not None:
            return mismatch
        verifier.head = candidate
    beyond = [i for i in verifier.heads if i > verifier.head.index]
    if beyond:
        detail = f"the chain ends at {verifier.head.index}, a head is signed at {max(beyond)}"
        return verifier.result(Problem.TRUNCATED, verifier.head.index + 1, detail)
    return verifier.result(None, None, f"{verifier.head.index} records verified")


# --- the storage port --------------------------------------------------------------------


class AuditStore(Protocol):
    """Where the chain lives; the record core implements it on its database."""

    def head(self) -> ChainHead:
        """The last record's (seq, hash), :data:`GENESIS_HEAD` when empty."""
        ...

    def put(self, record: AuditRecord) -> None:
        """Store ``record``; must fail if its ``seq`` exists (a concurrent writer won)."""
        ...

    def records(self, after: int = 0) -> Iterator[AuditRecord]:
        """The records with ``seq > after`` in ascending ``seq`` order, streamed."""
        ...

    def put_signed_head(self, head: SignedHead) -> None: ...

    def signed_heads(self) -> Iterator[SignedHead]: ...


class MemoryAuditStore:
    """An :class:`AuditStore` in lists (tests, tools)."""

    def __init__(self) -> None:
        self._records: list[AuditRecord] = []
        self._heads: list[SignedHead] = []
        self._lock = threading.Lock()

    def head(self) -> ChainHead:
        with self._lock:
            if not self._records:
                return GENESIS_HEAD
            last = self._records[-1]
            return ChainHead(last.seq, last.hash)

    def put(self, record: AuditRecord) -> None:
        with self._lock:
            if record.seq != len(self._records) + 1:
                raise ValueError(f"seq {record.seq} does not follow {len(self._records)}")
            self._records.append(record)

    def records(self, after: int = 0) -> Iterator[AuditRecord]:
        return iter(self._records[after:])

    def put_signed_head(self, head: SignedHead) -> None:
        with self._lock:
            self._heads.append(head)

    def signed_heads(self) -> Iterator[SignedHead]:
        return iter(list(self._heads))


def log_event(
    store: AuditStore, event: Mapping[str, object], key: bytes, key_version: int
) -> AuditRecord:
    """Append ``event`` after the store's head (the store serialises concurrent writers)."""
    head = store.head()
    record = append(head.hash, head.index + 1, event, key, key_version)
    store.put(record)
    return record
