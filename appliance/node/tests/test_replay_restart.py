"""Onion replay protection survives a relay restart: a real `ringmesh run` process, a packet
recorded and sent again after the relay stopped (cleanly, or killed after a periodic save)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoints import SocketEndpoint, connect, cover_packet, send_onion
from fleet import RELAY_VALUES, Fleet, Node, ringmesh
from test_fleet import counters


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[Fleet, Node]]:
    fleet = Fleet(tmp_path, relay_values=RELAY_VALUES | {"replay_save_seconds": 1})
    fleet.create(1, 0)
    try:
        yield fleet, fleet.relays[0]
    finally:
        fleet.stop_all()


def wait_for(fleet: Fleet, node: Node, counter: str, value: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while True:
        now = counters(fleet, node).get(counter, 0)
        if now >= value or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def restart(fleet: Fleet, node: Node, sig: signal.Signals) -> None:
    assert node.proc is not None
    node.proc.send_signal(sig)
    node.proc.wait(10)
    fleet.start(node)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_packet_replayed_after_a_restart_is_dropped(
    relay: tuple[Fleet, Node], stop: signal.Signals
) -> None:
    fleet, node = relay
    address = ("127.0.0.1", node.port)
    fleet.start(node)
    client = SocketEndpoint()
    try:
        session = connect(client, address)
        recorded = cover_packet(session.peer)
        send_onion(client, session, recorded)
        assert wait_for(fleet, node, "cover_received", 1) == 1
        if stop == signal.SIGKILL:
            time.sleep(2.5)  # a periodic save (save_seconds = 1) has happened; then a crash
        restart(fleet, node, stop)

        session = connect(client, address)
        send_onion(client, session, recorded)
        assert wait_for(fleet, node, "dropped:onion_replay", 1) == 1, counters(fleet, node)
        fresh = cover_packet(session.peer)  # the same epoch key still works for new packets
        send_onion(client, session, fresh)
        assert wait_for(fleet, node, "cover_received", 1) == 1
        after = counters(fleet, node)
        assert after.get("dropped:onion_replay") == 1 and after.get("cover_received") == 1
        assert (node.state_dir / "keys" / "epoch-00000001.replay").exists()
    finally:
        client.close()


def test_a_spent_replay_budget_starts_a_new_epoch(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.create(1, 0)
    node = fleet.relays[0]
    fleet.write_relay_config(
        node, fleet.relays, epoch_seconds=60, grace_seconds=0, replay_packets_per_second=1
    )
    assert ringmesh("keys", "rotate", config=node.config).returncode == 0  # a 60 s epoch 2
    fleet.start(node)
    client = SocketEndpoint()
    try:
        session = connect(client, ("127.0.0.1", node.port))
        status = fleet.status(node)
        assert status is not None
        filters: list[dict[str, int]] = status["replay_filters"]
        assert [(f["epoch"], f["packets"], f["budget"]) for f in filters] == [(2, 0, 60)]
        for _ in range(60):  # the budget: 1 packet/s x (60 s + 0 s)
            send_onion(client, session, cover_packet(session.peer))
        assert wait_for(fleet, node, "cover_received", 60) == 60
        deadline = time.monotonic() + 15
        while int(str(status["epoch"])) == 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            status = fleet.status(node)
            assert status is not None
        assert status["epoch"] == 3  # long before epoch 2's 60 seconds were over
        assert "epoch 2 used its replay budget: rotating early" in fleet.log(node)
    finally:
        client.close()
        fleet.stop_all()
