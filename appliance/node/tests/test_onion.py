from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh.onion import Hop, OnionError, build_header, build_packet, open_reply, peel
from ringmesh.replay import OnionReplayFilter
from ringmesh.wire import (
    CMD_DELIVER,
    CMD_DROP,
    CMD_FORWARD,
    HEADER_LEN,
    MAX_HOPS,
    ONION_LEN,
    PAYLOAD_LEN,
)


def make_path(n: int) -> tuple[list[X25519PrivateKey], list[Hop]]:
    keys = [X25519PrivateKey.generate() for _ in range(n)]
    return keys, [Hop(os.urandom(16), k.public_key()) for k in keys]


def unwrap(key: X25519PrivateKey, packet: bytes):  # type: ignore[no-untyped-def]
    return peel(key.exchange(X25519PublicKey.from_public_bytes(packet[:32])), packet)


@pytest.mark.parametrize("n", range(1, MAX_HOPS + 1))
def test_each_hop_removes_one_layer(n: int) -> None:
    keys, hops = make_path(n)
    payload, mailbox = os.urandom(PAYLOAD_LEN), os.urandom(16)
    first, packet = build_packet(hops, CMD_DELIVER, mailbox, payload)
    assert first == hops[0].node_id
    seen = []
    for i in range(n):
        assert len(packet) == ONION_LEN
        seen.append(packet)
        _, out = unwrap(keys[i], packet)
        if i < n - 1:
            assert out.cmd == CMD_FORWARD
            assert out.next_id == hops[i + 1].node_id
            packet = out.packet
        else:
            assert out.cmd == CMD_DELIVER
            assert out.next_id == mailbox
            assert out.packet == payload
    # No two hops see a common byte string of any length that would link them.
    for a in range(len(seen)):
        for b in range(a + 1, len(seen)):
            assert seen[a][:32] != seen[b][:32]
            assert seen[a][HEADER_LEN:] != seen[b][HEADER_LEN:]


def test_wrong_key_and_tampering_fail() -> None:
    keys, hops = make_path(3)
    _, packet = build_packet(hops, CMD_DELIVER, os.urandom(16), os.urandom(PAYLOAD_LEN))
    with pytest.raises(OnionError):
        unwrap(keys[1], packet)
    for offset in (33, 40, 100, HEADER_LEN - 1):
        bad = bytearray(packet)
        bad[offset] ^= 1
        with pytest.raises(OnionError):
            unwrap(keys[0], bytes(bad))


def test_reply_block_round_trip() -> None:
    keys, hops = make_path(3)
    header = build_header(hops, CMD_DELIVER, b"m" * 16)
    ack = os.urandom(PAYLOAD_LEN)
    packet = header.data + ack  # the recipient adds its payload under the header
    for key in keys:
        _, out = unwrap(key, packet)
        packet = out.packet
    assert packet != ack  # every hop layered it
    assert open_reply(header.payload_keys, packet) == ack


def test_drop_command() -> None:
    keys, hops = make_path(2)
    _, packet = build_packet(hops, CMD_DROP, bytes(16), bytes(PAYLOAD_LEN))
    _, out = unwrap(keys[0], packet)
    _, out = unwrap(keys[1], out.packet)
    assert out.cmd == CMD_DROP


def test_replay_tag_is_stable_per_hop() -> None:
    keys, hops = make_path(2)
    _, packet = build_packet(hops, CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))
    cache = OnionReplayFilter(bytes(32), budget=100, false_positive_rate=1e-6)
    first, _ = unwrap(keys[0], packet)
    again, _ = unwrap(keys[0], packet)
    assert not cache.seen_before(first.tag)
    assert cache.seen_before(again.tag)


def test_path_length_limits() -> None:
    with pytest.raises(OnionError):
        build_packet([], CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))
    _, hops = make_path(MAX_HOPS + 1)
    with pytest.raises(OnionError):
        build_packet(hops, CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))


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


def test_fast_paths_match_the_public_api() -> None:
    from ringmesh import onion

    key, data = os.urandom(32), os.urandom(1000)
    assert onion.keystream_xor(key, data) == onion._public_keystream_xor(key, data)
    raw = X25519PrivateKey.generate().public_key().public_bytes_raw()
    secret = X25519PrivateKey.generate()
    assert secret.exchange(onion.x25519_public(raw)) == secret.exchange(onion._public_x25519(raw))
    with pytest.raises(ValueError):
        onion.x25519_public(b"short")
