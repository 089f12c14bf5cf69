"""The image checklist holds after image_cleanup, and a leftover build user stops the role."""

from __future__ import annotations

import os
import subprocess

import pytest
import testinfra

HOST = testinfra.get_host("podman://ringmesh-image-cleanup")


def test_machine_id_is_empty_and_dbus_links_to_it() -> None:
    machine_id = HOST.file("/etc/machine-id")
    assert machine_id.exists and machine_id.size == 0
    dbus = HOST.file("/var/lib/dbus/machine-id")
    assert dbus.is_symlink and dbus.linked_to == "/etc/machine-id"


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/ringmesh/keys",
        "/var/lib/systemd/random-seed",
        "/var/lib/cloud",
        "/root/.bash_history",
        "/root/.python_history",
        "/var/tmp/build-scratch",
        "/var/log/apt/history.log",
        "/etc/hostname",
    ],
)
def test_per_machine_and_build_files_are_gone(path: str) -> None:
    assert not HOST.file(path).exists


def test_no_ssh_host_keys() -> None:
    assert HOST.check_output("find /etc/ssh -name 'ssh_host_*'") == ""


def test_apt_lists_are_empty_and_dated_to_the_epoch() -> None:
    assert HOST.check_output("find /var/lib/apt/lists -mindepth 1") == ""
    assert HOST.file("/var/lib/apt/lists").mtime.timestamp() < 86400


def run_converge(*args: str) -> subprocess.CompletedProcess[str]:
    playbook = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], playbook, *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        timeout=600, check=False,
    )  # fmt: skip


def test_a_leftover_login_user_stops_the_role() -> None:
    HOST.check_output("useradd --create-home --uid 1500 builder")
    try:
        result = run_converge()
        assert result.returncode != 0
        assert "the image would ship user builder" in result.stdout, result.stdout[-3000:]
        assert run_converge("-e", '{"image_cleanup_allowed_users": ["builder"]}').returncode == 0
    finally:
        HOST.check_output("userdel --remove builder")


def test_an_authorized_key_stops_the_role() -> None:
    HOST.check_output("install -d -m 0700 /root/.ssh && echo 'ssh-ed25519 AAAA build' > /root/.ssh/authorized_keys")
    # /root/.ssh is in the removed paths: the role removes it before it looks, so plant one in /home.
    HOST.check_output("install -d /home/ops/.ssh && echo 'ssh-ed25519 AAAA build' > /home/ops/.ssh/authorized_keys")
    try:
        result = run_converge()
        assert result.returncode != 0
        assert "key /home/ops/.ssh/authorized_keys" in result.stdout, result.stdout[-3000:]
    finally:
        HOST.check_output("rm -rf /home/ops /root/.ssh")
