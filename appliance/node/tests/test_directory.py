"""The signed directory: majority signatures, refusal cases, the relays' signing authority."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from helpers import credentials
from ringmesh import directory as d
from ringmesh.codec import CHUNK_LEN, ChunkAssembler, CodecError, directory_messages
from ringmesh.descriptor import Descriptor
from ringmesh.wire import LINK_BODY_LEN, ROLE_CLIENT, ROLE_RELAY

NOW = time.time()


class Ring:
    """n first-ring relays: identity keys and current descriptors."""

    def __init__(self, n: int) -> None:
        self.keys = [Ed25519PrivateKey.generate() for _ in range(n)]
        self.descriptors = [credentials(ROLE_RELAY, identity=k)[0] for k in self.keys]
        self.pins = frozenset(k.public_key().public_bytes_raw() for k in self.keys)

    def directory(self, descriptors: list[Descriptor] | None = None) -> d.Directory:
        return d.Directory.build(d.epoch_at(NOW), descriptors or self.descriptors)

    def signed(self, directory: d.Directory, signers: int) -> bytes:
        sigs = tuple(
            (k.public_key().public_bytes_raw(), d.sign(k, directory)) for k in self.keys[:signers]
        )
        return d.SignedDirectory(directory, sigs).encode()


def test_a_majority_signed_directory_is_accepted_and_every_client_sees_one_digest() -> None:
    ring = Ring(5)
    directory = ring.directory()
    got = d.verify(ring.signed(directory, 3), ring.pins, NOW)
    assert got == directory
    assert got.digest == d.Directory.build(directory.epoch, ring.descriptors[::-1]).digest
    assert [x.identity for x in got.descriptors] == sorted(ring.pins)


def test_fewer_than_a_majority_is_refused() -> None:
    ring = Ring(5)
    with pytest.raises(d.DirectoryError) as err:
        d.verify(ring.signed(ring.directory(), 2), ring.pins, NOW)
    assert err.value.reason == "too_few_signatures"
    # a signer counts once, and only if pinned
    directory = ring.directory()
    stranger = Ed25519PrivateKey.generate()
    sigs = [(k.public_key().public_bytes_raw(), d.sign(k, directory)) for k in ring.keys[:2]]
    sigs += [sigs[0], (stranger.public_key().public_bytes_raw(), d.sign(stranger, directory))]
    raw = d.SignedDirectory(directory, tuple(sigs)).encode()
    with pytest.raises(d.DirectoryError, match="2 of 5"):
        d.verify(raw, ring.pins, NOW)


def test_a_relay_dropped_or_altered_by_the_home_relay_is_refused() -> None:
    ring = Ring(4)
    signed = d.SignedDirectory.decode(ring.signed(ring.directory(), 4))
    dropped = d.Directory(signed.directory.epoch, signed.directory.descriptors[1:])
    # an older but genuinely signed descriptor of the same relay (keys it has since rotated)
    old = credentials(ROLE_RELAY, epoch=0, identity=ring.keys[0])[0]
    altered = ring.directory([old, *ring.descriptors[1:]])
    for shaped in (dropped, altered):
        raw = d.SignedDirectory(shaped, signed.signatures).encode()
        with pytest.raises(d.DirectoryError) as err:
            d.verify(raw, ring.pins, NOW)
        assert err.value.reason == "too_few_signatures"


def test_stale_malformed_and_foreign_entries() -> None:
    ring = Ring(3)
    old = d.Directory(d.epoch_at(NOW) - 2, ring.directory().descriptors)
    with pytest.raises(d.DirectoryError) as err:
        d.verify(ring.signed(old, 3), ring.pins, NOW)
    assert err.value.reason == "stale"
    raw = ring.signed(ring.directory(), 3)
    for bad in (raw[:-1], raw[:10], raw + b"x", b""):
        with pytest.raises(d.DirectoryError):
            d.verify(bad, ring.pins, NOW)
    # a client's descriptor and an expired one may be listed, but are not used for paths
    client = credentials(ROLE_CLIENT)[0]
    expired = Descriptor.sign(
        ring.keys[0],
        role=ROLE_RELAY,
        epoch=9,
        valid_from=int(NOW) - 7200,
        expires=int(NOW) - 10,
        link_public=os.urandom(32),
        onion_public=ring.descriptors[0].onion_public,
    )
    listed = ring.directory([expired, *ring.descriptors[1:], client])
    got = d.verify(ring.signed(listed, 3), ring.pins, NOW)
    assert got.descriptors == tuple(x for x in listed.descriptors if x not in (client, expired))


def test_authority_collects_signatures_and_serves_the_newest_majority_view() -> None:
    ring = Ring(3)
    authorities = [d.Authority(k, ring.pins) for k in ring.keys]
    view = ring.directory()
    for a in authorities:
        assert a.set_view(view)
        assert not a.set_view(view)  # unchanged: nothing to sign or announce
    assert authorities[0].best(NOW) is None  # only its own signature so far
    assert authorities[0].add_signature(
        authorities[1].identity, authorities[1].signature_message, NOW
    )
    best = authorities[0].best(NOW)
    assert best is not None and best.directory == view
    assert d.verify(best.encode(), ring.pins, NOW) == view

    # relay 2 rotated: relay 0 signs the new view; until a majority agrees it serves the old one
    rotated = credentials(ROLE_RELAY, epoch=2, identity=ring.keys[2])[0]
    new_view = ring.directory([*ring.descriptors[:2], rotated])
    authorities[2].set_view(new_view)
    # a signature that arrives before the view it signs is kept for later
    assert authorities[0].add_signature(
        authorities[2].identity, authorities[2].signature_message, NOW
    )
    assert authorities[0].best(NOW) == best
    authorities[0].set_view(new_view)
    newest = authorities[0].best(NOW)
    assert newest is not None and newest.directory == new_view

    # forged, unpinned or stale signatures are refused
    signed = authorities[1].signature_message
    forged = signed[:-1] + bytes([signed[-1] ^ 1])  # a changed byte (not one that may be 0 already)
    assert not authorities[0].add_signature(authorities[1].identity, forged, NOW)
    assert not authorities[0].add_signature(os.urandom(32), authorities[1].signature_message, NOW)
    assert not authorities[0].add_signature(
        authorities[1].identity, authorities[1].signature_message, NOW + 3 * d.PERIOD
    )
    assert not authorities[0].add_signature(authorities[1].identity, b"short", NOW)


def test_directory_chunks_reassemble_in_any_order() -> None:
    raw = os.urandom(3 * CHUNK_LEN + 17)
    messages = directory_messages(raw)
    assert all(len(msg) <= LINK_BODY_LEN + 1 for msg in messages)
    assembler = ChunkAssembler(d.MAX_ENCODED)
    results = [assembler.add(msg[1:]) for msg in reversed(messages)]
    assert results[:-1] == [None] * (len(messages) - 1)
    assert results[-1] == raw
    assert ChunkAssembler(d.MAX_ENCODED).add(directory_messages(b"")[0][1:]) == b""
    with pytest.raises(CodecError):
        ChunkAssembler(100).add(messages[0][1:])  # announces more than allowed


@given(st.binary(max_size=1400))
def test_chunk_and_directory_parsers_never_crash(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        ChunkAssembler(d.MAX_ENCODED).add(data)
    with contextlib.suppress(d.DirectoryError):
        d.SignedDirectory.decode(data)
