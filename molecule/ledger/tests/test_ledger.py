"""Behaviour of a converged 3-relay first ring: etcd over mutual TLS, a confidential transfer
committed and vouched for by every node, the API closed to non-fleet sources."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import testinfra

HOSTS = ("ledger-a", "ledger-b", "ledger-c")
TLS = "/etc/ringmesh-ledger/tls"
ISSUER_WALLET = "/var/lib/ringmesh-ledger-issuer"


def relay(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{name}")


def address(name: str) -> str:
    return str(relay(name).check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'"))


def ledger(host: testinfra.host.Host, *args: str) -> Any:
    """`ringmesh-ledger --json ARGS` as root on the host (wallet commands act for root)."""
    return json.loads(host.check_output(" ".join(["ringmesh-ledger", "--json", *args])))


def etcdctl(host: testinfra.host.Host, *args: str, cert: str = "etcd") -> testinfra.backend.base.CommandResult:
    endpoints = ",".join(f"https://{address(h)}:2379" for h in HOSTS)
    credentials = f"--cacert {TLS}/ca.pem --cert {TLS}/{cert}.pem --key {TLS}/{cert}-key.pem" if cert else ""
    return host.run(f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} {credentials} {' '.join(args)}")


def test_etcd_cluster_is_healthy_over_tls(host: testinfra.host.Host) -> None:
    health = etcdctl(host, "endpoint", "health", "-w", "json")
    assert health.rc == 0, health.stderr
    answers = json.loads(health.stdout)
    assert len(answers) == 3 and all(a["health"] for a in answers), answers
    members = json.loads(etcdctl(host, "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(HOSTS)
    assert all(url.startswith("https://") for m in members for url in m["peerURLs"])


def test_etcd_refuses_a_client_without_a_fleet_certificate(host: testinfra.host.Host) -> None:
    result = etcdctl(host, "--dial-timeout=3s", "--command-timeout=5s", "get", "/", "--prefix", cert="")
    assert result.rc != 0


def test_ledger_runs_under_supervisor_as_its_own_user(host: testinfra.host.Host) -> None:
    pid = int(host.check_output("supervisorctl pid ringmesh-ledger"))
    process = host.process.get(pid=pid)
    assert process.user == "ringmesh-ledger"
    assert host.user("ringmesh-ledger").shell == "/usr/sbin/nologin"
    assert host.file(f"{TLS}/ledger-key.pem").user == "ringmesh-ledger"
    assert host.file(f"{TLS}/ledger-key.pem").mode == 0o600
    assert host.run("runuser -u nobody -- cat /etc/ringmesh-ledger/ledger.toml").rc != 0


def _balance(host: testinfra.host.Host, wallet: str, expected: int) -> int:
    """The wallet's balance once a majority of the first ring vouches for it (nodes settle)."""
    deadline, balance = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        result = host.run(f"ringmesh-ledger --json --wallet {wallet} balance")
        if result.rc == 0:
            balance = json.loads(result.stdout)["balance"]
            if balance == expected:
                break
        time.sleep(1)
    return int(balance) if balance is not None else -1


def test_confidential_transfer_commits_and_every_node_signs_the_same_digest(host: testinfra.host.Host) -> None:
    alice = ledger(host, "--wallet", "/var/lib/ringmesh-ledger-alice", "keys", "init")["did"]
    bob = ledger(host, "--wallet", "/var/lib/ringmesh-ledger-bob", "keys", "init")["did"]
    issued = ledger(host, "--wallet", ISSUER_WALLET, "issue", "--to", alice, "--amount", "100")
    assert issued["applied"], issued
    assert _balance(host, "/var/lib/ringmesh-ledger-alice", 100) == 100
    sent = ledger(host, "--wallet", "/var/lib/ringmesh-ledger-alice", "transfer", "--to", bob, "--amount", "30")
    assert sent["applied"], sent
    assert _balance(host, "/var/lib/ringmesh-ledger-bob", 30) == 30
    assert _balance(host, "/var/lib/ringmesh-ledger-alice", 70) == 70

    deadline = time.monotonic() + 60
    while True:
        statuses = [ledger(relay(name), "status") for name in HOSTS]
        if len({(s["height"], s["digest"]) for s in statuses}) == 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len({(s["height"], s["digest"]) for s in statuses}) == 1, statuses
    assert len({s["did"] for s in statuses}) == 3
    # Values stay hidden: the ledger knows only the public issuance.
    assert statuses[0]["issued"] == 100


@pytest.mark.parametrize("port", [8740, 2379, 2380])
def test_ledger_ports_are_closed_to_non_fleet_sources(port: int) -> None:
    # The verifier runs on the podman host, the network's gateway: not a fleet member.
    with pytest.raises(OSError):
        socket.create_connection((address("ledger-a"), port), timeout=3).close()


def test_ledger_api_is_open_to_another_relay() -> None:
    probe = relay("ledger-b").run(
        f"python3 -c \"import socket; socket.create_connection(('{address('ledger-a')}', 8740), 3)\""
    )
    assert probe.rc == 0, probe.stderr


def test_backup_command_writes_consistent_copies_for_the_backup_role(host: testinfra.host.Host) -> None:
    written = host.run("/usr/local/sbin/ringmesh-ledger-backup")
    assert written.rc == 0, written.stderr
    out = "/var/backups/ringmesh-ledger"
    assert written.stdout.split() == [f"{out}/etcd.snapshot", f"{out}/ledger.db", f"{out}/ledger.key"]
    assert host.file(out).mode == 0o700
    status = host.run(f"ETCDCTL_API=3 etcdctl snapshot status {out}/etcd.snapshot --write-out=json")
    assert status.rc == 0 and json.loads(status.stdout)["totalKey"] > 0, status.stderr
    integrity = host.run(
        "/opt/ringmesh-ledger/venv/bin/python -c \"import sqlite3, sys; "
        f"print(sqlite3.connect('{out}/ledger.db').execute('PRAGMA integrity_check').fetchone()[0])\""
    )
    assert integrity.stdout.strip() == "ok", integrity.stderr
    assert host.file(f"{out}/ledger.key").sha256sum == host.file("/var/lib/ringmesh-ledger/ledger.key").sha256sum
