"""The relay as a sans-I/O state machine.

Relay.receive_datagram(data, addr, now) and Relay.handle_timer(now) consume input; the
datagrams to send come out of Relay.datagrams_to_send(). No sockets, no clock, no logging
of message metadata: the daemon drives it. Mailboxes, peers and the directory each have
their own module; this one routes packets between them.
"""

from __future__ import annotations

import heapq
import os
import random
from collections import Counter
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import directory
from . import messaging as m
from .admission import source_of
from .codec import directory_messages
from .config import Config, RelayEntry
from .descriptor import MAX_DESCRIPTOR_LEN, Descriptor, DescriptorError
from .did import did_from_public, node_id, prekey_mailbox_id, reply_mailbox_id, user_mailbox_id
from .keystore import EpochKeys, Keys, iso
from .link import Addr, HandshakeFailed, LinkEndpoint, Session, SessionDown, SessionUp
from .mailbox import MailboxStore
from .onion import Hop, OnionError, build_packet, hop_delay_us, peel
from .peers import PEER_UP_WITHIN, RECONNECT_BACKOFF, Peer, PeerTable
from .prekeys import BUNDLE_LEN, PrekeyBundle, PrekeyError
from .primitives import x25519_public
from .reasons import Counters, Drop, HandshakeFailure
from .replay import OnionReplayFilter
from .wire import (
    ALPHA_LEN,
    CMD_DROP,
    CMD_FORWARD,
    MSG_CLAIM_REPLY,
    MSG_CLAIM_USER,
    MSG_CLOSE,
    MSG_DESCRIPTOR,
    MSG_DIRECTORY_SIG,
    MSG_GET_DIRECTORY,
    MSG_KEEPALIVE,
    MSG_MAILBOX_ITEM,
    MSG_MAILBOX_SYNC,
    MSG_ONION,
    MSG_PREKEY,
    NODE_ID_LEN,
    ONION_LEN,
    PAYLOAD_LEN,
    ROLE_RELAY,
    SURB_ID_LEN,
)

KEEPALIVE_EVERY = 5.0
MAINTAIN_EVERY = 0.5


class OnionKey:
    __slots__ = ("epoch", "private", "replay")

    def __init__(self, epoch: int, private: X25519PrivateKey, replay: OnionReplayFilter) -> None:
        self.epoch = epoch
        self.private = private
        self.replay = replay


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
        self.counters: Counter[str] = Counters()
        self.keys = keys
        self.identity = keys.identity_public
        self.node_id = node_id(self.identity)
        self.link = LinkEndpoint(self._credentials, self._accept, self.counters, config.link)
        self.peers = PeerTable(self.identity)
        self.mailboxes = MailboxStore(
            config.mailbox_ttl_seconds,
            config.mailbox_max_packets,
            self.counters,
            config.mailbox_max_mailboxes,
            config.mailbox_max_bytes,
        )
        self.authority = directory.Authority(keys.signing_key, frozenset(), keys.identity_public)
        self.prekeys: dict[bytes, tuple[float, bytes]] = {}  # prekey mailbox -> (expires, bundle)
        self.onion_keys: list[OnionKey] = []
        # (due, sequence, next relay identity or b"" to deliver, item)
        self._delayed: list[tuple[float, int, bytes, bytes]] = []
        self._seq = 0
        self._next_loop = now + self._cover_gap(config.loop_rate)
        self._next_drop = now + self._cover_gap(config.drop_rate)
        self._next_maintenance = now
        self.update_keys(keys, now)
        self.update_peers(config.relays, now)

    # --- configuration -----------------------------------------------------------------------

    def _credentials(self) -> tuple[Descriptor, Ed25519PrivateKey]:
        cur = self.keys.current
        return cur.descriptor, cur.link_key

    def _accept(self, desc: Descriptor) -> HandshakeFailure | None:
        if desc.role == ROLE_RELAY and desc.identity not in self.peers.peers:
            return HandshakeFailure.UNPINNED
        return None

    def update_keys(self, keys: Keys, now: float) -> None:
        """Adopt a (re)loaded keystore; epochs no longer present lose their replay cache."""
        old_descriptor = self.keys.current.descriptor if self.onion_keys else None
        caches = {k.epoch: k.replay for k in self.onion_keys}
        self.keys = keys
        self.authority.signing_key = keys.signing_key  # a renewed certificate, a new key
        self.onion_keys = [
            OnionKey(ep.epoch, ep.onion_key, caches.get(ep.epoch) or self._replay_filter(ep))
            for ep in keys.epochs
        ]
        if old_descriptor is not None and old_descriptor != keys.current.descriptor:
            announce = bytes([MSG_DESCRIPTOR]) + keys.current.descriptor.encode()
            for peer in self.peers:
                for session in peer.sessions:
                    self.link.send(session, announce)
            self._refresh_directory(now)

    def update_peers(self, relays: tuple[RelayEntry, ...], now: float) -> None:
        for session in self.peers.update(relays):
            self.link.close(session)
        self.link.admission.reserved_sources = frozenset(
            source_of(r.address) for r in relays if r.identity != self.identity
        )
        # Sessions with relays that are no longer pinned are closed.
        for session in list(self.link.sessions.values()):
            if session.peer.role == ROLE_RELAY and session.peer_identity not in self.peers.peers:
                self.link.close(session)
        self.authority.ring = frozenset(r.identity for r in relays)
        self._drain_events(now)
        self._refresh_directory(now)

    # --- input -------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
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
        elif kind != MSG_KEEPALIVE:
            self._on_control(session, kind, plain[1:], now)
        if self.link.events:
            self._drain_events(now)

    def _on_onion(self, packet: bytes, now: float) -> None:
        try:
            alpha = x25519_public(packet[:ALPHA_LEN])
        except ValueError:
            self.counters[Drop.BAD_ONION.counter] += 1
            return
        for key in self.onion_keys:
            try:
                hop_keys, un = peel(key.private.exchange(alpha), packet)
            except (OnionError, ValueError):
                continue
            break
        else:
            self.counters[Drop.BAD_ONION.counter] += 1
            return
        if key.replay.seen_before(hop_keys.tag):
            self.counters[Drop.ONION_REPLAY.counter] += 1
            return
        if un.cmd == CMD_FORWARD:
            target = self.peers.by_node_id.get(un.next_id)
            if target is None:
                self.counters[Drop.UNKNOWN_NEXT_HOP.counter] += 1
                return
            item = un.packet
        elif un.cmd == CMD_DROP:
            self.counters["cover_received"] += 1
            return
        else:
            target = b""
            item = un.next_id + un.surb_id + un.packet
        if un.delay_us == 0:
            self._release(target, item, now)
            return
        if len(self._delayed) >= self.config.max_held_packets:
            self.counters[Drop.QUEUE_FULL.counter] += 1
            return
        self._seq += 1
        heapq.heappush(self._delayed, (now + un.delay_us / 1e6, self._seq, target, item))

    def _release(self, target: bytes, item: bytes, now: float) -> None:
        if target:
            self._forward(target, item, now)
        else:
            self._deliver(item[:NODE_ID_LEN], item[NODE_ID_LEN:], now)

    def _forward(self, identity: bytes, packet: bytes, now: float) -> None:
        peer = self.peers.peers.get(identity)
        if peer is None:
            self.counters[Drop.UNKNOWN_NEXT_HOP.counter] += 1
            return
        message = bytes([MSG_ONION]) + packet
        if peer.session is not None and peer.session.ready:
            self.link.send(peer.session, message)
            self.counters["packets_out"] += 1
            return
        if peer.handshake_id is None or not self.link.handshake_pending(peer.handshake_id):
            if now < peer.next_attempt:
                self.counters[Drop.PEER_DOWN.counter] += 1
                return
            self._connect(peer, now)
        assert peer.handshake_id is not None
        if self.link.queue_for(peer.handshake_id, message):
            self.counters["packets_out"] += 1
        else:
            self.counters[Drop.LINK_QUEUE_FULL.counter] += 1

    def _deliver(self, mailbox_id: bytes, item: bytes, now: float) -> None:
        """item: reply-block id and payload, as the mailbox's owner gets them."""
        published = self.prekeys.get(mailbox_id)
        if published is not None:
            self._answer_prekey_request(published[1], item[SURB_ID_LEN:], now)
            return
        owner = self.mailboxes.deliver(mailbox_id, item, now)
        if owner is not None:
            self.link.send(owner, bytes([MSG_MAILBOX_ITEM]) + mailbox_id + item)

    def _on_control(self, session: Session, kind: int, body: bytes, now: float) -> None:
        if kind == MSG_DESCRIPTOR:
            self._on_descriptor(session, body[:MAX_DESCRIPTOR_LEN], now)
        elif kind == MSG_DIRECTORY_SIG:
            if not self._add_directory_signature(session, body, now):
                self.counters[Drop.BAD_DIRECTORY_SIGNATURE.counter] += 1
        elif kind == MSG_GET_DIRECTORY:
            best = self.authority.best(now)
            for message in directory_messages(best.encode() if best else b""):
                self.link.send(session, message)
        elif kind == MSG_CLAIM_USER:
            self._claim(session, user_mailbox_id(session.peer_identity), now)
        elif kind == MSG_CLAIM_REPLY:
            self._claim(session, reply_mailbox_id(body[:32]), now)
        elif kind == MSG_PREKEY:
            self._on_prekey(session, body[:BUNDLE_LEN], now)
        elif kind == MSG_CLOSE:
            self.link.close(session)
        else:
            self.counters[Drop.BAD_MESSAGE.counter] += 1

    # --- prekeys: published by a user's client, handed to anyone through reply blocks ------

    def _on_prekey(self, session: Session, raw: bytes, now: float) -> None:
        """A user's certified bundle, over the user's own session (so only it can publish)."""
        try:
            bundle = PrekeyBundle.decode(raw, session.peer_identity, now)
        except PrekeyError:
            self.counters[Drop.BAD_PREKEY.counter] += 1
            return
        mailbox_id = prekey_mailbox_id(bundle.identity)
        if (
            mailbox_id not in self.prekeys
            and len(self.prekeys) >= self.config.mailbox_max_mailboxes
        ):
            self.counters[Drop.MAILBOXES_FULL.counter] += 1
            return
        self.prekeys[mailbox_id] = (float(bundle.expires), raw)

    def _answer_prekey_request(self, bundle: bytes, request: bytes, now: float) -> None:
        """The request is two reply blocks whose paths start here; each carries half the
        bundle back to the sender, whom this relay never learns."""
        half = (len(bundle) + 1) // 2
        for index in range(2):
            raw = request[index * m.SURB_LEN : (index + 1) * m.SURB_LEN]
            chunk = bytes([index]) + bundle[index * half : (index + 1) * half]
            try:
                packet = m.ReplyBlock.decode(raw).packet(m.SURB_PREKEY, chunk)
            except m.EnvelopeError:
                self.counters[Drop.BAD_MESSAGE.counter] += 1
                return
            self.counters["prekey_answers"] += 1
            self._on_onion(packet, now)

    def _add_directory_signature(self, session: Session, body: bytes, now: float) -> bool:
        """Checked with the signer's newest descriptor: its identity key, or the signing key
        of a certificate that has not expired."""
        peer = self.peers.peers.get(session.peer_identity)
        desc = (peer.descriptor if peer else None) or session.peer
        try:
            desc.check_valid(now)
        except DescriptorError as exc:
            self._count_certificate(exc)
            return False
        return self.authority.add_signature(desc.identity, body, now, desc.signing_public)

    def _count_certificate(self, exc: DescriptorError) -> None:
        if exc.certificate is not None:
            self.counters[exc.certificate.counter] += 1

    def _on_descriptor(self, session: Session, raw: bytes, now: float) -> None:
        peer = self.peers.peers.get(session.peer_identity)
        try:
            desc, _ = Descriptor.decode_prefix(raw)
            desc.check_valid(now)
        except DescriptorError as exc:
            self._count_certificate(exc)
            self.counters[Drop.BAD_DESCRIPTOR.counter] += 1
            return
        if peer is None or desc.identity != peer.entry.identity:
            self.counters[Drop.BAD_DESCRIPTOR.counter] += 1
            return
        if peer.learn(desc):
            self._refresh_directory(now)

    def _claim(self, session: Session, mailbox_id: bytes, now: float) -> None:
        held = self.mailboxes.claim(mailbox_id, session, now)
        for item in held:
            self.link.send(session, bytes([MSG_MAILBOX_ITEM]) + mailbox_id + item)
        self.link.send(
            session, bytes([MSG_MAILBOX_SYNC]) + mailbox_id + len(held).to_bytes(4, "big")
        )

    def _drain_events(self, now: float) -> None:
        events, self.link.events[:] = list(self.link.events), []
        for event in events:
            if isinstance(event, SessionUp):
                s = event.session
                peer = self.peers.session_up(s) if s.peer.role == ROLE_RELAY else None
                if peer is not None:
                    # Bring the peer up to date: our keys and our signature on the directory.
                    self.link.send(
                        s, bytes([MSG_DESCRIPTOR]) + self.keys.current.descriptor.encode()
                    )
                    self._refresh_directory(now)
                    if self.authority.signature_message:
                        self.link.send(
                            s, bytes([MSG_DIRECTORY_SIG]) + self.authority.signature_message
                        )
            elif isinstance(event, SessionDown):
                self.peers.session_down(event.session)
                self.mailboxes.release(event.session)
            elif isinstance(event, HandshakeFailed) and event.expected is not None:
                peer = self.peers.peers.get(event.expected)
                if peer is not None:
                    peer.handshake_id = None
                    peer.next_attempt = now + RECONNECT_BACKOFF

    def _connect(self, peer: Peer, now: float) -> None:
        peer.handshake_id = self.link.connect(peer.entry.address, peer.entry.identity, now)
        peer.next_attempt = now + RECONNECT_BACKOFF

    # --- directory ---------------------------------------------------------------------------

    def _refresh_directory(self, now: float) -> None:
        """Sign our current view when it changed, and tell the peers."""
        descriptors = [self.keys.current.descriptor]
        descriptors += [d for p in self.peers if (d := p.valid_descriptor(now)) is not None]
        view = directory.Directory.build(directory.epoch_at(now), descriptors)
        if not self.authority.set_view(view):
            return
        self.counters["directory_signed"] += 1
        message = bytes([MSG_DIRECTORY_SIG]) + self.authority.signature_message
        for peer in self.peers:
            if peer.session is not None and peer.session.ready:
                self.link.send(peer.session, message)

    # --- time --------------------------------------------------------------------------------

    def next_timer(self) -> float:
        due = [self._next_maintenance, self._next_loop, self._next_drop]
        if self._delayed:
            due.append(self._delayed[0][0])
        return min(due)

    def handle_timer(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, target, item = heapq.heappop(self._delayed)
            self._release(target, item, now)
        if now >= self._next_loop:
            self._send_cover(loop=True, now=now)
            self._next_loop = now + self._cover_gap(self.config.loop_rate)
        if now >= self._next_drop:
            self._send_cover(loop=False, now=now)
            self._next_drop = now + self._cover_gap(self.config.drop_rate)
        if now >= self._next_maintenance:
            self._maintain(now)
            self._next_maintenance = now + MAINTAIN_EVERY
        if self.link.events:
            self._drain_events(now)

    def _maintain(self, now: float) -> None:
        self.link.tick(now)
        for peer in self.peers:
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
                (peer.handshake_id is None or not self.link.handshake_pending(peer.handshake_id))
                and now >= peer.next_attempt
            ):
                self._connect(peer, now)
        self.mailboxes.expire(now, self.link.sessions)
        for mailbox_id in [i for i, (expires, _) in self.prekeys.items() if expires <= now]:
            del self.prekeys[mailbox_id]
        self._refresh_directory(now)  # a new epoch, or a descriptor that just expired

    def _cover_gap(self, rate: float) -> float:
        return self.rng.expovariate(rate) if rate > 0 else float("inf")

    def _send_cover(self, loop: bool, now: float) -> None:
        """Loopix cover: a loop comes back to this relay, a drop dies at a random relay."""
        live = [(p, d) for p in self.peers.live(now) if (d := p.valid_descriptor(now))]
        if not live:
            return
        self.rng.shuffle(live)
        mean = self.config.mean_delay_ms
        hops = [Hop(d.node_id, d.onion_key(), hop_delay_us(self.rng, mean)) for _, d in live[:2]]
        if loop:
            own = self.keys.current.descriptor
            hops.append(Hop(self.node_id, own.onion_key(), hop_delay_us(self.rng, mean)))
        _, packet = build_packet(hops, CMD_DROP, os.urandom(NODE_ID_LEN), os.urandom(PAYLOAD_LEN))
        self._forward(live[0][0].entry.identity, packet, now)
        self.counters["cover_sent_loop" if loop else "cover_sent_drop"] += 1

    # --- output and introspection ------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.link.outbox[:] = list(self.link.outbox), []
        return out

    def queue_depth(self) -> int:
        return len(self._delayed)

    def status(self, now: float) -> dict[str, object]:
        cur = self.keys.current
        peers = [
            {
                "did": p.entry.did,
                "address": f"{p.entry.address[0]}:{p.entry.address[1]}",
                "up": p.up(now),
            }
            for p in self.peers
        ]
        return {
            "did": did_from_public(self.identity),
            "name": self.config.name,
            "epoch": cur.epoch,
            "epoch_expires": iso(cur.expires),
            "epochs_held": [k.epoch for k in self.onion_keys],
            "peers_up": len(self.peers.live(now)),
            "peers": peers,
            "sessions": len(self.link.sessions),
            "queue_depth": self.queue_depth(),
            "mailboxes": len(self.mailboxes),
            "mailbox_depth": self.mailboxes.depth(),
            "mailbox_bytes": self.mailboxes.bytes,
            "prekey_bundles": len(self.prekeys),
            "directory": self.authority.status(now),
            "counters": dict(sorted(self.counters.items())),
        }
