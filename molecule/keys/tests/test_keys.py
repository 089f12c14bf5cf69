"""The rotation timer rotates the running node's keys without restarting it."""

import json
from typing import Any

import testinfra

RINGMESH = "/opt/ringmesh/venv/bin/ringmesh --config /etc/ringmesh/node.toml"


def _json(host: testinfra.host.Host, args: str) -> Any:
    return json.loads(host.check_output(f"runuser -u ringmesh -- {RINGMESH} {args}"))


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


def test_rotation_service_bumps_the_epoch_of_the_running_node(host: testinfra.host.Host) -> None:
    pid_before = int(host.check_output("supervisorctl pid ringmesh"))
    epoch_before = _json(host, "keys show --public --json")["epoch"]

    host.run_expect([0], "systemctl start ringmesh-rotate-keys.service")

    assert _json(host, "keys show --public --json")["epoch"] == epoch_before + 1
    assert _json(host, "status --json")["epoch"] == epoch_before + 1
    assert int(host.check_output("supervisorctl pid ringmesh")) == pid_before


def test_rotation_runs_as_the_node_user(host: testinfra.host.Host) -> None:
    user = host.check_output("systemctl show -P User ringmesh-rotate-keys.service")
    assert user == "ringmesh"
    assert host.file("/var/lib/ringmesh/keys").user == "ringmesh"
