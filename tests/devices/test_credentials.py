"""The station key: a safe key file, a registrable JWKS, assertions the record core accepts."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from compliance.clients import check_jwks
from compliance.tokens import ClientAssertions, TokenError
from devices.credentials import CredentialsError, StationKey, create_key_file, load_key_file

TOKEN_URL = "https://medikus.example/auth/token"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
CLIENT = "pilot-station"
_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Registry:
    """The record core's side: registered JWKS and seen jtis."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._jwks = jwks
        self.seen: set[tuple[str, str]] = set()

    def jwks(self, client_id: str) -> Mapping[str, Any] | None:
        return self._jwks if client_id == CLIENT else None

    def remember(self, issuer: str, jti: str, expires_at: int) -> bool:
        fresh = (issuer, jti) not in self.seen
        self.seen.add((issuer, jti))
        return fresh


def verifier(key: StationKey, now: int = NOW) -> ClientAssertions:
    registry = Registry(key.jwks())
    return ClientAssertions(registry, registry, TOKEN_URL, lambda: now * 1_000_000)


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "station.jwk"
    key = create_key_file(path, kid="station-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["kid"] == "station-1"
    with pytest.raises(CredentialsError, match="exists already"):
        create_key_file(path)
    loaded = load_key_file(path)
    assert loaded.kid == "station-1"
    assert loaded.jwks() == key.jwks()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "station.jwk"
    create_key_file(path)
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(CredentialsError, match="chmod 600"):
            load_key_file(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not a valid key file"),
        (json.dumps(ECKey.generate_key("P-384").as_dict(private=False)), "not a private P-384"),
        (json.dumps(ECKey.generate_key("P-256", private=True).as_dict()), "not a private P-384"),
    ],
)
def test_unusable_key_files_are_refused(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "station.jwk"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match=problem):
        load_key_file(path)
    with pytest.raises(CredentialsError, match="not readable"):
        load_key_file(tmp_path / "missing.jwk")


def test_the_jwks_is_public_and_registrable() -> None:
    key = StationKey.generate()
    jwks = key.jwks()
    check_jwks(jwks)  # what `medikus admin create-client --jwks` checks
    (public,) = jwks["keys"]
    assert "d" not in public and public["kid"] == key.kid == key.key.thumbprint()
    assert (public["kty"], public["crv"], public["alg"]) == ("EC", "P-384", "ES384")


def test_assertions_pass_the_record_cores_check() -> None:
    key = StationKey.generate("station-1")
    check = verifier(key)
    first = check.verify(key.assertion(CLIENT, TOKEN_URL, NOW), _TYPE)
    second = check.verify(key.assertion(CLIENT, TOKEN_URL, NOW), _TYPE)
    assert (first.client_id, first.kid, first.alg) == (CLIENT, "station-1", "ES384")
    assert first.exp <= NOW + 300
    assert first.jti != second.jti  # a fresh jti every time: the record core refuses replays


def test_expired_or_foreign_assertions_are_refused() -> None:
    key = StationKey.generate("station-1")
    assertion = key.assertion(CLIENT, TOKEN_URL, NOW)
    with pytest.raises(TokenError, match="expired"):
        verifier(key, now=NOW + 241).verify(assertion, _TYPE)
    with pytest.raises(TokenError, match="audience"):
        verifier(key).verify(key.assertion(CLIENT, "https://evil.example/token", NOW), _TYPE)
    other = StationKey.generate("station-1")
    with pytest.raises(TokenError, match="signature"):
        verifier(key).verify(other.assertion(CLIENT, TOKEN_URL, NOW), _TYPE)
    with pytest.raises(ValueError, match="300"):
        key.assertion(CLIENT, TOKEN_URL, NOW, lifetime_s=301)
