from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh import lioness, primitives
from ringmesh import messaging as m
from ringmesh.onion import (
    Hop,
    OnionError,
    Unwrapped,
    build_header,
    build_packet,
    derive_hop_keys,
    hop_delay_us,
    peel,
    wrap_payload,
)
from ringmesh.replay import OnionReplayFilter
from ringmesh.wire import (
    CMD_DELIVER,
    CMD_DROP,
    CMD_FORWARD,
    HEADER_LEN,
    MAX_HOP_DELAY_US,
    MAX_HOPS,
    ONION_LEN,
    PAYLOAD_LEN,
)


def make_path(n: int) -> tuple[list[X25519PrivateKey], list[Hop]]:
    keys = [X25519PrivateKey.generate() for _ in range(n)]
    return keys, [Hop(os.urandom(16), k.public_key(), 1000 * (i + 1)) for i, k in enumerate(keys)]


def unwrap(key: X25519PrivateKey, packet: bytes) -> Unwrapped:
    return peel(key.exchange(X25519PublicKey.from_public_bytes(packet[:32])), packet)[1]


@pytest.mark.parametrize("n", range(1, MAX_HOPS + 1))
def test_each_hop_removes_one_layer_and_reads_its_delay(n: int) -> None:
    keys, hops = make_path(n)
    payload, mailbox, surb_id = os.urandom(PAYLOAD_LEN), os.urandom(16), os.urandom(16)
    first, packet = build_packet(hops, CMD_DELIVER, mailbox, payload, surb_id)
    assert first == hops[0].node_id
    seen = []
    for i in range(n):
        assert len(packet) == ONION_LEN
        seen.append(packet)
        out = unwrap(keys[i], packet)
        assert out.delay_us == hops[i].delay_us  # the sender chose it for this hop
        if i < n - 1:
            assert out.cmd == CMD_FORWARD
            assert out.next_id == hops[i + 1].node_id
            packet = out.packet
        else:
            assert out.cmd == CMD_DELIVER
            assert out.next_id == mailbox
            assert out.surb_id == surb_id
            assert out.packet == payload
    # No two hops see a common byte string of any length that would link them.
    for a in range(len(seen)):
        for b in range(a + 1, len(seen)):
            assert seen[a][:32] != seen[b][:32]
            assert seen[a][HEADER_LEN:] != seen[b][HEADER_LEN:]


def test_wrong_key_and_header_tampering_fail() -> None:
    keys, hops = make_path(3)
    _, packet = build_packet(hops, CMD_DELIVER, os.urandom(16), os.urandom(PAYLOAD_LEN))
    with pytest.raises(OnionError):
        unwrap(keys[1], packet)
    for offset in (33, 40, 100, HEADER_LEN - 1):
        bad = bytearray(packet)
        bad[offset] ^= 1
        with pytest.raises(OnionError):
            unwrap(keys[0], bytes(bad))


def flip(packet: bytes, offset: int) -> bytes:
    bad = bytearray(packet)
    bad[offset] ^= 0x01
    return bytes(bad)


@pytest.mark.parametrize("restore", [True, False], ids=["flipped-back", "left-flipped"])
def test_a_tagged_payload_is_destroyed_even_if_a_later_hop_untags_it(restore: bool) -> None:
    """The first hop flips a payload bit; a colluding last hop flips it back (or not). The
    honest middle hop's LIONESS layer turned the change into noise: the fragment is lost."""
    recipient = X25519PrivateKey.generate()
    keys, hops = make_path(3)
    blocks = os.urandom(m.SURB_LEN), os.urandom(m.SURB_LEN)
    plain = m.split_message(m.new_message_id(), b"hello", *blocks)[0]
    _, packet = build_packet(
        hops, CMD_DELIVER, os.urandom(16), m.seal(recipient.public_key(), plain)
    )

    def deliver(tag_at: int | None) -> bytes:
        p = packet
        for i, key in enumerate(keys):
            if tag_at is not None and i == 2 and restore:
                p = flip(p, tag_at)  # the colluding last hop undoes the tag before peeling
            p = unwrap(key, p).packet
            if tag_at is not None and i == 0:
                p = flip(p, tag_at)  # the first hop tags what it forwards
        return p

    untouched = deliver(None)
    assert m.open_envelope(recipient, untouched) == plain
    for offset in (HEADER_LEN, HEADER_LEN + 5, HEADER_LEN + 40, ONION_LEN - 1):
        tagged = deliver(offset)
        with pytest.raises(m.EnvelopeError):
            m.open_envelope(recipient, tagged)
        # Not one byte of the envelope's ephemeral key survived, so no tag can be seen.
        assert sum(a == b for a, b in zip(tagged[:32], untouched[:32], strict=True)) < 8


def test_lioness_is_a_permutation_that_diffuses_every_bit() -> None:
    key = lioness.LionessKey.from_bytes(os.urandom(lioness.KEY_LEN))
    block = os.urandom(PAYLOAD_LEN)
    sealed = lioness.encrypt(key, block)
    assert lioness.decrypt(key, sealed) == block
    assert lioness.encrypt(key, lioness.decrypt(key, block)) == block
    for offset in (0, 31, 32, 500, PAYLOAD_LEN - 1):
        changed = lioness.decrypt(key, flip(sealed, offset))
        differing = sum(a != b for a, b in zip(changed, block, strict=True))
        assert differing > 0.9 * PAYLOAD_LEN  # ~255/256 of the bytes change
    assert key.to_bytes() == lioness.LionessKey.from_bytes(key.to_bytes()).to_bytes()
    with pytest.raises(ValueError):
        lioness.encrypt(key, bytes(32))


def test_reply_block_round_trip() -> None:
    keys, hops = make_path(3)
    header = build_header(hops, CMD_DELIVER, b"m" * 16, surb_id=b"s" * 16)
    reply = os.urandom(PAYLOAD_LEN)
    packet = header.data + reply  # the replier puts its payload under the header
    for key in keys:
        out = unwrap(key, packet)
        packet = out.packet
    assert out.surb_id == b"s" * 16
    assert packet != reply  # every hop layered it
    assert wrap_payload(header.payload_keys, packet) == reply


def test_drop_command() -> None:
    keys, hops = make_path(2)
    _, packet = build_packet(hops, CMD_DROP, bytes(16), bytes(PAYLOAD_LEN))
    out = unwrap(keys[1], unwrap(keys[0], packet).packet)
    assert out.cmd == CMD_DROP


def test_replay_tag_is_stable_per_hop() -> None:
    keys, hops = make_path(2)
    _, packet = build_packet(hops, CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))
    shared = keys[0].exchange(X25519PublicKey.from_public_bytes(packet[:32]))
    cache = OnionReplayFilter(bytes(32), budget=100, false_positive_rate=1e-6)
    assert not cache.seen_before(derive_hop_keys(shared).tag)
    assert cache.seen_before(peel(shared, packet)[0].tag)


def test_path_length_and_delay_limits() -> None:
    with pytest.raises(OnionError):
        build_packet([], CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))
    _, hops = make_path(MAX_HOPS + 1)
    with pytest.raises(OnionError):
        build_packet(hops, CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))
    _, hops = make_path(1)
    too_long = [Hop(hops[0].node_id, hops[0].onion_key, MAX_HOP_DELAY_US + 1)]
    with pytest.raises(OnionError):
        build_packet(too_long, CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))


def test_hop_delays_are_exponential_with_the_configured_mean() -> None:
    rng = random.Random(5)
    delays = [hop_delay_us(rng, 50) for _ in range(20000)]
    mean_ms = sum(delays) / len(delays) / 1000
    assert 48 < mean_ms < 52
    # exponential: about e^-1 of the samples exceed the mean
    assert 0.35 < sum(d > 50_000 for d in delays) / len(delays) < 0.39
    assert hop_delay_us(rng, 0) == 0


KEY = X25519PrivateKey.generate()


@settings(max_examples=200)
@given(st.binary(min_size=ONION_LEN, max_size=ONION_LEN))
def test_random_packets_are_rejected_cleanly(data: bytes) -> None:
    try:
        shared = KEY.exchange(X25519PublicKey.from_public_bytes(data[:32]))
    except ValueError:
        return  # low-order point: the relay counts it as a bad packet
    with pytest.raises(OnionError):
        peel(shared, data)


@settings(max_examples=50)
@given(st.integers(min_value=0, max_value=2 * ONION_LEN).filter(lambda n: n != ONION_LEN))
def test_a_valid_packet_cut_or_extended_is_an_onion_error(length: int) -> None:
    # Found by fuzz/fuzz.py (target onion): a valid header with a short payload reached the
    # payload cipher, which raised a plain ValueError.
    keys, hops = make_path(1)
    _, packet = build_packet(hops, CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))
    shared = keys[0].exchange(X25519PublicKey.from_public_bytes(packet[:32]))
    with pytest.raises(OnionError):
        peel(shared, (packet * 2)[:length])


def test_fast_paths_match_the_public_api() -> None:
    key, data = os.urandom(32), os.urandom(1000)
    assert primitives.keystream_xor(key, data) == primitives.public_keystream_xor(key, data)
    raw = X25519PrivateKey.generate().public_key().public_bytes_raw()
    secret = X25519PrivateKey.generate()
    assert secret.exchange(primitives.x25519_public(raw)) == secret.exchange(
        primitives.public_x25519(raw)
    )
    with pytest.raises(ValueError):
        primitives.x25519_public(b"short")
