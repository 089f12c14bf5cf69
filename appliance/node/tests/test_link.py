"""Handshake and link sessions, driven without sockets."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import credentials
from ringmesh import handshake as hs
from ringmesh.admission import LinkLimits, source_of
from ringmesh.descriptor import Descriptor
from ringmesh.link import HandshakeFailed, LinkEndpoint, Session, SessionUp
from ringmesh.reasons import HandshakeFailure
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
    def __init__(
        self, accept_b: Callable[[Descriptor], HandshakeFailure | None] = lambda d: None
    ) -> None:
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
    p = Pair(accept_b=lambda d: HandshakeFailure.UNPINNED)
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


# --- resource rules -------------------------------------------------------------------------

RELAY_ADDR = ("127.0.0.1", 7733)
LIMITS = LinkLimits(
    max_half_open=6,
    max_half_open_per_source=2,
    max_sessions=8,
    max_sessions_per_source=3,
    reserved_relay_sessions=2,
)


class Star:
    """One responder (a relay with small limits) and any number of initiators, on a fake
    network that delivers everything in order."""

    def __init__(self, limits: LinkLimits = LIMITS) -> None:
        self.pinned = credentials(ROLE_RELAY)
        self.relay = LinkEndpoint(lambda: credentials(ROLE_RELAY), self._accept, limits=limits)
        self.now = time.time()
        self.relay.tick(self.now)
        self.peers: dict[tuple[str, int], LinkEndpoint] = {}

    def _accept(self, desc: Descriptor) -> HandshakeFailure | None:
        if desc.role == ROLE_RELAY and desc.identity != self.pinned[0].identity:
            return HandshakeFailure.UNPINNED
        return None

    def endpoint(self, addr: tuple[str, int], relay: bool = False) -> LinkEndpoint:
        if addr not in self.peers:
            if relay:
                ep = LinkEndpoint(lambda: self.pinned, lambda d: None)
            else:
                ep = LinkEndpoint(lambda: credentials(ROLE_CLIENT), lambda d: None)
            self.peers[addr] = ep
        return self.peers[addr]

    def handshake(self, addr: tuple[str, int], relay: bool = False) -> Session | None:
        ep = self.endpoint(addr, relay)
        ep.events.clear()
        ep.connect(RELAY_ADDR, None, self.now)
        for _ in range(6):
            self.pump()
        ups = [e.session for e in ep.events if isinstance(e, SessionUp)]
        return ups[-1] if ups else None

    def pump(self) -> None:
        for addr, ep in self.peers.items():
            out, ep.outbox[:] = list(ep.outbox), []
            for datagram, _ in out:
                self.relay.receive(datagram, addr, self.now)
        out, self.relay.outbox[:] = list(self.relay.outbox), []
        for datagram, addr in out:
            if addr in self.peers:
                self.peers[addr].receive(datagram, RELAY_ADDR, self.now)

    def half_open_from(self, addr: tuple[str, int]) -> bool:
        """A cookie-proven INIT that is never finished; True when the relay answered it."""
        state = hs.InitiatorState.new()
        self.relay.receive(state.init_datagram(), addr, self.now)
        (cookie_datagram, _) = self.relay.outbox.pop()
        _, cookie = hs.parse_cookie(cookie_datagram)
        self.relay.receive(state.init_datagram(cookie), addr, self.now)
        answered = bool(self.relay.outbox) and self.relay.outbox[-1][0][0] == DG_HS_RESP
        self.relay.outbox.clear()
        return answered

    def failures(self, reason: HandshakeFailure) -> int:
        return self.relay.counters[reason.counter]


def test_half_open_handshakes_are_limited_per_address_not_per_port() -> None:
    star = Star()
    answered = [star.half_open_from(("10.0.0.1", port)) for port in range(1000, 1050)]
    assert sum(answered) == LIMITS.max_half_open_per_source
    assert star.failures(HandshakeFailure.SOURCE_HALF_OPEN_FULL) == 50 - 2
    assert star.relay.half_open() == 2
    # other addresses fill the global cap, then nobody new gets an answer
    others = [star.half_open_from((f"10.0.1.{i}", 9)) for i in range(10)]
    assert sum(others) == LIMITS.max_half_open - 2
    assert star.failures(HandshakeFailure.HALF_OPEN_FULL) == 10 - 4
    # ... except a pinned relay's address
    star.relay.admission.reserved_sources = frozenset({"10.0.9.9"})
    assert star.half_open_from(("10.0.9.9", 1))
    # half-open handshakes expire and free their slots
    star.relay.tick(star.now + 11)
    assert star.relay.half_open() == 0
    assert star.half_open_from(("10.0.0.1", 2000))


def test_self_made_client_identities_cannot_take_the_pinned_relays_slots() -> None:
    star = Star()
    one_address = [star.handshake(("10.0.0.1", port)) for port in range(1000, 1005)]
    assert sum(s is not None for s in one_address) == LIMITS.max_sessions_per_source
    assert star.failures(HandshakeFailure.SOURCE_SESSIONS_FULL) == 2
    many = [star.handshake((f"10.0.1.{i}", 9)) for i in range(10)]
    clients = LIMITS.max_sessions - LIMITS.reserved_relay_sessions
    assert sum(s is not None for s in many) == clients - 3
    assert star.failures(HandshakeFailure.SESSIONS_FULL) == 10 - 3
    assert len(star.relay.sessions) == clients
    # a pinned relay from the address [[relays]] gives still gets in; a client from there not
    star.relay.admission.reserved_sources = frozenset({"10.0.2.1"})
    relay_session = star.handshake(("10.0.2.1", 7733), relay=True)
    assert relay_session is not None
    assert star.relay.sessions[relay_session.remote_sid].peer.identity == star.pinned[0].identity
    assert star.handshake(("10.0.2.1", 7734)) is None
    # from an unknown address it is refused before any expensive step (it still reaches this
    # relay through its own handshake in the other direction, which no limit here refuses)
    assert star.handshake(("10.0.2.2", 7733), relay=True) is None
    # a client that leaves frees its slot
    star.relay.close(next(s for s in star.relay.sessions.values() if s.client))
    assert star.handshake(("10.0.3.1", 9)) is not None


def test_sources_are_addresses_and_ipv6_prefixes() -> None:
    assert source_of(("192.0.2.1", 1)) == source_of(("192.0.2.1", 65535)) == "192.0.2.1"
    assert source_of(("2001:db8:1:2:aaaa::1", 5)) == source_of(("2001:db8:1:2:bbbb::9", 6))
    assert source_of(("2001:db8:1:3::1", 5)) != source_of(("2001:db8:1:2::1", 5))
    assert source_of(("::ffff:192.0.2.1", 5)) == "192.0.2.1"


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("connect"), st.integers(0, 5), st.booleans()),
            st.tuples(st.just("half_open"), st.integers(0, 5), st.just(False)),
            st.tuples(st.just("close"), st.integers(0, 20), st.just(False)),
            st.tuples(st.just("wait"), st.integers(1, 15), st.just(False)),
        ),
        max_size=20,
    )
)
def test_limits_hold_and_the_books_balance(steps: list[tuple[str, int, bool]]) -> None:
    star = Star()
    for action, n, relay in steps:
        if action == "connect":
            star.handshake((f"10.0.0.{n}", 1000 + len(star.peers)), relay=relay and n == 0)
        elif action == "half_open":
            star.half_open_from((f"10.0.0.{n}", 2000 + n))
        elif action == "close" and star.relay.sessions:
            sessions = list(star.relay.sessions.values())
            star.relay.close(sessions[n % len(sessions)])
        elif action == "wait":
            star.now += n
            star.relay.tick(star.now)
        sessions = list(star.relay.sessions.values())
        clients = [s for s in sessions if s.client]
        per_source = Counter(s.source for s in clients)
        admission = star.relay.admission
        assert len(sessions) <= LIMITS.max_sessions == 8
        assert len(clients) <= LIMITS.max_sessions - LIMITS.reserved_relay_sessions
        assert max(per_source.values(), default=0) <= LIMITS.max_sessions_per_source
        assert star.relay.half_open() <= LIMITS.max_half_open
        assert (admission.sessions, admission.client_sessions) == (len(sessions), len(clients))
        assert admission.half_open == star.relay.half_open()
