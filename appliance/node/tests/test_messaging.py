from __future__ import annotations

import contextlib
import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh import messaging as m
from ringmesh.wire import HEADER_LEN, PAYLOAD_LEN

ACK_BLOCK = os.urandom(m.SURB_LEN)
REPLY_BLOCK = os.urandom(m.SURB_LEN)


@pytest.mark.parametrize("size", [0, 1, m.FIRST_CHUNK, m.FIRST_CHUNK + 1, 10 * 1024, 100_000])
def test_split_and_reassemble_any_order(size: int) -> None:
    body = os.urandom(size)
    mid = m.new_message_id()
    plains = m.split_message(mid, body, ACK_BLOCK, REPLY_BLOCK)
    assert len(plains) == m.fragment_count(size)
    frags = [m.parse_fragment(p) for p in plains]
    random.shuffle(frags)
    r = m.Reassembler()
    results = [r.add(f, 0.0) for f in frags + frags[:2]]  # duplicates ignored
    done = [x for x in results if x is not None]
    assert len(done) == 1
    assert done[0].body == body
    assert done[0].message_id == mid
    first = next(f for f in frags if f.index == 0)
    assert (first.ack_block, first.reply_block) == (ACK_BLOCK, REPLY_BLOCK)
    assert all(f.ack_block is None for f in frags if f.index > 0)


def test_envelope_only_opens_for_recipient() -> None:
    alice, eve = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    plain = m.split_message(m.new_message_id(), b"hi", ACK_BLOCK, REPLY_BLOCK)[0]
    sealed = m.seal(alice.public_key(), plain)
    assert len(sealed) == PAYLOAD_LEN
    assert m.open_envelope(alice, sealed) == plain
    with pytest.raises(m.EnvelopeError):
        m.open_envelope(eve, sealed)
    # fresh ephemeral key per envelope
    assert m.seal(alice.public_key(), plain)[:32] != sealed[:32]


def test_reply_block_payloads_open_only_with_their_key() -> None:
    key, mid = os.urandom(32), m.new_message_id()
    sealed = m.seal_surb_payload(key, m.SURB_ACK, mid)
    assert len(sealed) == PAYLOAD_LEN
    assert m.open_surb_payload(key, sealed) == (m.SURB_ACK, mid)
    with pytest.raises(m.EnvelopeError):
        m.open_surb_payload(os.urandom(32), sealed)
    longest = os.urandom(m.MAX_REPLY)
    assert m.open_surb_payload(key, m.seal_surb_payload(key, m.SURB_REPLY, longest))[1] == longest
    with pytest.raises(m.EnvelopeError, match="at most"):
        m.seal_surb_payload(key, m.SURB_REPLY, longest + b"x")
    block = m.ReplyBlock(os.urandom(HEADER_LEN), key)
    assert m.ReplyBlock.decode(block.encode()) == block
    with pytest.raises(m.EnvelopeError):
        m.ReplyBlock.decode(block.encode()[:-1])


def test_partial_messages_expire() -> None:
    plains = m.split_message(m.new_message_id(), os.urandom(5000), ACK_BLOCK, REPLY_BLOCK)
    r = m.Reassembler(ttl=10)
    r.add(m.parse_fragment(plains[0]), 0.0)
    assert r.pending == 1
    r.expire(11.0)
    assert r.pending == 0


RELAYS = [bytes([i]) * 16 for i in range(8)]


def test_route_runs_home_to_home_through_mixes_avoiding_failed_relays() -> None:
    rng = random.Random(1)
    me, them = RELAYS[0], RELAYS[1]
    for length in (3, 4, 5):
        for _ in range(50):
            path = m.route(RELAYS, me, them, length, {RELAYS[2]: 3}, rng)
            assert len(path) == length
            assert (path[0], path[-1]) == (me, them)
            assert len(set(path)) == length
            assert RELAYS[2] not in path
    # both users at one home relay: it is entry and exit, with a mix between
    assert m.route(RELAYS[:2], me, me, 3, {}, rng) == [me, RELAYS[1], me]
    with pytest.raises(m.PathError):
        m.route(RELAYS[:2], me, them, 3, {}, rng)
    with pytest.raises(m.PathError):
        m.route(RELAYS, me, them, 2, {}, rng)


def test_mix_preference_failing_relays_before_disjointness() -> None:
    rng = random.Random(3)
    a, b = RELAYS[2], RELAYS[3]
    # b is on the forward path, a has failed once: avoid b
    assert m.choose_mixes([a, b], 1, {a: 1}, rng, frozenset({b}), suspect=2) == [a]
    # a is suspect: b, although it is on the forward path
    assert m.choose_mixes([a, b], 1, {a: 2}, rng, frozenset({b}), suspect=2) == [b]
    # both suspect: the one with fewer failures, wherever it is
    assert m.choose_mixes([a, b], 1, {a: 5, b: 3}, rng, frozenset({b}), suspect=2) == [b]


def test_reply_paths_share_no_relay_with_the_forward_path_but_the_homes() -> None:
    rng = random.Random(2)
    me, them = RELAYS[0], RELAYS[1]
    for length in (3, 4):
        for _ in range(200):
            forward = m.route(RELAYS, me, them, length, {}, rng)
            avoid = frozenset(forward[1:-1])
            back = m.route(RELAYS, them, me, length, {}, rng, avoid)
            assert (back[0], back[-1]) == (them, me)
            assert set(forward) & set(back) == {me, them}
    # a fleet too small to avoid it reuses a forward mix rather than fail
    forward = m.route(RELAYS[:3], me, them, 3, {}, rng)
    assert m.route(RELAYS[:3], them, me, 3, {}, rng, frozenset(forward[1:-1]))[1] == forward[1]


@settings(max_examples=300)
@given(st.binary(min_size=m.ENVELOPE_PLAIN_LEN, max_size=m.ENVELOPE_PLAIN_LEN))
def test_fragment_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(m.EnvelopeError):
        m.parse_fragment(data)


@given(st.binary(max_size=PAYLOAD_LEN + 10))
def test_envelope_parser_never_crashes(data: bytes) -> None:
    with pytest.raises(m.EnvelopeError):
        m.open_envelope(X25519PrivateKey.generate(), data)
