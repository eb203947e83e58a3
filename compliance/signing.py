"""The authorization server's token signing keys: stored encrypted, shared by all workers, rotated.

The private JWKs live in ``auth_signing_key``, sealed with envelope.py under the keyring's
``envelope:auth-signing-key`` key (BSI TR-03161 O.Cryp_1: no key in code or repository; a stolen
database holds no usable signing key). There is a current key and at most one previous key;
tokens are signed with the current one and verified with either (tokens.SigningKeys).

Every process reloads the keys every ``reload_s`` seconds, and at once when a token names an
unknown ``kid`` (at most once a second, so garbage kids cannot hammer the database). After a
rotation, another process may sign with the old key for up to ``reload_s``; such tokens verify
as long as that key is the previous one, so a second rotation is refused until the first is
older than a token lifetime plus ``reload_s`` (unless forced).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

from compliance._sqlstore import AuthStore
from compliance.auth_records import SigningKeyRecord
from compliance.envelope import Aad, Envelope
from compliance.keyring import Keyring
from compliance.tokens import (
    MAX_ACCESS_TOKEN_LIFETIME_S,
    AccessTokenClaims,
    AccessTokens,
    Reason,
    SigningKey,
    SigningKeys,
    TokenError,
)

__all__ = ["ENVELOPE_PURPOSE", "RotationRefused", "SigningKeyManager"]

ENVELOPE_PURPOSE = "auth-signing-key"
_SECOND = 1_000_000


class RotationRefused(Exception):
    """A rotation now would drop a key whose tokens may still be live."""


class SigningKeyManager:
    """Loads, caches and rotates the signing keys; hands out :class:`AccessTokens`."""

    def __init__(
        self,
        store: AuthStore,
        keyring: Keyring,
        clock: Callable[[], int],
        *,
        issuer: str,
        audience: str,
        reload_s: int = 30,
    ) -> None:
        self._store = store
        self._envelope = Envelope(keyring, store.data_keys, ENVELOPE_PURPOSE)
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._reload_us = reload_s * _SECOND
        self._reload_s = reload_s
        self._lock = threading.Lock()
        self._loaded: dict[str, SigningKey] = {}  # kid → decrypted key, never decrypted twice
        self._tokens: AccessTokens | None = None
        self._loaded_at = 0
        self._demoted_at: int | None = None
        self.generation = 0  # changes whenever the set of keys changes (verified-token caches)

    def ensure_key(self) -> None:
        """Creates the first signing key if there is none (safe when workers start together)."""
        if not self._store.signing_keys():
            self._store.add_signing_key(self._seal(SigningKey.generate()), first_only=True)
        self._reload()

    def tokens(self, lifetime_s: int = MAX_ACCESS_TOKEN_LIFETIME_S) -> AccessTokens:
        """The token issuer/verifier with the current keys (reloaded when due)."""
        tokens = self._tokens
        if tokens is None or self._clock() - self._loaded_at >= self._reload_us:
            tokens = self._reload()
        if lifetime_s != tokens.lifetime_s:
            return dataclasses.replace(tokens, lifetime_s=lifetime_s)
        return tokens

    def verify(self, token: str) -> AccessTokenClaims:
        """The claims of one of our valid access tokens; :class:`TokenError` otherwise."""
        try:
            return self.tokens().verify(token)
        except TokenError as exc:
            if exc.reason is not Reason.UNKNOWN_KEY or self._clock() - self._loaded_at < _SECOND:
                raise
        return self._reload().verify(token)  # a key rotated in by another process

    def jwks(self) -> dict[str, Any]:
        return self.tokens().keys.jwks()

    def rotate(self, *, force: bool = False) -> SigningKey:
        """Makes a new key current; the current one stays valid for verification."""
        self._reload()
        demoted = self._demoted_at
        hold = (MAX_ACCESS_TOKEN_LIFETIME_S + self._reload_s) * _SECOND
        if not force and demoted is not None and self._clock() - demoted < hold:
            wait = (demoted + hold - self._clock()) // _SECOND + 1
            raise RotationRefused(
                f"the previous signing key may still sign live tokens; rotate again in {wait} s "
                "or force it (those tokens are then refused)"
            )
        new = SigningKey.generate()
        self._store.add_signing_key(self._seal(new), first_only=False)
        self._reload()
        return new

    def _seal(self, key: SigningKey) -> SigningKeyRecord:
        plaintext = json.dumps(key.private_jwk()).encode()
        sealed = self._envelope.encrypt(plaintext, _aad(key.kid))
        return SigningKeyRecord(key.kid, key.alg, sealed, "current", self._clock())

    def _reload(self) -> AccessTokens:
        with self._lock:
            records = self._store.signing_keys()
            if not records or records[0].state != "current":
                raise RuntimeError("no current token signing key; run `medikus admin init-keys`")
            keys = [self._open(r) for r in records]
            signing = SigningKeys(keys[0], keys[1] if len(keys) > 1 else None)
            if set(self._loaded) != {k.kid for k in keys}:
                self.generation += 1
            self._loaded = {k.kid: k for k in keys}
            self._demoted_at = records[1].demoted_at if len(records) > 1 else None
            tokens = AccessTokens(signing, self._issuer, self._audience, self._clock)
            self._tokens = tokens
            self._loaded_at = self._clock()
            return tokens

    def _open(self, record: SigningKeyRecord) -> SigningKey:
        cached = self._loaded.get(record.kid)
        if cached is not None:
            return cached
        plaintext = self._envelope.decrypt(record.sealed_jwk, _aad(record.kid))
        return SigningKey.from_private_jwk(json.loads(plaintext))


def _aad(kid: str) -> Aad:
    return Aad("auth_signing_key", kid, "sealed_jwk")
