"""Build the Ringmesh appliance images from one debootstrap rootfs, configured by the roles.

    images/build [--suite trixie|bookworm] [--out DIR] [--disk-size SIZE]

1. the rootfs: the plain Debian base image that images/base/build makes (debootstrap), copied
2. playbooks/image.yml over Ansible's chroot connection: kernel, bootloader files, cloud-init,
   hardening, firewall, supervisor, the node (no identity), key rotation, image cleanup
3. the package manifest and a CycloneDX SBOM (Debian and Python packages)
4. the podman image, the bootable raw disk (GPT, BIOS boot, ext4 root, GRUB), the qcow2, and
   the Vagrant libvirt box (the same root plus the `vagrant` user Vagrant logs in as)
5. SHA256SUMS

Everything is written to a hidden directory beside the output first and moved into place
when every step has passed: a failed build names its step and leaves no image behind.
Needs root (chroot, bind mounts), podman, sfdisk, mkfs.ext4, qemu-img and vagrant's
insecure public key (scripts/bootstrap-host installs them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from disk import DiskLayout, install_bootloader, write_partition_table
from manifest import installed_packages, write_manifest, write_sbom

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "playbooks" / "image.yml"
BASE_BUILD = REPO / "images" / "base" / "build"
BASE_IMAGE = "localhost/ringmesh-debian:{suite}"
APPLIANCE_IMAGE = "localhost/ringmesh-appliance:{suite}"
# Vagrant logs in to boxes with its well-known insecure key pair (only the public half is
# used here; Vagrant itself holds the private one).
VAGRANT_PUBLIC_KEYS = sorted(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant.pub"))
# Where the node role keeps its identity: the image must not carry one.
NODE_KEYSTORE = "var/lib/ringmesh/keys"

STARTED = time.monotonic()


class BuildError(Exception):
    """A step failed; the message names it."""


def say(message: str) -> None:
    elapsed = int(time.monotonic() - STARTED)
    print(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", flush=True)


class Build:
    """One build: the steps, their progress lines, and the log every command writes to."""

    def __init__(self, suite: str, out: Path, disk_size: int, playbook: Path) -> None:
        self.suite = suite
        self.playbook = playbook
        self.name = f"ringmesh-{suite}"
        self.final = out
        self.partial = out.parent / f".{out.name}.partial"
        self.work = out.parent / f".{out.name}.work"  # rootfs and temporary disks, never shipped
        self.rootfs = self.work / "rootfs"
        self.disk_size = disk_size
        self.log_path = out.parent / f"{out.name}.log"
        self.step_number = 0
        self.root_uuid = str(uuid.uuid4())

    @contextmanager
    def step(self, title: str, total: int = 8) -> Iterator[None]:
        self.step_number += 1
        label = f"step {self.step_number}/{total} {title}"
        say(f"{label} ...")
        self.log(f"\n=== {label}\n")
        began = time.monotonic()
        try:
            yield
        except BuildError as error:
            raise BuildError(f"{label}: {error}") from None
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            raise BuildError(f"{label}: {error}") from None
        say(f"{label}: done in {time.monotonic() - began:.0f}s")

    def log(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(text)

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float = 1800,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
        input_text: str | None = None,
        capture: bool = False,
    ) -> str:
        """Run a command, its output into the build log (or returned when capture is set)."""
        self.log(f"$ {' '.join(cmd)}\n")
        start = self.log_path.stat().st_size
        with self.log_path.open("a") as log:
            result = subprocess.run(
                list(cmd),
                stdin=stdin if stdin is not None else (None if input_text is not None else subprocess.DEVNULL),
                input=input_text,
                stdout=subprocess.PIPE if capture else log,
                stderr=log,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        if result.returncode != 0:
            raise BuildError(
                f"`{' '.join(cmd)}` exited {result.returncode}; from {self.log_path}:\n{self.excerpt(start)}"
            )
        return result.stdout if capture else ""

    def excerpt(self, start: int) -> str:
        """What the failed command wrote: from Ansible's first failure on, else its last lines."""
        with self.log_path.open() as log:
            log.seek(start)
            lines = log.read().splitlines(keepends=True)
        failure = next((i for i, line in enumerate(lines) if line.startswith(("fatal:", "failed:"))), None)
        return "".join(lines[failure : failure + 40] if failure is not None else lines[-25:])

    def run_playbook(self, cmd: Sequence[str], env: dict[str, str]) -> None:
        """ansible-playbook with one progress line per play and role; the rest goes to the log."""
        self.log(f"$ {' '.join(cmd)}\n")
        start = self.log_path.stat().st_size
        role = ""
        with (
            self.log_path.open("a") as log,
            subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            ) as playbook,
        ):
            assert playbook.stdout is not None
            for line in playbook.stdout:
                log.write(line)
                if line.startswith("PLAY ["):
                    say("  " + line.strip().rstrip("*").strip())
                elif line.startswith("TASK [") and " : " in line:
                    task_role = line.split("[", 1)[1].split(" : ")[0]
                    if task_role != role:
                        role = task_role
                        say(f"    role {role}")
        if playbook.returncode != 0:
            raise BuildError(
                f"ansible-playbook exited {playbook.returncode}; from {self.log_path}:\n{self.excerpt(start)}"
            )

    def chroot(self, *cmd: str, capture: bool = False) -> str:
        return self.run(["chroot", str(self.rootfs), *cmd], capture=capture)

    # --- the steps ------------------------------------------------------------------------

    def base_rootfs(self) -> None:
        image = BASE_IMAGE.format(suite=self.suite)
        self.run([str(BASE_BUILD), self.suite])
        self.rootfs.mkdir(parents=True)
        container = self.run(["podman", "create", "--quiet", image, "/bin/true"], capture=True).strip()
        try:
            self.log(f"$ podman export {container} | tar -x -C {self.rootfs}\n")
            with subprocess.Popen(["podman", "export", container], stdout=subprocess.PIPE) as export:
                assert export.stdout is not None
                self.run(["tar", "-x", "--numeric-owner", "-C", str(self.rootfs)], stdin=export.stdout.fileno())
            if export.returncode != 0:
                raise BuildError(f"podman export of {image} exited {export.returncode}")
        finally:
            self.run(["podman", "rm", "--force", container])
        # podman leaves empty mount points for the files it injects at run time.
        for name in ("etc/hostname", "etc/hosts", "etc/resolv.conf", "run/.containerenv"):
            path = self.rootfs / name
            if path.exists() and path.stat().st_size == 0:
                path.unlink()

    @contextmanager
    def chroot_mounts(self) -> Iterator[None]:
        """/proc, /sys, /dev and /run for package scripts in the chroot; services kept from starting."""
        mounts = [
            (["--bind", "/dev"], "dev"),
            (["--bind", "/dev/pts"], "dev/pts"),
            (["-t", "proc", "proc"], "proc"),
            (["-t", "sysfs", "sysfs"], "sys"),
            (["-t", "tmpfs", "tmpfs"], "run"),
        ]
        policy = self.rootfs / "usr/sbin/policy-rc.d"
        resolv = self.rootfs / "etc/resolv.conf"
        with ExitStack() as stack:
            for args, target in mounts:
                path = self.rootfs / target
                path.mkdir(parents=True, exist_ok=True)
                self.run(["mount", *args, str(path)])
                stack.callback(self.run, ["umount", "--lazy", str(path)])
            # Debian's convention: policy-rc.d exit 101 keeps package scripts from starting services.
            policy.write_text("#!/bin/sh\n# Image build: no service starts in the chroot.\nexit 101\n")
            policy.chmod(0o755)
            stack.callback(policy.unlink)
            # apt reaches the mirror through the build host's resolver; the image gets its own at boot.
            resolv.unlink(missing_ok=True)
            shutil.copyfile("/etc/resolv.conf", resolv)
            stack.callback(self.drop_build_resolv_conf)
            yield

    def drop_build_resolv_conf(self) -> None:
        """The build host's resolver goes; the link that systemd-resolved's package made stays."""
        resolv = self.rootfs / "etc/resolv.conf"
        if resolv.is_file() and not resolv.is_symlink():
            resolv.unlink()

    def configure(self) -> None:
        inventory = self.work / "inventory.ini"
        inventory.write_text(
            f"[image]\n{self.name} ansible_host={self.rootfs} ansible_connection=community.general.chroot\n"
        )
        venv_bin = REPO / ".venv" / "bin"
        env = dict(
            os.environ,
            PATH=f"{venv_bin}:{os.environ['PATH']}",
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_roles",
        )
        self.run_playbook(
            [
                "ansible-playbook",
                "-i",
                str(inventory),
                str(self.playbook),
                "-e",
                json.dumps({"image_root_uuid": self.root_uuid, "image_suite": self.suite}),
            ],
            env,
        )
        # Ansible's working directory in the chroot lives as long as Ansible runs there.
        self.remove_tree(self.rootfs / "root/.ansible")

    def check_checklist(self) -> None:
        """The systemd image checklist, read from the finished rootfs (the cleanup role did the work)."""
        problems = []
        if (self.rootfs / "etc/machine-id").read_bytes() != b"":
            problems.append("/etc/machine-id is not empty")
        dbus_id = self.rootfs / "var/lib/dbus/machine-id"
        if dbus_id.exists() and not (dbus_id.is_symlink() and os.readlink(dbus_id) == "/etc/machine-id"):
            problems.append("/var/lib/dbus/machine-id is a file of its own")
        leftovers = [
            "var/lib/systemd/random-seed",
            "var/lib/systemd/credential.secret",
            NODE_KEYSTORE,
            "root/.bash_history",
            "root/.ansible",
            "etc/hostname",
            "usr/sbin/policy-rc.d",
        ]
        problems += [f"/{p} exists" for p in leftovers if (self.rootfs / p).exists() or (self.rootfs / p).is_symlink()]
        problems += [f"/{p.relative_to(self.rootfs)} exists" for p in (self.rootfs / "etc/ssh").glob("ssh_host_*")]
        problems += [f"/{p.relative_to(self.rootfs)} exists" for p in (self.rootfs / "home").glob("*/.bash_history")]
        problems += [
            f"/{p.relative_to(self.rootfs)} exists" for p in (self.rootfs / "var/lib/apt/lists").glob("*_Packages*")
        ]
        problems += [f"/{p.relative_to(self.rootfs)} exists" for p in self.rootfs.glob("*/.ssh/authorized_keys")]
        problems += [f"/{p.relative_to(self.rootfs)} exists" for p in self.rootfs.glob("home/*/.ssh/authorized_keys")]
        if problems:
            raise BuildError("image checklist: " + "; ".join(problems))

    def manifest(self) -> None:
        packages = installed_packages(self.rootfs)
        write_manifest(packages, self.partial / f"{self.name}.packages.txt")
        write_sbom(packages, self.suite, self.partial / f"{self.name}.cdx.json")
        say(f"  {len(packages)} packages ({sum(p.kind == 'pypi' for p in packages)} Python)")

    def podman_image(self) -> None:
        image = APPLIANCE_IMAGE.format(suite=self.suite)
        archive = self.work / "rootfs.tar"
        self.run(["tar", "-C", str(self.rootfs), "--numeric-owner", "--xattrs", "-cf", str(archive), "."])
        self.run(
            [
                "podman", "import", "--quiet",
                "--change", 'CMD ["/sbin/init"]', "--change", "STOPSIGNAL=SIGRTMIN+3",
                str(archive), image,
            ]
        )  # fmt: skip
        archive.unlink()
        self.run(
            [
                "podman",
                "save",
                "--quiet",
                "--format",
                "oci-archive",
                "-o",
                str(self.partial / f"{self.name}.oci.tar"),
                image,
            ]
        )

    def disk(self, raw: Path) -> None:
        """GPT with a BIOS boot partition and the ext4 root, GRUB in the MBR and the BIOS boot partition."""
        layout = DiskLayout(size=self.disk_size)
        self.run(["truncate", "--size", str(layout.size), str(raw)])
        write_partition_table(raw, layout, self.run)
        self.run(
            [
                "mkfs.ext4", "-F", "-q", "-L", "ringmesh-root", "-U", self.root_uuid,
                # Features GRUB 2.06 (bookworm) and both releases' e2fsck read.
                "-O", "^metadata_csum_seed,^orphan_file",
                "-E", f"offset={layout.root_offset},root_owner=0:0",
                "-d", str(self.rootfs), str(raw), f"{layout.root_size // 1024}k",
            ]
        )  # fmt: skip
        install_bootloader(raw, layout, self.rootfs)

    def raw_and_qcow2(self) -> None:
        raw = self.partial / f"{self.name}.raw"
        self.disk(raw)
        self.run(
            [
                "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd",
                str(raw), str(self.partial / f"{self.name}.qcow2"),
            ]
        )  # fmt: skip

    def vagrant_box(self) -> None:
        if not VAGRANT_PUBLIC_KEYS:
            raise BuildError("vagrant's insecure public key not found: install vagrant (scripts/bootstrap-host)")
        public_key = VAGRANT_PUBLIC_KEYS[-1].read_text().strip()
        # The box, and only the box, gets the user Vagrant logs in as.
        self.chroot("useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", "vagrant")
        ssh_dir = self.rootfs / "home/vagrant/.ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(public_key + "\n")
        (ssh_dir / "authorized_keys").chmod(0o600)
        self.chroot("chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")
        sudoers = self.rootfs / "etc/sudoers.d/vagrant"
        sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        raw = self.work / "box.raw"
        self.disk(raw)
        box_img = self.work / "box.img"
        self.run(["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", str(raw), str(box_img)])
        raw.unlink()
        metadata = self.work / "metadata.json"
        metadata.write_text(
            json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": self.disk_size // 2**30})
        )
        vagrantfile = self.work / "Vagrantfile"
        vagrantfile.write_text(BOX_VAGRANTFILE)
        with tarfile.open(self.partial / f"{self.name}.box", "w") as box:
            for path in (metadata, vagrantfile, box_img):
                box.add(path, arcname=path.name)

    def checksums(self) -> None:
        lines = []
        for path in sorted(self.partial.iterdir()):
            digest = hashlib.sha256()
            with path.open("rb") as artifact:
                while chunk := artifact.read(1 << 20):
                    digest.update(chunk)
            lines.append(f"{digest.hexdigest()}  {path.name}\n")
        (self.partial / "SHA256SUMS").write_text("".join(lines))

    # --- the whole build --------------------------------------------------------------------

    def build(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(
            f"images/build --suite {self.suite}: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
        say(f"building {self.name} into {self.final} (log: {self.log_path})")
        for leftover in (self.partial, self.work):
            self.remove_tree(leftover)
        self.partial.mkdir()
        try:
            with self.step("base rootfs (images/base/build, podman export)"):
                self.base_rootfs()
            with self.chroot_mounts(), self.step(f"{self.playbook.name} over the chroot connection"):
                self.configure()
            with self.step("image checklist"):
                self.check_checklist()
            with self.step("package manifest and SBOM"):
                self.manifest()
            with self.step("podman image"):
                self.podman_image()
            with self.step("raw disk and qcow2"):
                self.raw_and_qcow2()
            with self.step("Vagrant libvirt box"):
                self.vagrant_box()
            with self.step("SHA256SUMS"):
                self.checksums()
            old = self.final.with_name(f".{self.final.name}.old")
            self.remove_tree(old)
            if self.final.exists():
                self.final.rename(old)
            self.partial.rename(self.final)
            self.remove_tree(old)
        finally:
            self.remove_tree(self.partial)
            self.remove_tree(self.work)
        for path in sorted(self.final.iterdir()):
            say(f"  {path.name:34} {path.stat().st_size / 2**20:8.1f} MiB")
        say(f"built {self.name} in {time.monotonic() - STARTED:.0f}s")

    def remove_tree(self, path: Path) -> None:
        if not path.exists():
            return
        # A crashed build may have left its bind mounts: never recurse into the host's /dev.
        for target in ("dev/pts", "dev", "proc", "sys", "run"):
            mounted = path / "rootfs" / target
            if os.path.ismount(mounted):
                subprocess.run(["umount", "--lazy", str(mounted)], check=False)
        shutil.rmtree(path)


# The box's own Vagrantfile: defaults that work for any project using the box.
BOX_VAGRANTFILE = """\
# Defaults of the Ringmesh box (libvirt). A project's Vagrantfile overrides them.
Vagrant.configure("2") do |config|
  config.ssh.insert_key = false
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.graphics_type = "none"
    libvirt.video_type = "none"
  end
end
"""


def parse_size(text: str) -> int:
    units = {"M": 2**20, "G": 2**30}
    if text[-1:].upper() in units and text[:-1].isdigit():
        return int(text[:-1]) * units[text[-1].upper()]
    raise argparse.ArgumentTypeError(f"--disk-size: expected a size such as 3G or 2048M, got {text!r}")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="images/build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite", choices=["trixie", "bookworm"], default="trixie", help="Debian release (default: trixie)"
    )
    parser.add_argument("--out", type=Path, help="build directory (default: build/images/<suite>)")
    parser.add_argument(
        "--disk-size",
        type=parse_size,
        default=parse_size("3G"),
        help="virtual disk size (default 3G; grown at first boot)",
    )
    parser.add_argument(
        "--playbook",
        type=Path,
        default=PLAYBOOK,
        help="the playbook that configures the rootfs (default: playbooks/image.yml)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("images/build: run as root (chroot and bind mounts)", file=sys.stderr)
        return 2
    out = (args.out or REPO / "build" / "images" / args.suite).resolve()
    try:
        Build(args.suite, out, args.disk_size, args.playbook.resolve()).build()
    except BuildError as error:
        say(f"FAILED: {error}")
        return 1
    except subprocess.TimeoutExpired as error:
        say(f"FAILED: timed out after {error.timeout:.0f}s: {' '.join(map(str, error.cmd))}")
        return 1
    return 0
