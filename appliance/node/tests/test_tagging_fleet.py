"""Tagging in a real loopback fleet: the sender's home relay marks every payload it forwards,
the recipient's home relay (colluding) unmarks what arrives, the honest relay between them
peels its LIONESS layer. The marked message never opens, so there is nothing to link."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import RINGMESH, Fleet, Node, ringmesh

TAGGING_RELAY = [sys.executable, str(Path(__file__).with_name("tagging_relay.py"))]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # Three relays: every path is sender's home -> the third relay -> recipient's home.
    f = Fleet(tmp_path_factory.mktemp("tagging"))
    f.create(3, 2)
    try:
        f.start_all()
        yield f
    finally:
        f.stop_all()


def restart(f: Fleet, node: Node, mode: str) -> None:
    f.stop(node)
    node.command = [*TAGGING_RELAY, mode]
    f.start(node)


def exchange(f: Fleet) -> tuple[dict[str, Any], dict[str, Any]]:
    """alice sends to bob while bob receives: (alice's send result, bob's recv result)."""
    alice, bob = f.clients
    f.wait_peers_up(f.relays, 2)
    f.wait_directory(f.relays)
    receiving = subprocess.Popen(
        [*RINGMESH, "recv", "--json", "--wait", "6", "--config", str(bob.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    sent = ringmesh(
        *("send", "--to", bob.did, "--home", f.relays[1].did, "--json"),
        *("--timeout", "4", "--retransmit", "2"),
        config=alice.config,
        stdin=b"tag me if you can",
    )
    out, err = receiving.communicate(timeout=60)
    assert receiving.returncode == 0, err.decode()
    return json.loads(sent.stdout), json.loads(out)


def counter(f: Fleet, node: Node, name: str) -> int:
    status = f.status(node)
    assert status is not None
    return int(status["counters"].get(name, 0))


def test_honest_relays_deliver(fleet: Fleet) -> None:
    sent, received = exchange(fleet)
    assert sent["acked"] is True
    assert [m["body_b64"] for m in received["messages"]] == ["dGFnIG1lIGlmIHlvdSBjYW4="]


@pytest.mark.parametrize("last_hop", ["untag", "honest"], ids=["flipped-back", "left-flipped"])
def test_a_tagged_message_is_rejected(fleet: Fleet, last_hop: str) -> None:
    first, last = fleet.relays[0], fleet.relays[1]  # alice's and bob's home relays
    restart(fleet, first, "tag")
    restart(fleet, last, last_hop)
    sent, received = exchange(fleet)
    assert counter(fleet, first, "tagged") > 0
    if last_hop == "untag":
        assert counter(fleet, last, "untagged") > 0
    assert sent["acked"] is False
    assert received["messages"] == []
    assert received["rejected"] > 0  # the fragments reached bob and did not open
