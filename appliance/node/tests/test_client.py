"""The sans-I/O client with real relays on a simulated network and a fake clock."""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from pathlib import Path

from scipy.stats import ks_2samp
from simnet import SimClient, SimNet

from ringmesh.client import (
    Failed,
    MessageAcked,
    MessageReceived,
    Ready,
    ReplyKeysIssued,
    ReplyKeysUsed,
    ReplyReceived,
    ReplySent,
)
from ringmesh.did import did_from_public, node_id
from ringmesh.directory import Directory, SignedDirectory

TEN_KIB = os.urandom(10 * 1024)


def send_and_wait(
    net: SimNet,
    sender: SimClient,
    recipient: SimClient,
    home: int,
    body: bytes,
    timeout: float = 30.0,
) -> bytes:
    """Send body and run the network until the message is acked or given up."""
    mid = sender.client.send_message(
        body, recipient.keys.identity_public, net.keys[home].identity_public, net.now, timeout
    )
    net.run(
        timeout + 1, until=lambda: any(getattr(e, "message_id", None) == mid for e in sender.events)
    )
    return mid


def test_a_message_is_delivered_acked_and_every_client_sees_one_directory(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 4)
    alice, bob = net.add_client("alice", 0), net.add_client("bob", 1)
    bob.client.receive_messages()
    net.connect(alice, bob)
    digests = {e.directory_digest for c in (alice, bob) for e in net.events_of(c, Ready)}
    assert len(digests) == 1

    mid = send_and_wait(net, alice, bob, 1, TEN_KIB)
    assert net.events_of(alice, MessageAcked) == [MessageAcked(mid, 1)]
    (received,) = net.events_of(bob, MessageReceived)
    assert received.body == TEN_KIB
    # With four relays the ack and reply blocks avoid the forward path's mix entirely.
    assert alice.client.counters["reply_path_overlap"] == 0
    # Loop cover came back to its senders through the network.
    assert alice.client.counters["loops_returned"] > 0


def test_the_first_hop_cannot_tell_a_sender_from_an_idle_client(tmp_path: Path) -> None:
    """Over one window on the fake clock, the home relay receives from a client that sends a
    10 KiB message the same traffic as from one that sends nothing."""
    net = SimNet(tmp_path, 4)
    send_rate, loop_rate = 20.0, 2.0
    sender = net.add_client("sender", 0, send_rate=send_rate, client_loop_rate=loop_rate)
    idle = net.add_client("idle", 0, send_rate=send_rate, client_loop_rate=loop_rate)
    bob = net.add_client("bob", 1)
    bob.client.receive_messages()
    net.connect(sender, idle, bob)
    start, window = net.now, 40.0
    sender.client.send_message(
        TEN_KIB, bob.keys.identity_public, net.keys[1].identity_public, start
    )
    net.run(window)
    assert net.events_of(sender, MessageAcked), sender.events  # the message did go out
    assert sender.client.counters["real_sent"] == 13  # its 13 fragments, inside the window

    def arrivals(sim: SimClient) -> list[float]:
        return [
            s.time
            for s in net.wire
            if s.src == sim.addr and s.dst == net.addrs[0] and s.time >= start
        ]

    a, b = arrivals(sender), arrivals(idle)
    expected = (send_rate + loop_rate) * window
    for n in (len(a), len(b)):
        assert abs(n - expected) < 3 * math.sqrt(expected)  # each is the Poisson process
    assert abs(len(a) - len(b)) < 3 * math.sqrt(len(a) + len(b))
    gaps_a = [y - x for x, y in itertools.pairwise(a)]
    gaps_b = [y - x for x, y in itertools.pairwise(b)]
    assert ks_2samp(gaps_a, gaps_b).pvalue > 0.01
    # Never a burst: no two packets of the sender leave at the same instant.
    assert max(Counter(a).values()) == 1


def test_a_reply_through_its_handle_reaches_a_sender_the_recipient_cannot_name(
    tmp_path: Path,
) -> None:
    net = SimNet(tmp_path, 4)
    alice, bob = net.add_client("alice", 0), net.add_client("bob", 1)
    bob.client.receive_messages()
    net.connect(alice, bob)
    mid = send_and_wait(net, alice, bob, 1, b"who are you?")
    (issued,) = net.events_of(alice, ReplyKeysIssued)
    handle = net.events_of(bob, MessageReceived)[0].reply_handle
    alice_home = net.keys[0].identity_public
    for secret in (alice.keys.identity_public, alice_home, node_id(alice_home)):
        assert secret not in handle
    assert did_from_public(alice.keys.identity_public).encode() not in handle

    # Alice's sending run is over; a later run of hers, with the stored reply keys, receives.
    alice.client.close(net.now)
    later = net.add_client(
        "alice-later", 0, keys=alice.keys, reply_keys={issued.surb_id: issued.record}
    )
    later.client.receive_messages()
    net.connect(later)
    bob.client.send_reply(handle, b"someone you wrote to", net.now)
    net.run(10.0, until=lambda: bool(net.events_of(later, ReplyReceived)))
    assert net.events_of(bob, ReplySent) == [ReplySent()]
    assert net.events_of(later, ReplyReceived) == [ReplyReceived(mid, b"someone you wrote to")]
    assert net.events_of(later, ReplyKeysUsed) == [ReplyKeysUsed(issued.surb_id)]

    # A reply block is single-use: a second answer through it dies at bob's home relay.
    bob.client.send_reply(handle, b"again", net.now)
    net.run(5.0)
    assert len(net.events_of(later, ReplyReceived)) == 1
    assert net.relays[net.addrs[1]].counters["dropped:onion_replay"] == 1


def test_a_lost_path_is_retried_over_another_until_acked(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 5)
    alice, bob = net.add_client("alice", 0), net.add_client("bob", 1)
    bob.client.receive_messages()
    net.connect(alice, bob)
    dead = net.addrs[2]
    net.tamper = lambda _t, _src, dst, datagram: None if dst == dead else datagram
    attempts = []
    for i in range(8):
        mid = send_and_wait(net, alice, bob, 1, f"message {i}".encode())
        (acked,) = [e for e in net.events_of(alice, MessageAcked) if e.message_id == mid]
        attempts.append(acked.attempts)
        if acked.attempts > 1:
            break
    assert max(attempts) > 1, attempts
    assert alice.client.counters["retransmissions"] >= 1
    bodies = {e.body for e in net.events_of(bob, MessageReceived)}
    assert bodies == {f"message {i}".encode() for i in range(len(attempts))}


def test_with_two_mixes_and_one_dead_the_client_finds_the_live_one(tmp_path: Path) -> None:
    """Slow links: loops come back after they were counted lost, and an ack after its
    retransmission. The client still learns which mix is dead and routes around it."""
    net = SimNet(tmp_path, 4)
    net.latency = 0.6  # a loop needs 4 x 0.6 s, more than the 2.1 s it is given
    alice, bob = net.add_client("alice", 0), net.add_client("bob", 1)
    bob.client.receive_messages()
    net.connect(alice, bob, seconds=20.0)
    dead = net.addrs[2]
    net.tamper = lambda _t, _src, dst, datagram: None if dst == dead else datagram
    net.run(10.0)  # loops through both mixes, some late
    for i in range(3):
        send_and_wait(net, alice, bob, 1, f"message {i}".encode(), timeout=60.0)
    assert len(net.events_of(alice, MessageAcked)) == 3, alice.events
    assert alice.client.counters["loops_late"] > 0


def test_loops_still_visit_suspected_relays_so_a_live_one_is_cleared(tmp_path: Path) -> None:
    """Loops are the probe that clears failure marks; were they routed around suspects, a
    live relay once wrongly suspected (slow links) would stay suspected for good."""
    net = SimNet(tmp_path, 4)
    alice = net.add_client("alice", 0)
    net.connect(alice)
    dead, live = net.keys[2].identity_public, net.keys[3].identity_public
    net.tamper = lambda _t, _src, dst, datagram: None if dst == net.addrs[2] else datagram
    alice.client._failures.update({dead: 5, live: 5})
    net.run(20.0)
    assert live not in alice.client._failures
    assert alice.client._failures[dead] > 5


def test_a_home_relay_that_shapes_the_directory_is_refused(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 4)
    home = net.relays[net.addrs[0]]
    net.run(3.0)
    honest = home.authority.best(net.now)
    assert honest is not None
    descriptors = honest.directory.descriptors
    # a genuine descriptor of the last relay, but not the one the ring signed
    last = next(i for i, k in enumerate(net.keys) if k.identity_public == descriptors[-1].identity)
    other = net.stores[last].rotate(net.now).current.descriptor
    shaped = {
        "dropped": Directory(honest.directory.epoch, descriptors[1:]),
        "altered": Directory(honest.directory.epoch, (*descriptors[:-1], other)),
        "minority": honest.directory,
    }
    for name, directory in shaped.items():
        signatures = honest.signatures[:2] if name == "minority" else honest.signatures
        served = SignedDirectory(directory, signatures)

        def shaping(now: float, served: SignedDirectory = served) -> SignedDirectory:
            return served

        home.authority.best = shaping  # type: ignore[method-assign]
        client = net.add_client(f"client-{name}", 0)
        client.client.connect(net.now)
        net.run(10.0, until=lambda c=client: bool(c.events))  # type: ignore[misc]
        (failed,) = client.events
        assert isinstance(failed, Failed), (name, client.events)
        assert "directory refused" in failed.reason
        assert client.client.counters["directory_refused:too_few_signatures"] > 0, name


def test_no_directory_without_a_majority_of_the_first_ring(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 5)
    for addr in net.addrs[2:]:  # three of the five pinned relays are down
        del net.relays[addr]
    alice = net.add_client("alice", 0)
    alice.client.connect(net.now)
    net.run(20.0, until=lambda: bool(alice.events))
    (failed,) = alice.events
    assert isinstance(failed, Failed) and "majority" in failed.reason


def test_an_unreachable_home_relay_fails_after_the_connect_timeout(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 3)
    del net.relays[net.addrs[0]]  # alice's home relay is down
    alice = net.add_client("alice", 0)
    alice.client.connect(net.now)
    started = net.now
    net.run(30.0, until=lambda: bool(alice.events))
    (failed,) = alice.events
    assert isinstance(failed, Failed) and "no answer from the home relay" in failed.reason
    assert 6.0 <= net.now - started <= 6.5
    # handshakes are retried with a pause, not in a tight loop
    assert len([s for s in net.wire if s.src == alice.addr]) <= 12


def test_any_message_from_the_home_relay_is_handled(tmp_path: Path) -> None:
    """Fuzz the client behind its authenticated session: whatever its home relay sends,
    including items that name a reply block the client issued, never raises."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = SimNet(tmp_path, 4)
    alice, bob = net.add_client("alice", 0), net.add_client("bob", 1)
    net.connect(alice, bob)
    alice.client.send_message(b"x", bob.keys.identity_public, net.keys[1].identity_public, net.now)
    net.run(0.01)
    (issued,) = net.events_of(alice, ReplyKeysIssued)
    home = net.relays[net.addrs[0]]
    session = next(
        s for s in home.link.sessions.values() if s.peer_identity == alice.keys.identity_public
    )
    mailbox = alice.client.user_mailbox

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        kind=st.sampled_from([0x06, 0x09, 0x0A, 0x03, 0x42]),
        known=st.booleans(),
        body=st.binary(max_size=1365),
    )
    def feed(kind: int, known: bool, body: bytes) -> None:
        if kind == 0x09 and known:
            body = mailbox + issued.surb_id + body
        datagram = home.link.seal(session, bytes([kind]) + body)
        alice.client.receive_datagram(datagram, net.addrs[0], net.now)
        alice.client.handle_timer(net.now)
        alice.client.datagrams_to_send()

    feed()
    assert alice.client.state.value == "ready"
