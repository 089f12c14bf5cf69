"""The lab fleet end to end, from bare Debian hosts: what `make lab` does, and what an operator
can rely on from site.yml on a fresh fleet.

One fleet serves every test here: the lab's (inventories/lab: relays on Debian 13, 13 and 12,
mesh users' hosts on 13 and 12) as the lab instance "test", so a `make lab` fleet stays
untouched. In file order:
  fresh hosts   a bad variable of the last role stops site.yml before any host changes;
                site.yml --check --diff completes and shows what it would change;
  lab/lab up    site.yml converges, the smoke messages between the mesh users arrive
                acknowledged (playbooks/smoke.yml), every relay sees its two peers;
  converged     nodes, rotation timer, firewall and the mesh client behave; a second
                `lab/lab up` changes nothing; a check run changes nothing; rotate-keys.yml;
  DR drill      restore-drill.yml on relay1; relay2 backs up, its newest archive is damaged,
                its host is destroyed and clone.yml brings it back on a fresh host
                (tests/backup_drill.py): same did:key, peers up, user2's messages arrive;
  lab/lab down  leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import testinfra
from backup_drill import DrillResult, podman_host, run_drill

from harness.ansible import PlaybookRun, run_playbook
from harness.lab import PLAYBOOKS, Lab
from harness.process import ToolRun, run_tool
from harness.verify import assert_rotation_bumps_the_running_epoch, node_pid, ringmesh

LAB = Lab(instance="test")
RELAYS = LAB.groups()["relays"]
USERS = LAB.groups()["mesh_users"]
SITE = PLAYBOOKS / "site.yml"


@dataclass
class LabRun(ToolRun):
    summary: dict[str, Any]


def lab_cli(*args: str, timeout: float) -> LabRun:
    run = run_tool("lab/lab", *args, timeout=timeout, env={"RINGMESH_LAB_INSTANCE": LAB.instance})
    summary_file = LAB.state / "last-up.json"
    summary = json.loads(summary_file.read_text()) if args[0] == "up" and summary_file.exists() else {}
    return LabRun(run.command, run.returncode, run.output, run.seconds, summary)


def host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{LAB.container(name)}")


def state_digest(name: str) -> str:
    """What a run must not touch: /etc, the installed packages, the users."""
    listing = host(name).check_output(
        "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum; dpkg-query -W; getent passwd"
    )
    return hashlib.sha256(listing.encode()).hexdigest()


@pytest.fixture(scope="module")
def fresh() -> Iterator[None]:
    LAB.destroy()  # a fleet left up by hand would not be fresh
    made = lab_cli("up", "--no-provision", timeout=1200)
    assert made.returncode == 0, made.explain()
    yield
    LAB.destroy()  # also when a test failed; test_down_removes_everything checks it on the happy path


@pytest.fixture(scope="module")
def first_up(fresh: None) -> LabRun:
    run = lab_cli("up", timeout=40 * 60)
    print(f"first lab up: {run.seconds:.0f}s")
    return run


@pytest.fixture(scope="module")
def converged(first_up: LabRun) -> None:
    assert first_up.returncode == 0, first_up.explain()


def test_bad_variable_of_the_last_role_stops_the_run_before_any_change(fresh: None) -> None:
    before = {name: state_digest(name) for name in RELAYS + USERS}
    run = LAB.playbook(SITE, extra_vars={"node_port": 70000}, timeout=600)
    assert not run.ok, run.explain()
    assert {r.host for r in run.failed()} == set(RELAYS), run.explain()
    assert all("node_port" in r.message for r in run.failed()), run.explain()
    assert run.total("changed") == 0, run.explain()
    assert {name: state_digest(name) for name in RELAYS + USERS} == before


def test_check_mode_on_fresh_hosts_shows_the_changes_and_makes_none(fresh: None) -> None:
    before = {name: state_digest(name) for name in RELAYS + USERS}
    run = LAB.playbook(SITE, check=True, diff=True, log_name="site-check-fresh", timeout=1200)
    assert run.ok and run.total("failures") == 0, run.explain()
    for name in RELAYS + USERS:
        assert run.stats[name]["changed"] > 10, f"{name}: a fresh host needs changes\n{run.explain()}"
    diffs = [r for r in run.changed() if r.result.get("diff")]
    assert {r.host for r in diffs} == set(RELAYS + USERS), run.explain()
    assert {name: state_digest(name) for name in RELAYS + USERS} == before


def test_first_up_converges_and_delivers_the_smoke_messages(first_up: LabRun) -> None:
    assert first_up.returncode == 0, first_up.explain()
    stats = first_up.summary["site"]["stats"]
    assert set(stats) == set(RELAYS + USERS), first_up.explain()
    assert all(s["failures"] == 0 and s["unreachable"] == 0 for s in stats.values()), first_up.explain()
    smoke = first_up.summary["smoke"]
    assert set(smoke) == set(USERS), first_up.explain()
    assert all(row["acked"] and row["received"] for row in smoke.values()), smoke


def test_first_up_ends_with_a_confidential_ledger_transfer(first_up: LabRun) -> None:
    transfer = first_up.summary["ledger_smoke"]
    assert int(transfer["received"]) == int(transfer["amount"]) > 0, transfer
    assert transfer["digests_agree"] in (True, "True"), transfer


def test_fleet_table_shows_every_relay_with_its_peers_up(first_up: LabRun) -> None:
    relays = first_up.summary["relays"]
    assert set(relays) == set(RELAYS), first_up.explain()
    assert len({status["did"] for status in relays.values()}) == len(RELAYS)
    for name, status in relays.items():
        assert status["peers_up"] == len(RELAYS) - 1, f"{name}: {status['peers']}"
    assert "FLEET" in first_up.output and all(name in first_up.output for name in RELAYS)


@pytest.mark.parametrize("name", RELAYS)
def test_node_runs_under_supervisor_as_ringmesh(converged: None, name: str) -> None:
    relay = host(name)
    node = relay.process.get(pid=node_pid(relay))
    assert node.user == "ringmesh"
    assert relay.process.get(pid=node.ppid).comm == "supervisord"


def peers_up(name: str) -> set[str]:
    return {peer["did"] for peer in ringmesh(host(name), "status")["peers"] if peer["up"]}


def wait_for_peers(name: str, deadline_s: float = 60) -> None:
    others = {ringmesh(host(other), "keys", "show", "--public")["did"] for other in RELAYS if other != name}
    deadline = time.monotonic() + deadline_s
    while not others <= peers_up(name) and time.monotonic() < deadline:
        time.sleep(2)
    assert others <= peers_up(name), f"peers up on {name}: {ringmesh(host(name), 'status')['peers']}"


def test_rotation_timer_service_rotates_without_restart(converged: None) -> None:
    assert_rotation_bumps_the_running_epoch(host(RELAYS[-1]))  # Debian 12
    for name in RELAYS:
        wait_for_peers(name)


def connects(source: testinfra.host.Host, address: str, port: int) -> bool:
    probe = source.run(
        'python3 -c "import socket,sys; s=socket.socket(); s.settimeout(3); '
        f"sys.exit(s.connect_ex(('{address}', {port})))\""
    )
    return bool(probe.rc == 0)


def test_firewall_admits_the_admin_network_only(converged: None) -> None:
    target = LAB.hostvars()[RELAYS[0]]["ansible_host"]
    peer = host(RELAYS[1])
    assert host(RELAYS[0]).socket("tcp://0.0.0.0:9733").is_listening
    assert LAB.ssh(RELAYS[0], "true").returncode == 0, "SSH from the admin network must be open"
    # Fleet members reach sshd for the backup account only (roles/backup's Match rules).
    assert connects(peer, target, 22), "SSH from a fleet member must reach sshd (backups)"
    assert not connects(host(USERS[0]), target, 22), "SSH from a mesh user's host must be dropped"
    assert not connects(peer, target, 9733), "metrics must be closed outside the monitoring networks"
    assert not connects(peer, target, 8080), "an unlisted port must be closed"


@pytest.mark.parametrize("name", USERS)
def test_mesh_user_host_has_the_client_and_no_daemon(converged: None, name: str) -> None:
    user = host(name)
    assert ringmesh(user, "keys", "show", "--public")["did"].startswith("did:key:z6Mk")
    assert 'role = "client"' in user.file("/etc/ringmesh/node.toml").content_string
    assert not user.exists("supervisorctl")


def test_second_up_changes_nothing(converged: None) -> None:
    run = lab_cli("up", timeout=20 * 60)
    assert run.returncode == 0, run.explain()
    changed = {name: s["changed"] for name, s in run.summary["site"]["stats"].items() if s["changed"]}
    assert not changed, f"second run changed {changed}: {run.summary['site']['changed_tasks']}"
    assert all(row["acked"] and row["received"] for row in run.summary["smoke"].values()), run.explain()


def test_check_mode_on_the_converged_fleet_changes_nothing(converged: None) -> None:
    run: PlaybookRun = LAB.playbook(SITE, check=True, diff=True, log_name="site-check-converged", timeout=1200)
    assert run.ok, run.explain()
    assert run.total("changed") == 0, run.explain()


def test_rotate_keys_playbook_bumps_every_epoch(converged: None) -> None:
    before = {name: ringmesh(host(name), "status")["epoch"] for name in RELAYS}
    run = LAB.playbook(PLAYBOOKS / "rotate-keys.yml", log_name="rotate-keys", timeout=600)
    assert run.ok, run.explain()
    assert {name: ringmesh(host(name), "status")["epoch"] for name in RELAYS} == {
        name: epoch + 1 for name, epoch in before.items()
    }


def test_status_reads_every_relay(converged: None) -> None:
    status = lab_cli("status", timeout=300)
    assert status.returncode == 0, status.explain()
    assert all(name in status.output for name in RELAYS), status.explain()


def test_restore_drill_restores_into_scratch_and_matches_the_live_files(converged: None) -> None:
    relay = host(RELAYS[0])
    relay.run_expect([0], "systemctl start ringmesh-backup-borg.service ringmesh-backup-restic.service")
    pid = node_pid(relay)
    run = LAB.playbook(PLAYBOOKS / "restore-drill.yml", limit=RELAYS[0], log_name="restore-drill", timeout=600)
    assert run.ok, run.explain()
    report = json.dumps([r.result for r in run.results()])
    assert "same as live" in report and "identity did:key:" in report, report
    # The ledger's backup hook ran first: its consistent copies came back from the archive.
    for copy in ("etcd.snapshot", "ledger.db", "ledger.key"):
        assert f"/var/backups/ringmesh-ledger/{copy}" in report, f"{copy}: not in relay1's restored archive"
    assert node_pid(relay) == pid, "the drill must not touch the running node"
    assert relay.run("ls -d /var/lib/ringmesh-restore-drill.*").rc != 0, "the scratch directory must be gone"


# The disaster-recovery drill: relay2 is user2's home relay (inventories/lab).
DRILL_SOURCE = "relay2"


@pytest.fixture(scope="module")
def drill(converged: None) -> DrillResult:
    return run_drill(LAB, DRILL_SOURCE)


def test_clone_comes_back_with_the_lost_relays_did(drill: DrillResult) -> None:
    assert drill.clone.ok and drill.result, drill.explain()
    assert drill.result["did"] == drill.did
    assert ringmesh(podman_host(drill.container), "keys", "show", "--public")["did"] == drill.did


def test_clone_skips_the_damaged_newest_archive_and_says_so(drill: DrillResult) -> None:
    assert drill.result, drill.explain()
    newest = (drill.newest["repository"], drill.newest["name"])
    assert (drill.result["repository"], drill.result["archive"]) != newest
    skipped = {(s["repository"], s["archive"]): s["reason"] for s in drill.result["skipped"]}
    reason = skipped.get(newest, "")
    assert "verification failed" in reason or "Integrity" in reason or "MAC" in reason, drill.result["skipped"]


def test_clone_reports_rpo_and_an_rto_under_five_minutes(drill: DrillResult) -> None:
    assert drill.result, drill.explain()
    print(f"backups of {drill.source}: {drill.backup_seconds}; " + "; ".join(drill.metrics))
    print(f"RTO {drill.result['rto_seconds']} s, RPO {drill.result['rpo_seconds']} s")
    assert float(drill.result["rto_seconds"]) < 300, f"RTO {drill.result['rto_seconds']} s"
    assert 0 < float(drill.result["rpo_seconds"]) < 3600


def test_peers_see_the_clone_up_at_its_new_address(drill: DrillResult) -> None:
    assert drill.result, drill.explain()
    live = [name for name in RELAYS if name != drill.source]
    port = LAB.hostvars()[live[0]].get("node_port", 7733)
    deadline = time.monotonic() + 60
    while True:
        entries = {name: [p for p in ringmesh(host(name), "status")["peers"] if p["did"] == drill.did] for name in live}
        if all(e and e[0]["up"] for e in entries.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    for name, found in entries.items():
        assert found and found[0]["address"] == f"{drill.address}:{port}", (name, found)
        assert found[0]["up"], f"{name} does not see the clone up: {found}"


def test_a_message_to_a_user_whose_home_is_the_clone_arrives(drill: DrillResult) -> None:
    assert drill.result, drill.explain()
    homes = {name: LAB.hostvars()[name]["node_client_home"] for name in USERS}
    assert drill.source in homes.values()
    # The inventory as clone.yml's report says to update it: relay2 at the clone's address.
    smoke = run_playbook(PLAYBOOKS / "smoke.yml", [*LAB.inventories, drill.inventory], timeout=600)
    assert smoke.ok, smoke.explain()
    rows = smoke.custom_stats["smoke"]
    assert all(rows[name]["acked"] and rows[name]["received"] for name in USERS), rows


def test_down_removes_everything(converged: None) -> None:
    down = lab_cli("down", timeout=300)
    assert down.returncode == 0, down.explain()
    label = LAB.hostvars()[RELAYS[0]]["lab_label"]
    names = subprocess.run(
        ["podman", "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert names == []
    networks = json.loads(
        subprocess.run(
            ["podman", "network", "ls", "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert LAB.hostvars()[RELAYS[0]]["lab_network"] not in [n["name"] for n in networks]
    assert not LAB.state.exists()
