"""The link layer as a sans-I/O state machine: handshakes, sessions, AEAD datagrams.

LinkEndpoint takes (datagram, addr, now) and produces datagrams in `outbox`, events in
`events`, and returns decrypted link messages. It owns no socket and no clock.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import handshake as hs
from .admission import Admission, LinkLimits, source_of
from .descriptor import Descriptor
from .reasons import Counters, Drop, HandshakeFailure
from .replay import ReplayWindow
from .wire import (
    DATA_HEADER_LEN,
    DATAGRAM_SIZE,
    DG_DATA,
    DG_HS_COOKIE,
    DG_HS_FINISH,
    DG_HS_INIT,
    DG_HS_RESP,
    LINK_PLAINTEXT_LEN,
    MSG_READY,
    ROLE_RELAY,
    SID_LEN,
)

Addr = tuple[str, int]
Credentials = Callable[[], tuple[Descriptor, Ed25519PrivateKey]]
# Returns None to accept a peer, or the reason to refuse it.
AcceptPolicy = Callable[[Descriptor], HandshakeFailure | None]

HANDSHAKE_RETRY = 1.0
HANDSHAKE_TRIES = 4
RESPONDER_PENDING_TTL = 10.0
COOKIE_ROTATE = 120.0
IDLE_TIMEOUT = 60.0
MAX_QUEUED = 512
_COUNTER = struct.Struct("!Q")
_NONCE_PREFIX = bytes(4)


def _addr_key(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


class Session:
    __slots__ = (
        "addr",
        "client",
        "created",
        "initiator",
        "last_recv",
        "last_send",
        "local_sid",
        "peer",
        "queue",
        "ready",
        "recv_aead",
        "remote_sid",
        "send_aead",
        "send_counter",
        "source",
        "window",
    )

    def __init__(
        self,
        local_sid: bytes,
        remote_sid: bytes,
        addr: Addr,
        send_key: bytes,
        recv_key: bytes,
        peer: Descriptor,
        initiator: bool,
        now: float,
    ) -> None:
        self.local_sid = local_sid
        self.remote_sid = remote_sid
        self.addr = addr
        self.send_aead = AESGCM(send_key)
        self.recv_aead = AESGCM(recv_key)
        self.send_counter = 0  # counter 0 is the FINISH message
        self.window = ReplayWindow()
        self.window.record(0)
        self.peer = peer
        self.initiator = initiator
        self.ready = not initiator  # the initiator waits for READY
        self.created = now
        self.last_recv = now
        self.last_send = now
        self.queue: list[bytes] = []
        self.source = source_of(addr)  # what the per-source limits counted it under
        self.client = False  # takes one of the session slots open to clients

    @property
    def peer_identity(self) -> bytes:
        return self.peer.identity


@dataclass
class _Initiating:
    state: hs.InitiatorState
    addr: Addr
    expected: bytes | None
    next_retry: float
    tries: int = 1
    cookie: bytes = bytes(hs.COOKIE_LEN)
    finish: bytes | None = None
    session: Session | None = None
    queue: list[bytes] = field(default_factory=list)
    awaiting_certificate: bytes | None = None  # the responder's bare descriptor, for READY


@dataclass
class _Responding:
    addr: Addr
    i_sid: bytes
    response: hs.Response
    expires: float

    @property
    def source(self) -> str:
        return source_of(self.addr)


@dataclass(frozen=True)
class SessionUp:
    session: Session


@dataclass(frozen=True)
class SessionDown:
    session: Session


@dataclass(frozen=True)
class HandshakeFailed:
    addr: Addr
    expected: bytes | None
    reason: HandshakeFailure


Event = SessionUp | SessionDown | HandshakeFailed


class LinkEndpoint:
    def __init__(
        self,
        credentials: Credentials,
        accept: AcceptPolicy,
        counters: Counter[str] | None = None,
        limits: LinkLimits | None = None,
    ) -> None:
        self.credentials = credentials
        self.accept = accept
        self.counters: Counter[str] = counters if counters is not None else Counters()
        self.admission = Admission(limits or LinkLimits())
        self.sessions: dict[bytes, Session] = {}
        self.outbox: list[tuple[bytes, Addr]] = []
        self.events: list[Event] = []
        self._initiating: dict[bytes, _Initiating] = {}
        self._responding: dict[bytes, _Responding] = {}  # by r_sid
        self._responding_by_init: dict[tuple[str, bytes], _Responding] = {}
        self._cookie_secrets = [os.urandom(32), os.urandom(32)]
        self._cookie_rotated = -1e18

    # --- sending -----------------------------------------------------------------------------

    def connect(self, addr: Addr, expected_identity: bytes | None, now: float) -> bytes:
        """Start a handshake; returns its id. Messages given to `queue_for` wait for it."""
        state = hs.InitiatorState.new()
        self._initiating[state.sid] = _Initiating(
            state, addr, expected_identity, now + HANDSHAKE_RETRY
        )
        self.outbox.append((state.init_datagram(), addr))
        return state.sid

    def queue_for(self, handshake_id: bytes, plaintext: bytes) -> bool:
        pending = self._initiating.get(handshake_id)
        if pending is None or len(pending.queue) >= MAX_QUEUED:
            return False
        pending.queue.append(plaintext)
        return True

    def handshake_pending(self, handshake_id: bytes) -> bool:
        return handshake_id in self._initiating

    def send(self, session: Session, plaintext: bytes) -> None:
        """Encrypt one link message (type byte + body, padded) to the session's peer."""
        if not session.ready:
            if len(session.queue) < MAX_QUEUED:
                session.queue.append(plaintext)
            else:
                self.counters[Drop.LINK_QUEUE_FULL.counter] += 1
            return
        self.outbox.append((self.seal(session, plaintext), session.addr))

    def seal(self, session: Session, plaintext: bytes) -> bytes:
        session.send_counter += 1
        header = bytes([DG_DATA]) + session.remote_sid + _COUNTER.pack(session.send_counter)
        if len(plaintext) < LINK_PLAINTEXT_LEN:
            plaintext = plaintext + bytes(LINK_PLAINTEXT_LEN - len(plaintext))
        return header + session.send_aead.encrypt(_NONCE_PREFIX + header[9:], plaintext, header)

    def close(self, session: Session) -> None:
        if self._remove_session(session):
            self.events.append(SessionDown(session))

    def half_open(self) -> int:
        return len(self._responding)

    # --- what the limits count ---------------------------------------------------------------

    def _add_session(self, session: Session) -> None:
        self.sessions[session.local_sid] = session
        self.admission.session_added(session.source, session.client)

    def _remove_session(self, session: Session) -> bool:
        if self.sessions.pop(session.local_sid, None) is None:
            return False
        self.admission.session_removed(session.source, session.client)
        return True

    def _add_responding(self, key: tuple[str, bytes], entry: _Responding) -> None:
        self._responding[entry.response.r_sid] = entry
        self._responding_by_init[key] = entry
        self.admission.half_open_added(entry.source)

    def _remove_responding(self, r_sid: bytes) -> None:
        entry = self._responding.pop(r_sid)
        self._responding_by_init.pop((_addr_key(entry.addr), entry.i_sid), None)
        self.admission.half_open_removed(entry.source)

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Addr, now: float) -> tuple[Session, bytes] | None:
        """Handle one datagram; returns (session, link plaintext) for DATA, else None."""
        if len(data) != DATAGRAM_SIZE:
            self.counters[Drop.BAD_SIZE.counter] += 1
            return None
        kind = data[0]
        if kind == DG_DATA:
            return self._receive_data(data, addr, now)
        try:
            if kind == DG_HS_INIT:
                self._on_init(data, addr, now)
            elif kind == DG_HS_COOKIE:
                self._on_cookie(data, addr)
            elif kind == DG_HS_RESP:
                self._on_resp(data, addr, now)
            elif kind == DG_HS_FINISH:
                self._on_finish(data, addr, now)
            else:
                self.counters[Drop.BAD_TYPE.counter] += 1
        except hs.HandshakeError as exc:
            self._count_failure(exc)
        return None

    def _count_failure(self, exc: hs.HandshakeError) -> None:
        self.counters[exc.reason.counter] += 1
        if exc.certificate is not None:
            self.counters[exc.certificate.counter] += 1

    def _receive_data(self, data: bytes, addr: Addr, now: float) -> tuple[Session, bytes] | None:
        session = self.sessions.get(data[1 : 1 + SID_LEN])
        if session is None:
            self.counters[Drop.UNKNOWN_SESSION.counter] += 1
            return None
        header = data[:DATA_HEADER_LEN]
        (counter,) = _COUNTER.unpack_from(data, 1 + SID_LEN)
        if not session.window.check(counter):
            self.counters[Drop.REPLAY.counter] += 1
            return None
        try:
            plain = session.recv_aead.decrypt(
                _NONCE_PREFIX + header[9:], data[DATA_HEADER_LEN:], header
            )
        except InvalidTag:
            self.counters[Drop.BAD_MAC.counter] += 1
            return None
        session.window.record(counter)
        session.last_recv = now
        if session.addr != addr:  # authenticated roaming
            session.addr = addr
        if not session.ready and plain[0] == MSG_READY:
            self._mark_ready(session, plain[1:], now)
            return None
        return session, plain

    def _mark_ready(self, session: Session, ready_body: bytes, now: float) -> None:
        for pending in [p for p in self._initiating.values() if p.session is session]:
            if pending.awaiting_certificate is not None:
                try:
                    session.peer = hs.confirm_responder(
                        pending.awaiting_certificate, ready_body, now
                    )
                except hs.HandshakeError as exc:
                    if exc.certificate is not None:
                        self.counters[exc.certificate.counter] += 1
                    self._fail(pending, exc.reason)
                    return
            del self._initiating[pending.state.sid]
            session.queue[:0] = pending.queue
        session.ready = True
        self.counters["handshake_ok"] += 1
        self.events.append(SessionUp(session))
        queued, session.queue = session.queue, []
        for plaintext in queued:
            self.send(session, plaintext)

    def _cookie_ok(self, addr: Addr, init: hs.ParsedInit) -> bool:
        # Every secret compared in constant time: timing must not reveal how much matched.
        return any(
            hmac.compare_digest(hs.make_cookie(secret, _addr_key(addr), init.body), init.cookie)
            for secret in self._cookie_secrets
        )

    def _on_init(self, data: bytes, addr: Addr, now: float) -> None:
        init = hs.parse_init(data)
        key = (_addr_key(addr), init.sid)
        cached = self._responding_by_init.get(key)
        if cached is not None:
            # A retransmitted (or replayed) INIT: resend the cached answer, no new work.
            self.counters[HandshakeFailure.REPLAY.counter] += 1
            self.outbox.append((cached.response.datagram, addr))
            return
        if not self._cookie_ok(addr, init):
            if not hmac.compare_digest(init.cookie, bytes(hs.COOKIE_LEN)):
                raise hs.HandshakeError(HandshakeFailure.BAD_COOKIE)
            # Stateless retry: prove the address before any expensive step.
            cookie = hs.make_cookie(self._cookie_secrets[0], _addr_key(addr), init.body)
            self.outbox.append((hs.cookie_datagram(init.sid, cookie), addr))
            return
        refusal = self.admission.refuse_handshake(source_of(addr))
        if refusal is not None:
            raise hs.HandshakeError(refusal)
        descriptor, link_key = self.credentials()
        response = hs.respond(init, descriptor, link_key)
        self._add_responding(
            key, _Responding(addr, init.sid, response, now + RESPONDER_PENDING_TTL)
        )
        self.outbox.append((response.datagram, addr))

    def _on_cookie(self, data: bytes, addr: Addr) -> None:
        i_sid, cookie = hs.parse_cookie(data)
        pending = self._initiating.get(i_sid)
        if pending is None or pending.addr != addr or pending.finish is not None:
            raise hs.HandshakeError(HandshakeFailure.UNEXPECTED)
        pending.cookie = cookie
        self.outbox.append((pending.state.init_datagram(cookie), addr))

    def _on_resp(self, data: bytes, addr: Addr, now: float) -> None:
        pending = self._initiating.get(hs.resp_sid(data))
        if pending is None or pending.finish is not None or pending.addr != addr:
            raise hs.HandshakeError(HandshakeFailure.UNEXPECTED)
        descriptor, link_key = self.credentials()
        done = hs.complete(pending.state, data, descriptor, link_key, now)
        if pending.expected is not None and done.peer.identity != pending.expected:
            self._fail(pending, HandshakeFailure.WRONG_IDENTITY)
            return
        reason = self.accept(done.peer)
        if reason is not None:
            self._fail(pending, reason)
            return
        local_sid = pending.state.sid  # the INIT's sid (in the transcript) names our end
        session = Session(
            local_sid, done.r_sid, addr, done.keys.i2r, done.keys.r2i, done.peer, True, now
        )
        self._add_session(session)
        pending.session = session
        pending.finish = done.finish
        pending.awaiting_certificate = done.awaiting_certificate
        pending.tries = 1
        pending.next_retry = now + HANDSHAKE_RETRY
        self.outbox.append((done.finish, addr))

    def _fail(self, pending: _Initiating, reason: HandshakeFailure) -> None:
        self._initiating.pop(pending.state.sid, None)
        if pending.session is not None:
            self._remove_session(pending.session)
        self.counters[reason.counter] += 1
        self.events.append(HandshakeFailed(pending.addr, pending.expected, reason))

    def _on_finish(self, data: bytes, addr: Addr, now: float) -> None:
        r_sid = hs.finish_sid(data)
        entry = self._responding.get(r_sid)
        if entry is None or entry.addr != addr:
            raise hs.HandshakeError(
                HandshakeFailure.REPLAY if r_sid in self.sessions else HandshakeFailure.UNEXPECTED
            )
        response = entry.response
        peer = hs.verify_finish(data, response.keys, response.th2, now)
        self._remove_responding(r_sid)
        reason = self.accept(peer)
        if reason is not None:
            raise hs.HandshakeError(reason)
        # A relay that passed `accept` is pinned: it may take the slots clients cannot.
        relay = peer.role == ROLE_RELAY
        refusal = self.admission.refuse_session(entry.source, relay)
        if refusal is not None:
            raise hs.HandshakeError(refusal)
        session = Session(
            r_sid, entry.i_sid, addr, response.keys.r2i, response.keys.i2r, peer, False, now
        )
        session.client = not relay
        session.window.record(0)
        self._add_session(session)
        self.counters["handshake_ok"] += 1
        self.events.append(SessionUp(session))
        self.send(session, bytes([MSG_READY]) + hs.ready_message(response))

    # --- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now - self._cookie_rotated >= COOKIE_ROTATE:
            self._cookie_secrets = [os.urandom(32), self._cookie_secrets[0]]
            self._cookie_rotated = now
        for pending in list(self._initiating.values()):
            if now < pending.next_retry:
                continue
            if pending.tries >= HANDSHAKE_TRIES:
                self._fail(pending, HandshakeFailure.TIMEOUT)
                continue
            pending.tries += 1
            pending.next_retry = now + HANDSHAKE_RETRY
            if pending.finish is not None:
                datagram = pending.finish
            else:
                datagram = pending.state.init_datagram(pending.cookie)
            self.outbox.append((datagram, pending.addr))
        for r_sid, entry in list(self._responding.items()):
            if now >= entry.expires:
                self._remove_responding(r_sid)
                self.counters[HandshakeFailure.TIMEOUT.counter] += 1
        for session in list(self.sessions.values()):
            if session.ready and now - session.last_recv > IDLE_TIMEOUT:
                self.close(session)

    def next_timer(self) -> float | None:
        times = [p.next_retry for p in self._initiating.values()]
        times += [r.expires for r in self._responding.values()]
        return min(times) if times else None
