"""The relay state machine end to end, on a simulated network (no sockets, fake clock)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ringmesh import messaging as m
from ringmesh.config import parse_config
from ringmesh.did import ed25519_public_to_x25519, ed25519_seed_to_x25519, user_mailbox_id
from ringmesh.keystore import Keys, Keystore
from ringmesh.link import LinkEndpoint, Session, SessionUp
from ringmesh.onion import Hop, build_header, build_packet, wrap_payload
from ringmesh.relay import Relay, decode_descriptors
from ringmesh.wire import (
    CMD_DELIVER,
    DATAGRAM_SIZE,
    MSG_CLAIM_USER,
    MSG_DESCRIPTORS,
    MSG_GET_DESCRIPTORS,
    MSG_MAILBOX_ITEM,
    MSG_ONION,
    NODE_ID_LEN,
    PAYLOAD_LEN,
    ROLE_CLIENT,
    ROLE_RELAY,
)

Addr = tuple[str, int]


class Net:
    def __init__(
        self, tmp: Path, n: int, mean_delay_ms: int = 0, loop_rate: float = 0, drop_rate: float = 0
    ) -> None:
        self.now = time.time()
        self.keys: list[Keys] = []
        self.stores: list[Keystore] = []
        for i in range(n):
            store = Keystore(tmp / f"r{i}", ROLE_RELAY, 3600, 600)
            store.init(self.now)
            self.stores.append(store)
            self.keys.append(store.load(self.now))
        self.addrs: list[Addr] = [("10.0.0.1", 7000 + i) for i in range(n)]
        relays = [
            {"did": k.did, "address": f"{a[0]}:{a[1]}"}
            for k, a in zip(self.keys, self.addrs, strict=True)
        ]
        self.relays: dict[Addr, Relay] = {}
        for k, a in zip(self.keys, self.addrs, strict=True):
            mixing = {
                "mean_delay_ms": mean_delay_ms,
                "loop_rate": loop_rate,
                "drop_rate": drop_rate,
            }
            raw = {"mixing": mixing, "relays": relays}
            cfg = parse_config(raw, tmp / "x.toml")
            self.relays[a] = Relay(cfg, k, self.now)
        self.clients: dict[Addr, tuple[LinkEndpoint, list[tuple[Session, bytes]]]] = {}
        self.wire: list[bytes] = []

    def client(self, addr: Addr, keys: Keys) -> tuple[LinkEndpoint, list[tuple[Session, bytes]]]:
        ep = LinkEndpoint(lambda: (keys.current.descriptor, keys.current.link_key), lambda d: None)
        ep.tick(self.now)
        inbox: list[tuple[Session, bytes]] = []
        self.clients[addr] = (ep, inbox)
        return ep, inbox

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            for relay in self.relays.values():
                relay.handle_timer(self.now)
            for _ in range(5):
                moved = False
                sources: list[tuple[Addr, list[tuple[bytes, Addr]]]] = [
                    (a, r.outbox) for a, r in self.relays.items()
                ] + [(a, c[0].outbox) for a, c in self.clients.items()]
                for src, outbox in sources:
                    batch, outbox[:] = list(outbox), []
                    for datagram, dst in batch:
                        moved = True
                        self.wire.append(datagram)
                        if dst in self.relays:
                            self.relays[dst].receive_datagram(datagram, src, self.now)
                        elif dst in self.clients:
                            ep, inbox = self.clients[dst]
                            got = ep.receive(datagram, src, self.now)
                            if got is not None:
                                inbox.append(got)
                if not moved:
                    break
            self.now += step


def up_session(ep: LinkEndpoint) -> Session:
    return next(e.session for e in ep.events if isinstance(e, SessionUp))


def test_relays_peer_and_deliver_a_message(tmp_path: Path) -> None:
    net = Net(tmp_path, 3, mean_delay_ms=5)
    net.run(2.0)
    for relay in net.relays.values():
        assert relay.status(net.now)["peers_up"] == 2

    store = Keystore(tmp_path / "alice", ROLE_CLIENT, 3600, 600)
    store.init(net.now)
    alice = store.load(net.now)
    ep, inbox = net.client(("10.0.0.9", 5000), alice)
    home_addr = net.addrs[2]
    ep.connect(home_addr, net.keys[2].identity_public, net.now)
    net.run(0.5)
    session = up_session(ep)
    ep.send(session, bytes([MSG_GET_DESCRIPTORS]))
    ep.send(session, bytes([MSG_CLAIM_USER]))
    net.run(0.2)
    descs = [msg for _, msg in inbox if msg[0] == MSG_DESCRIPTORS]
    total, raws = decode_descriptors(descs[0][1:])
    assert total == 3 and len(raws) == 3

    # Sender side (pure): a two-fragment message over relays 0 -> 1 -> 2 to alice's mailbox.
    hops = [Hop(k.current.descriptor.node_id, k.current.descriptor.onion_key()) for k in net.keys]
    reply = build_header(hops[::-1][:1], CMD_DELIVER, os.urandom(16))
    body = os.urandom(1500)
    recipient = ed25519_public_to_x25519(alice.identity_public)
    mailbox = user_mailbox_id(alice.identity_public)
    sender, _ = net.client(("10.0.0.8", 5000), alice)
    sender.connect(net.addrs[0], net.keys[0].identity_public, net.now)
    net.run(0.5)
    s0 = up_session(sender)
    for plain in m.split_message(b"i" * 16, body, reply.data + os.urandom(32)):
        _, packet = build_packet(hops, CMD_DELIVER, mailbox, m.seal(recipient, plain))
        sender.send(s0, bytes([MSG_ONION]) + packet)
    net.run(1.0)

    items = [msg[1:] for _, msg in inbox if msg[0] == MSG_MAILBOX_ITEM]
    assert len(items) == m.fragment_count(len(body)) == 3
    x_key = ed25519_seed_to_x25519(alice.identity.private_bytes_raw())
    r = m.Reassembler()
    done = [
        r.add(
            m.parse_fragment(m.open_envelope(x_key, item[NODE_ID_LEN : NODE_ID_LEN + PAYLOAD_LEN])),
            0.0,
        )
        for item in items
    ]
    assert [d.body for d in done if d is not None] == [body]
    assert all(len(d) == DATAGRAM_SIZE for d in net.wire)
    assert not any(body[:64] in d for d in net.wire)
    assert net.relays[net.addrs[1]].counters["packets_in"] == 3

    # The same onion packet replayed into relay 0 is dropped by the per-epoch replay cache.
    _, packet = build_packet(hops, CMD_DELIVER, mailbox, os.urandom(PAYLOAD_LEN))
    sender.send(s0, bytes([MSG_ONION]) + packet)
    sender.send(s0, bytes([MSG_ONION]) + packet)
    net.run(0.5)
    assert net.relays[net.addrs[0]].counters["dropped:onion_replay"] == 1
    assert wrap_payload((), b"x") == b"x"


def test_rotation_keeps_old_onion_key_for_grace(tmp_path: Path) -> None:
    net = Net(tmp_path, 2)
    net.run(1.5)
    relay1 = net.relays[net.addrs[1]]
    old = net.keys[1].current.descriptor
    rotated = net.stores[1].rotate(net.now)
    relay1.update_keys(rotated, net.now)
    net.run(0.5)
    # The peer learned the new descriptor by push.
    relay0 = net.relays[net.addrs[0]]
    assert relay0.peers[net.keys[1].identity_public].descriptor.epoch == 2  # type: ignore[union-attr]
    # A packet built for the old onion key still unwraps during the grace period.
    mailbox = os.urandom(16)
    _, packet = build_packet(
        [Hop(old.node_id, old.onion_key())], CMD_DELIVER, mailbox, bytes(PAYLOAD_LEN)
    )
    client, _ = net.client(("10.0.0.7", 1), net.keys[0])
    client.connect(net.addrs[1], None, net.now)
    net.run(0.3)
    client.send(up_session(client), bytes([MSG_ONION]) + packet)
    net.run(0.3)
    assert relay1.counters["mailbox_stored"] == 1
    # After the grace period the old key (and its replay cache) is gone.
    net.stores[1].prune(net.now + 10_000)
    relay1.update_keys(net.stores[1].load(net.now), net.now)
    assert [k.epoch for k in relay1.onion_keys] == [2]


def test_cover_traffic_loops_back_and_drops(tmp_path: Path) -> None:
    net = Net(tmp_path, 3, mean_delay_ms=5, loop_rate=10.0, drop_rate=10.0)
    net.run(4.0)
    totals = {
        key: sum(r.counters[key] for r in net.relays.values())
        for key in ("cover_sent_loop", "cover_sent_drop", "cover_received")
    }
    assert totals["cover_sent_loop"] > 10
    assert totals["cover_sent_drop"] > 10
    # every cover packet sent (minus the few still in flight) came out as cover somewhere
    assert totals["cover_received"] >= 0.8 * (totals["cover_sent_loop"] + totals["cover_sent_drop"])
    assert all(len(d) == DATAGRAM_SIZE for d in net.wire)
    assert not any(k.startswith("dropped:") for r in net.relays.values() for k in r.counters)


def test_any_message_on_an_authenticated_session_is_handled(tmp_path: Path) -> None:
    """Fuzz the relay behind a valid session: arbitrary link plaintexts never raise."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = Net(tmp_path, 2)
    net.run(1.5)
    store = Keystore(tmp_path / "fuzzer", ROLE_CLIENT, 3600, 600)
    store.init(net.now)
    ep, _ = net.client(("10.0.0.66", 1), store.load(net.now))
    ep.connect(net.addrs[0], None, net.now)
    net.run(0.3)
    session = up_session(ep)
    relay = net.relays[net.addrs[0]]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(kind=st.integers(min_value=0, max_value=255), body=st.binary(max_size=1366))
    def feed(kind: int, body: bytes) -> None:
        if kind == 0x0B:  # CLOSE would end the session the fuzzer needs
            kind = 0x0C
        datagram = ep.seal(session, bytes([kind]) + body)
        relay.receive_datagram(datagram, ("10.0.0.66", 1), net.now)
        relay.handle_timer(net.now)
        relay.outbox.clear()

    feed()
    assert relay.counters["dropped:bad_message"] > 0
