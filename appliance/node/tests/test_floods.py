"""Floods against a loopback fleet of real `ringmesh run` processes, each bounded in time and
count and aimed only at 127.0.0.1 (the victim relay; its two peers listen on 127.0.0.2 and
127.0.0.3, so each relay has a source address of its own, as on a real network).

The victim has small limits so that a few hundred datagrams reach them. Through every flood,
its pinned peers stay connected, a message between two users that must cross it arrives, and
its resident memory stays under RSS_BOUND."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from endpoints import half_open_flood, session_flood
from fleet import RELAY_VALUES, Fleet, Node, resident_bytes
from ringmesh.admission import LinkLimits
from test_fleet import counters, finish_recv, send, start_recv

LIMITS = LinkLimits(
    max_half_open=16,
    max_half_open_per_source=4,
    max_sessions=40,
    max_sessions_per_source=4,
    reserved_relay_sessions=8,
)
ATTACKER = "127.0.0.9"  # one address with many ports
BOTNET = [f"127.0.1.{i}" for i in range(1, 13)]  # many addresses, many identities
# A relay process here measured 38 MiB before and after the floods (Python, cryptography, a
# 1.2 MB replay filter); what the limits above let a flood add is a few hundred kilobytes.
RSS_BOUND = 64 << 20


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("floods"), relay_values=RELAY_VALUES | {"link": LIMITS})
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
