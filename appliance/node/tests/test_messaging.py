from __future__ import annotations

import contextlib
import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh import messaging as m
from ringmesh.wire import PAYLOAD_LEN

REPLY = os.urandom(m.REPLY_LEN)


@pytest.mark.parametrize("size", [0, 1, m.FIRST_CHUNK, m.FIRST_CHUNK + 1, 10 * 1024, 100_000])
def test_split_and_reassemble_any_order(size: int) -> None:
    body = os.urandom(size)
    mid = m.new_message_id()
    plains = m.split_message(mid, body, REPLY)
    assert len(plains) == m.fragment_count(size)
    frags = [m.parse_fragment(p) for p in plains]
    random.shuffle(frags)
    r = m.Reassembler()
    results = [r.add(f, 0.0) for f in frags + frags[:2]]  # duplicates ignored
    done = [x for x in results if x is not None]
    assert len(done) == 1
    assert done[0].body == body
    assert done[0].message_id == mid
    assert frags[0].reply == REPLY or any(f.reply == REPLY for f in frags)


def test_envelope_only_opens_for_recipient() -> None:
    alice, eve = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    plain = m.split_message(m.new_message_id(), b"hi", REPLY)[0]
    sealed = m.seal(alice.public_key(), plain)
    assert len(sealed) == PAYLOAD_LEN
    assert m.open_envelope(alice, sealed) == plain
    with pytest.raises(m.EnvelopeError):
        m.open_envelope(eve, sealed)
    # fresh ephemeral key per envelope
    assert m.seal(alice.public_key(), plain)[:32] != sealed[:32]


def test_ack_round_trip() -> None:
    key, mid = os.urandom(32), m.new_message_id()
    sealed = m.seal_ack(key, mid)
    assert len(sealed) == PAYLOAD_LEN
    assert m.open_ack(key, sealed) == mid
    assert m.open_ack(os.urandom(32), sealed) is None


def test_partial_messages_expire() -> None:
    plains = m.split_message(m.new_message_id(), os.urandom(5000), REPLY)
    r = m.Reassembler(ttl=10)
    r.add(m.parse_fragment(plains[0]), 0.0)
    assert r.pending == 1
    r.expire(11.0)
    assert r.pending == 0


def test_choose_path_avoids_failed_relays() -> None:
    relays = [bytes([i]) * 16 for i in range(4)]
    rng = random.Random(1)
    for _ in range(50):
        path = m.choose_path(relays, relays[0], 3, {relays[1]: 3}, rng)
        assert path[-1] == relays[0]
        assert len(set(path)) == 3
        assert relays[1] not in path
    assert m.choose_path(relays[:1], relays[0], 3, {}, rng) == [relays[0]]


def test_reply_path_shape() -> None:
    a, b, c, d = (bytes([i]) * 16 for i in range(4))
    assert m.reply_path([a, b, c], c, d) == [c, b, a, d]
    assert m.reply_path([a, b, c], c, a) == [c, b, a]
    assert m.reply_path([a, b, c], c, c) == [c]


@settings(max_examples=300)
@given(st.binary(min_size=m.ENVELOPE_PLAIN_LEN, max_size=m.ENVELOPE_PLAIN_LEN))
def test_fragment_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(m.EnvelopeError):
        m.parse_fragment(data)


@given(st.binary(max_size=PAYLOAD_LEN + 10))
def test_envelope_parser_never_crashes(data: bytes) -> None:
    with pytest.raises(m.EnvelopeError):
        m.open_envelope(X25519PrivateKey.generate(), data)
