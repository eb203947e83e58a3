"""AES-GCM envelope encryption: round trips, binding to the place, tampering, rotation."""

from __future__ import annotations

import struct
import threading

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from hypothesis import given
from hypothesis import strategies as st

from compliance.envelope import (
    FORMAT_VERSION,
    OVERHEAD,
    Aad,
    DecryptionError,
    Envelope,
    EnvelopeError,
    MemoryDataKeyStore,
    key_version,
)
from compliance.keyring import RESOURCE_PAYLOAD, Keyring

MASTER_1 = bytes(range(32))
MASTER_2 = bytes(range(32, 64))
AAD = Aad("resource_version", "Patient/p1/1", "content")
PAYLOAD = b'{"resourceType":"Patient","name":[{"family":"M\xc3\xbcller"}]}'

aads = st.builds(Aad, st.text(), st.text(), st.text())


def envelope(
    keyring: Keyring | None = None,
    store: MemoryDataKeyStore | None = None,
    purpose: str = RESOURCE_PAYLOAD,
) -> Envelope:
    return Envelope(keyring or Keyring({1: MASTER_1}, 1), store or MemoryDataKeyStore(), purpose)


@given(st.binary(max_size=4096), aads)
def test_round_trip(plaintext: bytes, aad: Aad) -> None:
    env = envelope()
    blob = env.encrypt(plaintext, aad)
    assert len(blob) == len(plaintext) + OVERHEAD
    assert env.decrypt(blob, aad) == plaintext


def test_blob_format_is_version_key_version_nonce_sealed() -> None:
    store = MemoryDataKeyStore()
    keyring = Keyring({1: MASTER_1, 7: MASTER_2}, 7)
    blob = envelope(keyring, store).encrypt(PAYLOAD, AAD)
    assert struct.unpack_from(">BI", blob) == (FORMAT_VERSION, 7)
    assert key_version(blob) == 7
    # Decrypt by hand from the documented format: the DEK is the stored one, unwrapped by the
    # KEK "envelope:resource-payload", and the AAD is header ‖ length-prefixed fields.
    wrapped = store.load(RESOURCE_PAYLOAD, 7)
    assert wrapped is not None
    dek = aes_key_unwrap(keyring.subkey("envelope:resource-payload", 7), wrapped)
    fields = [b"resource-payload", b"resource_version", b"Patient/p1/1", b"content"]
    aad = blob[:5] + b"".join(struct.pack(">I", len(f)) + f for f in fields)
    assert AESGCM(dek).decrypt(blob[5:17], blob[17:], aad) == PAYLOAD


def test_the_store_holds_no_plaintext_key_and_ciphertext_no_plaintext() -> None:
    store = MemoryDataKeyStore()
    env = envelope(store=store)
    blob = env.encrypt(PAYLOAD, AAD)
    assert b"M\xc3\xbcller" not in blob and b"Patient" not in blob
    wrapped = store.load(RESOURCE_PAYLOAD, 1)
    assert wrapped is not None and len(wrapped) == 40  # RFC 3394: 32-byte key + 8


def test_nonces_are_fresh() -> None:
    env = envelope()
    blobs = [env.encrypt(PAYLOAD, AAD) for _ in range(200)]
    assert len({b[5:17] for b in blobs}) == 200
    assert len(set(blobs)) == 200


@pytest.mark.parametrize(
    "other",
    [
        Aad("audit_event", "Patient/p1/1", "content"),
        Aad("resource_version", "Patient/p2/1", "content"),
        Aad("resource_version", "Patient/p1/2", "content"),
        Aad("resource_version", "Patient/p1/1", "summary"),
        # Length prefixes: shifting text between fields is another place.
        Aad("resource_versionP", "atient/p1/1", "content"),
        Aad("resource_version", "Patient/p1/1c", "ontent"),
    ],
)
def test_blob_moved_to_another_place_fails(other: Aad) -> None:
    env = envelope()
    blob = env.encrypt(PAYLOAD, AAD)
    with pytest.raises(DecryptionError, match="does not authenticate"):
        env.decrypt(blob, other)


@given(aads, aads)
def test_any_other_aad_fails(aad: Aad, other: Aad) -> None:
    env = envelope()
    blob = env.encrypt(PAYLOAD, aad)
    if other == aad:
        assert env.decrypt(blob, other) == PAYLOAD
    else:
        with pytest.raises(DecryptionError):
            env.decrypt(blob, other)


def test_another_purpose_does_not_decrypt() -> None:
    store = MemoryDataKeyStore()
    keyring = Keyring({1: MASTER_1}, 1)
    blob = envelope(keyring, store).encrypt(PAYLOAD, AAD)
    index_text = envelope(keyring, store, purpose="index-text")
    with pytest.raises(DecryptionError, match="index-text data key of version 1 is missing"):
        index_text.decrypt(blob, AAD)
    index_text.encrypt(b"mueller", AAD)  # now its DEK exists, and it is another key
    with pytest.raises(DecryptionError, match="does not authenticate"):
        index_text.decrypt(blob, AAD)


def test_relabelled_key_version_fails() -> None:
    # Both versions exist and both DEKs are known: only the AAD and the DEK choice stop it.
    keyring = Keyring({1: MASTER_1, 2: MASTER_2}, 1)
    store = MemoryDataKeyStore()
    blob = envelope(keyring, store).encrypt(PAYLOAD, AAD)
    envelope(keyring.with_current(2), store).encrypt(b"x", AAD)
    relabelled = blob[:1] + struct.pack(">I", 2) + blob[5:]
    with pytest.raises(DecryptionError, match="does not authenticate"):
        envelope(keyring, store).decrypt(relabelled, AAD)


@given(st.data())
def test_any_flipped_bit_fails(data: st.DataObject) -> None:
    env = envelope()
    blob = env.encrypt(data.draw(st.binary(max_size=64)), AAD)
    position = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(blob)
    tampered[position] ^= 1 << bit
    with pytest.raises(DecryptionError):
        env.decrypt(bytes(tampered), AAD)


@given(st.data())
def test_truncated_or_extended_blob_fails(data: st.DataObject) -> None:
    env = envelope()
    blob = env.encrypt(data.draw(st.binary(max_size=64)), AAD)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(DecryptionError):
        env.decrypt(blob[:cut], AAD)
    with pytest.raises(DecryptionError):
        env.decrypt(blob + data.draw(st.binary(min_size=1, max_size=8)), AAD)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than the 33-byte minimum"),
        (b"\x01" * 32, "shorter than the 33-byte minimum"),
        (b"\x02" + b"\x00" * 40, "format version 2 is unknown"),
    ],
)
def test_malformed_blobs_are_named(blob: bytes, message: str) -> None:
    with pytest.raises(DecryptionError, match=message):
        envelope().decrypt(blob, AAD)


def test_unknown_key_version_is_named() -> None:
    store = MemoryDataKeyStore()
    blob = envelope(Keyring({1: MASTER_1, 2: MASTER_2}, 2), store).encrypt(PAYLOAD, AAD)
    with pytest.raises(DecryptionError, match=r"version 2, which the keyring \(1,\)"):
        envelope(Keyring({1: MASTER_1}, 1), store).decrypt(blob, AAD)


def test_wrong_master_key_is_named() -> None:
    store = MemoryDataKeyStore()
    blob = envelope(Keyring({1: MASTER_1}, 1), store).encrypt(PAYLOAD, AAD)
    stranger = envelope(Keyring({1: MASTER_2}, 1), store)
    with pytest.raises(DecryptionError, match="does not unwrap under this master key"):
        stranger.decrypt(blob, AAD)
    with pytest.raises(EnvelopeError, match="does not unwrap under this master key"):
        stranger.encrypt(PAYLOAD, AAD)


def test_shredded_data_key_makes_data_unreadable() -> None:
    store = MemoryDataKeyStore()
    keyring = Keyring({1: MASTER_1}, 1)
    blob = envelope(keyring, store).encrypt(PAYLOAD, AAD)
    store.delete(RESOURCE_PAYLOAD, 1)
    with pytest.raises(DecryptionError, match="data key of version 1 is missing"):
        envelope(keyring, store).decrypt(blob, AAD)


def test_one_data_key_per_purpose_and_version_shared_by_processes() -> None:
    # Two "processes" (envelopes without shared caches) on one store agree on the DEK.
    store = MemoryDataKeyStore()
    keyring = Keyring({1: MASTER_1}, 1)
    first, second = envelope(keyring, store), envelope(keyring, store)
    assert second.decrypt(first.encrypt(PAYLOAD, AAD), AAD) == PAYLOAD
    assert first.decrypt(second.encrypt(PAYLOAD, AAD), AAD) == PAYLOAD
    envelope(keyring, store, purpose="index-text").encrypt(b"mueller", AAD)
    assert store.load(RESOURCE_PAYLOAD, 1) != store.load("index-text", 1)


def test_concurrent_first_use_creates_one_data_key() -> None:
    store = MemoryDataKeyStore()
    keyring = Keyring({1: MASTER_1}, 1)
    envelopes = [envelope(keyring, store) for _ in range(8)]
    blobs: list[bytes] = []
    barrier = threading.Barrier(len(envelopes))

    def write(env: Envelope) -> None:
        barrier.wait()
        blobs.append(env.encrypt(PAYLOAD, AAD))

    threads = [threading.Thread(target=write, args=(env,)) for env in envelopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = envelope(keyring, store)
    assert [reader.decrypt(blob, AAD) for blob in blobs] == [PAYLOAD] * len(envelopes)


def test_rotation_old_data_readable_and_rewrap_moves_it() -> None:
    store = MemoryDataKeyStore()
    v1 = Keyring({1: MASTER_1}, 1)
    old = envelope(v1, store).encrypt(PAYLOAD, AAD)

    v2 = v1.with_version(2, MASTER_2)  # rotation: a new current version
    env = envelope(v2, store)
    assert env.decrypt(old, AAD) == PAYLOAD
    assert env.needs_rewrap(old)
    new = env.encrypt(b"after rotation", AAD)
    assert key_version(new) == 2 and not env.needs_rewrap(new)

    moved = env.rewrap(old, AAD)
    assert key_version(moved) == 2 and not env.needs_rewrap(moved)
    assert env.decrypt(moved, AAD) == PAYLOAD
    assert env.rewrap(moved, AAD) is moved
    # Once everything is rewrapped, version 1 can leave the keyring.
    assert envelope(Keyring({2: MASTER_2}, 2), store).decrypt(moved, AAD) == PAYLOAD


def test_rewrap_checks_the_place() -> None:
    store = MemoryDataKeyStore()
    old = envelope(Keyring({1: MASTER_1}, 1), store).encrypt(PAYLOAD, AAD)
    env = envelope(Keyring({1: MASTER_1, 2: MASTER_2}, 2), store)
    with pytest.raises(DecryptionError):
        env.rewrap(old, Aad("resource_version", "Patient/p2/1", "content"))


@given(st.binary(max_size=512), aads)
def test_rewrap_round_trip(plaintext: bytes, aad: Aad) -> None:
    store = MemoryDataKeyStore()
    old = envelope(Keyring({1: MASTER_1}, 1), store).encrypt(plaintext, aad)
    env = envelope(Keyring({1: MASTER_1, 2: MASTER_2}, 2), store)
    assert env.decrypt(env.rewrap(old, aad), aad) == plaintext


def test_empty_purpose_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="must not be empty"):
        envelope(purpose="")
