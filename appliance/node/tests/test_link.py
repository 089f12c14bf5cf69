"""Handshake and link sessions, driven without sockets."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import credentials
from ringmesh import handshake as hs
from ringmesh.descriptor import Descriptor
from ringmesh.link import HandshakeFailed, LinkEndpoint, Session, SessionUp
from ringmesh.wire import (
    DATAGRAM_SIZE,
    DG_DATA,
    DG_HS_COOKIE,
    DG_HS_FINISH,
    DG_HS_INIT,
    DG_HS_RESP,
    MSG_KEEPALIVE,
    ROLE_CLIENT,
    ROLE_RELAY,
)

A_ADDR = ("127.0.0.1", 1001)
B_ADDR = ("127.0.0.1", 1002)

Tamper = Callable[[bytes], bytes | None]


class Pair:
    def __init__(self, accept_b: Callable[[Descriptor], str | None] = lambda d: None) -> None:
        self.a_creds = credentials(ROLE_CLIENT)
        self.b_creds = credentials(ROLE_RELAY)
        self.a = LinkEndpoint(lambda: self.a_creds, lambda d: None)
        self.b = LinkEndpoint(lambda: self.b_creds, accept_b)
        self.now = time.time()
        self.a.tick(self.now)
        self.b.tick(self.now)
        self.wire: list[bytes] = []
        self.got_a: list[bytes] = []
        self.got_b: list[bytes] = []

    def pump(self, tamper: Tamper = lambda d: d, rounds: int = 8) -> None:
        for _ in range(rounds):
            for src, dst, dst_addr, src_addr, got in (
                (self.a, self.b, B_ADDR, A_ADDR, self.got_b),
                (self.b, self.a, A_ADDR, B_ADDR, self.got_a),
            ):
                out, src.outbox[:] = list(src.outbox), []
                del dst_addr
                for datagram, _ in out:
                    self.wire.append(datagram)
                    changed = tamper(datagram)
                    if changed is None:
                        continue
                    result = dst.receive(changed, src_addr, self.now)
                    if result is not None:
                        got.append(result[1])

    def connect(self, tamper: Tamper = lambda d: d) -> bytes:
        hid = self.a.connect(B_ADDR, self.b_creds[0].identity, self.now)
        self.a.queue_for(hid, bytes([MSG_KEEPALIVE]) + b"hello")
        self.pump(tamper)
        return hid


def session_of(ep: LinkEndpoint) -> Session:
    ups = [e for e in ep.events if isinstance(e, SessionUp)]
    assert ups, ep.events
    return ups[-1].session


def test_handshake_and_data_both_ways() -> None:
    p = Pair()
    p.connect()
    assert p.got_b and p.got_b[0].startswith(bytes([MSG_KEEPALIVE]) + b"hello")
    sa, sb = session_of(p.a), session_of(p.b)
    assert sa.peer.identity == p.b_creds[0].identity
    assert sb.peer.identity == p.a_creds[0].identity
    p.b.send(sb, bytes([MSG_KEEPALIVE]) + b"back")
    p.pump()
    assert p.got_a[-1].startswith(bytes([MSG_KEEPALIVE]) + b"back")
    assert all(len(d) == DATAGRAM_SIZE for d in p.wire)
    assert not any(b"hello" in d or b"back" in d for d in p.wire)
    assert p.a.counters["handshake_ok"] == 1 and p.b.counters["handshake_ok"] == 1


def test_cookie_round_trip_precedes_expensive_work() -> None:
    p = Pair()
    p.a.connect(B_ADDR, None, p.now)
    init = p.a.outbox[0][0]
    p.b.receive(init, A_ADDR, p.now)
    # the first answer is a stateless cookie, not a response
    assert p.b.outbox[0][0][0] == DG_HS_COOKIE
    assert not p.b._responding


def test_replayed_data_is_dropped() -> None:
    p = Pair()
    p.connect()
    sa = session_of(p.a)
    p.a.send(sa, bytes([MSG_KEEPALIVE]) + b"once")
    datagram = p.a.outbox[-1][0]
    p.pump()
    assert p.b.receive(datagram, A_ADDR, p.now) is None
    assert p.b.counters["dropped:replay"] == 1


def test_tampered_data_is_dropped() -> None:
    p = Pair()
    p.connect()
    sa = session_of(p.a)
    p.a.send(sa, bytes([MSG_KEEPALIVE]))
    datagram = bytearray(p.a.outbox.pop()[0])
    datagram[-1] ^= 1
    assert p.b.receive(bytes(datagram), A_ADDR, p.now) is None
    assert p.b.counters["dropped:bad_mac"] == 1


def _flip(kind: int, offset: int) -> Tamper:
    def tamper(d: bytes) -> bytes | None:
        if d[0] != kind:
            return d
        b = bytearray(d)
        b[offset] ^= 0x40
        return bytes(b)

    return tamper


def _flip_cookied_init(offset: int) -> Tamper:
    flip = _flip(DG_HS_INIT, offset)

    def tamper(d: bytes) -> bytes | None:
        return flip(d) if d[0] == DG_HS_INIT and d[1:17] != bytes(16) else d

    return tamper


@pytest.mark.parametrize(
    ("tamper", "counter_side", "reason"),
    [
        (_flip_cookied_init(30), "b", "bad_cookie"),  # INIT body changed after the cookie
        (_flip(DG_HS_INIT, 30), "a", "bad_signature"),  # both INITs changed: transcripts differ
        (_flip(DG_HS_RESP, 1 + 16 + 32 + 1088 + 50), "a", "bad_descriptor"),
        (_flip(DG_HS_RESP, 1 + 16 + 5), "a", "bad_signature"),  # responder's X25519 key
        (_flip(DG_HS_FINISH, 20), "b", "bad_finish"),
        (lambda d: d[:700] if d[0] == DG_HS_RESP else d, "a", None),  # truncated
    ],
)
def test_tampered_handshakes_fail_and_are_counted(
    tamper: Tamper, counter_side: str, reason: str | None
) -> None:
    p = Pair()
    p.connect(tamper)
    assert not p.got_b
    side = p.a if counter_side == "a" else p.b
    if reason is None:
        assert side.counters["dropped:bad_size"] >= 1
    else:
        assert side.counters[f"handshake_failed:{reason}"] >= 1
    assert not [e for e in p.a.events if isinstance(e, SessionUp)]


def test_wrong_identity_is_refused() -> None:
    p = Pair()
    p.a.connect(B_ADDR, os.urandom(32), p.now)
    p.pump()
    assert p.a.counters["handshake_failed:wrong_identity"] == 1
    assert any(isinstance(e, HandshakeFailed) for e in p.a.events)


def test_unpinned_peer_is_refused_by_policy() -> None:
    p = Pair(accept_b=lambda d: "unpinned")
    p.connect()
    assert p.b.counters["handshake_failed:unpinned"] == 1
    assert not p.got_b


def test_replayed_finish_is_counted() -> None:
    p = Pair()
    p.connect()
    finish = next(d for d in p.wire if d[0] == DG_HS_FINISH)
    p.b.receive(finish, A_ADDR, p.now)
    assert p.b.counters["handshake_failed:replay"] == 1


def test_handshake_times_out() -> None:
    p = Pair()
    p.a.connect(B_ADDR, None, p.now)
    for i in range(1, 8):
        p.a.tick(p.now + i)
    assert p.a.counters["handshake_failed:timeout"] == 1


ENDPOINT = LinkEndpoint(lambda: credentials(ROLE_RELAY), lambda d: None)
ENDPOINT.tick(time.time())


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2 * DATAGRAM_SIZE),
        st.builds(
            lambda kind, rest: bytes([kind]) + rest,
            st.sampled_from([DG_HS_INIT, 2, DG_HS_RESP, DG_HS_FINISH, DG_DATA, 0, 99]),
            st.binary(min_size=DATAGRAM_SIZE - 1, max_size=DATAGRAM_SIZE - 1),
        ),
    )
)
def test_any_datagram_is_rejected_cleanly(data: bytes) -> None:
    assert ENDPOINT.receive(data, A_ADDR, time.time()) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=DATAGRAM_SIZE + 5))
def test_handshake_parsers_raise_only_handshake_error(data: bytes) -> None:
    for parse in (hs.parse_init, hs.parse_cookie, hs.resp_sid, hs.finish_sid):
        with contextlib.suppress(hs.HandshakeError):
            parse(data)
