"""Integration: four real `ringmesh run` processes and two clients on loopback.

The relays reach each other (and the clients reach them) only through recording UDP
forwarders, which see what an eavesdropper on the network would see.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import RINGMESH, Fleet, Node, ringmesh

MARKER = b"RINGMESH-PLAINTEXT-MARKER-"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    f.create(4, 2, proxies=True)
    try:
        f.start_all()
        yield f
    finally:
        f.stop_all()


def start_recv(node: Node, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*RINGMESH, "recv", "--json", "--config", str(node.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish_recv_json(proc: subprocess.Popen[bytes], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


def finish_recv(proc: subprocess.Popen[bytes], timeout: float = 120) -> list[bytes]:
    return [
        base64.b64decode(msg["body_b64"]) for msg in finish_recv_json(proc, timeout)["messages"]
    ]


def send(f: Fleet, body: bytes, timeout: float = 40, *args: str) -> dict[str, Any]:
    sender, recipient = f.clients
    out = ringmesh(
        "send",
        *(args or ("--to", recipient.did, "--home", f.relays[1].did)),
        "--json",
        "--timeout",
        str(timeout),
        config=sender.config,
        stdin=body,
        timeout=timeout + 30,
    )
    assert out.stdout, out.stderr.decode()
    result: dict[str, Any] = json.loads(out.stdout)
    assert (out.returncode == 0) == bool(result["acked"])
    return result


def counters(f: Fleet, node: Node) -> dict[str, int]:
    status = f.status(node)
    assert status is not None
    result: dict[str, int] = status["counters"]
    return result


def test_10kib_message_arrives_intact_and_the_wire_shows_nothing(fleet: Fleet) -> None:
    body = (MARKER * 400)[: 10 * 1024]
    recv = start_recv(fleet.clients[1], "--wait", "60", "--count", "1")
    time.sleep(1.0)
    result = send(fleet, body)
    assert result["acked"] is True
    assert result["bytes"] == len(body)
    # recv published the recipient's prekey bundle; send fetched it through the mixnet.
    assert result["forward_secret"] is True
    assert finish_recv(recv) == [body]
    # The sender used the one directory that every relay serves, signed by the ring.
    assert result["directory"] == fleet.wait_directory(fleet.relays)

    wire = fleet.captured()
    assert len(wire) > 20
    assert {len(d) for d in wire} == {1400}
    assert not any(MARKER[:12] in d for d in wire)
    assert not any(fleet.clients[1].did.encode() in d for d in wire)


def test_malformed_datagrams_are_dropped_counted_and_harmless(fleet: Fleet) -> None:
    relay = fleet.relays[0]
    before = counters(fleet, relay)
    # every link datagram seen so far; those addressed to this relay are replays to it
    replays = [d for d in fleet.captured() if d[0] == 0x05]
    assert replays
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(30):
            s.sendto(os.urandom(1400), ("127.0.0.1", relay.port))
        for size in (0, 1, 700, 1399, 1401, 4000):
            s.sendto(os.urandom(size), ("127.0.0.1", relay.port))
        for kind in (0x01, 0x03, 0x04, 0x05):
            s.sendto(bytes([kind]) + os.urandom(1399), ("127.0.0.1", relay.port))
        for datagram in replays:
            s.sendto(datagram, ("127.0.0.1", relay.port))
    time.sleep(1.0)
    after = counters(fleet, relay)

    def grew(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    assert grew("dropped:bad_size") == 6
    assert grew("dropped:replay") >= 1, {k: grew(k) for k in after}
    assert grew("dropped:unknown_session") + grew("dropped:replay") >= len(replays)
    assert sum(grew(k) for k in after if k.startswith("handshake_failed:")) >= 3
    # and it keeps delivering
    recv = start_recv(fleet.clients[1], "--wait", "60", "--count", "1")
    time.sleep(0.5)
    assert send(fleet, b"still alive")["acked"] is True
    assert finish_recv(recv) == [b"still alive"]
    assert fleet.status(relay) is not None


def test_prometheus_metrics_are_exported(fleet: Fleet) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{fleet.relays[0].metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for name in (
        'ringmesh_packets_total{direction="in"}',
        'ringmesh_packets_dropped_total{reason="bad_size"}',
        "ringmesh_handshakes_ok_total",
        "ringmesh_queue_depth",
        "ringmesh_mailbox_packets",
        "ringmesh_key_epoch_expiry_timestamp_seconds",
    ):
        assert name in text, name


def test_relay_not_pinned_is_refused(fleet: Fleet) -> None:
    intruder = fleet.make_node("intruder")
    fleet.write_relay_config(intruder, [*fleet.relays, intruder])
    before = sum(counters(fleet, r).get("handshake_failed:unpinned", 0) for r in fleet.relays)
    fleet.start(intruder)
    try:
        time.sleep(5.0)
        status = fleet.status(intruder)
        assert status is not None and status["peers_up"] == 0
        after = sum(counters(fleet, r).get("handshake_failed:unpinned", 0) for r in fleet.relays)
        assert after > before
    finally:
        fleet.stop(intruder)


def test_key_rotation_during_traffic_loses_no_message(fleet: Fleet) -> None:
    n = 6
    bodies = [os.urandom(3000 + i) for i in range(n)]
    recv = start_recv(fleet.clients[1], "--wait", "90", "--count", str(n))
    time.sleep(0.5)
    epochs_before = [fleet.status(r)["epoch"] for r in fleet.relays]  # type: ignore[index]
    stop = threading.Event()
    rotations = []

    def rotate_all() -> None:
        while not stop.is_set():
            for relay in fleet.relays:
                out = ringmesh("keys", "rotate", "--json", config=relay.config)
                rotations.append((out.returncode, json.loads(out.stdout or b"{}").get("reloaded")))

    rotator = threading.Thread(target=rotate_all)
    rotator.start()
    try:
        results = [send(fleet, body) for body in bodies]
    finally:
        stop.set()
        rotator.join()
    assert all(r["acked"] for r in results), [(r["acked"], r["attempts"]) for r in results]
    assert sorted(finish_recv(recv)) == sorted(bodies)
    assert rotations and all(rc == 0 and reloaded for rc, reloaded in rotations)
    epochs_after = [fleet.status(r)["epoch"] for r in fleet.relays]  # type: ignore[index]
    assert all(a > b for a, b in zip(epochs_after, epochs_before, strict=True))


def test_sigterm_and_sighup(fleet: Fleet) -> None:
    relay = fleet.relays[3]
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert fleet.status(relay) is not None
    assert "reloaded" in fleet.log(relay)


def test_recv_after_the_fact_gets_held_messages(fleet: Fleet, tmp_path: Path) -> None:
    sender, recipient = fleet.clients
    out = ringmesh(
        "send",
        "--to",
        recipient.did,
        "--home",
        fleet.relays[1].did,
        "--json",
        "--timeout",
        "3",
        config=sender.config,
        stdin=b"held for later",
        timeout=30,
    )
    assert json.loads(out.stdout)["acked"] is False  # nobody was there to acknowledge
    got = ringmesh("recv", config=recipient.config)
    assert got.returncode == 0
    assert b"held for later" in got.stdout


def test_a_reply_through_its_handle_reaches_the_sender(fleet: Fleet) -> None:
    alice, bob = fleet.clients
    recv = start_recv(bob, "--wait", "60", "--count", "1")
    time.sleep(0.5)
    asked = send(fleet, b"who is there?")
    (message,) = finish_recv_json(recv)["messages"]
    assert message["id"] == asked["message_id"] and message["in_reply_to"] is None
    handle = message["reply"]
    # The handle names neither alice nor her home relay.
    assert alice.did not in handle and fleet.relays[0].did not in handle
    answered = ringmesh("send", "--reply", handle, "--json", config=bob.config, stdin=b"bob here")
    assert answered.returncode == 0, answered.stderr.decode()
    assert json.loads(answered.stdout)["sent"] is True
    got: list[dict[str, Any]] = []
    for _ in range(20):  # the reply waits in alice's mailbox until she looks
        got += json.loads(ringmesh("recv", "--json", config=alice.config).stdout)["messages"]
        if got:
            break
        time.sleep(0.5)
    assert [(m["in_reply_to"], base64.b64decode(m["body_b64"])) for m in got] == [
        (asked["message_id"], b"bob here")
    ]
    refused = ringmesh("send", "--reply", "bm90IGEgaGFuZGxl", config=bob.config, stdin=b"x")
    assert refused.returncode == 2 and b"--reply" in refused.stderr


def test_killing_a_relay_on_the_path_still_delivers(fleet: Fleet) -> None:
    victim = fleet.relays[2]  # neither client's home relay
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait()
    recv = start_recv(fleet.clients[1], "--wait", "120", "--count", "100")
    time.sleep(0.5)
    results = []
    try:
        for i in range(6):
            results.append(send(fleet, f"after the crash {i}".encode(), timeout=40))
            if any(int(str(r["attempts"])) > 1 for r in results):
                break
    finally:
        time.sleep(0.5)
        recv.send_signal(signal.SIGTERM)
    received = finish_recv(recv)
    assert all(r["acked"] for r in results), [(r["acked"], r["attempts"]) for r in results]
    # At least one send lost its first path through the dead relay and was retransmitted.
    assert any(int(str(r["attempts"])) > 1 for r in results), results
    assert sorted(set(received)) == sorted(
        f"after the crash {i}".encode() for i in range(len(results))
    )
