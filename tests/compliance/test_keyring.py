"""The key hierarchy: key files, environment, HKDF subkeys, rotation (compliance.keyring)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.keyring import (
    ENV_CURRENT,
    ENV_KEYS,
    KEY_BYTES,
    Keyring,
    KeyringError,
    activate_key_version,
    generate_key_file,
    load_keyring,
    pseudonym_purpose,
    rotate_key_file,
)

MASTER_1 = bytes(range(32))
MASTER_2 = bytes(range(32, 64))


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF written out from RFC 5869 §2.2–2.3 (no salt = HashLen zero bytes)."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm, counter = okm + block, counter + 1
    return okm[:length]


def b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


# --- subkeys ---------------------------------------------------------------------------------


def test_subkey_is_the_documented_hkdf() -> None:
    keyring = Keyring({1: MASTER_1}, 1)
    expected = rfc5869_hkdf_sha256(MASTER_1, b"medikus keyring v1\x00resource-payload")
    assert keyring.subkey("resource-payload") == expected


def test_subkeys_differ_per_purpose_and_version() -> None:
    keyring = Keyring({1: MASTER_1, 2: MASTER_2}, 2)
    purposes = ["resource-payload", "index-text", "audit-hmac", pseudonym_purpose("s1")]
    keys = {keyring.subkey(p, v) for p in [*purposes, pseudonym_purpose("s2")] for v in (1, 2)}
    assert len(keys) == 10
    assert all(len(k) == KEY_BYTES for k in keys)
    assert keyring.subkey("audit-hmac") == keyring.subkey("audit-hmac", 2)
    assert keyring.subkey("audit-hmac") != keyring.subkey("audit-hmac", 1)


@given(st.text(min_size=1), st.text(min_size=1))
def test_distinct_purposes_give_distinct_keys(a: str, b: str) -> None:
    keyring = Keyring({1: MASTER_1}, 1)
    assert (keyring.subkey(a) == keyring.subkey(b)) == (a == b)


def test_unknown_version_and_empty_purpose_are_refused() -> None:
    keyring = Keyring({1: MASTER_1}, 1)
    with pytest.raises(KeyringError, match="version 3 is not in the keyring"):
        keyring.subkey("index-text", 3)
    with pytest.raises(KeyringError, match="must not be empty"):
        keyring.subkey("")


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ({}, 1, "at least one"),
        ({1: b"short"}, 1, "not 32 bytes"),
        ({0: MASTER_1}, 0, "not a positive integer"),
        ({1: MASTER_1}, 2, "current master key version 2"),
    ],
)
def test_invalid_keyrings_are_refused(keys: dict[int, bytes], current: int, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring(keys, current)


def test_repr_hides_the_secret() -> None:
    text = repr(Keyring({1: MASTER_1}, 1))
    assert text == "Keyring(versions=(1,), current=1)"
    assert b64(MASTER_1) not in text and MASTER_1.hex() not in text


# --- key file --------------------------------------------------------------------------------


def test_generated_key_file_is_private_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "master-keys.json"
    generated = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Keyring.from_file(path)
    assert loaded.versions == (1,) and loaded.current_version == 1
    assert loaded.subkey("audit-hmac") == generated.subkey("audit-hmac")
    document = json.loads(path.read_text())
    assert document["format"] == "medikus-master-keys/1"
    assert len(base64.b64decode(document["keys"]["1"])) == KEY_BYTES


def test_generated_keys_are_random(tmp_path: Path) -> None:
    first = generate_key_file(tmp_path / "a.json")
    second = generate_key_file(tmp_path / "b.json")
    assert first.subkey("x") != second.subkey("x")


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="exists already"):
        generate_key_file(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o644, 0o660])
def test_key_file_accessible_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.json"
    generate_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyringError, match=f"mode {mode:o}: group or others"):
        Keyring.from_file(path)


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    generate_key_file(path)
    path.chmod(0o400)
    assert Keyring.from_file(path).versions == (1,)


def test_key_file_inside_a_git_work_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "checkout" / ".git").mkdir(parents=True)
    (tmp_path / "checkout" / "config").mkdir()
    inside = tmp_path / "checkout" / "config" / "keys.json"
    with pytest.raises(KeyringError, match="inside the git work tree"):
        generate_key_file(inside)
    assert not inside.exists()
    outside = tmp_path / "keys.json"
    generate_key_file(outside)
    inside.symlink_to(outside)
    with pytest.raises(KeyringError, match="inside the git work tree"):
        Keyring.from_file(inside)


def test_symlink_out_of_a_git_work_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "checkout" / ".git").mkdir(parents=True)
    target = tmp_path / "checkout" / "keys.json"
    target.write_text("{}")
    target.chmod(0o600)
    link = tmp_path / "keys.json"
    link.symlink_to(target)
    with pytest.raises(KeyringError, match="inside the git work tree"):
        Keyring.from_file(link)


def test_missing_key_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot open key file"):
        Keyring.from_file(tmp_path / "absent.json")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyringError, match="not a regular file"):
        Keyring.from_file(directory)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "other"}', "not a medikus-master-keys/1"),
        ('{"format": "medikus-master-keys/1", "current": 1}', "needs 'keys'"),
        ('{"format": "medikus-master-keys/1", "current": 1, "keys": {"x": ""}}', "'x' is not"),
        (
            '{"format": "medikus-master-keys/1", "current": 1, "keys": {"1": "!!"}}',
            "not valid base64",
        ),
        ('{"format": "medikus-master-keys/1", "current": 1, "keys": {"1": "AAAA"}}', "is 3 bytes"),
        (
            '{"format": "medikus-master-keys/1", "current": 1, "keys": {"1": 7}}',
            "not a base64 string",
        ),
        (
            '{"format": "medikus-master-keys/1", "current": 2, "keys": {"1": "'
            + b64(MASTER_1)
            + '"}}',
            "current master key version 2",
        ),
    ],
)
def test_malformed_key_files_are_refused(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "keys.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, document.encode())
    os.close(fd)
    with pytest.raises(KeyringError, match=message):
        Keyring.from_file(path)


# --- environment -----------------------------------------------------------------------------


def test_environment_single_bare_key_is_version_1() -> None:
    keyring = Keyring.from_environment({ENV_KEYS: b64(MASTER_1)})
    assert keyring.versions == (1,) and keyring.current_version == 1
    assert keyring.subkey("audit-hmac") == Keyring({1: MASTER_1}, 1).subkey("audit-hmac")


def test_environment_versions_current_is_highest_unless_named() -> None:
    value = f"1:{b64(MASTER_1)}, 2:{b64(MASTER_2)}"
    assert Keyring.from_environment({ENV_KEYS: value}).current_version == 2
    staged = Keyring.from_environment({ENV_KEYS: value, ENV_CURRENT: "1"})
    assert staged.current_version == 1 and staged.versions == (1, 2)
    assert staged.subkey("x", 2) == Keyring({2: MASTER_2}, 2).subkey("x")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "MEDIKUS_MASTER_KEYS is not set"),
        ({ENV_KEYS: "  "}, "is not set"),
        ({ENV_KEYS: "not base64!"}, "not valid base64"),
        ({ENV_KEYS: b64(b"sixteen bytes!!!")}, "is 16 bytes"),
        ({ENV_KEYS: f"x:{b64(MASTER_1)}"}, "'x' is not a positive integer"),
        ({ENV_KEYS: f"1:{b64(MASTER_1)},1:{b64(MASTER_2)}"}, "version 1 twice"),
        ({ENV_KEYS: b64(MASTER_1), ENV_CURRENT: "2"}, "current master key version 2"),
        ({ENV_KEYS: b64(MASTER_1), ENV_CURRENT: "-1"}, "'-1' is not a positive integer"),
    ],
)
def test_bad_environment_is_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring.from_environment(environ)


def test_load_keyring_prefers_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    from_file = generate_key_file(path)
    environ = {ENV_KEYS: b64(MASTER_1)}
    assert load_keyring(path, environ).subkey("a") == from_file.subkey("a")
    assert load_keyring(None, environ).subkey("a") == Keyring({1: MASTER_1}, 1).subkey("a")


# --- rotation --------------------------------------------------------------------------------


def test_rotation_adds_a_current_version_and_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = generate_key_file(path)
    rotated = rotate_key_file(path)
    assert rotated.versions == (1, 2) and rotated.current_version == 2
    reloaded = Keyring.from_file(path)
    assert reloaded.current_version == 2
    assert reloaded.subkey("p", 1) == first.subkey("p")
    assert reloaded.subkey("p", 2) == rotated.subkey("p") != first.subkey("p")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]


def test_staged_rotation_then_activation(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    generate_key_file(path)
    staged = rotate_key_file(path, activate=False)
    assert staged.versions == (1, 2) and staged.current_version == 1
    assert Keyring.from_file(path).current_version == 1
    activated = activate_key_version(path, 2)
    assert activated.current_version == 2
    assert Keyring.from_file(path).subkey("p") == staged.subkey("p", 2)
    with pytest.raises(KeyringError, match="version 5"):
        activate_key_version(path, 5)


def test_rotation_refuses_an_unsafe_file_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    generate_key_file(path)
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(KeyringError, match="group or others"):
        rotate_key_file(path)
    assert path.read_bytes() == before


def test_in_memory_rotation() -> None:
    keyring = Keyring({1: MASTER_1}, 1)
    rotated = keyring.with_version(2, MASTER_2)
    assert rotated.current_version == 2 and keyring.current_version == 1
    assert keyring.with_version(2, MASTER_2, activate=False).current_version == 1
    with pytest.raises(KeyringError, match="exists already"):
        rotated.with_version(1, MASTER_2)
