"""Behaviour of the hardening role on a real systemd host, with real SSH logins from the podman host."""

from __future__ import annotations

import os
import subprocess

import pytest
import testinfra

from harness.verify import assert_check_mode_changes_nothing, assert_rejected

testinfra_hosts = ["podman://hardening-target"]

TARGET = testinfra.get_host("podman://hardening-target")
TARGET_IP = str(TARGET.interface("eth0").addresses[0])
KEY = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "id_ed25519")
PASSWORD = "correct-horse-battery"  # set in prepare.yml
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "ConnectTimeout=5",
]  # fmt: skip


def ssh_with_key(user: str, *extra: str, command: str = "true") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", *SSH_OPTS, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", KEY, *extra,
         f"{user}@{TARGET_IP}", command],
        stdin=subprocess.DEVNULL,  # ssh would leave a shared stdin non-blocking
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sshd_effective() -> dict[str, str]:
    """sshd -T: the settings the daemon really uses, keyword -> value (first wins)."""
    settings: dict[str, str] = {}
    for line in TARGET.check_output("sshd -T").splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


def test_admin_in_allowed_group_logs_in_with_key() -> None:
    result = ssh_with_key("ringmesh-admin", command="id -un; umask; ulimit -Hc")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ringmesh-admin", "0027", "0"]


def test_root_with_key_is_refused() -> None:
    result = ssh_with_key("root")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_user_outside_allow_groups_is_refused() -> None:
    result = ssh_with_key("ringmesh-outsider")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_password_login_is_refused() -> None:
    result = subprocess.run(
        ["sshpass", "-p", PASSWORD, "ssh", *SSH_OPTS, "-o", "PubkeyAuthentication=no",
         "-o", "PreferredAuthentications=password,keyboard-interactive", f"ringmesh-pwuser@{TARGET_IP}", "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 255
    # The server offers no password method at all.
    assert "Permission denied (publickey)" in result.stderr


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("KexAlgorithms=diffie-hellman-group14-sha256", "no matching key exchange method"),
        ("Ciphers=aes128-cbc", "no matching cipher"),
        ("MACs=hmac-sha1", "no matching MAC"),
    ],
)
def test_weak_algorithms_are_refused(option: str, error: str) -> None:
    extra = ["-o", option] + (["-o", "Ciphers=aes128-ctr"] if option.startswith("MACs") else [])
    result = ssh_with_key("ringmesh-admin", *extra)
    assert result.returncode == 255
    assert error in result.stderr


def test_post_quantum_hybrid_kex_is_offered() -> None:
    # The controller's OpenSSH (9.2) has sntrup761x25519 but not ML-KEM.
    assert ssh_with_key("ringmesh-admin", "-o", "KexAlgorithms=sntrup761x25519-sha512@openssh.com").returncode == 0
    kex = sshd_effective()["kexalgorithms"].split(",")
    version = TARGET.check_output("ssh -V 2>&1")
    if "OpenSSH_10" in version or "OpenSSH_9.9" in version:
        assert kex[0] == "mlkem768x25519-sha256"
    assert "diffie-hellman-group14-sha256" not in kex


def test_group_exchange_moduli_under_3072_bits_are_gone(host: testinfra.host.Host) -> None:
    sizes = [
        int(line.split()[4]) + 1
        for line in host.file("/etc/ssh/moduli").content_string.splitlines()
        if line and not line.startswith("#")
    ]
    assert sizes and min(sizes) >= 3072, sorted(set(sizes))


def test_tcp_forwarding_is_refused() -> None:
    result = ssh_with_key("ringmesh-admin", "-o", "ExitOnForwardFailure=yes", "-R", "17733:127.0.0.1:22")
    assert result.returncode == 255
    assert "forwarding failed" in result.stderr


def test_sshd_effective_settings() -> None:
    settings = sshd_effective()
    expected = {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitrootlogin": "no",
        "permitemptypasswords": "no",
        "x11forwarding": "no",
        "allowagentforwarding": "no",
        "allowtcpforwarding": "no",
        "permittunnel": "no",
        "maxauthtries": "3",
        "logingracetime": "30",
        "allowgroups": "ringmesh-ssh",
        "authenticationmethods": "publickey",
    }
    assert {key: settings.get(key) for key in expected} == expected
    listen = TARGET.check_output("sshd -T | grep ^listenaddress")
    assert "0.0.0.0:22" in listen and "[::]:22" in listen


def test_legacy_packages_removed(host: testinfra.host.Host) -> None:
    assert not host.package("telnet").is_installed


@pytest.mark.parametrize("module", ["cramfs", "sctp", "dccp", "usb-storage"])
def test_kernel_modules_cannot_be_loaded(host: testinfra.host.Host, module: str) -> None:
    assert "install /bin/false" in host.check_output("modprobe -n -v %s 2>&1 || true", module)


def test_shadow_is_not_world_readable(host: testinfra.host.Host) -> None:
    shadow = host.file("/etc/shadow")
    assert (shadow.mode, shadow.user, shadow.group) == (0o640, "root", "shadow")


# Debian ships these 0644 and 0755: the role's modes, not the defaults.
@pytest.mark.parametrize(("path", "mode"), [("/etc/crontab", 0o600), ("/etc/cron.d", 0o700), ("/etc/sudoers.d", 0o750)])
def test_cron_and_sudo_files_are_closed_to_others(host: testinfra.host.Host, path: str, mode: int) -> None:
    target = host.file(path)
    assert (target.mode, target.user, target.group) == (mode, "root", "root")


def test_unattended_security_upgrades(host: testinfra.host.Host) -> None:
    codename = host.system_info.codename
    config = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert f"codename={codename}-security,label=Debian-Security" in config.replace("${distro_codename}", codename)
    assert f"{codename}-security" in host.check_output("apt-cache policy")
    assert host.package("unattended-upgrades").is_installed


def test_faillock_is_in_the_pam_stack(host: testinfra.host.Host) -> None:
    auth = host.file("/etc/pam.d/common-auth").content_string
    assert "pam_faillock.so preauth" in auth and "pam_faillock.so authfail" in auth
    assert host.run("faillock --user ringmesh-pwuser").rc == 0


def test_auditd_left_to_the_host_in_a_container(host: testinfra.host.Host) -> None:
    assert not host.package("auditd").is_installed


def test_sysctl_file_is_accepted_by_a_kernel() -> None:
    """The container's kernel is the host's: load the namespaced keys into a throw-away netns."""
    lines = [
        line.lstrip("-")
        for line in TARGET.file("/etc/sysctl.d/90-ringmesh-hardening.conf").content_string.splitlines()
        if line.startswith(("-net.ipv4.", "-net.ipv6."))
    ]
    assert len(lines) > 20
    keys = [line.split(" = ")[0] for line in lines]
    script = "sysctl -q -p /dev/stdin && sysctl " + " ".join(keys)
    result = subprocess.run(["unshare", "--net", "sh", "-c", script], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(lines)
    assert "net.ipv6.conf.all.accept_ra = 1" in lines
    assert "net.ipv4.ip_forward = 0" in lines


def test_check_mode_changes_nothing() -> None:
    assert_check_mode_changes_nothing()


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        ({"hardening_ssh_permit_root_login": "yes"}, "hardening_ssh_permit_root_login"),
        ({"hardening_sysctl_extra": {"not a key": 1}}, "hardening_sysctl_extra: not a sysctl key: not a key"),
        (
            {"hardening_ssh_kex_algorithms": ["diffie-hellman-group0-md5"]},
            "hardening_ssh_kex_algorithms: none of the listed",
        ),
    ],
)
def test_bad_variables_fail_before_sshd_changes(extra_vars: dict[str, object], named: str) -> None:
    before = TARGET.file("/etc/ssh/sshd_config").sha256sum
    assert_rejected(extra_vars, named)
    assert TARGET.file("/etc/ssh/sshd_config").sha256sum == before


def test_allow_groups_that_exclude_the_ssh_login_user_are_refused() -> None:
    """Over a real SSH login as ringmesh-admin, a group list without it must stop the run."""
    run = assert_rejected(
        {
            "ansible_connection": "ssh", "ansible_host": TARGET_IP, "ansible_user": "ringmesh-admin",
            "ansible_ssh_private_key_file": KEY, "ansible_ssh_common_args": " ".join(SSH_OPTS),
            "hardening_ssh_allow_groups": ["wheel"],
        },
        "would lock it out",
    )  # fmt: skip
    assert "hardening_ssh_allow_groups=['wheel']" in run.failed()[0].message, run.explain()
    assert ssh_with_key("ringmesh-admin").returncode == 0


def test_login_banner_names_no_distribution() -> None:
    for path in ("/etc/issue", "/etc/issue.net"):
        banner = TARGET.file(path).content_string
        assert "Authorised access only" in banner
        assert "Debian" not in banner and "\\r" not in banner


def test_password_policy_and_hashing_rounds() -> None:
    login_defs = dict(
        line.split(None, 1) for line in TARGET.file("/etc/login.defs").content_string.splitlines()
        if line.strip() and not line.startswith("#")
    )  # fmt: skip
    assert login_defs["SHA_CRYPT_MIN_ROUNDS"].strip() == "65536"
    assert login_defs["PASS_MIN_DAYS"].strip() == "1"
    assert login_defs["PASS_MAX_DAYS"].strip() == "99999"  # expiry would block key logins
    assert "pam_pwquality.so" in TARGET.file("/etc/pam.d/common-password").content_string
    assert "pam_tmpdir.so" in TARGET.file("/etc/pam.d/common-session").content_string


def test_package_audit_tools_and_needrestart_lists_only() -> None:
    for package in ("needrestart", "debsums", "apt-show-versions", "lynis", "sysstat"):
        assert TARGET.package(package).is_installed, package
    # File integrity belongs to the image a container is made from, not to the container.
    assert not TARGET.package("aide-common").is_installed
    assert "$nrconf{restart} = 'l';" in TARGET.file("/etc/needrestart/conf.d/ringmesh-hardening.conf").content_string


def test_supervisor_sandbox_drop_in_is_in_place() -> None:
    drop_in = TARGET.file("/etc/systemd/system/supervisor.service.d/ringmesh-sandbox.conf").content_string
    assert "ProtectSystem=strict" in drop_in
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL" in drop_in
