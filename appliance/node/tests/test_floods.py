"""Floods against a loopback fleet of real `ringmesh run` processes, each bounded in time and
count and aimed only at 127.0.0.1 (the victim relay; its two peers listen on 127.0.0.2 and
127.0.0.3, so each relay has a source address of its own, as on a real network).

The victim has small limits so that a few hundred datagrams reach them (the mailbox caps
apply to every relay of this fleet). Through every flood,
its pinned peers stay connected, a message between two users that must cross it arrives, and
its resident memory stays under RSS_BOUND."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from endpoints import SocketEndpoint, connect, half_open_flood, pump_until, session_flood
from fleet import RELAY_VALUES, Fleet, Node, resident_bytes
from ringmesh.admission import LinkLimits
from ringmesh.onion import Hop, build_packet
from ringmesh.wire import CMD_DELIVER, MSG_ONION, NODE_ID_LEN, PAYLOAD_LEN
from test_fleet import counters, finish_recv, send, start_recv

LIMITS = LinkLimits(
    max_half_open=16,
    max_half_open_per_source=4,
    max_sessions=40,
    max_sessions_per_source=4,
    reserved_relay_sessions=8,
)
MAILBOX_CAPS: dict[str, object] = {"mailbox_max_mailboxes": 100, "mailbox_max_bytes": 256 << 10}
ATTACKER = "127.0.0.9"  # one address with many ports
BOTNET = [f"127.0.1.{i}" for i in range(1, 13)]  # many addresses, many identities
# A relay process here measured 38 MiB before and after the floods (Python, cryptography, a
# 1.2 MB replay filter); what the limits above let a flood add is a few hundred kilobytes.
RSS_BOUND = 64 << 20


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(
        tmp_path_factory.mktemp("floods"),
        relay_values=RELAY_VALUES | MAILBOX_CAPS | {"link": LIMITS},
    )
    f.create(3, 2, hosts=["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    sender, recipient = f.clients
    # The recipient's home is relays[1] (what `send` names); the sender's is relays[2]. Paths
    # are three relays long, so every path goes through the victim, relays[0].
    f.write_client_config(sender, f.relays[2])
    f.write_client_config(recipient, f.relays[1])
    try:
        f.start_all()
        yield f
    finally:
        f.stop_all()


def peers_up(fleet: Fleet, node: Node) -> set[str]:
    status = fleet.status(node)
    if status is None:  # starting
        return set()
    return {str(p["did"]) for p in status["peers"] if p["up"]}


def assert_still_serving(fleet: Fleet, body: bytes) -> None:
    victim, *others = fleet.relays
    assert peers_up(fleet, victim) == {n.did for n in others}
    assert all(victim.did in peers_up(fleet, n) for n in others)
    recv = start_recv(fleet.clients[1], "--wait", "60", "--count", "1")
    time.sleep(0.5)
    assert send(fleet, body)["acked"] is True
    assert finish_recv(recv) == [body]
    assert victim.proc is not None
    assert resident_bytes(victim.proc.pid) < RSS_BOUND


def test_deliveries_to_random_mailboxes(fleet: Fleet) -> None:
    # First in this module: the session flood below leaves the victim no client slot.
    victim = fleet.relays[0]
    attacker = SocketEndpoint("127.0.0.20")
    try:
        session = connect(attacker, victim.address)
        target = Hop(session.peer.node_id, session.peer.onion_key())
        # 1,500 new mailboxes (room for 100), then 300 packets more for the first of them:
        # 100 mailboxes of one packet (2,145 bytes each, overheads included) and 44 packets
        # more fill the 256 KiB.
        ids = [os.urandom(NODE_ID_LEN) for _ in range(1500)]
        ids += ids[:1] * 300
        for i, mailbox_id in enumerate(ids):
            _, packet = build_packet([target], CMD_DELIVER, mailbox_id, os.urandom(PAYLOAD_LEN))
            attacker.link.send(session, bytes([MSG_ONION]) + packet)
            if i % 20 == 0:
                attacker.pump(time.time())
                time.sleep(0.002)  # about 10,000 packets/s: what loopback does not lose
        attacker.pump(time.time())

        def refused() -> tuple[int, int]:
            c = counters(fleet, victim)
            return c.get("dropped:mailboxes_full", 0), c.get("dropped:mailbox_bytes_full", 0)

        pump_until([attacker], lambda: min(refused()) > 0 and sum(refused()) > 1400, 15)
        too_many, too_big = refused()
        assert too_many > 1000 and too_big > 200, (too_many, too_big)
        status = fleet.status(victim)
        assert status is not None
        assert int(str(status["mailbox_bytes"])) <= 256 << 10
        assert int(str(status["mailboxes"])) <= 100 + 4  # held, and claimed by live clients
        assert_still_serving(fleet, b"through the mailbox flood")
    finally:
        attacker.close()


def test_handshakes_from_many_ports_of_one_address(fleet: Fleet) -> None:
    victim = fleet.relays[0]
    before = counters(fleet, victim)
    cookies, answered = half_open_flood(victim.address, ATTACKER, count=300, timeout=20)
    after = counters(fleet, victim)
    assert cookies == 300  # every INIT got its stateless cookie and came back with it
    assert answered == 4  # max_half_open_per_source: the expensive step ran four times
    refused = "handshake_failed:source_half_open_full"
    assert after.get(refused, 0) - before.get(refused, 0) == 300 - 4
    status = fleet.status(victim)
    assert status is not None and status["half_open"] == 4
    assert_still_serving(fleet, b"through the handshake flood")


def test_sessions_from_many_self_made_client_identities(fleet: Fleet) -> None:
    victim, neighbour = fleet.relays[0], fleet.relays[1]
    before = counters(fleet, victim)
    endpoints, accepted = session_flood(victim.address, [ATTACKER, *BOTNET], 6, timeout=30)
    try:
        after = counters(fleet, victim)

        def grew(key: str) -> int:
            return after.get(key, 0) - before.get(key, 0)

        # 40 slots, 8 kept for pinned relays: the flood fills the other 32, four per address
        # at most, and everyone else is refused before the expensive step.
        status = fleet.status(victim)
        assert status is not None
        assert accepted <= 32
        assert status["client_sessions"] == 32
        assert int(str(status["sessions"])) <= 40
        assert grew("handshake_failed:sessions_full") > 0
        assert grew("handshake_failed:source_sessions_full") > 0

        # A pinned relay that restarts now gets one of the kept slots: it is back up long
        # before the victim would notice the old session died (30 s) and dial it itself.
        fleet.stop(neighbour)
        fleet.start(neighbour)
        deadline = time.monotonic() + 10
        while victim.did not in peers_up(fleet, neighbour):
            assert time.monotonic() < deadline, "the restarted relay did not get back in"
            time.sleep(0.3)
        assert_still_serving(fleet, b"through the session flood")
    finally:
        for endpoint in endpoints:
            endpoint.close()
