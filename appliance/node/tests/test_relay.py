"""The relay state machine end to end, on a simulated network (no sockets, fake clock)."""

from __future__ import annotations

import os
from pathlib import Path

from simnet import SimClient, SimNet

from ringmesh.client import MessageAcked, MessageReceived
from ringmesh.descriptor import Descriptor
from ringmesh.directory import verify
from ringmesh.onion import Hop, build_packet
from ringmesh.relay import Relay
from ringmesh.wire import CMD_DELIVER, DATAGRAM_SIZE, MSG_ONION, PAYLOAD_LEN


def served_digests(net: SimNet) -> set[str | None]:
    return {r.status(net.now)["directory"]["served_digest"] for r in net.relays.values()}  # type: ignore[index]


def inject(sim: SimClient, packet: bytes) -> None:
    """Send a hand-built onion packet over the client's session with its home relay."""
    assert sim.client.session is not None
    sim.client.link.send(sim.client.session, bytes([MSG_ONION]) + packet)


def hop(descriptor: Descriptor, delay_us: int = 0) -> Hop:
    return Hop(descriptor.node_id, descriptor.onion_key(), delay_us)


def test_relays_peer_sign_one_directory_and_deliver(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 3)
    net.run(3.0)
    for relay in net.relays.values():
        assert relay.status(net.now)["peers_up"] == 2
    (digest,) = served_digests(net)
    assert digest is not None
    home = net.relays[net.addrs[0]]
    best = home.authority.best(net.now)
    assert best is not None
    assert (
        len(
            verify(
                best.encode(), frozenset(k.identity_public for k in net.keys), net.now
            ).descriptors
        )
        == 3
    )

    alice, bob = net.add_client("alice", 0), net.add_client("bob", 2)
    bob.client.receive_messages()
    net.connect(alice, bob)
    body = os.urandom(1500)
    mid = alice.client.send_message(
        body, bob.keys.identity_public, net.keys[2].identity_public, net.now
    )
    net.run(10.0, until=lambda: bool(net.events_of(alice, MessageAcked)))
    assert [e.body for e in net.events_of(bob, MessageReceived)] == [body]
    assert [e.message_id for e in net.events_of(alice, MessageAcked)] == [mid]
    assert all(len(sent.datagram) == DATAGRAM_SIZE for sent in net.wire)
    assert not any(body[:64] in sent.datagram for sent in net.wire)
    assert net.relays[net.addrs[1]].counters["packets_in"] > 0  # the mix between the homes

    # The same onion packet twice: the per-epoch replay cache drops the second copy.
    _, packet = build_packet(
        [hop(net.keys[0].current.descriptor)], CMD_DELIVER, os.urandom(16), os.urandom(PAYLOAD_LEN)
    )
    inject(alice, packet)
    inject(alice, packet)
    net.run(0.5)
    assert home.counters["dropped:onion_replay"] == 1


def test_the_sender_chooses_each_hops_delay(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 2)
    alice = net.add_client("alice", 0, send_rate=0.001, client_loop_rate=0.0)
    net.connect(alice)
    relay0 = net.relays[net.addrs[0]]
    descs = [k.current.descriptor for k in net.keys]
    mailbox = os.urandom(16)
    # relay0 holds it 1.5 s, relay1 0.5 s, then relay1 delivers to the mailbox
    _, packet = build_packet(
        [hop(descs[0], 1_500_000), hop(descs[1], 500_000)], CMD_DELIVER, mailbox, bytes(PAYLOAD_LEN)
    )
    sent_at = net.now
    inject(alice, packet)
    net.run(1.45)
    assert relay0.queue_depth() == 1
    relay1 = net.relays[net.addrs[1]]
    net.run(0.1)
    assert relay0.queue_depth() == 0 and relay1.queue_depth() == 1
    net.run(0.4)
    assert relay1.mailboxes.depth() == 0
    net.run(0.1)
    assert relay1.mailboxes.depth() == 1
    assert 2.0 <= net.now - sent_at <= 2.1


def test_rotation_keeps_old_onion_key_for_grace_and_updates_the_directory(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 3)
    alice = net.add_client("alice", 0)
    net.connect(alice)
    (before,) = served_digests(net)
    relay1 = net.relays[net.addrs[1]]
    old = net.keys[1].current.descriptor
    rotated = net.stores[1].rotate(net.now)
    relay1.update_keys(rotated, net.now)
    net.run(1.0)
    # The peers learned the new descriptor by push, and all signed a new directory with it.
    relay0 = net.relays[net.addrs[0]]
    assert relay0.peers.peers[net.keys[1].identity_public].descriptor.epoch == 2  # type: ignore[union-attr]
    (after,) = served_digests(net)
    assert after != before
    best = relay0.authority.best(net.now)
    assert best is not None and rotated.current.descriptor in best.directory.descriptors
    # A packet built for the old onion key still unwraps during the grace period.
    path = [hop(net.keys[0].current.descriptor), hop(old)]
    _, packet = build_packet(path, CMD_DELIVER, os.urandom(16), bytes(PAYLOAD_LEN))
    inject(alice, packet)
    net.run(0.3)
    assert relay1.counters["mailbox_stored"] == 1
    # After the grace period the old key (and its replay cache) is gone.
    net.stores[1].prune(net.now + 10_000)
    relay1.update_keys(net.stores[1].load(net.now), net.now)
    assert [k.epoch for k in relay1.onion_keys] == [2]


def test_relay_cover_traffic_loops_back_and_drops(tmp_path: Path) -> None:
    net = SimNet(
        tmp_path, 3, relay_config={"mean_delay_ms": 5, "loop_rate": 10.0, "drop_rate": 10.0}
    )
    net.run(4.0)
    totals = {
        key: sum(r.counters[key] for r in net.relays.values())
        for key in ("cover_sent_loop", "cover_sent_drop", "cover_received")
    }
    assert totals["cover_sent_loop"] > 10
    assert totals["cover_sent_drop"] > 10
    # every cover packet sent (minus the few still in flight) came out as cover somewhere
    assert totals["cover_received"] >= 0.8 * (totals["cover_sent_loop"] + totals["cover_sent_drop"])
    assert all(len(sent.datagram) == DATAGRAM_SIZE for sent in net.wire)
    assert not any(k.startswith("dropped:") for r in net.relays.values() for k in r.counters)


def test_any_message_on_an_authenticated_session_is_handled(tmp_path: Path) -> None:
    """Fuzz the relay behind a valid session: arbitrary link plaintexts never raise."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = SimNet(tmp_path, 2)
    fuzzer = net.add_client("fuzzer", 0)
    net.connect(fuzzer)
    session = fuzzer.client.session
    assert session is not None
    relay: Relay = net.relays[net.addrs[0]]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(kind=st.integers(min_value=0, max_value=255), body=st.binary(max_size=1366))
    def feed(kind: int, body: bytes) -> None:
        if kind == 0x0B:  # CLOSE would end the session the fuzzer needs
            kind = 0x0D
        datagram = fuzzer.client.link.seal(session, bytes([kind]) + body)
        relay.receive_datagram(datagram, fuzzer.addr, net.now)
        relay.handle_timer(net.now)
        relay.datagrams_to_send()

    feed()
    assert relay.counters["dropped:bad_message"] > 0
