"""The rotation timer rotates the running node's keys without restarting it, as the node's
user taken from the node role (the scenario sets node_user: mesh)."""

import os
import time
from pathlib import Path

import testinfra

from harness.ansible import REPO, run_playbook
from harness.verify import (
    assert_check_mode_changes_nothing,
    assert_rejected,
    assert_rotation_bumps_the_running_epoch,
    node_pid,
    ringmesh,
)


def test_timer_is_enabled_daily_randomized_and_persistent(host: testinfra.host.Host) -> None:
    timer = host.service("ringmesh-rotate-keys.timer")
    assert timer.is_enabled
    assert timer.is_running
    show = host.check_output(
        "systemctl show -P TimersCalendar -P RandomizedDelayUSec -P Persistent ringmesh-rotate-keys.timer"
    )
    assert "OnCalendar=*-*-* 00:00:00" in show
    assert "1h" in show
    assert "yes" in show


def test_rotation_runs_as_the_node_user_of_the_node_role(host: testinfra.host.Host) -> None:
    assert host.check_output("systemctl show -P User ringmesh-rotate-keys.service") == "mesh"
    assert host.file("/var/lib/ringmesh/keys").user == "mesh"
    assert host.process.get(pid=node_pid(host)).user == "mesh"


def test_rotation_service_bumps_the_epoch_of_the_running_node(host: testinfra.host.Host) -> None:
    assert_rotation_bumps_the_running_epoch(host)


def test_check_mode_changes_nothing() -> None:
    assert_check_mode_changes_nothing()


def test_bad_schedule_stops_the_role_before_any_change(host: testinfra.host.Host) -> None:
    assert_rejected({"keys_rotation_on_calendar": "fortnightly-ish"}, "keys_rotation_on_calendar")
    assert "fortnightly" not in host.check_output("systemctl show -P TimersCalendar ringmesh-rotate-keys.timer")


OFFLINE = "keys-offline"


def test_offline_identity_key_stays_on_the_controller_and_its_certificate_renews() -> None:
    """keys-offline runs on a signing key its identity (kept in the scenario's directory on
    the controller) certified; a renewal run certifies a fresh key for longer, and the
    running node takes it without a restart."""
    offline = testinfra.get_host(f"podman://{OFFLINE}")
    identity_file = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / f"{OFFLINE}.identity"
    seed = identity_file.read_text().strip()
    before = ringmesh(offline, "status")
    assert before["identity_offline"] is True
    assert before["peers_up"] == 1  # keys-target, which runs on its own online identity
    assert 29 * 86400 < before["certificate_expires_timestamp"] - time.time() <= 30 * 86400
    # The identity key is nowhere on the relay, raw or as hex (a test identity: its seed may
    # appear in this test's command line).
    assert not offline.file("/var/lib/ringmesh/keys/identity.key").exists
    search = (
        "import pathlib, sys; s = bytes.fromhex(sys.argv[1]); "
        "print([str(p) for d in ('/var/lib/ringmesh', '/etc/ringmesh') for p in pathlib.Path(d).rglob('*') "
        "if p.is_file() and (s in p.read_bytes() or s.hex().encode() in p.read_bytes())])"
    )
    assert offline.check_output(f'python3 -c "{search}" {seed}') == "[]"
    pid = node_pid(offline)

    # Due: a threshold just under a 31-day lifetime makes today's 30-day certificate due.
    run = run_playbook(
        REPO / "playbooks" / "rotate-keys.yml",
        os.environ["MOLECULE_INVENTORY_FILE"],
        limit=OFFLINE,
        extra_vars={"node_identity_certificate_lifetime": 31 * 86400, "node_identity_renew_within": 31 * 86400 - 60},
        timeout=900,
    )
    assert run.ok, run.explain()
    after = ringmesh(offline, "status")
    assert after["certificate_expires_timestamp"] > before["certificate_expires_timestamp"] + 86400 - 300
    assert after["signing_key_fingerprint"] != before["signing_key_fingerprint"]
    assert node_pid(offline) == pid
