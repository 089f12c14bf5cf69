"""The relay as a sans-I/O state machine.

Relay.receive_datagram(data, addr, now) and Relay.handle_timer(now) consume input; datagrams
to send accumulate in Relay.outbox as (bytes, addr). No sockets, no clock, no logging of
message metadata: the daemon drives it.
"""

from __future__ import annotations

import heapq
import os
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .admission import source_of
from .config import Config, RelayEntry
from .descriptor import DESCRIPTOR_LEN, Descriptor, DescriptorError
from .did import did_from_public, node_id, reply_mailbox_id, user_mailbox_id
from .keystore import EpochKeys, Keys, iso
from .link import HandshakeFailed, LinkEndpoint, Session, SessionDown, SessionUp
from .onion import Hop, OnionError, build_packet, peel, x25519_public
from .replay import OnionReplayFilter
from .wire import (
    ALPHA_LEN,
    CMD_DROP,
    CMD_FORWARD,
    MSG_CLAIM_REPLY,
    MSG_CLAIM_USER,
    MSG_CLOSE,
    MSG_DESCRIPTOR,
    MSG_DESCRIPTORS,
    MSG_GET_DESCRIPTORS,
    MSG_KEEPALIVE,
    MSG_MAILBOX_ITEM,
    MSG_MAILBOX_SYNC,
    MSG_ONION,
    NODE_ID_LEN,
    ONION_LEN,
    PAYLOAD_LEN,
    ROLE_RELAY,
)

KEEPALIVE_EVERY = 5.0
PEER_UP_WITHIN = 20.0
RECONNECT_BACKOFF = 3.0
DESCRIPTORS_PER_MESSAGE = 7
MAX_DESCRIPTORS = 255  # the DESCRIPTORS message counts them in one byte
MAX_MAILBOXES = 100_000
MAX_DELAYED = 200_000  # packets waiting out their mixing delay
OWNER_LIVE = 12.0  # a claiming client sends keepalives every 5 s; silent longer: hold packets


@dataclass
class Peer:
    entry: RelayEntry
    session: Session | None = None  # the one we send on
    # Both ends may initiate, so a pair can hold two sessions; the peer may talk on either.
    sessions: list[Session] = field(default_factory=list)
    handshake: bytes | None = None
    next_attempt: float = 0.0
    descriptor: Descriptor | None = None

    def up(self, now: float) -> bool:
        return any(s.ready and now - s.last_recv < PEER_UP_WITHIN for s in self.sessions)


@dataclass
class OnionKey:
    epoch: int
    private: X25519PrivateKey
    replay: OnionReplayFilter


@dataclass
class Mailbox:
    items: deque[tuple[float, bytes]] = field(default_factory=deque)
    owner: Session | None = None
    owner_expires: float = 0.0


def encode_descriptors(descriptors: list[Descriptor]) -> list[bytes]:
    """MSG_DESCRIPTORS messages: total (1) | count (1) | descriptors."""
    total = len(descriptors)
    out = []
    for i in range(0, max(total, 1), DESCRIPTORS_PER_MESSAGE):
        chunk = descriptors[i : i + DESCRIPTORS_PER_MESSAGE]
        out.append(
            bytes([MSG_DESCRIPTORS, total, len(chunk)]) + b"".join(d.encode() for d in chunk)
        )
    return out


def decode_descriptors(body: bytes) -> tuple[int, list[bytes]]:
    """(total announced, raw descriptors in this message); raises ValueError when malformed."""
    if len(body) < 2:
        raise ValueError("short descriptors message")
    total, count = body[0], body[1]
    if count > DESCRIPTORS_PER_MESSAGE or 2 + count * DESCRIPTOR_LEN > len(body):
        raise ValueError("bad descriptors count")
    return total, [
        body[2 + i * DESCRIPTOR_LEN : 2 + (i + 1) * DESCRIPTOR_LEN] for i in range(count)
    ]


ReplayFilterSource = Callable[[EpochKeys], OnionReplayFilter]


class Relay:
    def __init__(
        self,
        config: Config,
        keys: Keys,
        now: float,
        rng: random.Random | None = None,
        replay_filter: ReplayFilterSource | None = None,
    ):
        self.config = config
        # The daemon passes the keystore's (persisted) filters; by default they live in memory.
        self._replay_filter = replay_filter or (
            lambda ep: OnionReplayFilter.for_epoch(
                ep.onion_key, config.replay_budget, config.replay_false_positive_rate
            )
        )
        self.rng = rng or random.SystemRandom()
        self.counters: Counter[str] = Counter()
        self.keys = keys
        self.identity = keys.identity_public
        self.node_id = node_id(self.identity)
        self.link = LinkEndpoint(self._credentials, self._accept, self.counters, config.link)
        self.outbox = self.link.outbox
        self.peers: dict[bytes, Peer] = {}
        self.by_node_id: dict[bytes, bytes] = {}
        self.onion_keys: list[OnionKey] = []
        self.mailboxes: dict[bytes, Mailbox] = {}
        self._delayed: list[tuple[float, int, bytes, bytes]] = []
        self._seq = 0
        self._mean_delay = config.mean_delay_ms / 1000.0
        self._next_loop = now + self._cover_gap(config.loop_rate)
        self._next_drop = now + self._cover_gap(config.drop_rate)
        self._next_maintenance = now
        self.update_keys(keys, now)
        self.update_peers(config.relays, now)

    # --- configuration -----------------------------------------------------------------------

    def _credentials(self) -> tuple[Descriptor, Ed25519PrivateKey]:
        cur = self.keys.current
        return cur.descriptor, cur.link_key

    def _accept(self, desc: Descriptor) -> str | None:
        if desc.role == ROLE_RELAY and desc.identity not in self.peers:
            return "unpinned"
        return None

    def update_keys(self, keys: Keys, now: float) -> None:
        """Adopt a (re)loaded keystore; epochs no longer present lose their replay cache."""
        old_epoch = self.onion_keys[0].epoch if self.onion_keys else None
        caches = {k.epoch: k.replay for k in self.onion_keys}
        self.keys = keys
        self.onion_keys = [
            OnionKey(ep.epoch, ep.onion_key, caches.get(ep.epoch) or self._replay_filter(ep))
            for ep in keys.epochs
        ]
        if old_epoch is not None and old_epoch != keys.current.epoch:
            announce = bytes([MSG_DESCRIPTOR]) + keys.current.descriptor.encode()
            for peer in self.peers.values():
                for session in peer.sessions:
                    self.link.send(session, announce)

    def update_peers(self, relays: tuple[RelayEntry, ...], now: float) -> None:
        wanted = {r.identity: r for r in relays if r.identity != self.identity}
        for identity in list(self.peers):
            if identity not in wanted:
                peer = self.peers.pop(identity)
                for session in list(peer.sessions):
                    self.link.close(session)
        for identity, entry in wanted.items():
            if identity in self.peers:
                self.peers[identity].entry = entry
            else:
                self.peers[identity] = Peer(entry)
        self.by_node_id = {node_id(i): i for i in self.peers}
        self.link.admission.reserved_sources = frozenset(
            source_of(r.address) for r in wanted.values()
        )
        # Sessions with relays that are no longer pinned are closed.
        for session in list(self.link.sessions.values()):
            if session.peer.role == ROLE_RELAY and session.peer_identity not in self.peers:
                self.link.close(session)
        self._drain_events(now)

    # --- input -------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.counters["datagrams_in"] += 1
        result = self.link.receive(data, addr, now)
        if result is None:
            if self.link.events:
                self._drain_events(now)
            return
        session, plain = result
        kind = plain[0]
        if kind == MSG_ONION:
            self.counters["packets_in"] += 1
            self._on_onion(plain[1 : 1 + ONION_LEN], now)
        elif kind == MSG_KEEPALIVE:
            pass
        else:
            self._on_control(session, kind, plain[1:], now)
        if self.link.events:
            self._drain_events(now)

    def _on_onion(self, packet: bytes, now: float) -> None:
        try:
            alpha = x25519_public(packet[:ALPHA_LEN])
        except ValueError:
            self.counters["dropped:bad_onion"] += 1
            return
        for key in self.onion_keys:
            try:
                hop_keys, un = peel(key.private.exchange(alpha), packet)
            except (OnionError, ValueError):
                continue
            break
        else:
            self.counters["dropped:bad_onion"] += 1
            return
        if key.replay.seen_before(hop_keys.tag):
            self.counters["dropped:onion_replay"] += 1
            return
        if un.cmd == CMD_FORWARD:
            target = self.by_node_id.get(un.next_id)
            if target is None:
                self.counters["dropped:unknown_next_hop"] += 1
                return
        elif un.cmd == CMD_DROP:
            self.counters["cover_received"] += 1
            return
        else:
            target = b""
        if self._mean_delay > 0:
            if len(self._delayed) >= MAX_DELAYED:
                self.counters["dropped:queue_full"] += 1
                return
            due = now + self.rng.expovariate(1.0 / self._mean_delay)
            self._seq += 1
            heapq.heappush(self._delayed, (due, self._seq, target, un.next_id + un.packet))
        elif un.cmd == CMD_FORWARD:
            self._forward(target, un.packet, now)
        else:
            self._deliver(un.next_id, un.packet, now)

    def _forward(self, identity: bytes, packet: bytes, now: float) -> None:
        peer = self.peers.get(identity)
        if peer is None:
            self.counters["dropped:unknown_next_hop"] += 1
            return
        message = bytes([MSG_ONION]) + packet
        if peer.session is not None and peer.session.ready:
            self.link.send(peer.session, message)
            self.counters["packets_out"] += 1
            return
        if peer.handshake is None or not self.link.handshake_pending(peer.handshake):
            if now < peer.next_attempt:
                self.counters["dropped:peer_down"] += 1
                return
            self._connect(peer, now)
        assert peer.handshake is not None
        if self.link.queue_for(peer.handshake, message):
            self.counters["packets_out"] += 1
        else:
            self.counters["dropped:link_queue_full"] += 1

    def _deliver(self, mailbox_id: bytes, payload: bytes, now: float) -> None:
        box = self.mailboxes.get(mailbox_id)
        if box is None:
            if len(self.mailboxes) >= MAX_MAILBOXES:
                self.counters["dropped:mailbox_full"] += 1
                return
            box = self.mailboxes[mailbox_id] = Mailbox()
        owner = box.owner
        if owner is not None and box.owner_expires > now and now - owner.last_recv < OWNER_LIVE:
            self.link.send(owner, bytes([MSG_MAILBOX_ITEM]) + mailbox_id + payload)
            self.counters["mailbox_handed_over"] += 1
            return
        if len(box.items) >= self.config.mailbox_max_packets:
            self.counters["dropped:mailbox_full"] += 1
            return
        box.items.append((now + self.config.mailbox_ttl_seconds, payload))
        self.counters["mailbox_stored"] += 1

    def _on_control(self, session: Session, kind: int, body: bytes, now: float) -> None:
        if kind == MSG_DESCRIPTOR:
            self._on_descriptor(session, body[:DESCRIPTOR_LEN], now)
        elif kind == MSG_GET_DESCRIPTORS:
            for message in encode_descriptors(self.descriptors(now)):
                self.link.send(session, message)
        elif kind == MSG_CLAIM_USER:
            self._claim(session, user_mailbox_id(session.peer_identity), now)
        elif kind == MSG_CLAIM_REPLY:
            self._claim(session, reply_mailbox_id(body[:32]), now)
        elif kind == MSG_CLOSE:
            self.link.close(session)
        else:
            self.counters["dropped:bad_message"] += 1

    def _on_descriptor(self, session: Session, raw: bytes, now: float) -> None:
        peer = self.peers.get(session.peer_identity)
        try:
            desc = Descriptor.decode(raw)
            desc.check_valid(now)
        except DescriptorError:
            self.counters["dropped:bad_descriptor"] += 1
            return
        if peer is None or desc.identity != peer.entry.identity:
            self.counters["dropped:bad_descriptor"] += 1
            return
        if peer.descriptor is None or desc.epoch >= peer.descriptor.epoch:
            peer.descriptor = desc

    def _claim(self, session: Session, mailbox_id: bytes, now: float) -> None:
        box = self.mailboxes.get(mailbox_id)
        if box is None:
            if len(self.mailboxes) >= MAX_MAILBOXES:
                self.counters["dropped:mailbox_full"] += 1
                return
            box = self.mailboxes[mailbox_id] = Mailbox()
        box.owner = session
        box.owner_expires = now + self.config.mailbox_ttl_seconds
        handed = 0
        while box.items:
            expires, payload = box.items.popleft()
            if expires > now:
                self.link.send(session, bytes([MSG_MAILBOX_ITEM]) + mailbox_id + payload)
                handed += 1
        self.counters["mailbox_handed_over"] += handed
        self.link.send(session, bytes([MSG_MAILBOX_SYNC]) + mailbox_id + handed.to_bytes(4, "big"))

    def _drain_events(self, now: float) -> None:
        events, self.link.events[:] = list(self.link.events), []
        for event in events:
            if isinstance(event, SessionUp):
                s = event.session
                peer = self.peers.get(s.peer_identity) if s.peer.role == ROLE_RELAY else None
                if peer is not None:
                    if peer.descriptor is None or s.peer.epoch >= peer.descriptor.epoch:
                        peer.descriptor = s.peer
                    peer.sessions.append(s)
                    peer.session = s  # the newest: the peer may have restarted
                    peer.handshake = None
            elif isinstance(event, SessionDown):
                s = event.session
                for peer in self.peers.values():
                    if s in peer.sessions:
                        peer.sessions.remove(s)
                    if peer.session is s:
                        peer.session = peer.sessions[-1] if peer.sessions else None
                for box in self.mailboxes.values():
                    if box.owner is s:
                        box.owner = None
            elif isinstance(event, HandshakeFailed) and event.expected is not None:
                peer = self.peers.get(event.expected)
                if peer is not None:
                    peer.handshake = None
                    peer.next_attempt = now + RECONNECT_BACKOFF

    def _connect(self, peer: Peer, now: float) -> None:
        peer.handshake = self.link.connect(peer.entry.address, peer.entry.identity, now)
        peer.next_attempt = now + RECONNECT_BACKOFF

    # --- time --------------------------------------------------------------------------------

    def next_timer(self) -> float:
        due = [self._next_maintenance, self._next_loop, self._next_drop]
        if self._delayed:
            due.append(self._delayed[0][0])
        return min(due)

    def handle_timer(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, target, item = heapq.heappop(self._delayed)
            if target:
                self._forward(target, item[NODE_ID_LEN:], now)
            else:
                self._deliver(item[:NODE_ID_LEN], item[NODE_ID_LEN:], now)
        if now >= self._next_loop:
            self._send_cover(loop=True, now=now)
            self._next_loop = now + self._cover_gap(self.config.loop_rate)
        if now >= self._next_drop:
            self._send_cover(loop=False, now=now)
            self._next_drop = now + self._cover_gap(self.config.drop_rate)
        if now >= self._next_maintenance:
            self._maintain(now)
            self._next_maintenance = now + 0.5
        if self.link.events:
            self._drain_events(now)

    def _maintain(self, now: float) -> None:
        self.link.tick(now)
        for peer in self.peers.values():
            for session in list(peer.sessions):
                if now - session.last_recv > 1.5 * PEER_UP_WITHIN:  # peer restarted or gone
                    self.link.close(session)
                    continue
                if session.ready and now - session.last_send >= KEEPALIVE_EVERY:
                    self.link.send(session, bytes([MSG_KEEPALIVE]))
                    session.last_send = now
            if self.link.events:
                self._drain_events(now)
            if peer.session is None and (
                (peer.handshake is None or not self.link.handshake_pending(peer.handshake))
                and now >= peer.next_attempt
            ):
                self._connect(peer, now)
        for mailbox_id, box in list(self.mailboxes.items()):
            while box.items and box.items[0][0] <= now:
                box.items.popleft()
                self.counters["dropped:mailbox_expired"] += 1
            if box.owner is not None and (
                box.owner_expires <= now or box.owner.local_sid not in self.link.sessions
            ):
                box.owner = None
            if not box.items and box.owner is None:
                del self.mailboxes[mailbox_id]

    def _cover_gap(self, rate: float) -> float:
        return self.rng.expovariate(rate) if rate > 0 else float("inf")

    def _send_cover(self, loop: bool, now: float) -> None:
        """Loopix cover: a loop comes back to this relay, a drop dies at a random relay."""
        live = [p for p in self.peers.values() if p.up(now) and p.descriptor is not None]
        if not live:
            return
        self.rng.shuffle(live)
        hops = [
            Hop(node_id(p.entry.identity), p.descriptor.onion_key())
            for p in live[:2]
            if p.descriptor
        ]
        if loop:
            hops.append(Hop(self.node_id, self.keys.current.descriptor.onion_key()))
        _, packet = build_packet(hops, CMD_DROP, os.urandom(NODE_ID_LEN), os.urandom(PAYLOAD_LEN))
        self._forward(live[0].entry.identity, packet, now)
        self.counters["cover_sent_loop" if loop else "cover_sent_drop"] += 1

    # --- introspection -----------------------------------------------------------------------

    def descriptors(self, now: float) -> list[Descriptor]:
        """Own current descriptor and those of peers that are up (for clients)."""
        out = [self.keys.current.descriptor]
        for peer in self.peers.values():
            if peer.descriptor is not None and peer.up(now) and peer.descriptor.expires > now:
                out.append(peer.descriptor)
        return out[:MAX_DESCRIPTORS]

    def queue_depth(self) -> int:
        return len(self._delayed)

    def mailbox_depth(self) -> int:
        return sum(len(b.items) for b in self.mailboxes.values())

    def status(self, now: float) -> dict[str, object]:
        cur = self.keys.current
        peers = [
            {
                "did": p.entry.did,
                "address": f"{p.entry.address[0]}:{p.entry.address[1]}",
                "up": p.up(now),
            }
            for p in self.peers.values()
        ]
        return {
            "did": did_from_public(self.identity),
            "name": self.config.name,
            "epoch": cur.epoch,
            "epoch_expires": iso(cur.expires),
            "epochs_held": [k.epoch for k in self.onion_keys],
            "peers_up": sum(1 for p in self.peers.values() if p.up(now)),
            "peers": peers,
            "sessions": len(self.link.sessions),
            "queue_depth": self.queue_depth(),
            "mailboxes": len(self.mailboxes),
            "mailbox_depth": self.mailbox_depth(),
            "counters": dict(sorted(self.counters.items())),
        }
