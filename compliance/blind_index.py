"""Blind index: search tokens for identifying text that is stored only encrypted (O.Data_1).

Reference: compliance.md §3 "Encryption at rest"; FHIR string and token search
(https://hl7.org/fhir/R4/search.html#string, #token).

A token is ``<key version>.<base64url(HMAC-SHA256(key, message)[:16])>`` with the key
``keyring.subkey("blind-index:" + purpose, version)``. The message binds the kind (equality or
prefix) and a *context* chosen by the caller (e.g. "Patient.identifier", "name"): equal values
in different contexts give unrelated tokens. The index stores tokens instead of values; a search
computes the token of the search value and looks it up by equality.

- Equality (identifier values, KVNR, ``:exact`` names): the value as given, no normalisation
  (token search is case-sensitive; ``:exact`` is too).
- Prefix (FHIR's default string search): the value is normalised like the record core's string
  index (:func:`normalize`: casefold, diacritics stripped, "Müller" → "muller"), split into
  words, and each prefix of length ``min_prefix``..``max_prefix`` of each word gets a token.
  ``name=mül`` is the lookup of the token of "mul". A query asks "does every query word begin some word of the value"
  (words longer than ``max_prefix`` are cut): a superset of FHIR's "the value starts with", so
  the record core narrows the candidates after decrypting them.

Leakage, accepted as the price of searching without plaintext (the choice over order-revealing
or searchable encryption: HMAC is standard, fast, and a stolen database alone cannot be
attacked by guessing, because the key is not in it):

- Equal values give equal tokens in one context: an attacker with the database sees which rows
  share a value and how often (frequency analysis: the most common token is likely "Müller").
- Prefix tokens reveal, per row, how many words and how long each is (up to ``max_prefix``), and
  which rows share a prefix (rows sharing the 1-letter token share an initial). Raising
  ``min_prefix`` reduces this leakage at the cost of shorter searches.
- 16-byte tokens: collisions are negligible (about 2^-64 at 2^32 distinct values).

Key rotation: tokens carry their key version. Rows keep their tokens until re-indexed
(:meth:`BlindIndex.needs_reindex`); meanwhile a search looks up the tokens of every version in
the keyring (an ``IN`` of a few values).
"""

from __future__ import annotations

import base64
import hmac
import re
import struct
import unicodedata
from dataclasses import dataclass
from typing import Final

from compliance.keyring import INDEX_TEXT, Keyring

__all__ = ["BlindIndex", "PrefixQuery", "normalize", "words"]

_EQUALITY: Final = b"E"
_PREFIX: Final = b"P"
_LENGTH: Final = struct.Struct(">I")
_WORD: Final = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Casefold and strip diacritics (NFKD, combining marks dropped), twice.

    The record core's string index folds once, which leaves e.g. "ℬ" as "B" (NFKD after the
    casefold); folding the result again makes this idempotent, and since the second fold works
    on the first one's output, values the index finds equal or prefixed stay so here.
    """
    if text.isascii():
        return text.lower()
    return _fold(_fold(text))


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The normalised words of ``text`` (runs of letters and digits)."""
    return _WORD.findall(normalize(text))


@dataclass(frozen=True, slots=True)
class PrefixQuery:
    """The lookups of a prefix search: per query word, its tokens under each key version (any
    may match); every word must match. ``truncated``: a word was longer than ``max_prefix``."""

    words: tuple[tuple[str, ...], ...]
    truncated: bool


class BlindIndex:
    """Search tokens under the keys of one purpose (default "index-text")."""

    __slots__ = ("_keyring", "_macs", "_max_prefix", "_min_prefix", "_purpose", "_token_bytes")

    def __init__(
        self,
        keyring: Keyring,
        purpose: str = INDEX_TEXT,
        *,
        min_prefix: int = 1,
        max_prefix: int = 12,
        token_bytes: int = 16,
    ) -> None:
        if not 1 <= min_prefix <= max_prefix:
            raise ValueError(f"need 1 <= min_prefix ({min_prefix}) <= max_prefix ({max_prefix})")
        if not 8 <= token_bytes <= 32:
            raise ValueError(f"token_bytes {token_bytes} is outside 8..32")
        self._keyring = keyring
        self._purpose = purpose
        self._min_prefix = min_prefix
        self._max_prefix = max_prefix
        self._token_bytes = token_bytes
        # HMAC states with key, kind and context absorbed; copying one is ~2x faster than
        # keying a new HMAC per token. Contexts are a small fixed set (index parameters).
        self._macs: dict[tuple[bytes, str, int], hmac.HMAC] = {}

    def equality_token(self, context: str, value: str, *, version: int | None = None) -> str:
        """The token stored for ``value`` (exact, not normalised)."""
        return self._token(_EQUALITY, context, value, version)

    def equality_search(self, context: str, value: str) -> tuple[str, ...]:
        """The tokens to look up for ``value``: one per key version in the keyring."""
        return tuple(self._token(_EQUALITY, context, value, v) for v in self._keyring.versions)

    def prefix_tokens(self, context: str, text: str, *, version: int | None = None) -> list[str]:
        """The tokens stored for ``text``: every prefix of every word, without duplicates."""
        prefixes = {
            word[:length]
            for word in words(text)
            for length in range(self._min_prefix, min(len(word), self._max_prefix) + 1)
        }
        return [self._token(_PREFIX, context, prefix, version) for prefix in sorted(prefixes)]

    def prefix_search(self, context: str, text: str) -> PrefixQuery:
        """The lookups for a prefix search; ValueError if a word is shorter than ``min_prefix``
        or there is no word."""
        query_words = words(text)
        if not query_words:
            raise ValueError("a prefix search needs at least one letter or digit")
        short = [w for w in query_words if len(w) < self._min_prefix]
        if short:
            raise ValueError(f"search words need at least {self._min_prefix} characters: {short}")
        versions = self._keyring.versions
        lookups = tuple(
            tuple(self._token(_PREFIX, context, w[: self._max_prefix], v) for v in versions)
            for w in query_words
        )
        truncated = any(len(w) > self._max_prefix for w in query_words)
        return PrefixQuery(lookups, truncated)

    def needs_reindex(self, token: str) -> bool:
        """Whether ``token`` is under an older key version than the current one."""
        version, _, _ = token.partition(".")
        return version != str(self._keyring.current_version)

    def _token(self, kind: bytes, context: str, value: str, version: int | None) -> str:
        version = self._keyring.current_version if version is None else version
        mac = self._macs.get((kind, context, version)) or self._prepare(kind, context, version)
        mac = mac.copy()
        mac.update(value.encode())
        digest = mac.digest()[: self._token_bytes]
        return f"{version}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"

    def _prepare(self, kind: bytes, context: str, version: int) -> hmac.HMAC:
        key = self._keyring.subkey("blind-index:" + self._purpose, version)
        context_bytes = context.encode()
        # Kind and length-prefixed context first: ("ab", "c") and ("a", "bc") must differ.
        mac = hmac.new(key, kind + _LENGTH.pack(len(context_bytes)) + context_bytes, "sha256")
        self._macs[(kind, context, version)] = mac
        return mac
