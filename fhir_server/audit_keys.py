"""The audit trail's keys, all derived from the keyring (compliance/keyring.py).

- ``audit-hmac`` (keyring.AUDIT_HMAC): the chain's HMAC key, one per master key version; a link
  names the version it was made with, so a rotation never breaks the chain.
- ``audit-head-signing``: 32 bytes used as an Ed25519 private key (RFC 8032 §5.1.5 takes any 32
  random bytes) that signs chain heads. Its public key is exported (``medikus audit
  export-public-key``) and kept outside the database with copies of the signed heads, so a head
  can be checked by someone without the key file.
- ``audit-pending``: AES-256-GCM key sealing events while they wait for the chainer
  (``audit_pending`` holds who accessed which record: not in plain text, and a forged row fails
  to open). Random 96-bit nonces: at most 2^32 events per master key version (NIST SP 800-38D
  §8.3); a key rotation starts afresh.

Deriving the signing key from the master key means that whoever holds the key file can sign;
the protection against a rewritten chain is the off-site copy of the heads, not the signature.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from compliance.audit_chain import ed25519_key_id
from compliance.keyring import AUDIT_HMAC, Keyring, KeyringError

__all__ = ["AuditKeys", "SealError", "public_key_jwk", "public_key_pem"]

HEAD_SIGNING: Final = "audit-head-signing"
PENDING: Final = "audit-pending"
_SEAL_AAD: Final = b"medikus audit_pending v1"
_VERSION: Final = struct.Struct(">I")
_NONCE_BYTES: Final = 12


class SealError(Exception):
    """A pending event does not open: forged, damaged, or sealed under an unknown key version."""


class AuditKeys:
    """The keys of the audit trail under one keyring (current version for new work)."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._signers: dict[int, Ed25519PrivateKey] = {}
        self._sealers: dict[int, AESGCM] = {}

    @property
    def version(self) -> int:
        return self._keyring.current_version

    def hmac_key(self, version: int | None = None) -> bytes:
        return self._keyring.subkey(AUDIT_HMAC, version)

    def hmac_keys(self) -> dict[int, bytes]:
        """Every version's HMAC key, for verification."""
        return {v: self.hmac_key(v) for v in self._keyring.versions}

    def signer(self, version: int | None = None) -> Ed25519PrivateKey:
        version = self.version if version is None else version
        signer = self._signers.get(version)
        if signer is None:
            seed = self._keyring.subkey(HEAD_SIGNING, version)
            signer = self._signers[version] = Ed25519PrivateKey.from_private_bytes(seed)
        return signer

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Key id (RFC 7638 thumbprint) → public key, for every version in the keyring."""
        keys = (self.signer(v).public_key() for v in self._keyring.versions)
        return {ed25519_key_id(k): k for k in keys}

    def seal(self, plaintext: bytes) -> bytes:
        """``key version (4) || nonce (12) || AES-GCM(plaintext)``, bound to ``audit_pending``."""
        version = self.version
        nonce = os.urandom(_NONCE_BYTES)
        header = _VERSION.pack(version)
        sealed = self._sealer(version).encrypt(nonce, plaintext, _SEAL_AAD + header)
        return header + nonce + sealed

    def open(self, blob: bytes) -> bytes:
        if len(blob) < _VERSION.size + _NONCE_BYTES + 16:
            raise SealError("too short to be a sealed audit event")
        header = blob[: _VERSION.size]
        (version,) = _VERSION.unpack(header)
        nonce = blob[_VERSION.size : _VERSION.size + _NONCE_BYTES]
        try:
            sealer = self._sealer(version)
            return sealer.decrypt(nonce, blob[_VERSION.size + _NONCE_BYTES :], _SEAL_AAD + header)
        except (InvalidTag, KeyringError) as exc:
            raise SealError(f"a pending audit event (key version {version}) does not open") from exc

    def _sealer(self, version: int) -> AESGCM:
        sealer = self._sealers.get(version)
        if sealer is None:
            sealer = self._sealers[version] = AESGCM(self._keyring.subkey(PENDING, version))
        return sealer


def public_key_pem(key: Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM (RFC 8410), what ``openssl pkey -pubin`` reads."""
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def public_key_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as an RFC 8037 OKP JWK with its thumbprint as ``kid``."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": ed25519_key_id(key), "use": "sig"}
