"""The lab fleet: systemd containers standing in for bare VPSes, described by an inventory.

`lab/lab` (make lab) and the end-to-end tests both drive a fleet through this module: the
hosts come from the inventory (inventories/lab), `lab/containers.yml` makes them, and
everything else is ansible-playbook over SSH, as on a real fleet.

A lab has an instance name (RINGMESH_LAB_INSTANCE, empty by default): a named instance is the
same fleet under other container names, on another subnet, with its state in .lab-<name>,
through an overlay inventory written here. The tests use one ("test"), so `make test` never
touches the lab of `make lab`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .ansible import REPO, PlaybookRun, run_playbook, tool_env

INVENTORY = REPO / "inventories" / "lab"
STATE = REPO / ".lab"  # the lab's SSH key, known_hosts and logs: generated, never committed
PLAYBOOKS = REPO / "playbooks"


class LabError(Exception):
    """A step failed; the message says which and where to look."""


def run(cmd: list[str], *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=tool_env())
    if check and result.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}".rstrip())
    return result


@dataclass
class Lab:
    instance: str = field(default_factory=lambda: os.environ.get("RINGMESH_LAB_INSTANCE", ""))

    @property
    def state(self) -> Path:
        return STATE.with_name(f".lab-{self.instance}") if self.instance else STATE

    @property
    def key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def inventories(self) -> list[Path]:
        """The lab's inventory, and for a named instance the overlay that renames it."""
        return [INVENTORY, self.state / "overlay.yml"] if self.instance else [INVENTORY]

    def ensure_overlay(self) -> None:
        """A named instance's overlay inventory: other names, another /24 (host numbers kept)
        and this instance's state directory."""
        if not self.instance or (self.state / "overlay.yml").exists():
            return
        base = json.loads(run(["ansible-inventory", "-i", str(INVENTORY), "--list"], timeout=120).stdout)
        hostvars = base["_meta"]["hostvars"]
        lab = next(iter(hostvars.values()))
        subnet = ipaddress.ip_network(lab["lab_subnet"])
        shift = 1 + zlib.crc32(self.instance.encode()) % 200
        moved = ipaddress.ip_network((int(subnet.network_address) + shift * subnet.num_addresses, subnet.prefixlen))

        def move(address: str) -> str:
            offset = int(ipaddress.ip_address(address)) - int(subnet.network_address)
            return str(moved.network_address + offset)

        renamed = {
            "lab_network": f"{lab['lab_network']}-{self.instance}",
            "lab_container_prefix": f"{lab['lab_container_prefix']}{self.instance}-",
            "lab_label": f"{lab['lab_label']}.{self.instance}",
            "lab_subnet": str(moved),
            "lab_gateway": move(lab["lab_gateway"]),
            "lab_state_dir": str(self.state),
        }
        # Host variables: they take precedence over the inventory's group_vars/all.
        overlay = {
            "all": {
                "hosts": {host: {**renamed, "ansible_host": move(v["ansible_host"])} for host, v in hostvars.items()}
            }
        }
        self.state.mkdir(mode=0o700, exist_ok=True)
        (self.state / "overlay.yml").write_text(json.dumps(overlay, indent=2) + "\n")

    @cached_property
    def _listing(self) -> dict[str, Any]:
        self.ensure_overlay()
        command = ["ansible-inventory", "--list"]
        for inventory in self.inventories:
            command += ["-i", str(inventory)]
        return dict(json.loads(run(command, timeout=120).stdout))

    def hostvars(self) -> dict[str, dict[str, Any]]:
        """Every host's inventory variables (group_vars merged, not templated)."""
        return {str(h): dict(v) for h, v in self._listing.get("_meta", {}).get("hostvars", {}).items()}

    def groups(self) -> dict[str, list[str]]:
        return {
            group: sorted(body.get("hosts", []))
            for group, body in self._listing.items()
            if isinstance(body, dict) and group != "_meta"
        }

    def releases(self) -> set[str]:
        return {str(v["lab_release"]) for v in self.hostvars().values()}

    def container(self, host: str) -> str:
        return f"{self.hostvars()[host]['lab_container_prefix']}{host}"

    def ensure_key(self) -> None:
        self.state.mkdir(mode=0o700, exist_ok=True)
        self.state.chmod(0o700)
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ringmesh-lab", "-f", str(self.key)])
        (self.state / "known_hosts").touch(mode=0o600, exist_ok=True)

    def playbook(
        self,
        playbook: Path | str,
        *,
        log_name: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> PlaybookRun:
        """ansible-playbook against the lab's inventory; the events are kept in .lab/<log_name>.jsonl."""
        self.state.mkdir(mode=0o700, exist_ok=True)
        log = self.state / f"{log_name}.jsonl" if log_name else None
        self.ensure_overlay()
        return run_playbook(playbook, self.inventories, log=log, on_event=on_event, **options)

    def create_hosts(self, *, limit: str | None = None) -> PlaybookRun:
        """Make (or reuse) the containers: bare Debian hosts with sshd and an admin user."""
        self.ensure_key()
        made = self.playbook(REPO / "lab" / "containers.yml", log_name="containers", limit=limit, timeout=600)
        if not made.ok:
            raise LabError(f"the lab's hosts could not be made:\n{made.explain()}")
        return made

    def remove_host(self, host: str) -> None:
        """The container and everything in it: what losing a VPS looks like."""
        run(["podman", "rm", "--force", "--time", "5", self.container(host)], timeout=120)

    def destroy(self) -> list[str]:
        """Every container with the lab's label, the lab's network and its state directory."""
        lab = next(iter(self.hostvars().values()))
        removed = run(["podman", "ps", "--all", "--filter", f"label={lab['lab_label']}", "--format", "{{.Names}}"])
        names = removed.stdout.split()
        if names:
            run(["podman", "rm", "--force", "--time", "5", *names], timeout=300)
        if run(["podman", "network", "exists", lab["lab_network"]], check=False).returncode == 0:
            run(["podman", "network", "rm", lab["lab_network"]])
            names.append(lab["lab_network"])
        if self.state.exists():
            shutil.rmtree(self.state)
        return names

    def ssh(self, host: str, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command on a lab host over SSH as the admin user."""
        address = self.hostvars()[host]["ansible_host"]
        user = self.hostvars()[host].get("ansible_user", "debian")
        return run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-o",
                f"UserKnownHostsFile={self.state / 'known_hosts'}",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                f"{user}@{address}",
                command,
            ],
            check=False,
            timeout=timeout,
        )


def ansible_path() -> str | None:
    return shutil.which("ansible-playbook", path=tool_env()["PATH"])
