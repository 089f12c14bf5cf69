"""End-to-end prekeys: certified bundles, HPKE sealing with the hybrid ML-KEM-768 + X25519
KEM, rotation, and forward secrecy once a prekey is destroyed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh.keystore import KeystoreError
from ringmesh.prekeys import (
    BUNDLE_LEN,
    SEAL_OVERHEAD,
    Prekey,
    PrekeyBundle,
    PrekeyError,
    PrekeyStore,
    open_sealed,
    seal,
)

NOW = 1_900_000_000
DAY = 86_400


def store(tmp_path: Path, identity: Ed25519PrivateKey | None = None) -> PrekeyStore:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700, parents=True)
    return PrekeyStore(keys, identity or Ed25519PrivateKey.generate(), 7 * DAY, DAY)


def test_a_sealed_message_opens_only_with_its_prekey(tmp_path: Path) -> None:
    bob = store(tmp_path)
    bundle = PrekeyBundle.decode(bob.maintain(NOW).encode(), bob.identity_public, NOW)
    body = os.urandom(5000)
    sealed = seal(bundle, body)
    assert len(sealed) == len(body) + SEAL_OVERHEAD
    assert bob.open(sealed) == body
    other = Prekey.generate(bundle.prekey_id, NOW, NOW + DAY)  # same id, another key
    with pytest.raises(PrekeyError):
        open_sealed(other, bob.identity_public, sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(PrekeyError):
        bob.open(bytes(tampered))


def test_bundles_are_checked_against_the_identity_the_sender_means(tmp_path: Path) -> None:
    bob, mallory = store(tmp_path / "b"), store(tmp_path / "m")
    raw = bob.maintain(NOW).encode()
    assert len(raw) == BUNDLE_LEN
    with pytest.raises(PrekeyError, match="another identity"):
        PrekeyBundle.decode(raw, mallory.identity_public, NOW)
    with pytest.raises(PrekeyError, match="not valid now"):
        PrekeyBundle.decode(raw, bob.identity_public, NOW + 8 * DAY)
    forged = bytearray(raw)
    forged[100] ^= 1  # a different ML-KEM key under Bob's signature
    with pytest.raises(PrekeyError, match="signature"):
        PrekeyBundle.decode(bytes(forged), bob.identity_public, NOW)


@settings(max_examples=200)
@given(st.binary(max_size=BUNDLE_LEN + 10))
def test_any_bytes_are_a_bundle_error_or_a_bundle(raw: bytes) -> None:
    with pytest.raises(PrekeyError):
        PrekeyBundle.decode(raw, bytes(32), NOW)


def test_rotation_keeps_the_old_prekey_for_its_grace_then_destroys_it(tmp_path: Path) -> None:
    bob = store(tmp_path)
    first = bob.maintain(NOW)
    old = seal(first, b"sealed to the first prekey")
    assert bob.maintain(NOW + DAY).prekey_id == first.prekey_id  # still current
    second = bob.maintain(NOW + 7 * DAY)
    assert second.prekey_id == first.prekey_id + 1
    assert bob.open(old) == b"sealed to the first prekey"  # in its grace
    bob.maintain(NOW + 8 * DAY)
    assert [p.prekey_id for p in bob.held()] == [second.prekey_id]
    with pytest.raises(PrekeyError, match="not held"):
        bob.open(old)


def test_a_recorded_message_stays_closed_after_its_prekey_is_destroyed(tmp_path: Path) -> None:
    """The attacker records a sealed message, waits until its prekey is destroyed, then gets
    everything Bob holds: his identity key and every file of his key directory."""
    identity = Ed25519PrivateKey.generate()
    bob = store(tmp_path, identity)
    bundle = bob.maintain(NOW)
    recorded = seal(bundle, b"the recorded message")
    (destroyed,) = bob.held()
    bob.maintain(NOW + 7 * DAY)  # a new prekey; the first in its grace
    bob.maintain(NOW + 8 * DAY + 1)  # the grace is over: the first is destroyed
    assert destroyed.prekey_id not in [p.prekey_id for p in bob.held()]

    seized = {path.name: path.read_bytes() for path in bob.dir.iterdir()}
    seized_identity = identity.private_bytes_raw()
    assert seized and all(destroyed.mlkem_seed not in data for data in seized.values())
    assert all(destroyed.x25519_private not in data for data in seized.values())
    # Every key the attacker now holds, tried as the prekey under the recorded id.
    candidates = [Prekey.decode(destroyed.prekey_id, data) for data in seized.values()]
    candidates.append(
        Prekey(destroyed.prekey_id, seized_identity * 2, seized_identity, NOW, NOW + DAY)
    )
    for candidate in candidates:
        with pytest.raises(PrekeyError):
            open_sealed(candidate, bob.identity_public, recorded)
    with pytest.raises(PrekeyError):
        bob.open(recorded)
    # The control: the destroyed key itself would have opened it.
    assert open_sealed(destroyed, bob.identity_public, recorded) == b"the recorded message"


def test_a_damaged_prekey_file_names_itself(tmp_path: Path) -> None:
    bob = store(tmp_path)
    bob.maintain(NOW)
    (path,) = bob.dir.glob("prekey-*.key")
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(KeystoreError, match=path.name):
        bob.held()
