"""A 3-member etcd cluster with mutual TLS and ledger node processes, all on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from servers import free_port

ETCD = "/usr/bin/etcd"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class Authority:
    """A test CA; every host gets its own key and certificate from it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledger test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, host: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.dir / f"{host}.pem", self.dir / f"{host}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_file, key)
        return cert_file, key_file


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    cert: Path
    key: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    root: Path
    ca: Authority
    members: list[EtcdMember] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, size: int = 3) -> EtcdCluster:
        root.mkdir(parents=True, exist_ok=True)
        cluster = cls(root, Authority(root))
        for i in range(size):
            cert, key = cluster.ca.issue(f"etcd{i}")
            cluster.members.append(
                EtcdMember(f"etcd{i}", free_port(), free_port(), root / f"etcd{i}", cert, key)
            )
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, member: EtcdMember) -> None:
        initial = ",".join(f"{m.name}=https://127.0.0.1:{m.peer_port}" for m in self.members)
        log = open(self.root / f"{member.name}.log", "ab")  # noqa: SIM115 - owned by the process
        member.proc = subprocess.Popen(
            [
                ETCD,
                "--name",
                member.name,
                "--data-dir",
                str(member.data_dir),
                "--listen-client-urls",
                member.client_url,
                "--advertise-client-urls",
                member.client_url,
                "--listen-peer-urls",
                f"https://127.0.0.1:{member.peer_port}",
                "--initial-advertise-peer-urls",
                f"https://127.0.0.1:{member.peer_port}",
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "ledger-test",
                "--cert-file",
                str(member.cert),
                "--key-file",
                str(member.key),
                "--trusted-ca-file",
                str(self.ca.ca_file),
                "--client-cert-auth",
                "--peer-cert-file",
                str(member.cert),
                "--peer-key-file",
                str(member.key),
                "--peer-trusted-ca-file",
                str(self.ca.ca_file),
                "--peer-client-cert-auth",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_all(self) -> None:
        for m in self.members:
            self.start(m)
        deadline = time.monotonic() + 60
        for m in self.members:
            while not self._healthy(m):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {m.name} did not become healthy")
                time.sleep(0.2)

    def _healthy(self, member: EtcdMember) -> bool:
        cert, key = (
            self.ca.issue("probe")
            if not (self.root / "probe.pem").exists()
            else (self.root / "probe.pem", self.root / "probe-key.pem")
        )
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca.ca_file))
        ctx.load_cert_chain(str(cert), str(key))
        try:
            with urllib.request.urlopen(member.client_url + "/health", context=ctx, timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except OSError:
            return False

    def kill(self, member: EtcdMember) -> None:
        if member.proc is not None:
            member.proc.kill()
            member.proc.wait()
            member.proc = None

    def stop_all(self) -> None:
        for m in self.members:
            if m.proc is not None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                m.proc.wait(timeout=20)
                m.proc = None


@dataclass
class LedgerNode:
    name: str
    directory: Path
    api_port: int
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def start(self) -> None:
        log = open(self.directory / "node.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringmesh_ledger.cli", "--config", str(self.config_file), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/v1/status")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"ledger node {self.name} did not start") from None
                time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
            self.proc = None

    def did(self) -> str:
        return str(self.get("/v1/status")["did"])


def node_config(
    directory: Path,
    cluster: EtcdCluster,
    api_port: int,
    issuer: str,
    ring: list[tuple[str, str]],
    database: str = "",
    snapshot_interval: int = 5,
) -> str:
    cert, key = cluster.ca.issue(directory.name)
    lines = [
        "[ledger]",
        f'name = "{directory.name}"',
        f'state_dir = "{directory}"',
        f'issuer = "{issuer}"',
        f"snapshot_interval = {snapshot_interval}",
        "[api]",
        f'listen = "127.0.0.1:{api_port}"',
        "rate = 1000.0",
        "burst = 1000",
        "[metrics]",
        f'listen = "127.0.0.1:{free_port()}"',
        "[etcd]",
        "endpoints = [" + ", ".join(f'"{e}"' for e in cluster.endpoints) + "]",
        f'ca = "{cluster.ca.ca_file}"',
        f'cert = "{cert}"',
        f'key = "{key}"',
    ]
    if database:
        lines.insert(5, f'database = "{database}"')
    for did, url in ring:
        lines += ["[[first_ring]]", f'did = "{did}"', f'url = "{url}"']
    return "\n".join(lines) + "\n"


def make_nodes(root: Path, cluster: EtcdCluster, issuer: str, count: int = 3) -> list[LedgerNode]:
    """Ledger nodes whose keys exist before their configs, so each config pins the whole ring."""
    from ringmesh_ledger.keys import load_or_create

    nodes, ring = [], []
    for i in range(count):
        d = root / f"ledger{i}"
        d.mkdir(parents=True)
        key, _ = load_or_create(d / "ledger.key")
        node = LedgerNode(f"ledger{i}", d, free_port(), d / "ledger.toml")
        nodes.append(node)
        ring.append((key.did, node.url))
    for node in nodes:
        node.config_file.write_text(
            node_config(node.directory, cluster, node.api_port, issuer, ring)
        )
    return nodes


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


os.environ.setdefault("PYTHONUNBUFFERED", "1")
