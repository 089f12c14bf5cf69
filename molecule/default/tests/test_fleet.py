"""The fleet after playbooks/site.yml: relays under supervisor, peered, rotating, firewalled."""

import json
import time
from typing import Any

import pytest
import testinfra

RELAYS = ["fleet-relay1", "fleet-relay2", "fleet-relay3"]
RINGMESH = "/opt/ringmesh/venv/bin/ringmesh --config /etc/ringmesh/node.toml"


def _relay(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{name}")


def _json(host: testinfra.host.Host, args: str) -> Any:
    return json.loads(host.check_output(f"runuser -u ringmesh -- {RINGMESH} {args}"))


def _address(host: testinfra.host.Host) -> str:
    return str(host.check_output("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1"))


def _connects(client: testinfra.host.Host, address: str, port: int) -> bool:
    probe = client.run(
        "python3 -c \"import socket,sys; s=socket.socket(); s.settimeout(3); "
        f"sys.exit(s.connect_ex(('{address}', {port})))\""
    )
    return bool(probe.rc == 0)


@pytest.mark.parametrize("name", RELAYS)
def test_node_runs_under_supervisor_as_ringmesh(name: str) -> None:
    host = _relay(name)
    node = host.process.get(pid=int(host.check_output("supervisorctl pid ringmesh")))
    assert node.user == "ringmesh"
    assert host.process.get(pid=node.ppid).comm == "supervisord"


@pytest.mark.parametrize("name", RELAYS)
def test_each_node_sees_the_other_two_peers_up(name: str) -> None:
    host = _relay(name)
    others = {_json(_relay(other), "keys show --public --json")["did"] for other in RELAYS if other != name}
    deadline = time.monotonic() + 60
    while True:
        status = _json(host, "status --json")
        up = {peer["did"] for peer in status["peers"] if peer["up"]}
        if others <= up or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert others <= up, f"peers up on {name}: {status['peers']}"
    assert status["peers_up"] >= 2


def test_rotation_timer_service_rotates_without_restart() -> None:
    host = _relay("fleet-relay3")  # Debian 12
    pid = host.check_output("supervisorctl pid ringmesh")
    epoch = _json(host, "keys show --public --json")["epoch"]
    host.run_expect([0], "systemctl start ringmesh-rotate-keys.service")
    assert _json(host, "keys show --public --json")["epoch"] == epoch + 1
    assert _json(host, "status --json")["epoch"] == epoch + 1
    assert host.check_output("supervisorctl pid ringmesh") == pid


def test_peers_stay_up_after_a_rotation() -> None:
    test_each_node_sees_the_other_two_peers_up("fleet-relay1")


def test_firewall_admits_admin_ssh_and_drops_metrics_from_a_peer() -> None:
    target = _relay("fleet-relay1")
    peer = _relay("fleet-relay2")
    address = _address(target)
    assert target.socket("tcp://0.0.0.0:9733").is_listening
    assert _connects(peer, address, 22), "SSH from the admin network must be open"
    assert not _connects(peer, address, 9733), "metrics must be closed outside the monitoring networks"
    assert not _connects(peer, address, 8080), "an unlisted port must be closed"
