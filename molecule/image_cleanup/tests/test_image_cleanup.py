"""The image checklist holds after image_cleanup, a second run changes nothing, and a leftover
build user or key stops the role."""

from __future__ import annotations

import pytest
import testinfra

from harness.verify import assert_check_mode_changes_nothing, assert_rejected, converge


def test_machine_id_is_empty_and_dbus_links_to_it(host: testinfra.host.Host) -> None:
    machine_id = host.file("/etc/machine-id")
    assert machine_id.exists and machine_id.size == 0
    dbus = host.file("/var/lib/dbus/machine-id")
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
    ],
)
def test_per_machine_and_build_files_are_gone(host: testinfra.host.Host, path: str) -> None:
    assert not host.file(path).exists


def test_the_hostname_podman_mounts_is_left_to_podman(host: testinfra.host.Host) -> None:
    """In a chroot the role removes /etc/hostname; in this container podman owns it."""
    assert host.file("/etc/hostname").exists


def test_no_ssh_host_keys(host: testinfra.host.Host) -> None:
    assert host.check_output("find /etc/ssh -name 'ssh_host_*'") == ""


def test_apt_lists_are_empty_and_dated_to_the_epoch(host: testinfra.host.Host) -> None:
    assert host.check_output("find /var/lib/apt/lists -mindepth 1") == ""
    assert host.file("/var/lib/apt/lists").mtime.timestamp() < 86400


def test_check_mode_changes_nothing() -> None:
    assert_check_mode_changes_nothing()


def test_a_relative_path_stops_the_role_before_any_change() -> None:
    assert_rejected({"image_cleanup_remove_paths": ["var/lib/cloud"]}, "image_cleanup_remove_paths")


def test_a_leftover_login_user_stops_the_role(host: testinfra.host.Host) -> None:
    host.check_output("useradd --create-home --uid 1500 builder")
    try:
        assert_rejected({}, "the image would ship user builder")
        run = converge({"image_cleanup_allowed_users": ["builder"]})
        assert run.ok, run.explain()
    finally:
        host.check_output("userdel --remove builder")


def test_an_authorized_key_stops_the_role(host: testinfra.host.Host) -> None:
    # /root/.ssh is among the removed paths (the role removes it before it looks): plant one in /home.
    host.check_output("install -d /home/ops/.ssh && echo 'ssh-ed25519 AAAA build' > /home/ops/.ssh/authorized_keys")
    try:
        assert_rejected({}, "key /home/ops/.ssh/authorized_keys")
    finally:
        host.check_output("rm -rf /home/ops")
