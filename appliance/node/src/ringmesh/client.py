"""The mesh client (`ringmesh send` / `ringmesh recv`): asyncio around the sans-I/O layers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import messaging as m
from .config import Config, RelayEntry
from .descriptor import Descriptor, DescriptorError
from .did import ed25519_public_to_x25519, ed25519_seed_to_x25519, reply_mailbox_id, user_mailbox_id
from .keystore import Keys
from .link import HandshakeFailed, LinkEndpoint, Session, SessionDown, SessionUp
from .lioness import LionessKey
from .onion import Hop, build_header, build_packet, wrap_payload
from .relay import decode_descriptors
from .wire import (
    CMD_DELIVER,
    MSG_CLAIM_REPLY,
    MSG_CLAIM_USER,
    MSG_CLOSE,
    MSG_DESCRIPTORS,
    MSG_GET_DESCRIPTORS,
    MSG_KEEPALIVE,
    MSG_MAILBOX_ITEM,
    MSG_MAILBOX_SYNC,
    MSG_ONION,
    NODE_ID_LEN,
    PAYLOAD_LEN,
    ROLE_RELAY,
)

CONNECT_TIMEOUT = 6.0
TICK = 0.2
POLL = 0.05


class ClientError(Exception):
    """The client could not reach a relay or learn what it needs."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, node: ClientNode) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.node.on_datagram(data, addr[:2])


class ClientNode:
    def __init__(self, config: Config, keys: Keys) -> None:
        self.config = config
        self.keys = keys
        self.pinned = {r.identity: r for r in config.relays}
        self.counters: Counter[str] = Counter()
        self.link = LinkEndpoint(self._credentials, self._accept, self.counters)
        self.sessions: dict[bytes, Session] = {}
        self._connecting: dict[bytes, asyncio.Future[Session]] = {}
        self._descriptor_waiter: tuple[asyncio.Future[None], Session] | None = None
        self._descriptor_raw: list[bytes] = []
        self.items: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self.syncs: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self._ticker: asyncio.Task[None] | None = None

    def _credentials(self) -> tuple[Descriptor, Ed25519PrivateKey]:
        return self.keys.current.descriptor, self.keys.current.link_key

    @staticmethod
    def _accept(desc: Descriptor) -> str | None:
        return None if desc.role == ROLE_RELAY else "not_a_relay"

    async def start(self) -> None:
        family_host = "::" if any(":" in r.address[0] for r in self.config.relays) else "0.0.0.0"
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(family_host, 0)
        )
        self.transport = transport
        self._ticker = asyncio.create_task(self._tick_loop())

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            self.link.send(session, bytes([MSG_CLOSE]))
        self.flush()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.transport is not None:
            self.transport.close()

    # --- plumbing ----------------------------------------------------------------------------

    def flush(self) -> None:
        if self.transport is not None:
            for datagram, addr in self.link.outbox:
                self.transport.sendto(datagram, addr)
        self.link.outbox.clear()
        self._drain_events()

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        result = self.link.receive(data, addr, time.time())
        if result is not None:
            session, plain = result
            kind, body = plain[0], plain[1:]
            if kind == MSG_MAILBOX_ITEM:
                self.items.put_nowait(
                    (body[:NODE_ID_LEN], body[NODE_ID_LEN : NODE_ID_LEN + PAYLOAD_LEN])
                )
            elif kind == MSG_MAILBOX_SYNC:
                self.syncs.put_nowait(body[:NODE_ID_LEN])
            elif kind == MSG_DESCRIPTORS:
                self._on_descriptors(session, body)
        self.flush()

    def _on_descriptors(self, session: Session, body: bytes) -> None:
        waiter = self._descriptor_waiter
        if waiter is None or waiter[1] is not session:
            return
        try:
            total, raws = decode_descriptors(body)
        except ValueError:
            return
        self._descriptor_raw.extend(raws)
        if len(self._descriptor_raw) >= total and not waiter[0].done():
            waiter[0].set_result(None)

    def _drain_events(self) -> None:
        events, self.link.events[:] = list(self.link.events), []
        for event in events:
            if isinstance(event, SessionUp):
                s = event.session
                self.sessions[s.peer_identity] = s
                fut = self._connecting.pop(s.peer_identity, None)
                if fut is not None and not fut.done():
                    fut.set_result(s)
            elif isinstance(event, SessionDown):
                if self.sessions.get(event.session.peer_identity) is event.session:
                    del self.sessions[event.session.peer_identity]
            elif isinstance(event, HandshakeFailed) and event.expected is not None:
                fut = self._connecting.pop(event.expected, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ClientError(f"handshake failed: {event.reason}"))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.time()
            self.link.tick(now)
            for session in self.sessions.values():
                if session.ready and now - session.last_send > 5.0:
                    self.link.send(session, bytes([MSG_KEEPALIVE]))
                    session.last_send = now
            self.flush()

    # --- operations --------------------------------------------------------------------------

    async def session(self, identity: bytes) -> Session:
        existing = self.sessions.get(identity)
        if existing is not None and existing.ready:
            return existing
        entry: RelayEntry | None = self.pinned.get(identity)
        if entry is None:
            raise ClientError("relay is not pinned in [[relays]]")
        fut = self._connecting.get(identity)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._connecting[identity] = fut
            self.link.connect(entry.address, identity, time.time())
            self.flush()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), CONNECT_TIMEOUT)
        except TimeoutError:
            self._connecting.pop(identity, None)
            raise ClientError(f"no answer from relay {entry.did}") from None

    def send(self, session: Session, message: bytes) -> None:
        self.link.send(session, message)
        self.flush()

    async def fetch_descriptors(self, session: Session) -> dict[bytes, Descriptor]:
        """Relays' current descriptors, each verified against its pinned did."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._descriptor_waiter = (fut, session)
        self._descriptor_raw = []
        self.send(session, bytes([MSG_GET_DESCRIPTORS]))
        try:
            await asyncio.wait_for(fut, CONNECT_TIMEOUT)
        except TimeoutError:
            raise ClientError("relay did not answer the descriptor request") from None
        finally:
            self._descriptor_waiter = None
        now = time.time()
        out: dict[bytes, Descriptor] = {session.peer_identity: session.peer}
        for raw in self._descriptor_raw:
            try:
                desc = Descriptor.decode(raw)
                desc.check_valid(now)
            except DescriptorError:
                continue
            if desc.identity not in self.pinned or desc.role != ROLE_RELAY:
                continue  # only relays this config pins
            if desc.identity not in out or desc.epoch > out[desc.identity].epoch:
                out[desc.identity] = desc
        return out


@dataclass
class SendResult:
    message_id: bytes
    acked: bool
    attempts: int


def _hops(path: list[bytes], descriptors: dict[bytes, Descriptor]) -> list[Hop]:
    return [Hop(descriptors[i].node_id, descriptors[i].onion_key()) for i in path]


async def send_message(
    node: ClientNode,
    body: bytes,
    recipient: bytes,
    recipient_home: bytes,
    timeout: float,
    retransmit: float,
) -> SendResult:
    rng = random.SystemRandom()
    assert node.config.client_home is not None
    own_home = next(r.identity for r in node.config.relays if r.did == node.config.client_home)
    home_session = await node.session(own_home)
    descriptors = await node.fetch_descriptors(home_session)
    if recipient_home not in descriptors:
        raise ClientError("the recipient's home relay is not pinned or not reachable")
    token = os.urandom(32)
    node.send(home_session, bytes([MSG_CLAIM_REPLY]) + token)
    reply_mbox = reply_mailbox_id(token)
    recipient_x = ed25519_public_to_x25519(recipient)
    mailbox = user_mailbox_id(recipient)
    message_id = m.new_message_id()
    attempts: list[tuple[tuple[LionessKey, ...], bytes]] = []
    failures: dict[bytes, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = m.choose_path(descriptors, recipient_home, node.config.path_length, failures, rng)
        back = m.reply_path(path, recipient_home, own_home)
        reply = build_header(_hops(back, descriptors), CMD_DELIVER, reply_mbox)
        ack_key = os.urandom(m.ACK_KEY_LEN)
        attempts.append((reply.payload_keys, ack_key))
        hops = _hops(path, descriptors)
        try:
            first = await node.session(path[0])
        except ClientError:
            failures[path[0]] = failures.get(path[0], 0) + 10
            continue
        for plain in m.split_message(message_id, body, reply.data + ack_key):
            _, packet = build_packet(hops, CMD_DELIVER, mailbox, m.seal(recipient_x, plain))
            node.send(first, bytes([MSG_ONION]) + packet)
        wait_until = min(deadline, time.monotonic() + retransmit)
        while (left := wait_until - time.monotonic()) > 0:
            try:
                box, payload = await asyncio.wait_for(node.items.get(), left)
            except TimeoutError:
                break
            if box != reply_mbox:
                continue
            for streams, key in attempts:
                if m.open_ack(key, wrap_payload(streams, payload)) == message_id:
                    return SendResult(message_id, True, len(attempts))
        for hop in path[:-1]:
            failures[hop] = failures.get(hop, 0) + 1
    return SendResult(message_id, False, len(attempts))


async def receive_messages(
    node: ClientNode,
    wait: float,
    count: int | None,
    quiet: float = 0.5,
    stop: asyncio.Event | None = None,
) -> list[m.Complete]:
    """Claim the user's mailbox at the home relay and collect whole messages, acking each."""
    assert node.config.client_home is not None
    home = next(r.identity for r in node.config.relays if r.did == node.config.client_home)
    session = await node.session(home)
    node.send(session, bytes([MSG_CLAIM_USER]))
    mailbox = user_mailbox_id(node.keys.identity_public)
    x_key = ed25519_seed_to_x25519(node.keys.identity.private_bytes_raw())
    reassembler = m.Reassembler()
    replies: dict[bytes, list[bytes]] = {}
    done: list[m.Complete] = []
    synced = False
    start = time.monotonic()
    last_activity = start

    def ack(message_id: bytes) -> None:
        for reply in replies.pop(message_id, []):
            header, key = reply[: -m.ACK_KEY_LEN], reply[-m.ACK_KEY_LEN :]
            node.send(session, bytes([MSG_ONION]) + header + m.seal_ack(key, message_id))

    def handle(payload: bytes) -> None:
        try:
            frag = m.parse_fragment(m.open_envelope(x_key, payload))
        except m.EnvelopeError:
            return
        if frag.reply is not None:
            replies.setdefault(frag.message_id, []).append(frag.reply)
        complete = reassembler.add(frag, time.time())
        if complete is not None:
            done.append(complete)
            ack(complete.message_id)
        elif frag.message_id in reassembler.done:
            ack(frag.message_id)  # a retransmission: its ack may have been lost

    while True:
        # Everything that arrived so far is handled before deciding to stop.
        while not node.syncs.empty():
            synced |= node.syncs.get_nowait() == mailbox
        while not node.items.empty():
            box, payload = node.items.get_nowait()
            if box == mailbox:
                last_activity = time.monotonic()
                handle(payload)
        now = time.monotonic()
        if stop is not None and stop.is_set():
            break
        if count is not None and len(done) >= count:
            break
        if count is None and synced and (wait <= 0 or (done and now - last_activity >= quiet)):
            break
        if now >= start + max(wait, 0 if synced else CONNECT_TIMEOUT):
            break
        await asyncio.sleep(POLL)
    node.flush()
    await asyncio.sleep(0.05)
    return done
