"""End-to-end prekeys: certified bundles, HPKE sealing with the hybrid ML-KEM-768 + X25519
KEM, rotation, and forward secrecy once a prekey is destroyed."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from simnet import SimNet

from ringmesh import messaging as m
from ringmesh.client import MessageAcked, MessageReceived, PrekeyFetched
from ringmesh.did import ed25519_seed_to_x25519
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
    candidates = [
        Prekey.decode(destroyed.prekey_id, data)
        for name, data in seized.items()
        if name.startswith("prekey-")
    ]
    assert candidates  # the current prekey
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


def test_through_the_mixnet_a_message_sealed_to_a_destroyed_prekey_stays_closed(
    tmp_path: Path,
) -> None:
    """Alice fetches Bob's bundle from his home relay through reply blocks, and sends him a
    message sealed to it. The attacker records what reaches Bob's client (every layer but
    the end-to-end one) and, once the prekey is destroyed, gets Bob's identity key and
    every file of his prekey directory: the message stays closed."""
    net = SimNet(tmp_path, 4)
    net.run(3.0)
    alice, bob = net.add_client("alice", 0), net.add_client("bob", 2)
    prekeys = store(tmp_path / "bob-prekeys", bob.keys.identity)
    bob.client.set_prekeys(prekeys.maintain(net.now), prekeys.held())
    bob.client.receive_messages()
    recorded: list[bytes] = []
    on_item = bob.client._on_item

    def record(mailbox_id: bytes, surb_id: bytes, payload: bytes, now: float) -> None:
        recorded.append(payload)
        on_item(mailbox_id, surb_id, payload, now)

    bob.client._on_item = record  # type: ignore[method-assign]
    net.connect(alice, bob)
    bob_id, bob_home = bob.keys.identity_public, net.keys[2].identity_public

    alice.client.fetch_prekey(bob_id, bob_home, net.now)
    net.run(20.0, until=lambda: bool(net.events_of(alice, PrekeyFetched)))
    (fetched,) = net.events_of(alice, PrekeyFetched)
    assert fetched.bundle.encode() == prekeys.maintain(net.now).encode()
    assert net.relays[net.addrs[2]].counters["prekey_answers"] == 2
    assert net.relays[net.addrs[2]].status(net.now)["prekey_bundles"] == 1  # Bob's

    body = b"for Bob only, and only while his prekey lives"
    alice.client.send_message(body, bob_id, bob_home, net.now, bundle=fetched.bundle)
    net.run(20.0, until=lambda: bool(net.events_of(alice, MessageAcked)))
    assert [e.body for e in net.events_of(bob, MessageReceived)] == [body]

    (sealing,) = prekeys.held()
    prekeys.maintain(net.now + 7 * DAY)  # a new prekey; the sealing one in its grace
    prekeys.maintain(net.now + 8 * DAY + 1)  # destroyed
    assert sealing.prekey_id not in [p.prekey_id for p in prekeys.held()]

    # The attacker holds Bob's identity key and every prekey file left: with a bundle every
    # fragment (ids, reply blocks, the sealed body) was sealed to the destroyed prekey, so
    # none of what it recorded opens.
    seized = [
        Prekey.decode(sealing.prekey_id, p.read_bytes()) for p in prekeys.dir.glob("prekey-*")
    ]
    assert seized
    attacker_keys = [ed25519_seed_to_x25519(bob.keys.identity.private_bytes_raw())]
    attacker_keys += [p.envelope_key() for p in seized]
    assert peel(recorded, attacker_keys) == []
    # The destroyed key would have opened every layer: the recording holds the message.
    (blob,) = peel(recorded, [sealing.envelope_key()])
    for candidate in seized:
        with pytest.raises(PrekeyError):
            open_sealed(candidate, bob_id, blob)
    assert open_sealed(sealing, bob_id, blob) == body


def peel(recorded: list[bytes], keys: list[X25519PrivateKey]) -> list[bytes]:
    """The sealed bodies that the fragments in recorded reassemble to, opened with keys."""
    reassembler = m.Reassembler()
    sealed = []
    for payload, key in itertools.product(recorded, keys):
        try:
            frag = m.parse_fragment(m.open_envelope(key, payload))
        except m.EnvelopeError:
            continue  # not for this key: acks, loops, cover, or sealed to another key
        complete = reassembler.add(frag, 0.0)
        if complete is not None and complete.sealed:
            sealed.append(complete.body)
    return sealed


def _maintain_in_another_process(keys_dir: str, seed: bytes) -> bytes:
    identity = Ed25519PrivateKey.from_private_bytes(seed)
    return PrekeyStore(Path(keys_dir), identity, 7 * DAY, DAY).maintain(NOW).encode()


def test_processes_starting_together_share_one_prekey(tmp_path: Path) -> None:
    # `recv` and `send` of one user often start at once: neither may fail or make a second.
    bob = store(tmp_path)
    seed = bob.identity.private_bytes_raw()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        bundles = pool.starmap(_maintain_in_another_process, [(str(bob.dir), seed)] * 4)
    assert len(set(bundles)) == 1
    assert [p.prekey_id for p in bob.held()] == [1]
