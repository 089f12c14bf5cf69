"""Helpers for testinfra verifiers: Molecule scenarios (molecule/*/tests) and the end-to-end
fleet tests (tests/) share them.

- `ringmesh(host, ...)`: a node's `ringmesh ... --json` through the CLI the node role installs
  (it runs as the node's user with the node's config, whatever the inventory set them to);
- `converge(...)`: the running scenario's converge.yml again, against Molecule's inventory;
- `assert_check_mode_changes_nothing()` and `assert_rejected(...)`: the two checks every role
  owes: a converged host needs no change, and a bad variable stops the role before any change
  with a message that names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import testinfra

from .ansible import PlaybookRun, run_playbook

RINGMESH_CLI = "ringmesh"  # node_cli of the node role, on root's PATH


def ringmesh(host: testinfra.host.Host, *args: str) -> Any:
    """`ringmesh ARGS --json` on the host, parsed."""
    return json.loads(host.check_output(" ".join([RINGMESH_CLI, *args, "--json"])))


def node_pid(host: testinfra.host.Host) -> int:
    return int(host.check_output("supervisorctl pid ringmesh"))


def assert_rotation_bumps_the_running_epoch(host: testinfra.host.Host) -> None:
    """The rotation timer's service moves the keystore and the running node to the next
    epoch, without restarting the node."""
    pid = node_pid(host)
    epoch = ringmesh(host, "keys", "show", "--public")["epoch"]
    host.run_expect([0], "systemctl start ringmesh-rotate-keys.service")
    assert ringmesh(host, "keys", "show", "--public")["epoch"] == epoch + 1
    assert ringmesh(host, "status")["epoch"] == epoch + 1
    assert node_pid(host) == pid


def converge(
    extra_vars: Mapping[str, Any] | None = None,
    *,
    check: bool = False,
    diff: bool = False,
    playbook: str = "converge.yml",
) -> PlaybookRun:
    """Run a playbook of the running Molecule scenario against its instances."""
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    return run_playbook(
        scenario / playbook,
        os.environ["MOLECULE_INVENTORY_FILE"],
        extra_vars=extra_vars,
        check=check,
        diff=diff,
        timeout=900,
    )


def assert_check_mode_changes_nothing(*, playbook: str = "converge.yml") -> None:
    """A check run of the scenario's last playbook (converge.yml, or side_effect.yml when that
    changed the host) finds nothing to change."""
    run = converge(check=True, diff=True, playbook=playbook)
    assert run.ok, run.explain()
    assert run.total("changed") == 0, run.explain()


def assert_rejected(extra_vars: Mapping[str, Any], named: str, *, playbook: str = "converge.yml") -> PlaybookRun:
    """The playbook with EXTRA_VARS fails, its first failure's message says NAMED, nothing changed."""
    run = converge(extra_vars, playbook=playbook)
    failures = run.failed()
    assert not run.ok and failures, run.explain()
    assert named in failures[0].message, f"the first failure does not name {named!r}:\n{run.explain()}"
    assert run.total("changed") == 0, run.explain()
    return run
