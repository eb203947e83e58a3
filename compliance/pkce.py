"""PKCE for the authorization code grant, S256 only (RFC 7636, https://www.rfc-editor.org/rfc/rfc7636).

SMART App Launch v2 makes PKCE mandatory and forbids ``plain``
(https://hl7.org/fhir/smart-app-launch/app-launch.html#considerations-for-pkce-support): the
authorize endpoint checks the challenge with :func:`check_challenge`, the token endpoint proves
possession with :func:`verify`. Errors carry the OAuth 2 error code the endpoint answers with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = [
    "CODE_CHALLENGE_METHODS",
    "PkceError",
    "challenge_s256",
    "check_challenge",
    "check_verifier",
    "verify",
]

CODE_CHALLENGE_METHODS: tuple[str, ...] = ("S256",)
"""For ``code_challenge_methods_supported`` in /.well-known/smart-configuration (never ``plain``)."""

# RFC 7636 §4.1: code-verifier = 43*128unreserved; unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# §4.2: BASE64URL(SHA256(...)) without padding is always 43 characters.
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


class PkceError(ValueError):
    """A PKCE parameter is missing, malformed or does not match.

    ``error`` is the OAuth 2 error code: ``invalid_request`` at the authorize endpoint (RFC 7636
    §4.4.1), ``invalid_grant`` at the token endpoint (§4.6).
    """

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


def check_verifier(verifier: str) -> None:
    """Refuse a code_verifier that is not 43–128 characters of the unreserved set."""
    if _VERIFIER.fullmatch(verifier) is None:
        raise PkceError(
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]", "invalid_grant"
        )


def challenge_s256(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(code_verifier))) without padding (§4.2)."""
    check_verifier(verifier)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_challenge(challenge: str | None, method: str | None) -> None:
    """Check the authorization request's code_challenge and code_challenge_method.

    The method is required and must be S256: an absent method means ``plain`` (§4.3), which SMART
    forbids, so leaving it out is refused rather than defaulted.
    """
    if challenge is None:
        raise PkceError("code_challenge is required", "invalid_request")
    if method != "S256":
        raise PkceError("code_challenge_method must be S256", "invalid_request")
    if _CHALLENGE.fullmatch(challenge) is None:
        raise PkceError("code_challenge is not a base64url SHA-256 digest", "invalid_request")


def verify(verifier: str | None, challenge: str, method: str = "S256") -> None:
    """Prove that the token request's code_verifier belongs to the stored challenge (§4.6).

    Raises :class:`PkceError` (``invalid_grant``) on any mismatch; the comparison runs in constant
    time so the stored challenge cannot be probed byte by byte.
    """
    if method != "S256":
        raise PkceError("code_challenge_method must be S256", "invalid_grant")
    if verifier is None:
        raise PkceError("code_verifier is required", "invalid_grant")
    expected = challenge_s256(verifier)
    if not hmac.compare_digest(expected.encode("ascii"), challenge.encode("ascii", "replace")):
        raise PkceError("code_verifier does not match code_challenge", "invalid_grant")
