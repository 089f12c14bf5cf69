"""A relay's pinned peers: their sessions, reconnection backoff and latest descriptors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .config import RelayEntry
from .descriptor import Descriptor, DescriptorError
from .did import node_id
from .link import Session

PEER_UP_WITHIN = 20.0
RECONNECT_BACKOFF = 3.0


@dataclass
class Peer:
    entry: RelayEntry
    session: Session | None = None  # the one we send on
    # Both ends may initiate, so a pair can hold two sessions; the peer may talk on either.
    sessions: list[Session] = field(default_factory=list)
    handshake_id: bytes | None = None  # our pending handshake with it, if any
    next_attempt: float = 0.0
    descriptor: Descriptor | None = None

    def up(self, now: float) -> bool:
        return any(s.ready and now - s.last_recv < PEER_UP_WITHIN for s in self.sessions)

    def learn(self, descriptor: Descriptor) -> bool:
        """Keep the newest descriptor; True when it changed."""
        if self.descriptor is not None and descriptor.epoch < self.descriptor.epoch:
            return False
        changed = descriptor != self.descriptor
        self.descriptor = descriptor
        return changed

    def valid_descriptor(self, now: float) -> Descriptor | None:
        if self.descriptor is None:
            return None
        try:
            self.descriptor.check_valid(now)
        except DescriptorError:
            return None
        return self.descriptor


class PeerTable:
    def __init__(self, own_identity: bytes) -> None:
        self.own_identity = own_identity
        self.peers: dict[bytes, Peer] = {}
        self.by_node_id: dict[bytes, bytes] = {}

    def update(self, relays: tuple[RelayEntry, ...]) -> list[Session]:
        """Adopt a new pin list; returns the sessions of peers no longer pinned (to close)."""
        wanted = {r.identity: r for r in relays if r.identity != self.own_identity}
        dropped: list[Session] = []
        for identity in list(self.peers):
            if identity not in wanted:
                dropped += self.peers.pop(identity).sessions
        for identity, entry in wanted.items():
            if identity in self.peers:
                self.peers[identity].entry = entry
            else:
                self.peers[identity] = Peer(entry)
        self.by_node_id = {node_id(i): i for i in self.peers}
        return dropped

    def session_up(self, session: Session) -> Peer | None:
        peer = self.peers.get(session.peer_identity)
        if peer is not None:
            peer.learn(session.peer)
            peer.sessions.append(session)
            peer.session = session  # the newest: the peer may have restarted
            peer.handshake_id = None
        return peer

    def session_down(self, session: Session) -> None:
        for peer in self.peers.values():
            if session in peer.sessions:
                peer.sessions.remove(session)
            if peer.session is session:
                peer.session = peer.sessions[-1] if peer.sessions else None

    def live(self, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if p.up(now)]

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.peers.values())
