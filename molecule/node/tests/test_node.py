"""Behaviour of a converged relay (after side_effect.yml changed its log level)."""

import testinfra

from harness.verify import assert_check_mode_changes_nothing, assert_rejected, node_pid, ringmesh

CONFIG = "/etc/ringmesh/node.toml"


def test_node_runs_under_supervisor_as_ringmesh(host: testinfra.host.Host) -> None:
    node = host.process.get(pid=node_pid(host))
    assert node.user == "ringmesh"
    assert f"run --config {CONFIG}" in node.args
    assert host.process.get(pid=node.ppid).comm == "supervisord"


def test_ringmesh_user_cannot_log_in(host: testinfra.host.Host) -> None:
    user = host.user("ringmesh")
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == "/var/lib/ringmesh"


def test_status_answers_with_the_hosts_own_identity(host: testinfra.host.Host) -> None:
    identity = ringmesh(host, "keys", "show", "--public")
    assert ringmesh(host, "status")["did"] == identity["did"]
    assert identity["did"].startswith("did:key:z6Mk")


def test_cli_refuses_unprivileged_callers(host: testinfra.host.Host) -> None:
    result = host.run("runuser -u nobody -- ringmesh status --json")
    assert result.rc == 2
    assert "run as root" in result.stderr


def test_config_pins_this_relay_and_is_not_world_readable(host: testinfra.host.Host) -> None:
    identity = ringmesh(host, "keys", "show", "--public")
    assert identity["did"] in host.file(CONFIG).content_string
    assert host.run(f"runuser -u nobody -- cat {CONFIG}").rc != 0


def test_keystore_is_private_to_ringmesh(host: testinfra.host.Host) -> None:
    keys = host.file("/var/lib/ringmesh/keys")
    assert keys.user == "ringmesh"
    assert keys.mode == 0o700


def test_relay_listens_on_udp_and_metrics_on_loopback(host: testinfra.host.Host) -> None:
    assert host.socket("udp://0.0.0.0:7733").is_listening
    metrics = host.run(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9733/metrics').read().decode())\""
    )
    assert metrics.rc == 0, metrics.stderr
    assert "# TYPE" in metrics.stdout


def test_config_change_reloaded_without_restart(host: testinfra.host.Host) -> None:
    assert 'log_level = "debug"' in host.file(CONFIG).content_string
    before = int(host.file("/root/ringmesh.pid").content_string.strip())
    assert node_pid(host) == before


def test_node_reinstalls_offline_from_the_wheelhouse(host: testinfra.host.Host) -> None:
    result = host.run(
        "/opt/ringmesh/venv/bin/pip install --no-index --find-links /opt/ringmesh/wheelhouse --dry-run ringmesh"
    )
    assert result.rc == 0, result.stderr


def test_check_mode_changes_nothing() -> None:
    assert_check_mode_changes_nothing(playbook="side_effect.yml")


def test_bad_port_stops_the_role_before_any_change(host: testinfra.host.Host) -> None:
    before = host.file(CONFIG).sha256sum
    assert_rejected({"node_port": 70000}, "node_port: must be 1-65535")
    assert host.file(CONFIG).sha256sum == before
