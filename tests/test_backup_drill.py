"""Disaster-recovery drill on the lab fleet: lose relay2, clone it onto a fresh host, use it.

Real containers, sshd, borg, restic and ringmesh nodes, driven by the playbooks an operator
runs. relay2 backs up twice (a key rotation in between, so the newest archives hold data
of their own); the newest archive is then damaged on its peer; relay2's container and all
its data are destroyed; a fresh host at another address gets playbooks/clone.yml. It must
come back with relay2's did:key from an intact archive (saying which one it skipped and
why), its peers must see it up at the new address, and a message to a user whose home
relay it is must arrive. The report's RTO must be under five minutes.

The drill needs a provisioned lab: it runs `lab/lab down` and `lab/lab up` first and
`lab/lab down` at the end, since the lab no longer matches lab/lab's picture afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE, TARGET = "relay2", "relay2-clone"
TARGET_ADDRESS = "10.77.0.14"
STORE = "/var/lib/ringmesh-backup"


def load_lab() -> ModuleType:
    """lab/lab as a module: its containers, SSH and mesh-client functions, one source of truth."""
    loader = SourceFileLoader("ringmesh_lab", str(REPO / "lab" / "lab"))
    spec = importlib.util.spec_from_loader("ringmesh_lab", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


lab = load_lab()


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=REPO,
        env=lab.tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_callback_env() -> dict[str, str]:
    """The lab's tool environment with Ansible's JSON callback alone on stdout."""
    env = dict(lab.tool_env(), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)  # profile_roles would print into the JSON
    return env


def on(host: str, command: str, timeout: float = 120) -> str:
    """A root command on a lab host, over SSH as the admin."""
    return str(lab.ssh(host, f"sudo sh -c {json.dumps(command)}", timeout=timeout).stdout)


def podman_exec(host: str, command: str) -> str:
    result = subprocess.run(
        ["podman", "exec", lab.container(host), "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.fixture(scope="module")
def fleet() -> Iterator[None]:
    run([str(REPO / "lab" / "lab"), "down"], timeout=600)  # a fresh fleet, as test_lab.py starts
    up = run([str(REPO / "lab" / "lab"), "up"], timeout=45 * 60)
    assert up.returncode == 0, up.stdout[-15000:]
    yield
    run([str(REPO / "lab" / "lab"), "down"], timeout=600)


@pytest.fixture(scope="module")
def drill(fleet: None) -> dict[str, Any]:
    """Back up, damage the newest archive, destroy relay2, clone it; what happened, for the tests."""
    did = str(lab.node_json(SOURCE, "keys show --public")["did"])
    durations = {}
    for rotate in (False, True):
        if rotate:  # new key files, so the second archives hold data the first do not
            on(SOURCE, f"runuser -u ringmesh -- {lab.RINGMESH} keys rotate")
        for unit in ("ringmesh-backup-borg", "ringmesh-backup-restic"):
            began = time.monotonic()
            on(SOURCE, f"systemctl start {unit}.service", timeout=300)
            durations[unit] = time.monotonic() - began
    metrics = on(SOURCE, "cat /var/lib/prometheus/node-exporter/ringmesh_backup.prom")
    print(f"relay2 backups: {', '.join(f'{u} {s:.1f}s' for u, s in durations.items())}")
    for line in metrics.splitlines():
        if line.startswith(("ringmesh_backup_repository_size_bytes", "ringmesh_backup_duration_seconds")):
            print(f"  {line}")

    archives = json.loads(on(SOURCE, "ringmesh-backup archives"))["archives"]
    newest = archives[0]
    damage_newest_archive(newest)

    subprocess.run(["podman", "rm", "--force", "--time", "5", lab.container(SOURCE)], check=True, timeout=120)
    lab.HOSTS[TARGET] = TARGET_ADDRESS
    subprocess.run(["ssh-keygen", "-R", TARGET_ADDRESS, "-f", str(lab.KNOWN_HOSTS)], capture_output=True, check=False)
    lab.ensure_container(TARGET, lab.BASE_IMAGE.format(release="trixie"))

    extra = REPO / ".lab" / "clone-target.yml"
    extra.write_text(f"all:\n  hosts:\n    {TARGET}:\n      ansible_host: {TARGET_ADDRESS}\n")
    clone = subprocess.run(
        [
            *("ansible-playbook", "-i", str(lab.INVENTORY), "-i", str(extra), "playbooks/clone.yml"),
            *("-e", f"source={SOURCE}", "-e", f"target={TARGET}"),
        ],
        cwd=REPO,
        # Ansible's JSON callback: the report is read as data, not scraped from the log.
        env=json_callback_env(),
        capture_output=True,
        text=True,
        timeout=20 * 60,
        check=False,
    )
    (REPO / ".lab" / "clone-run.json").write_text(clone.stdout)
    result = clone_result(clone.stdout)
    print(f"clone.yml: exit {clone.returncode}; result: {json.dumps(result, indent=1)}")

    # From here on the clone answers at the new address with relay2's SSH host keys.
    subprocess.run(["ssh-keygen", "-R", TARGET_ADDRESS, "-f", str(lab.KNOWN_HOSTS)], capture_output=True, check=False)
    lab.HOSTS[SOURCE] = TARGET_ADDRESS
    return {"did": did, "newest": newest, "clone": clone, "result": result}


def clone_result(json_output: str) -> dict[str, Any]:
    """clone.yml's `clone_result` fact, from the JSON callback's output ({} if the run stopped before it)."""
    try:
        plays = json.loads(json_output)["plays"]
    except (ValueError, KeyError):
        return {}
    for play in plays:
        for task in play["tasks"]:
            for outcome in task["hosts"].values():
                if "clone_result" in outcome.get("ansible_facts", {}):
                    return dict(outcome["ansible_facts"]["clone_result"])
    return {}


def failure(drill: dict[str, Any]) -> str:
    """What went wrong in clone.yml: the failed tasks' messages (the full run is in .lab/clone-run.json)."""
    clone = drill["clone"]
    messages = re.findall(r'"msg": "((?:[^"\\]|\\.)*)"', clone.stdout)
    return f"clone.yml exit {clone.returncode}; messages: {messages[-5:]}; stderr: {clone.stderr[-3000:]}"


def damage_newest_archive(newest: dict[str, Any]) -> None:
    """Flip bytes in the newest archive's own data on the peer that holds it."""
    tool, peer = newest["repository"].split("@", 1)
    repo = f"{STORE}/{SOURCE}/{tool}"
    # restic: the newest pack holds the rotated key files; borg: the newest segment, this archive's.
    newest_file = podman_exec(peer, f"ls -t {repo}/data/*/* | head -1").strip()
    podman_exec(
        peer,
        f"python3 -c \"import os; f=open('{newest_file}','r+b'); n=os.path.getsize('{newest_file}'); "
        f'f.seek(n // 2); b=f.read(16); f.seek(n // 2); f.write(bytes(x ^ 0xFF for x in b))"',
    )
    print(f"damaged {newest['repository']} {newest['name']}: 16 bytes flipped in {newest_file}")


def test_clone_succeeds_with_the_lost_relays_did(drill: dict[str, Any]) -> None:
    assert drill["clone"].returncode == 0 and drill["result"], failure(drill)
    assert drill["result"]["did"] == drill["did"]
    assert lab.node_json(SOURCE, "keys show --public")["did"] == drill["did"]


def test_the_damaged_newest_archive_is_skipped_and_the_report_says_so(drill: dict[str, Any]) -> None:
    result, newest = drill["result"], drill["newest"]
    assert result, failure(drill)
    assert (result["repository"], result["archive"]) != (newest["repository"], newest["name"])
    skipped = {(s["repository"], s["archive"]): s["reason"] for s in result["skipped"]}
    reason = skipped.get((newest["repository"], newest["name"]), "")
    assert "verification failed" in reason or "Integrity" in reason or "MAC" in reason, result["skipped"]


def test_rto_is_reported_and_under_five_minutes(drill: dict[str, Any]) -> None:
    result = drill["result"]
    assert result, failure(drill)
    assert float(result["rto_seconds"]) < 300, f"RTO {result['rto_seconds']} s"
    assert 0 < float(result["rpo_seconds"]) < 3600


def test_peers_see_the_clone_up_at_its_new_address(drill: dict[str, Any]) -> None:
    assert drill["result"], failure(drill)
    deadline = time.monotonic() + 60
    while True:
        views = {host: lab.node_json(host, "status") for host in ("relay1", "relay3")}
        entries = {host: [p for p in view["peers"] if p["did"] == drill["did"]] for host, view in views.items()}
        if all(e and e[0]["up"] for e in entries.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    for host, found in entries.items():
        assert found and found[0]["address"] == f"{TARGET_ADDRESS}:{lab.RELAY_PORT}", (host, found)
        assert found[0]["up"], f"{host} does not see the clone up: {found}"
    assert lab.node_json(SOURCE, "status")["peers_up"] >= 2


def test_a_message_to_a_user_whose_home_is_the_clone_arrives(drill: dict[str, Any]) -> None:
    assert drill["result"], failure(drill)
    assert lab.MESH_USERS["bob"] == SOURCE
    lab.mesh_message()  # alice (home relay1) -> bob (home relay2, now the clone); raises if it does not arrive


def test_the_clone_backs_up_into_the_same_repositories(drill: dict[str, Any]) -> None:
    assert drill["result"], failure(drill)
    before = json.loads(on(SOURCE, "ringmesh-backup archives"))["archives"]
    on(SOURCE, "systemctl start ringmesh-backup-borg.service ringmesh-backup-restic.service", timeout=300)
    after = json.loads(on(SOURCE, "ringmesh-backup archives"))["archives"]
    assert len(after) > len(before) >= 3, (before, after)
    assert {a["repository"] for a in after} >= {a["repository"] for a in before}


def test_restore_drill_restores_into_scratch_and_matches_the_live_files(drill: dict[str, Any]) -> None:
    on(
        "relay1",
        "systemctl start ringmesh-backup-borg.service && systemctl start ringmesh-backup-restic.service",
        timeout=300,
    )
    pid = lab.node_json("relay1", "status")["pid"]
    result = run(
        ["ansible-playbook", "-i", str(lab.INVENTORY), "playbooks/restore-drill.yml", "--limit", "relay1"], timeout=600
    )
    assert result.returncode == 0, result.stdout[-5000:]
    assert re.search(r"files: \d+ same as live", result.stdout), result.stdout[-3000:]
    assert "identity did:key:" in result.stdout
    assert lab.node_json("relay1", "status")["pid"] == pid, "the drill must not touch the running node"
    assert on("relay1", "ls -d /tmp/ringmesh-restore-drill.* 2>/dev/null || true").strip() == ""
