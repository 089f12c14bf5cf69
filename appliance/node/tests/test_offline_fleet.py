"""Integration: a relay whose identity key stays offline, among real `ringmesh run` processes
on loopback. Its signing key is certified with `keys certify` (the operator's machine) and
installed with `keys install-cert`."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet import RINGMESH, Fleet, ringmesh
from ringmesh.certificate import CERTIFICATE_LEN
from test_fleet import finish_recv, send, start_recv

OFFLINE = 1  # relay2, the recipient's home relay: every message to it passes through it


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("offline"))
    f.create(3, 2, offline=(OFFLINE,))
    try:
        f.start_all()
        yield f
    finally:
        f.stop_all()


def test_a_relay_with_an_offline_identity_peers_and_carries_traffic(fleet: Fleet) -> None:
    relay = fleet.relays[OFFLINE]
    status = fleet.status(relay)
    assert status is not None and status["identity_offline"] is True
    expires = status["certificate_expires_timestamp"]
    assert 29 * 86400 < expires - time.time() <= 30 * 86400
    assert status["peers_up"] == 2
    # The ring's directory lists all three, the offline one's vote made by its signing key.
    fleet.wait_directory(fleet.relays)
    assert all(s and s["directory"]["served_relays"] == 3 for s in map(fleet.status, fleet.relays))
    # The identity key never reached the relay: its seed is in no file of the state directory.
    seed = bytes.fromhex(fleet.identity_file(relay.name).read_text())
    assert not any(seed in p.read_bytes() for p in relay.state_dir.rglob("*") if p.is_file())

    body = b"through a relay whose identity key is offline"
    recv = start_recv(fleet.clients[1], "--wait", "60", "--count", "1")
    time.sleep(1.0)
    result = send(fleet, body)
    assert result["acked"] is True
    assert finish_recv(recv) == [body]

    url = f"http://127.0.0.1:{relay.metrics_port}/metrics"
    metrics = urllib.request.urlopen(url, timeout=5).read().decode()
    name = "ringmesh_signing_certificate_expiry_timestamp_seconds "
    values = [float(line[len(name) :]) for line in metrics.splitlines() if line.startswith(name)]
    assert values == [expires]


def test_renewal_moves_the_expiry_and_the_ring_follows(fleet: Fleet) -> None:
    relay = fleet.relays[OFFLINE]
    before = fleet.status(relay)
    assert before is not None
    installed = fleet.certify(relay, fleet.identity_file(relay.name), "60d")
    assert installed["reloaded"] is True
    after = fleet.status(relay)
    assert after is not None
    assert after["certificate_expires_timestamp"] > before["certificate_expires_timestamp"]
    assert after["signing_key_fingerprint"] != before["signing_key_fingerprint"]
    # Peers learn the new descriptor and the ring signs one directory again, with the
    # offline relay's vote now made by its new signing key.
    fleet.wait_directory(fleet.relays)
    assert all(s and s["directory"]["served_relays"] == 3 for s in map(fleet.status, fleet.relays))
    assert all(
        (s := fleet.status(r)) is not None
        and s["counters"].get("certificate_refused:expired", 0) == 0
        for r in fleet.relays
    )


def test_a_relay_stops_when_its_certificate_expires_and_then_refuses_to_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    f = Fleet(tmp_path_factory.mktemp("expiring"))
    relay = f.make_node("relay1", offline_identity=f.identity_file("relay1"), lifetime="4s")
    f.relays = [relay]
    f.write_relay_config(relay, [relay])
    f.start(relay)
    try:
        assert relay.proc is not None
        assert relay.proc.wait(30) == 1  # expired while running: it stops itself
    finally:
        f.stop(relay)
    assert "the signing certificate expired at" in f.log(relay)
    again = subprocess.run(
        [*RINGMESH, "run", "--config", str(relay.config)], capture_output=True, timeout=30
    )
    assert again.returncode == 2
    assert b"the signing certificate expired at" in again.stderr
    # A renewed certificate brings it back.
    f.certify(relay, f.identity_file("relay1"))
    f.start(relay)
    try:
        deadline = time.monotonic() + 20
        while f.status(relay) is None and time.monotonic() < deadline:
            time.sleep(0.3)
        status = f.status(relay)
        assert status is not None and status["identity_offline"] is True
    finally:
        f.stop(relay)
    shown = json.loads(ringmesh("keys", "show", "--public", "--json", config=relay.config).stdout)
    assert shown["identity_offline"] is True and shown["did"] == relay.did


def test_certify_takes_the_identity_on_stdin_and_names_bad_input(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    identity = f.identity_file("relay1")
    relay = f.make_node("relay1", offline_identity=identity)
    request = ringmesh("keys", "signing-request", config=relay.config).stdout.decode()
    seed = identity.read_bytes()

    def certify(*args: str, stdin: bytes = seed) -> subprocess.CompletedProcess[bytes]:
        return ringmesh(
            "keys", "certify", "--identity-key", "-", *args, config=relay.config, stdin=stdin
        )

    good = certify("--request", request, "--lifetime", "2d", "--json")
    assert good.returncode == 0, good.stderr
    assert len(bytes.fromhex(json.loads(good.stdout)["certificate"])) == CERTIFICATE_LEN
    for args, stdin, named in (
        (("--request", request, "--lifetime", "soon"), seed, b"lifetime 'soon'"),
        (("--request", "{}"), seed, b"--request: not a signing request"),
        (("--request", request), b"not hex", b"--identity-key"),
        (
            ("--request", request),
            Ed25519PrivateKey.generate().private_bytes_raw().hex().encode(),
            b"the identity key is did:key:",
        ),
        (("--request", "-"), seed, b"cannot both read stdin"),
    ):
        out = certify(*args, stdin=stdin)
        assert out.returncode == 2 and named in out.stderr, out.stderr
