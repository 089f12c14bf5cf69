"""The disaster-recovery drill on a lab fleet, for tests/test_fleet.py: lose a relay, clone it.

The relay backs up twice with both tools (a key rotation in between, so the newest archives
hold data of their own), the newest archive is damaged on the peer that holds it, the relay's
container and all its data are destroyed, and a fresh host at another address of the lab
network gets playbooks/clone.yml. What the tests then check: the clone came back with the lost
relay's did:key from an intact archive, said which archive it skipped and why, its peers see
it up at the new address, a message to a user whose home relay it is arrives
(playbooks/smoke.yml), and the RTO is under five minutes.
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra

from harness.ansible import REPO, PlaybookRun, run_playbook
from harness.backup import damage_newest
from harness.lab import PLAYBOOKS, Lab, run

BACKUP_UNITS = ("ringmesh-backup-borg", "ringmesh-backup-restic")
CLONE_HOST_NUMBER = 14  # on the lab subnet: after the relays (.11-.13), before the users (.21-)


@dataclass
class DrillResult:
    source: str
    target: str
    container: str  # the clone's
    address: str  # the clone's
    did: str  # the lost relay's, read before it was lost
    newest: dict[str, Any]  # the archive that was damaged
    backup_seconds: dict[str, float]
    metrics: list[str]  # the lost relay's size and duration metrics before it was lost
    clone: PlaybookRun
    result: dict[str, Any]  # clone.yml's clone_result ({} if it stopped before)
    inventory: Path  # the lab's inventory after the clone: the source at the clone's address

    def explain(self) -> str:
        return self.clone.explain()


def podman_host(container: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{container}")


def clone_result(run: PlaybookRun) -> dict[str, Any]:
    """clone.yml's `clone_result` fact, from the run's events."""
    for outcome in run.results():
        facts = outcome.result.get("ansible_facts", {})
        if "clone_result" in facts:
            return dict(facts["clone_result"])
    return {}


def write_inventory(path: Path, hosts: dict[str, dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"all": {"hosts": hosts}}, indent=2) + "\n")
    return path


def run_drill(lab: Lab, source: str) -> DrillResult:
    relay = podman_host(lab.container(source))
    did = str(json.loads(relay.check_output("ringmesh keys show --public --json"))["did"])
    seconds: dict[str, float] = {}
    for rotate in (False, True):
        if rotate:  # new key files, so the second archives hold data the first do not
            relay.check_output("ringmesh keys rotate")
        for unit in BACKUP_UNITS:
            began = time.monotonic()
            started = relay.run(f"systemctl start {unit}.service")
            assert started.rc == 0, relay.run(f"journalctl -u {unit} -n 30 --no-pager").stdout
            seconds[unit] = time.monotonic() - began
    metrics = [
        line
        for line in relay.check_output("cat /var/lib/prometheus/node-exporter/ringmesh_backup.prom").splitlines()
        if line.startswith(("ringmesh_backup_repository_size_bytes", "ringmesh_backup_duration_seconds"))
    ]
    newest = json.loads(relay.check_output("ringmesh-backup archives"))["archives"][0]
    peer = newest["repository"].split("@", 1)[1]
    damaged = damage_newest(podman_host(lab.container(peer)), source, newest)
    print(f"damaged {newest['repository']} {newest['name']}: 16 bytes flipped in {damaged}")

    lab.remove_host(source)
    hostvars = lab.hostvars()[source]
    subnet = ipaddress.ip_network(hostvars["lab_subnet"])
    address = str(subnet.network_address + CLONE_HOST_NUMBER)
    target = f"{source}-clone"
    lab_vars = {k: v for k, v in hostvars.items() if k.startswith("lab_")}
    extra = write_inventory(lab.state / "clone-target.yml", {target: {**lab_vars, "ansible_host": address}})
    inventories = [*lab.inventories, extra]
    made = run_playbook(REPO / "lab" / "containers.yml", inventories, limit=target, timeout=600)
    assert made.ok, made.explain()
    clone = run_playbook(
        PLAYBOOKS / "clone.yml",
        inventories,
        extra_vars={"source": source, "target": target},
        log=lab.state / "clone.jsonl",
        timeout=20 * 60,
    )
    result = clone_result(clone)
    print(f"clone.yml: exit {clone.returncode} after {clone.seconds:.0f}s; result: {json.dumps(result, indent=1)}")
    # What clone.yml's report tells the operator to do next: the source at the clone's address,
    # whose known_hosts entry (the fresh host's keys) must go: it presents the source's now.
    after = write_inventory(lab.state / "after-clone.yml", {source: {**lab_vars, "ansible_host": address}})
    run(["ssh-keygen", "-R", address, "-f", str(lab.state / "known_hosts")], check=False)
    container = f"{lab_vars['lab_container_prefix']}{target}"
    return DrillResult(source, target, container, address, did, newest, seconds, metrics, clone, result, after)
