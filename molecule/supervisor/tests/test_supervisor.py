"""Behaviour of the supervisor role on a converged host (after side_effect.yml)."""

import testinfra

from harness.verify import assert_check_mode_changes_nothing, assert_rejected


def _pid(host: testinfra.host.Host, name: str) -> int:
    return int(host.check_output(f"supervisorctl pid {name}"))


def test_supervisord_is_an_enabled_systemd_service(host: testinfra.host.Host) -> None:
    service = host.service("supervisor")
    assert service.is_running
    assert service.is_enabled


def test_programs_run_as_their_users(host: testinfra.host.Host) -> None:
    assert host.process.get(pid=_pid(host, "steady")).user == "nobody"
    assert host.process.get(pid=_pid(host, "changing")).user == "daemon"


def test_changed_program_runs_its_new_command(host: testinfra.host.Host) -> None:
    assert host.process.get(pid=_pid(host, "changing")).args == "/bin/sleep 86400"


def test_unrelated_program_was_not_restarted(host: testinfra.host.Host) -> None:
    before = int(host.file("/root/steady.pid").content_string.strip())
    assert _pid(host, "steady") == before


def test_invalid_program_config_is_rejected_by_the_validator(host: testinfra.host.Host) -> None:
    host.run_expect([0], "printf '[program:x]\\ncommand=/bin/true\\nautorestart=bogus\\n' > /tmp/bad.conf")
    result = host.run("/usr/local/sbin/supervisor-check-program /tmp/bad.conf")
    assert result.rc == 1
    assert "autorestart" in result.stderr


def test_check_mode_changes_nothing() -> None:
    assert_check_mode_changes_nothing(playbook="side_effect.yml")


def test_bad_autorestart_stops_the_role_before_any_change(host: testinfra.host.Host) -> None:
    steady = _pid(host, "steady")
    run = assert_rejected(
        {"supervisor_programs": [{"name": "steady", "command": "/bin/true", "autorestart": "sometimes"}]},
        "autorestart",
    )
    assert "supervisor_programs" in run.failed()[0].message, run.explain()
    assert _pid(host, "steady") == steady
