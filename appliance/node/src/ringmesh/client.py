"""The mesh client as a sans-I/O state machine (`ringmesh send` / `ringmesh recv`).

Client.receive_datagram(data, addr, now) and Client.handle_timer(now) consume input;
datagrams come out of datagrams_to_send() and events out of next_event(). No sockets and
no clock: client_io.py is the asyncio shell, the tests drive it with a fake clock.

What it does, as Loopix prescribes for a client:
- one link session, with its home relay; every packet enters the mix network there;
- the network's view is the directory its home relay passes on, accepted only when a
  majority of the pinned first ring signed it;
- packets leave as a Poisson process of rate `send_rate`: a real packet when one is queued
  (fragments one per tick, never a burst), a drop-cover packet otherwise; loop cover, which
  comes back to this client, at its own rate `loop_rate`;
- per-hop delays are exponential with mean `mean_delay_ms`, chosen here for every hop;
- acks and replies travel in single-use reply blocks over paths chosen independently of the
  forward path, and leave after a random delay; no ack in time: the message goes again over
  another path.
"""

from __future__ import annotations

import enum
import heapq
import os
import random
import struct
from collections import Counter, deque
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from . import directory
from . import messaging as m
from .codec import ChunkAssembler, CodecError
from .config import Config, RelayEntry
from .descriptor import Descriptor
from .did import (
    ed25519_public_to_x25519,
    ed25519_seed_to_x25519,
    prekey_mailbox_id,
    reply_mailbox_id,
    user_mailbox_id,
)
from .keystore import Keys
from .link import Addr, HandshakeFailed, LinkEndpoint, Session, SessionDown, SessionUp
from .lioness import KEY_LEN, LionessKey
from .onion import Hop, build_header, build_packet, hop_delay_us, wrap_payload
from .prekeys import Prekey, PrekeyBundle, PrekeyError, open_sealed, seal, sealed_to
from .reasons import Counters, Drop, HandshakeFailure, Refusal
from .wire import (
    CMD_DELIVER,
    CMD_DROP,
    MSG_CLAIM_REPLY,
    MSG_CLAIM_USER,
    MSG_CLOSE,
    MSG_DIRECTORY,
    MSG_GET_DIRECTORY,
    MSG_KEEPALIVE,
    MSG_MAILBOX_ITEM,
    MSG_MAILBOX_SYNC,
    MSG_ONION,
    MSG_PREKEY,
    NODE_ID_LEN,
    PAYLOAD_LEN,
    ROLE_RELAY,
    SURB_ID_LEN,
)

CONNECT_TIMEOUT = 6.0  # to reach the home relay and get a usable directory
DIRECTORY_RETRY = 0.5
MAINTAIN_EVERY = 0.1
KEEPALIVE_EVERY = 5.0
REDIAL_AFTER = 1.0  # a refused or unanswered handshake is tried again this much later
LOOP_LOST_AFTER = 2.0  # plus 20 mean hop delays: a loop not back by then marks its mixes
LOOP_MEMORY = 60.0  # a loop that comes back later still clears them
SUSPECT = 2  # failure marks after which a relay is avoided even at the cost of disjointness
MAX_PENDING_ACKS = 256
MAX_PREKEY_REQUESTS = 64  # unanswered prekey requests remembered


class ClientError(Exception):
    """A request the client cannot carry out (not connected, bad reply handle, no path)."""


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"  # handshake with the home relay
    FETCHING_DIRECTORY = "fetching_directory"
    READY = "ready"  # Poisson traffic flows
    CLOSED = "closed"
    FAILED = "failed"


_TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.FETCHING_DIRECTORY, State.FAILED, State.CLOSED}),
    State.FETCHING_DIRECTORY: frozenset(
        {State.READY, State.CONNECTING, State.FAILED, State.CLOSED}
    ),
    State.READY: frozenset({State.CONNECTING, State.FAILED, State.CLOSED}),
    State.CLOSED: frozenset(),
    State.FAILED: frozenset({State.CLOSED}),
}


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    directory_digest: bytes


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class MessageReceived:
    message_id: bytes
    body: bytes
    reply_handle: bytes  # an encoded reply block: answer with send_reply()


@dataclass(frozen=True)
class ReplyReceived:
    in_reply_to: bytes  # the id of the message of ours that carried the reply block
    body: bytes


@dataclass(frozen=True)
class MessageAcked:
    message_id: bytes
    attempts: int


@dataclass(frozen=True)
class MessageFailed:
    message_id: bytes
    attempts: int


@dataclass(frozen=True)
class ReplySent:
    pass


@dataclass(frozen=True)
class MailboxSynced:
    held: int  # packets the home relay held for us when we claimed the mailbox


@dataclass(frozen=True)
class ReplyKeysIssued:
    """Keep these to read a reply that may come after this process ends (ReplyKeyStore)."""

    surb_id: bytes
    record: bytes


@dataclass(frozen=True)
class ReplyKeysUsed:
    surb_id: bytes


@dataclass(frozen=True)
class PrekeyFetched:
    """A user's certified prekey bundle, from its home relay through reply blocks."""

    recipient: bytes
    bundle: PrekeyBundle


Event = (
    Ready
    | Failed
    | MessageReceived
    | ReplyReceived
    | MessageAcked
    | MessageFailed
    | ReplySent
    | MailboxSynced
    | ReplyKeysIssued
    | ReplyKeysUsed
    | PrekeyFetched
)


# --- reply-block keys -------------------------------------------------------------------------

_SURB_RECORD = struct.Struct("!B16sd32sB")  # purpose, message id, expires, key, hops


@dataclass(frozen=True)
class SurbKeys:
    """What the owner of a reply block needs to read what comes back through it."""

    purpose: int  # messaging.SURB_ACK or SURB_REPLY
    message_id: bytes
    expires: float
    key: bytes
    payload_keys: tuple[LionessKey, ...]

    def encode(self) -> bytes:
        head = _SURB_RECORD.pack(
            self.purpose, self.message_id, self.expires, self.key, len(self.payload_keys)
        )
        return head + b"".join(k.to_bytes() for k in self.payload_keys)

    @classmethod
    def decode(cls, raw: bytes) -> SurbKeys:
        if len(raw) < _SURB_RECORD.size:
            raise ValueError("short reply-key record")
        purpose, message_id, expires, key, hops = _SURB_RECORD.unpack_from(raw)
        rest = raw[_SURB_RECORD.size :]
        if len(rest) != hops * KEY_LEN:
            raise ValueError("bad reply-key record")
        keys = tuple(
            LionessKey.from_bytes(rest[i : i + KEY_LEN]) for i in range(0, len(rest), KEY_LEN)
        )
        return cls(purpose, message_id, expires, key, keys)


# --- bookkeeping ------------------------------------------------------------------------------


@dataclass
class _Outgoing:
    message_id: bytes
    body: bytes
    recipient: bytes
    recipient_home: bytes
    deadline: float
    retransmit: float
    attempts: int = 0
    queued: int = 0  # fragments of the current attempt still waiting for their tick
    ack_due: float | None = None  # set when the last fragment has left
    sealed: bool = False  # body is sealed to the recipient's prekey
    # The prekey's X25519 half, which every fragment is sealed to when there is a bundle.
    envelope_key: X25519PublicKey | None = None
    paths: list[list[bytes]] = field(default_factory=list)  # the current attempt's


@dataclass
class _Loop:
    sent: float
    mixes: list[bytes]
    blamed: bool = False  # counted lost (and its mixes marked) before it came back


@dataclass
class _Queued:
    packet: bytes
    message_id: bytes | None = None  # a fragment of this outgoing message
    is_reply: bool = False


class Client:
    def __init__(
        self,
        config: Config,
        keys: Keys,
        rng: random.Random | None = None,
        reply_keys: dict[bytes, bytes] | None = None,
    ) -> None:
        if config.client_home is None:
            raise ClientError("client.home is not set")
        self.config = config
        self.keys = keys
        self.rng = rng or random.SystemRandom()
        self.counters: Counter[str] = Counters()
        self.state = State.IDLE
        self.home: RelayEntry = next(r for r in config.relays if r.did == config.client_home)
        self.ring = frozenset(r.identity for r in config.relays)
        self.link = LinkEndpoint(self._credentials, self._accept, self.counters)
        self.session: Session | None = None
        self.directory: directory.Directory | None = None
        self._relays: dict[bytes, Descriptor] = {}
        self._events: deque[Event] = deque()
        self._connect_deadline = 0.0
        self._handshake_id: bytes | None = None
        self._redial_at = 0.0
        self._failed_reason = ""
        self._directory_deadline = 0.0
        self._directory_retry = 0.0
        self._directory_refusal = "the home relay has no directory signed by a majority yet"
        self._assembler = ChunkAssembler(directory.MAX_ENCODED)
        self._receiving = False
        self._token = os.urandom(32)
        self.reply_mailbox = reply_mailbox_id(self._token)  # acks and loops come back here
        self.user_mailbox = user_mailbox_id(keys.identity_public)
        self._x_key = ed25519_seed_to_x25519(keys.identity.private_bytes_raw())
        self._envelope_keys = [self._x_key]
        self._next_send = float("inf")
        self._next_loop = float("inf")
        self._next_maintenance = 0.0
        self._queue: deque[_Queued] = deque()
        self._delayed: list[tuple[float, int, _Queued]] = []  # acks and replies, held a while
        self._seq = 0
        self._surbs: dict[bytes, SurbKeys] = {}
        for surb_id, record in (reply_keys or {}).items():
            self._surbs[surb_id] = SurbKeys.decode(record)
        self._loops: dict[bytes, _Loop] = {}
        self._outgoing: dict[bytes, _Outgoing] = {}
        self._failures: dict[bytes, int] = {}
        self._reassembler = m.Reassembler()
        self._pending_acks: dict[bytes, list[bytes]] = {}
        self._reply_handles: dict[bytes, bytes] = {}
        self._bundle: PrekeyBundle | None = None  # ours, published to the home relay
        self._prekeys: dict[int, Prekey] = {}  # ours, current and in their grace
        self._prekey_requests: dict[bytes, bytes] = {}  # request id -> recipient identity
        self._prekey_parts: dict[bytes, dict[int, bytes]] = {}

    # --- state ---------------------------------------------------------------------------------

    def _to(self, state: State) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError(f"client state {self.state.value} -> {state.value}")
        self.state = state

    def _fail(self, reason: str) -> None:
        self._to(State.FAILED)
        self._events.append(Failed(reason))

    def _credentials(self) -> tuple[Descriptor, Ed25519PrivateKey]:
        return self.keys.current.descriptor, self.keys.current.link_key

    @staticmethod
    def _accept(desc: Descriptor) -> HandshakeFailure | None:
        return None if desc.role == ROLE_RELAY else HandshakeFailure.NOT_A_RELAY

    # --- commands ------------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        self._to(State.CONNECTING)
        self._connect_deadline = now + CONNECT_TIMEOUT
        self._dial(now)

    def _dial(self, now: float) -> None:
        self._handshake_id = self.link.connect(self.home.address, self.home.identity, now)
        self._redial_at = now + REDIAL_AFTER

    def receive_messages(self) -> None:
        """Claim this user's mailbox at the home relay (now, or once connected)."""
        self._receiving = True
        if self.session is not None and self.session.ready:
            self.link.send(self.session, bytes([MSG_CLAIM_USER]))

    def set_prekeys(self, bundle: PrekeyBundle, held: list[Prekey]) -> None:
        """Our prekeys (the shell keeps them on disk): `bundle` is published to the home
        relay, `held` opens what was sealed to any of them."""
        self._bundle = bundle
        self._prekeys = {p.prekey_id: p for p in held}
        # Fragments arrive sealed to a held prekey, or (no bundle) to the identity's key.
        self._envelope_keys = [p.envelope_key() for p in held] + [self._x_key]
        if self.session is not None and self.session.ready:
            self.link.send(self.session, bytes([MSG_PREKEY]) + bundle.encode())

    def fetch_prekey(self, recipient: bytes, recipient_home: bytes, now: float) -> bytes:
        """Ask the recipient's home relay for its bundle through the mixnet: the request
        carries two reply blocks, so the relay answers without learning who asked. Returns
        the request id; PrekeyFetched follows."""
        if self.state is not State.READY:
            raise ClientError("not connected to the home relay yet")
        me = self.home.identity
        forward = self._route(me, recipient_home, now)
        if forward is None:
            raise ClientError("the directory has no relay besides the two home relays")
        request_id = m.new_message_id()
        blocks = b""
        for _ in range(2):
            back = self._route(recipient_home, me, now, avoid=frozenset(forward[1:-1]))
            if back is None:
                raise ClientError("the directory has no relay besides the two home relays")
            blocks += self._issue_surb(back, self.reply_mailbox, m.SURB_PREKEY, request_id, now)
        payload = blocks + os.urandom(PAYLOAD_LEN - len(blocks))
        mailbox = prekey_mailbox_id(recipient)
        _, packet = build_packet(self._hops(forward), CMD_DELIVER, mailbox, payload)
        self._queue.append(_Queued(packet))
        if len(self._prekey_requests) >= MAX_PREKEY_REQUESTS:  # forget the oldest unanswered
            oldest = next(iter(self._prekey_requests))
            del self._prekey_requests[oldest]
            self._prekey_parts.pop(oldest, None)
        self._prekey_requests[request_id] = recipient
        return request_id

    def send_message(
        self,
        body: bytes,
        recipient: bytes,
        recipient_home: bytes,
        now: float,
        timeout: float = 30.0,
        retransmit: float = 3.0,
        bundle: PrekeyBundle | None = None,
    ) -> bytes:
        """Queue body for the user `recipient` whose mailbox is at `recipient_home`; returns
        the message id (MessageAcked or MessageFailed follows). With the recipient's prekey
        `bundle` (fetch_prekey), the body is sealed to it: forward secret end to end."""
        if self.state is not State.READY:
            raise ClientError("not connected to the home relay yet")
        if recipient_home not in self._relays:
            raise ClientError("the recipient's home relay is not in the directory")
        if len(body) > m.MAX_MESSAGE:
            raise ClientError(f"a message holds at most {m.MAX_MESSAGE} bytes")
        if bundle is not None:
            if bundle.identity != recipient:
                raise ClientError("the prekey bundle belongs to another user")
            body = seal(bundle, body)
        message = _Outgoing(
            m.new_message_id(),
            body,
            recipient,
            recipient_home,
            now + timeout,
            retransmit,
            sealed=bundle is not None,
            envelope_key=bundle.envelope_key() if bundle is not None else None,
        )
        self._start_attempt(message, now)
        self._outgoing[message.message_id] = message
        return message.message_id

    def send_reply(self, handle: bytes, body: bytes, now: float) -> None:
        """Answer through a reply handle from MessageReceived; ReplySent once it has left."""
        if self.state is not State.READY:
            raise ClientError("not connected to the home relay yet")
        try:
            packet = m.ReplyBlock.decode(handle).packet(m.SURB_REPLY, body)
        except m.EnvelopeError as exc:
            raise ClientError(str(exc)) from None
        self._hold(_Queued(packet, is_reply=True), now)

    def close(self, now: float) -> None:
        if self.session is not None and self.session.ready:
            self.link.send(self.session, bytes([MSG_CLOSE]))
        if self.state is not State.CLOSED:
            self._to(State.CLOSED)

    # --- output --------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.link.outbox[:] = list(self.link.outbox), []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def pending(self) -> int:
        """Real packets (fragments, acks, replies) that have not left yet."""
        return len(self._queue) + len(self._delayed)

    @property
    def directory_digest(self) -> bytes | None:
        return self.directory.digest if self.directory is not None else None

    # --- input ---------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        result = self.link.receive(data, addr, now)
        if result is not None:
            session, plain = result
            if session is self.session:
                self._on_message(plain[0], plain[1:], now)
        self._drain_link_events(now)

    def _on_message(self, kind: int, body: bytes, now: float) -> None:
        if kind == MSG_MAILBOX_ITEM:
            mailbox_id = body[:NODE_ID_LEN]
            surb_id = body[NODE_ID_LEN : NODE_ID_LEN + SURB_ID_LEN]
            payload = body[NODE_ID_LEN + SURB_ID_LEN :][:PAYLOAD_LEN]
            self._on_item(mailbox_id, surb_id, payload, now)
        elif kind == MSG_MAILBOX_SYNC:
            if body[:NODE_ID_LEN] == self.user_mailbox:
                held = int.from_bytes(body[NODE_ID_LEN : NODE_ID_LEN + 4], "big")
                self._events.append(MailboxSynced(held))
        elif kind == MSG_DIRECTORY:
            self._on_directory_chunk(body, now)

    def _drain_link_events(self, now: float) -> None:
        events, self.link.events[:] = list(self.link.events), []
        for event in events:
            if isinstance(event, SessionUp) and event.session.peer_identity == self.home.identity:
                self._on_session_up(event.session, now)
            elif isinstance(event, SessionDown) and event.session is self.session:
                self.session = None
                if self.state in (State.READY, State.FETCHING_DIRECTORY):
                    self.counters["home_session_lost"] += 1
                    self._to(State.CONNECTING)
                    self._connect_deadline = now + CONNECT_TIMEOUT
                    self._dial(now)
            elif isinstance(event, HandshakeFailed) and self.state is State.CONNECTING:
                self._handshake_id = None  # _maintain dials again after REDIAL_AFTER
                self._failed_reason = event.reason

    def _on_session_up(self, session: Session, now: float) -> None:
        if self.state is not State.CONNECTING:
            return
        self.session = session
        self.link.send(session, bytes([MSG_CLAIM_REPLY]) + self._token)
        if self._bundle is not None:
            self.link.send(session, bytes([MSG_PREKEY]) + self._bundle.encode())
        if self._receiving:
            self.link.send(session, bytes([MSG_CLAIM_USER]))
        if self.directory is not None and self.directory.epoch >= directory.epoch_at(now) - 1:
            self._to(State.FETCHING_DIRECTORY)
            self._to(State.READY)  # still usable: back to sending at once
            return
        self._to(State.FETCHING_DIRECTORY)
        self._directory_deadline = now + CONNECT_TIMEOUT
        self._request_directory(now)

    # --- directory -----------------------------------------------------------------------------

    def _request_directory(self, now: float) -> None:
        if self.session is not None:
            self.link.send(self.session, bytes([MSG_GET_DIRECTORY]))
        self._directory_retry = now + DIRECTORY_RETRY

    def _on_directory_chunk(self, body: bytes, now: float) -> None:
        try:
            raw = self._assembler.add(body)
        except CodecError:
            self.counters[Refusal.MALFORMED.counter] += 1
            return
        if not raw:  # incomplete, or the relay has nothing signed by a majority yet
            return
        try:
            fresh = directory.verify(raw, self.ring, now)
        except directory.DirectoryError as exc:
            self.counters[exc.reason.counter] += 1
            if exc.certificate is not None:
                self.counters[exc.certificate.counter] += 1
            self._directory_refusal = str(exc)
            return
        if self.home.identity not in {d.identity for d in fresh.descriptors}:
            self.counters[Refusal.NO_HOME.counter] += 1
            self._directory_refusal = "directory refused: it does not list the home relay"
            return
        self.directory = fresh
        self._relays = {d.identity: d for d in fresh.descriptors}
        if self.state is State.FETCHING_DIRECTORY:
            self._to(State.READY)
            self._next_send = now + self._gap(self.config.send_rate)
            self._next_loop = now + self._gap(self.config.client_loop_rate)
            self._events.append(Ready(fresh.digest))

    # --- timers --------------------------------------------------------------------------------

    def next_timer(self) -> float:
        due = [self._next_maintenance]
        link_due = self.link.next_timer()
        if link_due is not None:
            due.append(link_due)
        if self.state is State.READY:
            due += [self._next_send, self._next_loop]
        if self._delayed:
            due.append(self._delayed[0][0])
        return min(due)

    def handle_timer(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            self._queue.append(heapq.heappop(self._delayed)[2])
        if self.state is State.READY:
            if now >= self._next_send:
                self._send_tick(now)
                self._next_send = self._advance(self._next_send, self.config.send_rate, now)
            if now >= self._next_loop:
                self._send_loop(now)
                self._next_loop = self._advance(self._next_loop, self.config.client_loop_rate, now)
        link_due = self.link.next_timer()
        if now >= self._next_maintenance:
            self._maintain(now)
            self._next_maintenance = now + MAINTAIN_EVERY
        elif link_due is not None and now >= link_due:
            self.link.tick(now)  # a handshake retransmission is due
        self._drain_link_events(now)

    def _gap(self, rate: float) -> float:
        return self.rng.expovariate(rate) if rate > 0 else float("inf")

    def _advance(self, scheduled: float, rate: float, now: float) -> float:
        """The next tick of a Poisson process; a tick missed while the process was stalled
        is skipped, not made up for with a burst (the process is memoryless)."""
        gap = self._gap(rate)
        return scheduled + gap if scheduled + gap > now else now + gap

    def _maintain(self, now: float) -> None:
        self.link.tick(now)
        if self.state is State.CONNECTING and now >= self._connect_deadline:
            why = f" ({self._failed_reason})" if self._failed_reason else ""
            self._fail(f"no answer from the home relay {self.home.did}{why}")
        elif self.state is State.CONNECTING and now >= self._redial_at:
            handshake = self._handshake_id
            if handshake is None or not self.link.handshake_pending(handshake):
                self._dial(now)
        elif self.state is State.FETCHING_DIRECTORY and now >= self._directory_retry:
            if now >= self._directory_deadline:
                self._fail(self._directory_refusal)
            else:
                self._request_directory(now)
        elif self.state is State.READY:
            stale = self.directory is not None and self.directory.epoch < directory.epoch_at(now)
            if stale and now >= self._directory_retry:
                self._request_directory(now)  # keep the old one until the new arrives
            self._check_outgoing(now)
        session = self.session
        if session is not None and session.ready and now - session.last_send >= KEEPALIVE_EVERY:
            self.link.send(session, bytes([MSG_KEEPALIVE]))
            session.last_send = now
        lost_after = LOOP_LOST_AFTER + 20 * self.config.mean_delay_ms / 1000.0
        for loop_id, loop in list(self._loops.items()):
            if not loop.blamed and now - loop.sent > lost_after:
                loop.blamed = True
                self.counters["loops_lost"] += 1
                self._blame(loop.mixes)
            if now - loop.sent > LOOP_MEMORY:
                del self._loops[loop_id]
        for surb_id in [i for i, k in self._surbs.items() if k.expires <= now]:
            del self._surbs[surb_id]

    # --- sending -------------------------------------------------------------------------------

    def _send_tick(self, now: float) -> None:
        """One tick of the Poisson stream: the next real packet, or drop cover."""
        if self.session is None or not self.session.ready:
            return
        if self._queue:
            item = self._queue.popleft()
            self._transmit(item.packet, now)
            self.counters["real_sent"] += 1
            if item.is_reply:
                self._events.append(ReplySent())
            if item.message_id is not None:
                self._fragment_left(item.message_id, now)
            return
        relays = list(self._relays)
        exit_relay = self.rng.choice(relays)
        path = self._route(self.home.identity, exit_relay, now)
        if path is None:
            return
        _, packet = build_packet(
            self._hops(path), CMD_DROP, os.urandom(NODE_ID_LEN), os.urandom(PAYLOAD_LEN)
        )
        self._transmit(packet, now)
        self.counters["cover_sent_drop"] += 1

    def _send_loop(self, now: float) -> None:
        if self.session is None or not self.session.ready:
            return
        # A loop ignores failure marks: it is also the probe that clears them, and a relay
        # that loops never visit again could never be cleared.
        path = self._route(self.home.identity, self.home.identity, now, probe=True)
        if path is None:
            return
        loop_id = os.urandom(SURB_ID_LEN)
        _, packet = build_packet(
            self._hops(path), CMD_DELIVER, self.reply_mailbox, os.urandom(PAYLOAD_LEN), loop_id
        )
        self._loops[loop_id] = _Loop(now, path[1:-1])
        self._transmit(packet, now)
        self.counters["cover_sent_loop"] += 1

    def _transmit(self, packet: bytes, now: float) -> None:
        assert self.session is not None
        self.link.send(self.session, bytes([MSG_ONION]) + packet)
        self.session.last_send = now

    def _route(
        self,
        entry: bytes,
        exit_: bytes,
        now: float,
        avoid: frozenset[bytes] = frozenset(),
        probe: bool = False,
    ) -> list[bytes] | None:
        try:
            return m.route(
                list(self._relays),
                entry,
                exit_,
                self.config.path_length,
                {} if probe else self._failures,
                self.rng,
                avoid,
                SUSPECT,
            )
        except m.PathError:
            self.counters[Drop.NO_PATH.counter] += 1
            return None

    def _hops(self, path: list[bytes]) -> list[Hop]:
        mean = self.config.mean_delay_ms
        return [
            Hop(self._relays[i].node_id, self._relays[i].onion_key(), hop_delay_us(self.rng, mean))
            for i in path
        ]

    def _hold(self, item: _Queued, now: float) -> None:
        """Acks and replies wait an exponential time before they join the Poisson queue, so
        their timing does not mirror the arrival that caused them."""
        mean = self.config.mean_delay_ms / 1000.0
        due = now + (self.rng.expovariate(1.0 / mean) if mean > 0 else 0.0)
        self._seq += 1
        heapq.heappush(self._delayed, (due, self._seq, item))

    def _issue_surb(
        self, path: list[bytes], mailbox: bytes, purpose: int, message_id: bytes, now: float
    ) -> bytes:
        surb_id = os.urandom(SURB_ID_LEN)
        header = build_header(self._hops(path), CMD_DELIVER, mailbox, surb_id)
        key = os.urandom(m.SURB_KEY_LEN)
        # A reply block works while every relay on its path holds the onion key it used.
        expires = float(min(self._relays[i].expires for i in path))
        record = SurbKeys(purpose, message_id, expires, key, header.payload_keys)
        self._surbs[surb_id] = record
        if purpose == m.SURB_REPLY:
            self._events.append(ReplyKeysIssued(surb_id, record.encode()))
        return m.ReplyBlock(header.data, key).encode()

    def _start_attempt(self, message: _Outgoing, now: float) -> None:
        me, them = self.home.identity, message.recipient_home
        forward = self._route(me, them, now)
        if forward is None:
            raise ClientError("the directory has no relay besides the two home relays")
        mixes = frozenset(forward[1:-1])
        ack_path = self._route(them, me, now, avoid=mixes)
        reply_path = self._route(them, me, now, avoid=mixes)
        assert ack_path is not None and reply_path is not None
        if mixes & (set(ack_path) | set(reply_path)):
            self.counters["reply_path_overlap"] += 1  # the directory is too small to avoid it
        mid = message.message_id
        ack_block = self._issue_surb(ack_path, self.reply_mailbox, m.SURB_ACK, mid, now)
        reply_block = self._issue_surb(reply_path, self.user_mailbox, m.SURB_REPLY, mid, now)
        recipient_x = message.envelope_key or ed25519_public_to_x25519(message.recipient)
        mailbox = user_mailbox_id(message.recipient)
        plains = m.split_message(mid, message.body, ack_block, reply_block, message.sealed)
        for plain in plains:
            _, packet = build_packet(
                self._hops(forward), CMD_DELIVER, mailbox, m.seal(recipient_x, plain)
            )
            self._queue.append(_Queued(packet, message_id=mid))
        message.attempts += 1
        message.queued = len(plains)
        message.ack_due = None
        message.paths = [forward, ack_path]

    def _fragment_left(self, message_id: bytes, now: float) -> None:
        message = self._outgoing.get(message_id)
        if message is None:
            return
        message.queued -= 1
        if message.queued == 0:
            message.ack_due = now + message.retransmit

    def _blame(self, mixes: list[bytes]) -> None:
        for relay in mixes:
            self._failures[relay] = self._failures.get(relay, 0) + 1

    def _check_outgoing(self, now: float) -> None:
        for message in list(self._outgoing.values()):
            if now < message.deadline:
                if message.ack_due is None or now < message.ack_due:
                    continue  # fragments still waiting for their ticks, or the ack may come
                for path in message.paths:
                    self._blame(path[1:-1])
                self.counters["retransmissions"] += 1
                try:
                    self._start_attempt(message, now)
                    continue
                except ClientError:
                    pass  # the directory changed under us: give up on this message
            del self._outgoing[message.message_id]
            self._queue = deque(q for q in self._queue if q.message_id != message.message_id)
            self._events.append(MessageFailed(message.message_id, message.attempts))

    # --- receiving -----------------------------------------------------------------------------

    def _on_item(self, mailbox_id: bytes, surb_id: bytes, payload: bytes, now: float) -> None:
        if len(payload) != PAYLOAD_LEN:
            self.counters[Drop.UNEXPECTED_ITEM.counter] += 1
            return
        keys = self._surbs.get(surb_id)
        if keys is not None:
            self._on_surb_payload(surb_id, keys, payload, now)
        elif mailbox_id == self.reply_mailbox and surb_id in self._loops:
            loop = self._loops.pop(surb_id)
            for relay in loop.mixes:
                self._failures.pop(relay, None)  # it carried a loop just now: it works
            self.counters["loops_late" if loop.blamed else "loops_returned"] += 1
        elif mailbox_id == self.user_mailbox:
            self._on_fragment(payload, now)
        else:
            self.counters[Drop.UNEXPECTED_ITEM.counter] += 1

    def _on_surb_payload(self, surb_id: bytes, keys: SurbKeys, payload: bytes, now: float) -> None:
        try:
            kind, body = m.open_surb_payload(keys.key, wrap_payload(keys.payload_keys, payload))
        except m.EnvelopeError:
            self.counters[Drop.BAD_REPLY.counter] += 1  # changed on the way: tagging, or noise
            return
        del self._surbs[surb_id]  # single use
        if kind == m.SURB_ACK and keys.purpose == m.SURB_ACK and body == keys.message_id:
            message = self._outgoing.pop(keys.message_id, None)
            if message is not None:
                self._queue = deque(q for q in self._queue if q.message_id != keys.message_id)
                self._events.append(MessageAcked(keys.message_id, message.attempts))
        elif kind == m.SURB_PREKEY and keys.purpose == m.SURB_PREKEY and body:
            self._on_prekey_part(keys.message_id, body, now)
        elif kind == m.SURB_REPLY and keys.purpose == m.SURB_REPLY:
            self._events.append(ReplyReceived(keys.message_id, body))
            self._events.append(ReplyKeysUsed(surb_id))
        else:
            self.counters[Drop.BAD_REPLY.counter] += 1

    def _open_fragment(self, payload: bytes) -> m.Fragment | None:
        for key in self._envelope_keys:
            try:
                return m.parse_fragment(m.open_envelope(key, payload))
            except m.EnvelopeError:
                continue
        return None

    def _on_fragment(self, payload: bytes, now: float) -> None:
        frag = self._open_fragment(payload)
        if frag is None:
            self.counters[Drop.BAD_FRAGMENT.counter] += 1
            return
        mid = frag.message_id
        if frag.ack_block is not None and frag.reply_block is not None:
            if len(self._pending_acks) < MAX_PENDING_ACKS or mid in self._pending_acks:
                self._pending_acks.setdefault(mid, []).append(frag.ack_block)
            self._reply_handles.setdefault(mid, frag.reply_block)
        complete = self._reassembler.add(frag, now)
        if complete is not None:
            body: bytes | None = complete.body
            if complete.sealed:
                body = self._open_sealed(complete.body)
            handle = self._reply_handles.pop(mid, b"")
            if body is None:  # sealed to a prekey destroyed or never ours: no ack
                self.counters[Drop.SEALED_UNOPENED.counter] += 1
                return
            self._events.append(MessageReceived(mid, body, handle))
            self._ack(mid, now)
        elif mid in self._reassembler.done:
            self._ack(mid, now)  # a retransmission: its ack may have been lost

    def _open_sealed(self, sealed: bytes) -> bytes | None:
        try:
            prekey = self._prekeys.get(sealed_to(sealed))
            return (
                None if prekey is None else open_sealed(prekey, self.keys.identity_public, sealed)
            )
        except PrekeyError:
            return None

    def _on_prekey_part(self, request_id: bytes, body: bytes, now: float) -> None:
        recipient = self._prekey_requests.get(request_id)
        if recipient is None or body[0] > 1:
            return
        parts = self._prekey_parts.setdefault(request_id, {})
        parts[body[0]] = body[1:]
        if len(parts) < 2:
            return
        del self._prekey_requests[request_id], self._prekey_parts[request_id]
        try:
            bundle = PrekeyBundle.decode(parts[0] + parts[1], recipient, now)
        except PrekeyError:
            self.counters[Drop.BAD_PREKEY.counter] += 1
            return
        self._events.append(PrekeyFetched(recipient, bundle))

    def _ack(self, message_id: bytes, now: float) -> None:
        for raw in self._pending_acks.pop(message_id, []):
            packet = m.ReplyBlock.decode(raw).packet(m.SURB_ACK, message_id)
            self._hold(_Queued(packet), now)
