"""The rotation timer rotates the running node's keys without restarting it, as the node's
user taken from the node role (the scenario sets node_user: mesh)."""

import testinfra

from harness.verify import (
    assert_check_mode_changes_nothing,
    assert_rejected,
    assert_rotation_bumps_the_running_epoch,
    node_pid,
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
