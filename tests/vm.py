"""Boot appliance images under QEMU in a network namespace of the test's own.

Every VM gets a throw-away qcow2 overlay on the image, a cloud-init NoCloud seed (ISO
labelled `cidata`: the test's SSH key, a hostname, the network), a user-mode NIC whose SSH
port is forwarded to the namespace's loopback, and a tap on the namespace's bridge: the
VMs' private network. ssh (and testinfra through it) reaches a VM with a ProxyCommand that
enters the namespace. The namespace has a route out, as a VPS has: a veth pair to the host,
masqueraded by an nftables table of the namespace's own (removed with it), so the VMs reach
Debian's mirror through their user-mode NIC. QEMU runs with TCG (RINGMESH_QEMU_ACCEL=kvm where
nested KVM works).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Seconds from start to the SSH banner before a boot counts as hung (TCG: about 60-90).
BOOT_DEADLINE = 300


class VMError(Exception):
    """A VM did not come up; the message says where its serial log is."""


def run(cmd: list[str], *, timeout: float = 60, check: bool = True, input_text: str | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, input=input_text)
    if check and result.returncode != 0:
        raise VMError(f"`{' '.join(cmd)}` exited {result.returncode}: {result.stdout}{result.stderr}".strip())
    return result.stdout


def accelerator() -> list[str]:
    """TCG unless RINGMESH_QEMU_ACCEL=kvm: /dev/kvm can open and even start a machine-less
    QEMU where nested virtualisation then fails on the first MSR write."""
    if os.environ.get("RINGMESH_QEMU_ACCEL") == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi,tb-size=256"]


@dataclass
class Namespace:
    """A network namespace with a bridge (the VMs' private L2 network, reachable from nowhere
    else) and an uplink: a veth pair to the host whose traffic the host masquerades."""

    name: str
    uplink_subnet: int  # 0-255: the uplink is 10.214.<uplink_subnet>.0/30
    bridge: str = "br0"

    @property
    def host_veth(self) -> str:
        return f"rmimg{self.uplink_subnet}"  # an interface name has at most 15 characters

    @property
    def nat_table(self) -> str:
        return f"ringmesh_{self.name.replace('-', '_')}"

    def uplink_address(self, end: int) -> str:
        return f"10.214.{self.uplink_subnet}.{end}"

    def create(self) -> None:
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        run(["ip", "-n", self.name, "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "-n", self.name, "link", "set", self.bridge, "up"])
        self.add_uplink()

    def add_uplink(self) -> None:
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
            raise VMError("the VMs' uplink needs IPv4 forwarding on this host: sysctl -w net.ipv4.ip_forward=1")
        run(["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "uplink", "netns", self.name])
        run(["ip", "addr", "add", f"{self.uplink_address(1)}/30", "dev", self.host_veth])
        run(["ip", "link", "set", self.host_veth, "up"])
        run(["ip", "-n", self.name, "addr", "add", f"{self.uplink_address(2)}/30", "dev", "uplink"])
        run(["ip", "-n", self.name, "link", "set", "uplink", "up"])
        run(["ip", "-n", self.name, "route", "add", "default", "via", self.uplink_address(1)])
        # A table of its own: nothing else's rules are touched, and deleting it undoes all.
        run(
            ["nft", "-f", "-"],
            input_text=f"""table ip {self.nat_table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {self.uplink_address(0)}/30 oifname != "{self.host_veth}" masquerade
  }}
}}
""",
        )

    def add_tap(self, tap: str) -> None:
        run(["ip", "-n", self.name, "tuntap", "add", "dev", tap, "mode", "tap"])
        run(["ip", "-n", self.name, "link", "set", tap, "master", self.bridge, "up"])

    def exec(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def destroy(self) -> None:
        run(["nft", "delete", "table", "ip", self.nat_table], check=False)
        run(["ip", "link", "del", self.host_veth], check=False)  # takes its peer with it
        run(["ip", "netns", "del", self.name], check=False)


@dataclass
class VM:
    """One VM booted from an image, configured by its NoCloud seed."""

    name: str
    image: Path
    workdir: Path
    netns: Namespace
    index: int  # 1, 2, ...: ports, MACs and the private address
    public_key: str
    private_key: Path
    user: str = "debian"  # Debian's cloud-init default user gets the seed's keys
    disk_size: str = "4G"  # larger than the image: first boot must grow the root filesystem
    memory_mb: int = 1024
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    boot_seconds: float = 0.0
    attempts: list[str] = field(default_factory=list)

    @property
    def ssh_port(self) -> int:
        return 2200 + self.index

    @property
    def private_address(self) -> str:
        return f"10.213.0.{10 + self.index}"

    @property
    def tap(self) -> str:
        return f"tap{self.index}"

    def mac(self, nic: int) -> str:
        return f"52:54:00:21:{nic:02x}:{self.index:02x}"

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"{self.name}.serial.log"

    @property
    def control_path(self) -> str:
        # A Unix socket path has at most 107 bytes, and ssh adds 17 to it while it makes the
        # master: under the repository it is too long, and every ssh fails after logging in.
        return f"/tmp/{self.workdir.name}.{self.name}.%C"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / f"{self.name}.ssh_config"

    # --- the seed and the disk ------------------------------------------------------------

    def write_seed(self) -> Path:
        seed_dir = self.workdir / f"{self.name}.seed"
        seed_dir.mkdir(exist_ok=True)
        (seed_dir / "meta-data").write_text(f"instance-id: {self.name}\nlocal-hostname: {self.name}\n")
        (seed_dir / "user-data").write_text(
            "#cloud-config\n" + json.dumps({"ssh_authorized_keys": [self.public_key]}) + "\n"
        )
        network = {
            "version": 2,
            "ethernets": {
                "uplink": {"match": {"macaddress": self.mac(1)}, "dhcp4": True},
                "mesh": {"match": {"macaddress": self.mac(2)},
                         "addresses": [f"{self.private_address}/24"]},
            },
        }  # fmt: skip
        (seed_dir / "network-config").write_text(json.dumps(network) + "\n")
        iso = self.workdir / f"{self.name}.seed.iso"
        run(
            [
                "xorriso",
                "-as",
                "mkisofs",
                "-quiet",
                "-output",
                str(iso),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                str(seed_dir),
            ]
        )
        return iso

    def qemu_command(self, overlay: Path, seed: Path) -> list[str]:
        return [
            "qemu-system-x86_64", "-name", self.name, *accelerator(),
            "-smp", "1", "-m", str(self.memory_mb), "-nodefaults", "-display", "none",
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=uplink,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=uplink,mac={self.mac(1)}",
            "-netdev", f"tap,id=mesh,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=mesh,mac={self.mac(2)}",
            "-device", "virtio-rng-pci",
            "-serial", f"file:{self.serial_log}",
        ]  # fmt: skip

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Boot from a fresh overlay (a retry starts over: first boot runs again)."""
        overlay = self.workdir / f"{self.name}.qcow2"
        overlay.unlink(missing_ok=True)
        run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(self.image),
                str(overlay),
                self.disk_size,
            ]
        )
        seed = self.write_seed()
        self.write_ssh_config()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.netns.exec(*self.qemu_command(overlay, seed)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"{self.name}.qemu.log").open("wb"),
        )

    def banner(self) -> bool:
        probe = f"exec 3<>/dev/tcp/127.0.0.1/{self.ssh_port} && timeout 5 head -c 7 <&3"
        result = subprocess.run(self.netns.exec("bash", "-c", probe), capture_output=True, timeout=15, check=False)
        return result.stdout.startswith(b"SSH-2.0")

    def wait_for_ssh(self, deadline: float = BOOT_DEADLINE) -> bool:
        assert self.process is not None
        while time.monotonic() - self.started < deadline:
            if self.process.poll() is not None:
                # Not a hung boot: QEMU itself refused (a retry would fail the same way).
                qemu_log = (self.workdir / f"{self.name}.qemu.log").read_text(errors="replace")
                raise VMError(f"{self.name}: QEMU exited {self.process.returncode}: {qemu_log.strip()[-2000:]}")
            if self.banner():
                self.boot_seconds = time.monotonic() - self.started
                return True
            time.sleep(2)
        return False

    def boot(self, retries: int = 1) -> None:
        """Start and wait for SSH; a hung boot (TCG hangs now and then) is killed and retried."""
        for attempt in range(retries + 1):
            self.start()
            if self.wait_for_ssh():
                return
            kept = self.serial_log.with_suffix(f".attempt{attempt + 1}.log")
            self.stop()
            if self.serial_log.exists():
                shutil.copyfile(self.serial_log, kept)
            self.attempts.append(str(kept))
        raise VMError(
            f"{self.name}: no SSH banner within {BOOT_DEADLINE}s in {retries + 1} boots; serial logs: {self.attempts}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    # --- talking to the VM ----------------------------------------------------------------

    def write_ssh_config(self) -> None:
        self.ssh_config.write_text(
            f"""Host {self.name}
  HostName 127.0.0.1
  Port {self.ssh_port}
  User {self.user}
  IdentityFile {self.private_key}
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 20
  ServerAliveInterval 15
  ControlMaster auto
  ControlPath {self.control_path}
  ControlPersist 120
  ProxyCommand {" ".join(self.netns.exec("socat", "-", "TCP:127.0.0.1:%p"))}
"""
        )

    def ssh(
        self, command: str, *, user: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        target = f"{user}@{self.name}" if user else self.name
        result = subprocess.run(
            ["ssh", "-F", str(self.ssh_config), target, command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise VMError(
                f"{self.name}: `{command}` exited {result.returncode}: {result.stdout}{result.stderr}".strip()
            )
        return result

    def close_ssh(self) -> None:
        """End the SSH control master (ControlPersist) this VM's connections share."""
        if self.ssh_config.exists():
            subprocess.run(
                ["ssh", "-F", str(self.ssh_config), "-O", "exit", self.name],
                capture_output=True,
                timeout=30,
                check=False,
            )

    def wait_for(self, command: str, deadline: float) -> float:
        """Seconds since start until COMMAND succeeds over SSH."""
        while True:
            result = self.ssh(command, check=False, timeout=60)
            if result.returncode == 0:
                return time.monotonic() - self.started
            if time.monotonic() - self.started > deadline:
                raise VMError(
                    f"{self.name}: `{command}` did not succeed within {deadline:.0f}s of boot; "
                    f"the last try exited {result.returncode}: {result.stdout}{result.stderr}".strip()
                )
            time.sleep(3)
