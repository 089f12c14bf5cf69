"""The appliance images end to end: `images/build`, then two VMs booted from its qcow2.

Real debootstrap, real Ansible over the chroot connection, real QEMU (TCG here, KVM where it
works) booting the image with a cloud-init NoCloud seed, checked over real SSH with
testinfra. The VMs live in a network namespace of this test run's own, on a private bridge.
Serial logs and seeds are kept under build/image-test/<run> when a test failed.
RINGMESH_IMAGE_SUITE=bookworm tests the Debian 12 image; RINGMESH_IMAGE_REUSE=1 boots the
images already built instead of building them first. The tests that boot VMs are marked
`boot`: `make test` runs `-m "not boot"` (the build and its checks) beside the fleet, then
`-m boot` with RINGMESH_IMAGE_REUSE=1 after it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra
from vm import VM, Namespace, VMError

from harness.ansible import run_playbook
from harness.process import ToolRun, run_tool
from harness.verify import ringmesh

REPO = Path(__file__).resolve().parent.parent
SUITE = os.environ.get("RINGMESH_IMAGE_SUITE", "trixie")
OUT = REPO / "build" / "images" / SUITE
NAME = f"ringmesh-{SUITE}"
LYNIS_BAR = 90
# A PEM private key (OpenSSH, PKCS#1/#8, SEC1, encrypted): the marker, optional headers,
# then a body. ssh-keygen and friends hold the bare marker as a string; a key has the body.
PRIVATE_KEY = re.compile(
    rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(?:[A-Za-z-]+: [^\n]*\n)*\r?\n?[A-Za-z0-9+/=]{64}"
)
PRIVATE_KEY_SPAN = 512  # bytes a window must overlap so no key is cut in two


def images_build(*args: str, timeout: float = 40 * 60) -> ToolRun:
    return run_tool("images/build", *args, timeout=timeout)


@pytest.fixture(scope="module")
def build() -> ToolRun:
    if os.environ.get("RINGMESH_IMAGE_REUSE") == "1" and (OUT / "SHA256SUMS").exists():
        # Working on the boot tests: boot the images already in build/images/<suite>.
        return ToolRun("images/build", 0, "reused the existing build", 0.0)
    run = images_build("--suite", SUITE)
    print(f"images/build --suite {SUITE}: {run.seconds:.0f}s")
    if run.returncode != 0:
        pytest.fail(run.explain())
    return run


def artifact(suffix: str) -> Path:
    return OUT / f"{NAME}{suffix}"


def manifest_lines() -> list[list[str]]:
    return [line.split("\t") for line in artifact(".packages.txt").read_text().splitlines()]


# --- the build ----------------------------------------------------------------------------


def test_build_writes_every_artifact_with_checksums(build: ToolRun) -> None:
    expected = {f"{NAME}{s}" for s in (".raw", ".qcow2", ".box", ".oci.tar", ".packages.txt", ".cdx.json")}
    assert {p.name for p in OUT.iterdir()} == expected | {"SHA256SUMS"}, build.explain()
    sums = {
        name: digest for digest, name in (line.split("  ") for line in (OUT / "SHA256SUMS").read_text().splitlines())
    }
    assert set(sums) == expected
    for name, digest in sums.items():
        sha = hashlib.sha256()
        with (OUT / name).open("rb") as file:
            while chunk := file.read(1 << 20):
                sha.update(chunk)
        assert sha.hexdigest() == digest, f"{name}: SHA256SUMS does not match"
    for line in build.output.splitlines():
        if "MiB" in line or "built " in line:
            print(line)


def test_raw_disk_is_gpt_with_bios_boot_and_root(build: ToolRun) -> None:
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(artifact(".raw"))], capture_output=True, text=True, check=True).stdout
    )
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "gpt"
    assert [p["type"] for p in parts] == [
        "21686148-6449-6E6F-744E-656564454649",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    ]
    with artifact(".raw").open("rb") as disk:
        mbr = disk.read(512)
    assert mbr[510:512] == b"\x55\xaa" and mbr[:2] != b"\0\0", "no boot code in the MBR"


def test_qcow2_is_compressed_and_box_is_a_libvirt_box(build: ToolRun) -> None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(artifact(".qcow2"))], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert artifact(".qcow2").stat().st_size < info["virtual-size"] / 4
    with tarfile.open(artifact(".box")) as box:
        assert set(box.getnames()) == {"metadata.json", "Vagrantfile", "box.img"}
        metadata = json.load(box.extractfile("metadata.json"))  # type: ignore[arg-type]
    assert metadata["provider"] == "libvirt" and metadata["format"] == "qcow2"


def test_manifest_lists_debian_and_python_packages_and_sbom_matches(build: ToolRun) -> None:
    lines = manifest_lines()
    assert lines == sorted(lines), "manifest not sorted"
    names = {(kind, name) for kind, name, *_ in lines}
    for package in ("linux-image-cloud-amd64", "cloud-init", "nftables", "supervisor", "auditd", "aide", "lynis"):
        assert ("deb", package) in names, f"{package} missing from the manifest"
    for package in ("ringmesh", "cryptography"):
        assert ("pypi", package) in names, f"{package} missing from the manifest"
    sbom = json.loads(artifact(".cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    purls = {c["purl"] for c in sbom["components"]}
    assert len(purls) == len(lines)
    assert any(p.startswith("pkg:deb/debian/linux-image-cloud-amd64@") for p in purls)
    assert any(p.startswith("pkg:pypi/ringmesh@") for p in purls)


def test_podman_image_has_the_manifest_packages(build: ToolRun) -> None:
    query = ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"]
    image = f"localhost/ringmesh-appliance:{SUITE}"
    listed = subprocess.run(
        ["podman", "run", "--rm", image, *query], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    in_image = sorted(line.split("\t") for line in listed.splitlines())
    in_manifest = sorted([name, version] for kind, name, version, *_ in manifest_lines() if kind == "deb")
    assert in_image == in_manifest


def test_failed_step_names_itself_and_leaves_no_image(build: ToolRun, tmp_path: Path) -> None:
    playbook = tmp_path / "fails.yml"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.fail:\n        msg: planted failure\n"
    )
    before = {p.name: p.stat().st_mtime for p in OUT.iterdir()}
    out = tmp_path / "out"
    run = images_build("--suite", SUITE, "--out", str(out), "--playbook", str(playbook), timeout=15 * 60)
    assert run.returncode == 1, run.explain()
    assert "FAILED: step 2/8 playbooks" in run.output or "FAILED: step 2/8 " in run.output, run.explain()
    assert "planted failure" in run.output, run.explain()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fails.yml", "out.log"], run.explain()
    assert {p.name: p.stat().st_mtime for p in OUT.iterdir()} == before, "a failed build touched the previous images"


# --- what the image files hold ------------------------------------------------------------


def scan(stream: Any, patterns: list[bytes]) -> set[bytes]:
    """Patterns and PEM private keys (their start) found in a byte stream, read in chunks that
    overlap by the longest pattern."""
    found: set[bytes] = set()
    overlap = max([PRIVATE_KEY_SPAN, *(len(p) for p in patterns)])  # patterns may be empty
    tail = b""
    while chunk := stream.read(1 << 24):
        window = tail + chunk
        found.update(p for p in patterns if p in window)
        found.update(key.group(0) for key in PRIVATE_KEY.finditer(window))
        tail = window[-overlap:]
    return found


def packaged_private_keys() -> set[bytes]:
    """PEM private keys inside files exactly as a Debian package shipped them (dpkg's md5sums
    match): public test vectors, such as the self-test keys compiled into libgnutls."""
    image = f"localhost/ringmesh-appliance:{SUITE}"
    mount = subprocess.run(["podman", "image", "mount", image], capture_output=True, text=True, check=True)
    root = Path(mount.stdout.strip())
    keys: set[bytes] = set()
    try:
        for md5sums in (root / "var/lib/dpkg/info").glob("*.md5sums"):
            for line in md5sums.read_text(errors="replace").splitlines():
                digest, _, name = line.partition("  ")
                path = root / name
                if not path.is_file() or path.is_symlink():
                    continue
                content = path.read_bytes()
                found = {key.group(0) for key in PRIVATE_KEY.finditer(content)}
                if found and hashlib.md5(content).hexdigest() == digest:  # dpkg's own digest
                    keys |= found
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True, check=False)
    return keys


def scan_image_files(patterns: list[bytes]) -> dict[str, set[bytes]]:
    """The raw disk, the box's disk (as raw) and the OCI archive's layers, each scanned."""
    hits: dict[str, set[bytes]] = {}
    with artifact(".raw").open("rb") as raw:
        hits["raw"] = scan(raw, patterns)
    box_dir = OUT.parent / f".{SUITE}.scan"
    shutil.rmtree(box_dir, ignore_errors=True)
    box_dir.mkdir()
    try:
        with tarfile.open(artifact(".box")) as box:
            box.extract("box.img", box_dir, filter="data")
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(box_dir / "box.img"), str(box_dir / "box.raw")], check=True
        )
        with (box_dir / "box.raw").open("rb") as raw:
            hits["box"] = scan(raw, patterns)
    finally:
        shutil.rmtree(box_dir, ignore_errors=True)
    hits["oci"] = set()
    with tarfile.open(artifact(".oci.tar")) as oci:
        for member in oci.getmembers():
            blob = oci.extractfile(member) if member.isfile() else None
            if blob is None:
                continue
            head = blob.read(2)
            blob.seek(0)
            stream: Any = gzip.GzipFile(fileobj=blob) if head == b"\x1f\x8b" else blob
            hits["oci"] |= scan(stream, patterns)
    return {where: found for where, found in hits.items() if found}


def build_host_public_keys() -> list[bytes]:
    """The base64 blobs of this machine's SSH keys: none may end up in an image."""
    blobs = []
    for pub in [*Path("/etc/ssh").glob("ssh_host_*.pub"), *Path.home().glob(".ssh/*.pub")]:
        fields = pub.read_text().split()
        if len(fields) >= 2:
            blobs.append(fields[1].encode())
    return blobs


def test_image_files_hold_no_private_key_and_no_build_key(build: ToolRun) -> None:
    packaged = packaged_private_keys()
    print(f"{len(packaged)} private keys shipped inside Debian's own files (test vectors), allowed")
    found = {where: hits - packaged for where, hits in scan_image_files(build_host_public_keys()).items()}
    assert {where: hits for where, hits in found.items() if hits} == {}


# --- booted VMs -----------------------------------------------------------------------------


@dataclass
class Fleet:
    vms: list[VM]
    hosts: list[Any]
    workdir: Path


@pytest.fixture(scope="module")
def fleet(build: ToolRun, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    run_id = f"images-{os.getpid()}-{secrets.token_hex(3)}"
    workdir = REPO / "build" / "image-test" / run_id
    workdir.mkdir(parents=True)
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", run_id, "-f", str(key)], check=True)
    netns = Namespace(run_id, uplink_subnet=os.getpid() % 256)
    vms = [
        VM(f"relay{i}", artifact(".qcow2"), workdir, netns, i, key.with_suffix(".pub").read_text().strip(), key)
        for i in (1, 2)
    ]
    failed_before = request.session.testsfailed
    booted = False
    try:
        netns.create()
        for vm in vms:
            netns.add_tap(vm.tap)
        with ThreadPoolExecutor(max_workers=len(vms)) as pool:
            list(pool.map(lambda vm: vm.boot(), vms))
        for vm in vms:
            ready = vm.wait_for("sudo ringmesh status --json", deadline=600)
            print(
                f"{vm.name}: SSH after {vm.boot_seconds:.0f}s, relay ready after {ready:.0f}s "
                f"(hung boots retried: {len(vm.attempts)})"
            )
        hosts = [testinfra.get_host(f"ssh://{vm.name}", ssh_config=str(vm.ssh_config), sudo=True) for vm in vms]
        booted = True
        yield Fleet(vms, hosts, workdir)
    except VMError as error:
        pytest.fail(f"{error}\nserial logs in {workdir}")
    finally:
        for vm in vms:
            vm.close_ssh()
            vm.stop()
        netns.destroy()
        if booted and request.session.testsfailed == failed_before:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept the VMs' serial logs and seeds in {workdir}")


def node_identity(host: Any) -> dict[str, Any]:
    result: dict[str, Any] = ringmesh(host, "keys", "show", "--public")
    return result


@pytest.mark.boot
def test_node_runs_under_supervisor_as_ringmesh(fleet: Fleet) -> None:
    for host in fleet.hosts:
        status = host.check_output("supervisorctl status ringmesh")
        assert "RUNNING" in status, status
        pid = int(status.split("pid ")[1].split(",")[0])
        assert host.check_output(f"ps -o user= -p {pid}").strip() == "ringmesh"
        supervisord = host.check_output(f"ps -o ppid= -p {pid}").strip()
        assert "supervisord" in host.check_output(f"ps -o args= -p {supervisord}")
        assert ringmesh(host, "status")["pid"] == pid


@pytest.mark.boot
def test_identity_is_made_at_first_boot_before_supervisor(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    assert node_identity(host)["did"].startswith("did:key:z6Mk")
    keys = host.file("/var/lib/ringmesh/keys")
    assert keys.is_directory and keys.user == "ringmesh" and keys.mode == 0o700
    identity = host.check_output("systemctl show -P ExecMainExitTimestampMonotonic ringmesh-identity.service")
    supervisor = host.check_output("systemctl show -P ExecMainStartTimestampMonotonic supervisor.service")
    assert 0 < int(identity) < int(supervisor), (identity, supervisor)


@pytest.mark.boot
def test_supervisor_and_the_relay_run_sandboxed(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    verdict = host.check_output("systemd-analyze security supervisor.service | tail -1")
    exposure = float(re.search(r"exposure level for supervisor.service: ([0-9.]+)", verdict).group(1))  # type: ignore[union-attr]
    print(verdict)
    assert exposure <= 3.0, verdict
    pid = host.check_output("supervisorctl pid ringmesh")
    assert host.file(f"/proc/{pid}/status").content_string.count("NoNewPrivs:\t1") == 1


@pytest.mark.boot
def test_no_unit_failed_at_first_boot(fleet: Fleet) -> None:
    for host in fleet.hosts:
        failed = host.check_output("systemctl list-units --failed --plain --no-legend")
        assert failed == "", failed


@pytest.mark.boot
def test_nftables_is_loaded_and_drops_by_default(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    assert host.service("nftables").is_enabled
    chains = json.loads(host.check_output("nft -j list table inet ringmesh_filter"))["nftables"]
    policies = {c["chain"]["name"]: c["chain"].get("policy") for c in chains if "chain" in c}
    assert policies["input"] == "drop" and policies["forward"] == "drop"


@pytest.mark.boot
def test_sshd_refuses_root_and_passwords(fleet: Fleet) -> None:
    vm = fleet.vms[0]
    as_root = vm.ssh("true", user="root", check=False)
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr, as_root.stderr
    # A connection of its own: over the shared control master no authentication would happen.
    password_only = [
        "-o", "ControlPath=none",
        "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
    ]  # fmt: skip
    password = subprocess.run(
        ["ssh", "-F", str(vm.ssh_config), *password_only, vm.name, "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr, password.stderr
    effective = fleet.hosts[0].check_output("sshd -T")
    assert "permitrootlogin no" in effective and "passwordauthentication no" in effective


# Vagrant logs in with Ruby's net-ssh (7.0 on Debian 12), not OpenSSH: with no curve25519 it
# shares only diffie-hellman-group-exchange-sha256 with the hardened sshd.
NET_SSH_LOGIN = """
require "net/ssh"
host, port, user, key = ARGV
Net::SSH.start(host, user, port: port.to_i, keys: [key], keys_only: true, non_interactive: true,
               verify_host_key: :never, timeout: 30) { |ssh| print ssh.exec!("id -un") }
"""


@pytest.mark.boot
def test_vagrants_ssh_library_logs_in(fleet: Fleet) -> None:
    vm = fleet.vms[0]
    login = [*vm.netns.exec("ruby", "-e", NET_SSH_LOGIN), "127.0.0.1", str(vm.ssh_port), vm.user, str(vm.private_key)]
    run = subprocess.run(login, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.strip() == vm.user, run.stderr[-2000:]


@pytest.mark.boot
def test_first_boot_takes_hostname_network_and_grows_the_root(fleet: Fleet) -> None:
    first, second = fleet.vms
    for vm, host in zip(fleet.vms, fleet.hosts, strict=True):
        assert host.check_output("hostname") == vm.name
        assert f"{vm.private_address}/24" in host.check_output("ip -o -4 addr show")
        root_bytes = int(host.check_output("df --output=size -B1 / | tail -1"))
        assert root_bytes > 3.5 * 2**30, f"{vm.name}: root filesystem not grown to the 4 GiB disk ({root_bytes})"
    # The image has no ping: a datagram to the second's relay port makes the kernel resolve its
    # address on the mesh link (ARP, which the firewall does not filter).
    neighbour = first.ssh(
        f"echo > /dev/udp/{second.private_address}/7733; sleep 2; ip neigh show {second.private_address}",
        check=False,
    )
    assert re.search(r"lladdr \S+ (REACHABLE|STALE|DELAY|PROBE)", neighbour.stdout), neighbour


@pytest.mark.boot
def test_clones_get_their_own_identity_host_keys_and_machine_id(fleet: Fleet) -> None:
    def fingerprint(host: Any) -> tuple[str, str, str]:
        return (
            node_identity(host)["did"],
            host.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1],
            host.check_output("cat /etc/machine-id"),
        )

    first, second = (fingerprint(h) for h in fleet.hosts)
    for value in (*first, *second):
        assert value, "empty identity, host key or machine-id"
    assert re.fullmatch(r"[0-9a-f]{32}", first[2])
    assert first[0] != second[0], "same did:key on two clones"
    assert first[1] != second[1], "same SSH host key on two clones"
    assert first[2] != second[2], "same machine-id on two clones"


@pytest.mark.boot
def test_booted_identity_and_host_keys_are_not_in_the_image(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    did = node_identity(host)["did"].encode()
    host_key = host.check_output("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1].encode()
    # Only these two: the packaged test-vector keys are the other test's business.
    found = {where: hits & {did, host_key} for where, hits in scan_image_files([did, host_key]).items()}
    assert {where: hits for where, hits in found.items() if hits} == {}


LYNIS_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")
LYNIS_TEST = re.compile(r"Performing test ID (\S+)")
LYNIS_POINTS = re.compile(r"Hardening: assigned .* Currently having (\d+) points \(out of (\d+)\)")


@dataclass
class LynisTest:
    seconds: float = 0.0
    points: int = 0  # hardening points it assigned
    points_max: int = 0  # and could have


def lynis_breakdown(log: str) -> dict[str, LynisTest]:
    """Per test of a lynis.log: the seconds until the next test started and the hardening
    points it gave out of those it could give. Points are read from Lynis's running totals
    (the index is their last ratio), so they add up to exactly what the index counts."""
    tests: dict[str, LynisTest] = {}
    current: LynisTest | None = None
    started = 0.0
    total = (0, 0)
    for line in log.splitlines():
        stamped = LYNIS_LINE.match(line)
        if not stamped:
            continue
        when = time.mktime(time.strptime(stamped.group(1), "%Y-%m-%d %H:%M:%S"))
        text = stamped.group(2)
        if test := LYNIS_TEST.search(text):
            if current is not None:
                current.seconds += when - started
            current, started = tests.setdefault(test.group(1), LynisTest()), when
        elif current is not None and (points := LYNIS_POINTS.search(text)):
            now = (int(points.group(1)), int(points.group(2)))
            current.points += now[0] - total[0]
            current.points_max += now[1] - total[1]
            total = now
    return tests


def test_lynis_breakdown_reads_points_and_time() -> None:
    log = (
        "2026-01-01 10:00:00 Performing test ID SSH-7408 (Check SSH specific defined options)\n"
        "2026-01-01 10:00:01 Hardening: assigned maximum number of hardening points for this item (3). "
        "Currently having 3 points (out of 3)\n"
        "2026-01-01 10:00:02 Hardening: assigned partial number of hardening points (0 of 3). "
        "Currently having 3 points (out of 6)\n"
        "2026-01-01 10:00:03 Hardening: assigned partial number of hardening points (1 of 2). "
        "Currently having 4 points (out of 8)\n"
        "2026-01-01 10:00:07 Performing test ID PKGS-7370 (Checking for debsums utility)\n"
        "2026-01-01 10:00:08 Performing test ID SSH-7408 (again)\n"
    )
    tests = lynis_breakdown(log)
    assert tests["SSH-7408"] == LynisTest(seconds=7.0, points=4, points_max=8)
    assert tests["PKGS-7370"] == LynisTest(seconds=1.0, points=0, points_max=0)


@dataclass
class LynisRun:
    report: str
    log: str
    seconds: float


@pytest.fixture(scope="module")
def lynis_audit(fleet: Fleet) -> Iterator[Future[LynisRun]]:
    """Lynis on the second VM as booted, started by the converge test and run while the first
    VM is converged: each VM keeps one core busy."""

    def audit() -> LynisRun:
        vm = fleet.vms[1]
        began = time.monotonic()
        vm.ssh(
            "sudo lynis audit system --quick --no-colors --report-file /root/lynis-report.dat >/dev/null 2>&1",
            timeout=1200,
            check=False,  # its exit code counts warnings; the report says what the test needs
        )
        seconds = time.monotonic() - began
        report = vm.ssh("sudo cat /root/lynis-report.dat").stdout
        return LynisRun(report, vm.ssh("sudo cat /var/log/lynis.log", timeout=300).stdout, seconds)

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(audit)


# Tasks a site.yml run may change on a booted image: what the inventory sets (the fleet's
# pinned relays and addresses in node.toml, the admin networks in the firewall) and what
# follows from it (reloading the node and the ruleset); and the apt lists, which the image
# ships without (apt-daily's timer may have fetched them first, so "may").
INVENTORY_CHANGES = {
    "hardening : Update the apt cache",
    "node : Write the config with the pinned first ring",
    "node : Reload ringmesh",
    "firewall : Write the nftables ruleset",
    "firewall : Load the nftables ruleset",
}


def inventory_host(vm: VM) -> dict[str, str]:
    """How Ansible reaches a VM: through the test's SSH config, as the image's login user."""
    return {"ansible_host": vm.name, "ansible_ssh_common_args": f"-F {vm.ssh_config}", "ansible_user": "debian"}


@pytest.mark.usefixtures("lynis_audit")
@pytest.mark.boot
def test_site_yml_converges_a_booted_image_with_only_inventory_changes(fleet: Fleet) -> None:
    # A fleet of two in the inventory (the backup role's checks want a peer) and the first in
    # the run: Lynis audits the second meanwhile.
    relays = {vm.name: {**inventory_host(vm), "node_advertise_address": vm.private_address} for vm in fleet.vms}
    first = fleet.vms[0].name
    inventory = {
        "all": {
            "vars": {
                # SSH reaches the VMs through QEMU's user-mode network, from its gateway.
                "firewall_admin_networks": ["10.0.2.2/32"],
                # The preflight checks the backup role's variables; the role itself is left out below.
                "backup_secret": secrets.token_urlsafe(36),
                "backup_peers": 1,
            },
            "children": {"relays": {"hosts": relays}, "first_ring": {"hosts": {first: None}}},
        }
    }
    (fleet.workdir / "inventory.json").write_text(json.dumps(inventory))
    run = run_playbook(
        REPO / "playbooks" / "site.yml",
        fleet.workdir / "inventory.json",
        log=fleet.workdir / "site.jsonl",
        # Backups are the fleet's (repositories on the other relays), not the image's: not converged here.
        tags=["hardening", "firewall", "supervisor", "node", "keys"],
        limit=first,
        timeout=40 * 60,
    )
    changed = sorted({result.task for result in run.changed()})
    print(f"site.yml on the booted image: {run.seconds:.0f}s, changed tasks: {changed}")
    assert run.ok, run.explain()
    assert set(changed) <= INVENTORY_CHANGES, (
        f"changed beyond the inventory: {sorted(set(changed) - INVENTORY_CHANGES)}\n{run.explain()}"
    )
    # The relay runs on with the config the run wrote: its first ring pinned.
    host = fleet.hosts[0]
    did = node_identity(host)["did"]
    assert f'did = "{did}"' in host.file("/etc/ringmesh/node.toml").content_string
    assert ringmesh(host, "status")["did"] == did


@pytest.mark.boot
def test_a_program_directory_made_after_boot_is_writable_under_supervisor(fleet: Fleet) -> None:
    """supervisord's sandbox makes writable only the paths that existed when it started. The
    ledger's state directory is made after boot (the image carries no ledger): registering a
    program there restarts supervisord (the supervisor role), and the program can write it."""
    vm, host = fleet.vms[0], fleet.hosts[0]
    directory = "/var/lib/ringmesh-ledger"  # one of supervisord's writable paths (hardening defaults)
    seen_by_supervisord = f'test -w "/proc/$(systemctl show -P MainPID supervisor.service)/root{directory}"'
    vm.ssh(f"sudo install -d -o ringmesh -g ringmesh -m 0700 {directory}")
    assert vm.ssh(f"sudo sh -c '{seen_by_supervisord}'", check=False).returncode == 1, "sandbox already writable"
    probe = {
        "name": "sandbox-probe",
        "command": f'/bin/sh -c "date > {directory}/probe && exec sleep 3600"',
        "user": "ringmesh",
        "directory": directory,
    }
    play = {
        "name": "A program whose directory was made after supervisord started",
        "hosts": vm.name,
        "become": True,
        "tasks": [
            {
                "name": "Register the probe",
                "ansible.builtin.include_role": {"name": "supervisor", "tasks_from": "program"},
                "vars": {"supervisor_program": probe},
            }
        ],
    }
    (fleet.workdir / "late-directory.yml").write_text(json.dumps([play]))
    (fleet.workdir / "late-directory.json").write_text(json.dumps({"all": {"hosts": {vm.name: inventory_host(vm)}}}))
    run = run_playbook(fleet.workdir / "late-directory.yml", fleet.workdir / "late-directory.json", timeout=600)
    assert run.ok, run.explain()
    assert vm.ssh(f"sudo sh -c '{seen_by_supervisord}'", check=False).returncode == 0
    # The restart restarted the relay too: it comes back.
    deadline = time.monotonic() + 120
    while not (host.file(f"{directory}/probe").exists and host.run("ringmesh status --json").rc == 0):
        assert time.monotonic() < deadline, host.run("supervisorctl status").stdout
        time.sleep(2)
    vm.ssh("sudo rm /etc/supervisor/conf.d/sandbox-probe.conf && sudo supervisorctl update")


@pytest.mark.boot
def test_lynis_hardening_index(fleet: Fleet, lynis_audit: Future[LynisRun]) -> None:
    run = lynis_audit.result()
    (fleet.workdir / "lynis-report.dat").write_text(run.report)
    (fleet.workdir / "lynis.log").write_text(run.log)
    lines = run.report.splitlines()
    index = int(next(line.split("=")[1] for line in lines if line.startswith("hardening_index=")))
    suggestions = [line.split("=", 1)[1] for line in lines if line.startswith("suggestion[]=")]
    tests = lynis_breakdown(run.log)
    lost = {name: t for name, t in tests.items() if t.points < t.points_max}
    points, most = sum(t.points for t in tests.values()), sum(t.points_max for t in tests.values())
    print(f"Lynis hardening index {index} ({run.seconds:.0f}s, {len(tests)} tests, {points} of {most} points)")
    print("points left:", ", ".join(f"{n} {t.points}/{t.points_max}" for n, t in sorted(lost.items())))
    slowest = sorted(tests.items(), key=lambda item: -item[1].seconds)[:15]
    print("slowest:", ", ".join(f"{n} {t.seconds:.0f}s ({t.points}/{t.points_max})" for n, t in slowest))
    print(f"{len(suggestions)} suggestions left:")
    for suggestion in suggestions:
        print(f"  {suggestion}")
    assert index >= LYNIS_BAR, f"Lynis hardening index {index} < {LYNIS_BAR}"
