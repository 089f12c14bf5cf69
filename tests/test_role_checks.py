"""Every role stops on a bad variable with a message that names that variable and no other.

One ansible-playbook run on this machine, touching no host: each case is an inventory host of
its own (local connection) whose variables hold one bad value, and each applies its role's
`validate` entry point, the one site.yml's preflight runs before any change. A case passes when
its host failed with a message naming its variable and none of the role's other variables;
the `*-defaults` hosts hold only good values and must pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.ansible import REPO, PlaybookRun, run_playbook

# (role, variable, bad value, other variables the case needs)
CASES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("node", "node_port", 70000, {}),
    ("node", "node_role", "witness", {}),
    ("node", "node_log_level", "loud", {}),
    ("node", "node_keys_epoch_seconds", 0, {}),
    ("node", "node_keys_grace_seconds", -1, {}),
    ("node", "node_mixing_mean_delay_ms", -5, {}),
    ("node", "node_mixing_loop_rate", -1.0, {}),
    ("node", "node_mixing_drop_rate", -0.5, {}),
    ("node", "node_mailbox_ttl_seconds", 0, {}),
    ("node", "node_mailbox_max_packets", 0, {}),
    ("node", "node_start_timeout", 0, {}),
    ("node", "node_advertise_address", "", {}),
    ("node", "node_metrics_listen", "localhost", {}),
    ("node", "node_user", "Mesh User", {}),
    ("node", "node_state_dir", "var/lib/ringmesh", {}),
    ("node", "node_config_file", "node.toml", {}),
    ("node", "node_cli", "ringmesh", {}),
    ("node", "node_first_ring_group", "nosuchgroup", {}),
    ("node", "node_client_home", "nosuchhost", {"node_role": "client"}),
    ("node", "node_identity_offline", "sometimes", {}),
    ("node", "node_identity_certificate_lifetime", 60, {}),
    ("node", "node_identity_renew_within", 2592000, {}),
    ("node", "node_identity_key_file", "keys/relay.key", {"node_identity_offline": True}),
    ("keys", "keys_rotation_on_calendar", "fortnightly-ish", {}),
    ("keys", "keys_rotation_randomized_delay", "soon", {}),
    ("keys", "keys_rotation_persistent", "sometimes", {}),
    ("firewall", "firewall_admin_networks", ["10.0.0.300/32"], {}),
    ("firewall", "firewall_monitoring_networks", ["10.0.0.1/24"], {}),
    ("firewall", "firewall_relay_port", 0, {}),
    ("firewall", "firewall_ssh_port", 65536, {}),
    ("firewall", "firewall_relay_rate_per_source", "lots", {}),
    ("firewall", "firewall_relay_burst_per_source", 0, {}),
    ("supervisor", "supervisor_programs", [{"name": "bad name!", "command": "/bin/true"}], {}),
    ("hardening", "hardening_ssh_port", 70000, {}),
    ("hardening", "hardening_ssh_max_auth_tries", 0, {}),
    ("hardening", "hardening_login_umask", "0999", {}),
    ("hardening", "hardening_unattended_upgrades_reboot_time", "25:00", {}),
    ("hardening", "hardening_ssh_listen_addresses", ["example.org"], {}),
    ("hardening", "hardening_sysctl_extra", {"not a key": 1}, {}),
    ("hardening", "hardening_ssh_kex_algorithms", ["diffie-hellman-group0-md5"], {}),
    ("hardening", "hardening_ssh_moduli_minimum", 9000, {}),
    ("hardening", "hardening_lynis_skip_tests", ["ssh-7408; rm -rf /"], {}),
    ("hardening", "hardening_lynis_certificate_paths_to_ignore", ["etc/ssl"], {}),
    ("hardening", "hardening_debsums_cron_check", "hourly", {}),
    ("hardening", "hardening_shell_idle_timeout", -1, {}),
    ("ledger", "ledger_api_port", 70000, {}),
    ("ledger", "ledger_etcd_peer_port", 8740, {}),
    ("ledger", "ledger_api_rate", 0, {}),
    ("ledger", "ledger_api_burst", 0, {}),
    ("ledger", "ledger_snapshot_interval", 0, {}),
    ("ledger", "ledger_cert_valid_days", 0, {}),
    ("ledger", "ledger_log_level", "loud", {}),
    ("ledger", "ledger_advertise_address", "relay1.example", {}),
    ("ledger", "ledger_metrics_listen", "localhost", {}),
    ("ledger", "ledger_database", "mysql://ledger@db/ledger", {}),
    ("ledger", "ledger_etcd_prefix", "ledger/", {}),
    ("ledger", "ledger_first_ring_group", "nosuchgroup", {}),
    ("ledger", "ledger_issuer_host", "nosuchhost", {}),
    ("ledger", "ledger_user", "Ledger User", {}),
    ("ledger", "ledger_state_dir", "var/lib/ringmesh-ledger", {}),
    ("backup", "backup_secret", "short", {}),
    ("backup", "backup_peers", 0, {}),
    ("backup", "backup_fleet_group", "nosuchgroup", {}),
    ("backup", "backup_address", "", {}),
    ("backup", "backup_tools", ["zfs"], {}),
    ("backup", "backup_sources", ["/etc/ringmesh", "/var/log"], {}),
    ("backup", "backup_hooks", [{"name": "ledger", "command": "ledger-backup", "paths": ["/var/backups/l"]}], {}),
    ("backup", "backup_allowed_files", ["/home/*"], {}),
    ("backup", "backup_remote_repositories", [{"name": "offsite", "tool": "borg", "url": "http://x"}], {}),
    ("backup", "backup_operator_public_key", "not a key", {}),
    ("backup", "backup_peer_user", "Backup User", {}),
    ("backup", "backup_store_dir", "var/backups", {}),
    ("backup", "backup_restic_check_subset", "lots", {}),
    ("backup", "backup_randomized_delay", "soon", {}),
    ("backup", "backup_timeout_seconds", 5, {}),
    ("backup", "backup_on_calendar", "fortnightly-ish", {}),
    ("backup", "backup_borg_check_on_calendar", "every other moon", {}),
]
ROLES = sorted({role for role, *_ in CASES})
# What every host of this run needs to be valid apart from the case's one bad value.
GOOD = {
    "node_advertise_address": "192.0.2.1",
    "ledger_advertise_address": "192.0.2.1",
    "firewall_admin_networks": ["192.0.2.0/24"],
    "backup_secret": "not-a-real-secret-only-long-enough-for-the-check",
}


def role_variables(role: str) -> set[str]:
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return set(specs["argument_specs"]["main"]["options"])


def case_host(role: str, variable: str) -> str:
    return f"{role}--{variable}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaybookRun]:
    work: Path = tmp_path_factory.mktemp("role-checks")
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    hosts: dict[str, dict[str, Any]] = {}
    for role, variable, value, extra in CASES:
        hosts[case_host(role, variable)] = {**local, **GOOD, **extra, "case_role": role, variable: value}
    for role in ROLES:
        hosts[f"{role}--defaults"] = {**local, **GOOD, "case_role": role}
    inventory = {
        "all": {
            "children": {
                "cases": {"hosts": hosts},
                "relays": {"hosts": dict.fromkeys(hosts)},
                "first_ring": {"hosts": {"ring-relay": {"ansible_host": "192.0.2.1"}}},
            }
        }
    }
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (work / "validate.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Each case host applies its role's checks",
                    "hosts": "cases",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Run the role's validate entry point",
                            "ansible.builtin.include_role": {"name": "{{ case_role }}", "tasks_from": "validate"},
                        }
                    ],
                }
            ]
        )
    )
    result = run_playbook(work / "validate.yml", work / "hosts.yml", timeout=300, env={"ANSIBLE_FORKS": "8"})
    yield result


def failure_of(run: PlaybookRun, host: str) -> str | None:
    messages = [r.message for r in run.failed() if r.host == host]
    return messages[0] if messages else None


@pytest.mark.parametrize("role", ROLES)
def test_defaults_pass(run: PlaybookRun, role: str) -> None:
    assert failure_of(run, f"{role}--defaults") is None, run.explain()
    assert run.stats.get(f"{role}--defaults", {}).get("ok", 0) > 0, run.explain()


@pytest.mark.parametrize(("role", "variable"), [(role, variable) for role, variable, *_ in CASES])
def test_bad_variable_is_named_alone(run: PlaybookRun, role: str, variable: str) -> None:
    message = failure_of(run, case_host(role, variable))
    assert message is not None, f"{case_host(role, variable)} passed the checks\n{run.explain()}"
    named = {name for name in role_variables(role) if re.search(rf"\b{re.escape(name)}\b", message)}
    assert named == {variable}, f"message names {sorted(named)}: {message}"


def role_defaults(role: str) -> dict[str, Any]:
    defaults: dict[str, Any] = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    return defaults


def test_supervisors_sandbox_lets_its_programs_write_their_state() -> None:
    """supervisord runs the relay and the ledger, so each one's state directory must be
    writable in the sandbox the hardening role gives supervisord. A VM enforces that sandbox;
    systemd in a container skips its mount namespace, so only this check and the Vagrant lab
    see a missing directory (the ledger then cannot open its database)."""
    sandbox = role_defaults("hardening")["hardening_service_sandbox_units"]["supervisor.service"]
    state_dirs = {role_defaults("node")["node_state_dir"], role_defaults("ledger")["ledger_state_dir"]}
    assert not state_dirs - set(sandbox["writable_paths"]), "state directories missing from writable_paths"
