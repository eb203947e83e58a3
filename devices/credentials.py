"""The station's SMART backend-service identity: an ES384 key and its signed client assertions.

https://hl7.org/fhir/smart-app-launch/backend-services.html — the station authenticates at the
token endpoint with a JWT signed by its private key (``private_key_jwt``, RFC 7523); the record
core knows only the public JWKS, registered with
``medikus admin create-client pilot-station --jwks station.jwks.json --scope '…'``.

The private key lives in one JSON file (a private JWK with ``kid``), created with mode 0600; a key
file that group or others could read is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from devices.errors import DeviceError

__all__ = [
    "ALGORITHM",
    "ASSERTION_LIFETIME_S",
    "CredentialsError",
    "StationKey",
    "create_key_file",
    "load_key_file",
]

ALGORITHM = "ES384"
CURVE = "P-384"
# The record core refuses assertions valid for more than 5 minutes; 4 leave room for clock skew.
ASSERTION_LIFETIME_S = 240


class CredentialsError(DeviceError):
    """The station's key file is missing, unsafe or invalid."""


@dataclass(frozen=True)
class StationKey:
    """The station's private signing key and its key id."""

    key: ECKey
    kid: str

    @classmethod
    def generate(cls, kid: str | None = None) -> StationKey:
        """A new P-384 key; the kid defaults to its RFC 7638 thumbprint."""
        key = ECKey.generate_key(CURVE, private=True)
        return cls(key, kid or key.thumbprint())

    def jwks(self) -> dict[str, Any]:
        """The public JWKS to register with the record core (no private members)."""
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}

    def assertion(
        self,
        client_id: str,
        token_url: str,
        now: int,
        *,
        lifetime_s: int = ASSERTION_LIFETIME_S,
        new_jti: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> str:
        """A client assertion (iss = sub = client_id, aud = token URL, exp = now + lifetime,
        a fresh jti: the record core refuses a jti it has seen). ``now`` in epoch seconds."""
        if not 0 < lifetime_s <= 300:
            raise ValueError("a client assertion may be valid for at most 300 s")
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "exp": now + lifetime_s,
            "jti": new_jti(),
        }
        header = {"alg": ALGORITHM, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[ALGORITHM])

    def to_json(self) -> str:
        return json.dumps({**self.key.as_dict(private=True), "kid": self.kid, "alg": ALGORITHM})


def create_key_file(path: Path, kid: str | None = None) -> StationKey:
    """Generates a key and writes it to ``path`` (mode 0600); never overwrites a file."""
    key = StationKey.generate(kid)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CredentialsError(
            f"{path}: Schlüsseldatei existiert schon / key file exists already (not overwritten)"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key.to_json())
        file.flush()
        os.fsync(file.fileno())
    return key


def load_key_file(path: Path) -> StationKey:
    """Reads the private key; refuses a file that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CredentialsError(
            f"{path}: Schlüsseldatei nicht lesbar / key file not readable: {exc.strerror}"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{path}: Schlüsseldatei für andere lesbar (Modus {stat.S_IMODE(mode):o}), bitte "
            f"'chmod 600' / key file is accessible to group or others, run 'chmod 600 {path}'"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        key = ECKey.import_key(data)
    except (OSError, ValueError, TypeError, JoseError) as exc:
        raise CredentialsError(
            f"{path}: kein gültiger Schlüssel / not a valid key file: {exc}"
        ) from exc
    if not isinstance(data, dict) or data.get("crv") != CURVE or not key.is_private:
        raise CredentialsError(
            f"{path}: kein privater P-384-Schlüssel / not a private P-384 (ES384) key"
        )
    kid = data.get("kid")
    return StationKey(key, kid if isinstance(kid, str) and kid else key.thumbprint())
