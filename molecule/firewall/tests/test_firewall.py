"""Behaviour of the firewall role on a real nftables host, probed over a podman network.

firewall-probe is in the admin and monitoring networks (converge.yml); the podman host
(this process, the gateway of the scenario's bridge) is not.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import testinfra

from harness.verify import assert_check_mode_changes_nothing, assert_rejected

testinfra_hosts = ["podman://firewall-target"]

TARGET = testinfra.get_host("podman://firewall-target")
PROBE = testinfra.get_host("podman://firewall-probe")


def address_of(host: testinfra.host.Host) -> str:
    return str(host.interface("eth0").addresses[0])


TARGET_IP = address_of(TARGET)
PROBE_IP = address_of(PROBE)
# The bridge's gateway is this podman host: traffic from this process comes from there.
OUTSIDER_IP = TARGET.check_output("ip -4 route show default").split()[2]
RELAY_PORT = 7733
METRICS_PORT = 9733
CLOSED_PORT = 8080  # a listener runs behind it, but no rule opens it
RATE_PER_SECOND = 100  # firewall_relay_rate_per_source in molecule.yml
BURST = 50

# Counts UDP datagrams per source address for a while, then writes them as JSON.
UDP_COUNTER = """
import json, socket, sys, time
port, seconds, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
s.bind(("0.0.0.0", port))
s.settimeout(0.2)
counts = {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        _, (addr, _) = s.recvfrom(2048)
    except socket.timeout:
        continue
    counts[addr] = counts.get(addr, 0) + 1
open(out + ".tmp", "w").write(json.dumps(counts))
import os; os.rename(out + ".tmp", out)
"""

# Sends datagrams at about `rate` per second for `seconds`; prints how many were sent.
UDP_SENDER = """
import socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    s.sendto(b"x" * 64, (host, port))
    sent += 1
    time.sleep(max(0.0, start + sent / rate - time.monotonic()))
print(sent)
"""

TCP_CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:
        c.settimeout(3)
        print("open", c.recv(64)[:7].decode(errors="replace"))
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e.errno)
"""


def connect_from_probe(port: int) -> str:
    return str(PROBE.check_output("python3 -c %s %s %s", TCP_CONNECT, TARGET_IP, str(port)))


def connect_from_outsider(port: int) -> str:
    try:
        with socket.create_connection((TARGET_IP, port), timeout=3) as conn:
            conn.settimeout(3)
            return "open " + conn.recv(64)[:7].decode(errors="replace")
    except TimeoutError:
        return "timeout"
    except OSError as err:
        return f"error {err.errno}"


@pytest.fixture(scope="module")
def tcp_listeners(host: testinfra.host.Host) -> Iterator[None]:
    """Answer on the metrics port and on a port the firewall keeps closed."""
    units = []
    for port in (METRICS_PORT, CLOSED_PORT):
        unit = f"probe-listener-{port}"
        host.check_output(
            "systemd-run --unit %s --collect python3 -c %s %s",
            unit,
            f"import socket\ns=socket.create_server(('0.0.0.0',{port}),backlog=16)\n"
            "while True:\n c,_=s.accept(); c.sendall(b'HELLO-LISTENER\\n'); c.close()",
            str(port),
        )
        units.append(unit)
    # Prove the listeners answer locally, so a refused probe below is the firewall's doing.
    for port in (METRICS_PORT, CLOSED_PORT):
        for _ in range(50):
            if "open" in host.check_output("python3 -c %s 127.0.0.1 %s", TCP_CONNECT, str(port)):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"test listener on port {port} did not start")
    yield
    for unit in units:
        host.run("systemctl stop %s", unit)


def count_udp(host: testinfra.host.Host, seconds: float, during: list[threading.Thread]) -> dict[str, int]:
    """Run the UDP counter on the target while the given threads send traffic."""
    out = f"/tmp/udp-count-{uuid.uuid4().hex}.json"
    host.check_output(
        "systemd-run --unit udp-counter-%s --collect python3 -c %s %s %s %s",
        uuid.uuid4().hex[:8],
        UDP_COUNTER,
        str(RELAY_PORT),
        str(seconds),
        out,
    )
    time.sleep(0.5)
    for thread in during:
        thread.start()
    for thread in during:
        thread.join()
    for _ in range(int(seconds * 10) + 50):
        if host.file(out).exists:
            break
        time.sleep(0.1)
    return {k: int(v) for k, v in json.loads(host.file(out).content_string).items()}


def test_nftables_service_enabled(host: testinfra.host.Host) -> None:
    assert host.service("nftables").is_enabled


def test_input_and_forward_policy_drop(host: testinfra.host.Host) -> None:
    ruleset = host.check_output("nft list table inet ringmesh_filter")
    assert "hook input priority filter; policy drop;" in ruleset
    assert "hook forward priority filter; policy drop;" in ruleset
    assert "ip6 saddr 2001:db8:77::/64 tcp dport 22 accept" in ruleset


def test_ssh_reachable_from_admin_network() -> None:
    assert connect_from_probe(22) == "open SSH-2.0"


def test_ssh_unreachable_from_outside_admin_networks() -> None:
    assert connect_from_outsider(22) == "timeout"


def test_metrics_reachable_from_monitoring_network(tcp_listeners: None) -> None:
    assert connect_from_probe(METRICS_PORT) == "open HELLO-L"


def test_metrics_unreachable_from_outside_monitoring_networks(tcp_listeners: None) -> None:
    assert connect_from_outsider(METRICS_PORT) == "timeout"


def test_port_without_rule_is_dropped_even_with_a_listener(tcp_listeners: None) -> None:
    assert connect_from_probe(CLOSED_PORT) == "timeout"
    assert connect_from_outsider(CLOSED_PORT) == "timeout"


def test_relay_port_open_to_every_source(host: testinfra.host.Host) -> None:
    senders = [
        threading.Thread(
            target=PROBE.check_output, args=("python3 -c %s %s %s 20 0.5", UDP_SENDER, TARGET_IP, str(RELAY_PORT))
        ),
        threading.Thread(
            target=subprocess.run, args=(["python3", "-c", UDP_SENDER, TARGET_IP, str(RELAY_PORT), "20", "0.5"],)
        ),
    ]
    counts = count_udp(host, 3, senders)
    assert counts.get(PROBE_IP, 0) >= 9, counts
    assert counts.get(OUTSIDER_IP, 0) >= 9, counts


def test_relay_flood_is_limited_per_source(host: testinfra.host.Host) -> None:
    seconds = 2.0
    flood_sent: list[int] = []

    def flood() -> None:  # ~10x the per-source rate from the probe
        out = PROBE.check_output(
            "python3 -c %s %s %s %s %s", UDP_SENDER, TARGET_IP, str(RELAY_PORT), str(RATE_PER_SECOND * 10), str(seconds)
        )
        flood_sent.append(int(out))

    def polite() -> None:  # another source at half the rate, during the flood
        time.sleep(0.3)
        subprocess.run(
            ["python3", "-c", UDP_SENDER, TARGET_IP, str(RELAY_PORT), str(RATE_PER_SECOND // 2), "1"],
            check=True,
            capture_output=True,
        )

    dropped_before = int(
        host.check_output("nft -j list counter inet ringmesh_filter relay_rate_limited")
        .split('"packets": ')[1]
        .split(",")[0]
    )
    counts = count_udp(host, seconds + 2.5, [threading.Thread(target=flood), threading.Thread(target=polite)])
    dropped_after = int(
        host.check_output("nft -j list counter inet ringmesh_filter relay_rate_limited")
        .split('"packets": ')[1]
        .split(",")[0]
    )

    sent = flood_sent[0]
    received = counts.get(PROBE_IP, 0)
    allowed = BURST + RATE_PER_SECOND * seconds
    assert sent > 3 * allowed, f"the flood was too slow to test anything: sent {sent}"
    assert BURST <= received <= allowed * 1.3, f"flood: sent {sent}, received {received}, allowed about {allowed}"
    assert dropped_after - dropped_before >= sent - received - 5, (dropped_before, dropped_after, sent, received)
    # The other source is under its own limit and loses nothing to the flooder's.
    assert counts.get(OUTSIDER_IP, 0) >= RATE_PER_SECOND // 2 - 2, counts


def test_ruleset_survives_service_restart(host: testinfra.host.Host) -> None:
    host.check_output("nft delete table inet ringmesh_filter")
    host.check_output("systemctl restart nftables")
    assert connect_from_probe(22) == "open SSH-2.0"
    assert connect_from_outsider(22) == "timeout"


def test_check_mode_changes_nothing() -> None:
    assert_check_mode_changes_nothing()


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        ({"firewall_admin_networks": []}, "firewall_allow_ssh_from_anywhere"),
        (
            {"firewall_admin_networks": ["10.0.0.300/32"]},
            "firewall_admin_networks: not an IPv4/IPv6 address or network: 10.0.0.300/32",
        ),
        ({"firewall_monitoring_networks": ["10.0.0.1/24"]}, "firewall_monitoring_networks"),
        ({"firewall_relay_rate_per_source": "lots"}, "firewall_relay_rate_per_source"),
        ({"firewall_relay_port": "seven"}, "firewall_relay_port"),
    ],
)
def test_bad_variables_fail_before_any_change(
    host: testinfra.host.Host, extra_vars: dict[str, object], named: str
) -> None:
    before = host.check_output("nft list ruleset")
    assert_rejected(extra_vars, named)
    assert host.check_output("nft list ruleset") == before
