"""A loopback fleet of real `ringmesh run` processes and clients, for the integration tests."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ringmesh.config import Config, RelayEntry, render_config

RINGMESH = [sys.executable, "-m", "ringmesh.cli"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resident_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def ringmesh(
    *args: str, config: Path, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*RINGMESH, *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Node:
    name: str
    state_dir: Path
    config: Path
    port: int = 0
    metrics_port: int = 0
    did: str = ""
    proc: subprocess.Popen[bytes] | None = None
    advertised_port: int = 0  # what the others dial (may be a recording proxy)
    command: list[str] = field(default_factory=lambda: list(RINGMESH))  # how to run it
    host: str = "127.0.0.1"  # any 127.0.0.0/8 address: relays on distinct source addresses

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


# Fast Loopix rates so the tests take seconds: a 10 KiB message (13 fragments) leaves a
# client in about 0.3 s, each hop holds a packet about 2 ms. Small replay filters (1.2 MB)
# for test relays: their packet budget is never reached here.
RELAY_VALUES: dict[str, object] = {
    "mean_delay_ms": 2,
    "loop_rate": 2.0,
    "mailbox_ttl_seconds": 600,
    "replay_packets_per_second": 100,
}
CLIENT_VALUES: dict[str, object] = {"mean_delay_ms": 2, "send_rate": 50.0, "client_loop_rate": 5.0}


@dataclass
class Fleet:
    root: Path
    relays: list[Node] = field(default_factory=list)
    clients: list[Node] = field(default_factory=list)
    relay_values: dict[str, object] = field(default_factory=lambda: dict(RELAY_VALUES))
    client_values: dict[str, object] = field(default_factory=lambda: dict(CLIENT_VALUES))
    proxies: list[RecordingProxy] = field(default_factory=list)

    @staticmethod
    def pins(nodes: list[Node]) -> tuple[RelayEntry, ...]:
        return tuple(RelayEntry.from_did(n.did, Fleet.dialled(n)) for n in nodes)

    @staticmethod
    def dialled(node: Node) -> tuple[str, int]:
        if node.advertised_port:  # the recording proxy in front of it
            return "127.0.0.1", node.advertised_port
        return node.address

    def write_config(self, node: Node, **values: object) -> None:
        base = Config(node.config, name=node.name, state_dir=node.state_dir)
        node.config.write_text(render_config(replace(base, **values)))  # type: ignore[arg-type]

    def write_relay_config(self, node: Node, pinned: list[Node], **values: object) -> None:
        self.write_config(
            node,
            listen=node.address,
            advertise=f"{node.host}:{node.port}",
            metrics_listen=("127.0.0.1", node.metrics_port),
            relays=self.pins(pinned),
            **(self.relay_values | values),
        )

    def write_client_config(self, node: Node, home: Node, **values: object) -> None:
        self.write_config(
            node,
            role="client",
            client_home=home.did,
            relays=self.pins(self.relays),
            **(self.client_values | values),
        )

    def make_node(
        self,
        name: str,
        host: str = "127.0.0.1",
        offline_identity: Path | None = None,
        lifetime: str = "30d",
    ) -> Node:
        """A node with its keystore; with offline_identity (the operator's identity key file,
        made if absent) the keystore holds a certified signing key instead."""
        state = self.root / name
        state.mkdir(mode=0o700)
        node = Node(name, state, self.root / f"{name}.toml", free_udp_port(), free_tcp_port())
        node.host = host
        self.write_config(node, metrics_listen=None)  # enough to run `keys init` with
        offline: list[str] = []
        if offline_identity is not None:
            made = ringmesh(
                "keys",
                "certify",
                "--identity-key",
                str(offline_identity),
                "--create",
                config=node.config,
            )
            assert made.returncode == 0, made.stderr
            offline = ["--offline-identity", json.loads(made.stdout)["did"]]
        out = ringmesh("keys", "init", *offline, config=node.config)
        assert out.returncode == 0, out.stderr
        if offline_identity is not None:
            self.certify(node, offline_identity, lifetime)
        show = ringmesh("keys", "show", "--public", "--json", config=node.config)
        node.did = json.loads(show.stdout)["did"]
        return node

    def certify(self, node: Node, identity_key: Path, lifetime: str = "30d") -> dict[str, Any]:
        """What the operator's machine does: certify the node's signing request, install it."""
        request = ringmesh("keys", "signing-request", config=node.config)
        assert request.returncode == 0, request.stderr
        certificate = ringmesh(
            "keys",
            "certify",
            "--identity-key",
            str(identity_key),
            "--lifetime",
            lifetime,
            "--request",
            "-",
            config=node.config,
            stdin=request.stdout,
        )
        assert certificate.returncode == 0, certificate.stderr
        out = ringmesh(
            "keys", "install-cert", "--json", config=node.config, stdin=certificate.stdout
        )
        assert out.returncode == 0, out.stderr
        installed: dict[str, Any] = json.loads(out.stdout)
        return installed

    def identity_file(self, node_name: str) -> Path:
        """Where the operator keeps a relay's offline identity key (outside its state)."""
        return self.root / f"{node_name}.identity"

    def create(
        self,
        n_relays: int,
        n_clients: int,
        proxies: bool = False,
        hosts: list[str] | None = None,
        offline: tuple[int, ...] = (),  # relays (by index) whose identity key stays offline
    ) -> None:
        hosts = hosts or ["127.0.0.1"] * n_relays
        names = [f"relay{i + 1}" for i in range(n_relays)]
        self.relays = [
            self.make_node(name, hosts[i], self.identity_file(name) if i in offline else None)
            for i, name in enumerate(names)
        ]
        if proxies:
            for relay in self.relays:
                proxy = RecordingProxy(relay.port)
                self.proxies.append(proxy)
                relay.advertised_port = proxy.port
        for relay in self.relays:
            self.write_relay_config(relay, self.relays)
        self.clients = []
        for i in range(n_clients):
            client = self.make_node(f"client{i + 1}")
            self.write_client_config(client, self.relays[i % n_relays])
            self.clients.append(client)

    def start(self, node: Node) -> None:
        log = open(self.root / f"{node.name}.log", "ab")  # noqa: SIM115 - lives with the process
        node.proc = subprocess.Popen(
            [*node.command, "run", "--config", str(node.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_all(self) -> None:
        for relay in self.relays:
            self.start(relay)
        self.wait_peers_up(self.relays, len(self.relays) - 1)
        self.wait_directory(self.relays)

    def status(self, node: Node) -> dict[str, Any] | None:
        out = ringmesh("status", "--json", config=node.config, timeout=10)
        if out.returncode != 0:
            return None
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def wait_peers_up(self, nodes: list[Node], want: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.status(n) for n in nodes]
            if all(s is not None and int(str(s["peers_up"])) >= want for s in states):
                return
            time.sleep(0.3)
        raise AssertionError(f"peers did not come up: {states}")

    def wait_directory(self, nodes: list[Node], timeout: float = 30) -> str:
        """Wait until every relay serves the same majority-signed directory; its digest."""
        deadline = time.monotonic() + timeout
        served: set[object] = set()
        while time.monotonic() < deadline:
            states = [self.status(n) for n in nodes]
            served = {s["directory"]["served_digest"] if s else None for s in states}
            views = {s["directory"]["view_digest"] if s else None for s in states}
            if len(served) == 1 and served == views and None not in served:
                return str(served.pop())
            time.sleep(0.3)
        raise AssertionError(f"no common directory: {served}")

    def stop(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def stop_all(self) -> None:
        for node in self.relays:
            self.stop(node)
        for proxy in self.proxies:
            proxy.close()

    def captured(self) -> list[bytes]:
        return [d for p in self.proxies for d in p.captured]

    def log(self, node: Node) -> str:
        path = self.root / f"{node.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class RecordingProxy:
    """A UDP forwarder in front of one relay that records every datagram in both directions:
    the eavesdropper's view of the wire."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.captured: list[bytes] = []
        self.inbound: list[bytes] = []  # the part of `captured` addressed to the relay
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._back: dict[socket.socket, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.sock, *self._back], [], [], 0.1)
            for sock in readable:
                try:
                    data, src = sock.recvfrom(65536)
                except OSError:
                    continue
                self.captured.append(data)
                if sock is self.sock:
                    self.inbound.append(data)
                    up = self._upstream.get(src)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind(("127.0.0.1", 0))
                        self._upstream[src] = up
                        self._back[up] = src
                    with contextlib.suppress(OSError):
                        up.sendto(data, self.target)
                else:
                    with contextlib.suppress(OSError):
                        self.sock.sendto(data, self._back[sock])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in [self.sock, *self._back]:
            sock.close()
