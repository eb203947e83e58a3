"""Pseudonymisation of patient data for research exports (EDPB Guidelines 01/2025; compliance.md §3).

Keyed and per study: the key is ``HKDF(master, "pseudonym:study:<id>")`` (keyring.py), so the
pseudonyms of one study cannot be linked to another's, and without the master key (which stays
outside the research domain) they cannot be reversed or recomputed. Pseudonymised data stays
personal data (GDPR recital 26).

- Patient ids: ``HMAC-SHA256(key, patient_id)``, the first 128 bits as 32 hex digits.
- Other resource ids (UUIDv7 ids carry their creation time): the same HMAC over
  ``"resource" NUL "Type/id"`` (no FHIR id contains NUL, so no patient pseudonym collides).
- Dates: moved by a whole number of days per patient, ``offset(patient)`` in ``[-max, max]``
  without 0, derived from the same key, so the intervals within one patient survive exactly.

The record side (fhir_server/export.py) decides which elements leave at all (no free text).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, Protocol

from compliance.keyring import pseudonym_purpose

__all__ = ["DEFAULT_MAX_SHIFT_DAYS", "StudyPseudonyms"]

DEFAULT_MAX_SHIFT_DAYS: Final = 180
_HEX_DIGITS: Final = 32


class _Keyring(Protocol):
    @property
    def current_version(self) -> int: ...

    def subkey(self, purpose: str, version: int | None = None) -> bytes: ...


class StudyPseudonyms:
    """The pseudonyms and date offsets of one study."""

    __slots__ = ("_key", "key_version", "max_shift_days", "study")

    def __init__(
        self,
        study: str,
        key: bytes,
        *,
        key_version: int = 0,
        max_shift_days: int = DEFAULT_MAX_SHIFT_DAYS,
    ) -> None:
        if not study:
            raise ValueError("a study needs an id")
        if len(key) < 32:
            raise ValueError("a pseudonym key has at least 32 bytes")
        if max_shift_days < 1:
            raise ValueError("the date shift must allow at least one day")
        self.study = study
        self._key = key
        self.key_version = key_version
        self.max_shift_days = max_shift_days

    def __repr__(self) -> str:  # never the key
        return f"StudyPseudonyms(study={self.study!r}, key_version={self.key_version})"

    @classmethod
    def for_study(
        cls,
        keyring: _Keyring,
        study: str,
        *,
        key_version: int | None = None,
        max_shift_days: int = DEFAULT_MAX_SHIFT_DAYS,
    ) -> StudyPseudonyms:
        """The study's key from ``keyring``. Pin ``key_version`` for a study that exports again
        after a master key rotation: pseudonyms derive from one master key version."""
        version = keyring.current_version if key_version is None else key_version
        key = keyring.subkey(pseudonym_purpose(study), version)
        return cls(study, key, key_version=version, max_shift_days=max_shift_days)

    def patient(self, patient_id: str) -> str:
        """The study pseudonym of ``patient_id``: HMAC(study key, patient id)."""
        return self._mac(patient_id.encode())

    def resource(self, rtype: str, id: str) -> str:
        """The study pseudonym of another resource's id."""
        return self._mac(b"resource\x00" + f"{rtype}/{id}".encode())

    def day_offset(self, patient_id: str) -> int:
        """Days by which every date of ``patient_id`` moves: in ±``max_shift_days``, never 0."""
        digest = hmac.new(self._key, b"date-shift\x00" + patient_id.encode(), hashlib.sha256)
        most = self.max_shift_days
        draw = int.from_bytes(digest.digest()[:8], "big") % (2 * most)  # 0 … 2·max-1
        return draw - most if draw < most else draw - most + 1  # -max…-1, 1…max

    def _mac(self, message: bytes) -> str:
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_HEX_DIGITS]
