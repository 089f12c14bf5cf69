"""Relay benchmark (run on demand): python appliance/node/bench/bench_relay.py [--packets N]

(a) per-hop unwrap + forward throughput of one `ringmesh run` process, socket in to socket out;
(b) the raw crypto a hop needs (X25519, KDF, MAC, ChaCha20, AES-GCM open + seal), its ceiling
    in packets/s, and the ratio (a) / ceiling;
(c) p50 / p99 latency of single packets over a 3-hop path on loopback, mixing delays off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the tests' UDP endpoints

from endpoints import SocketEndpoint
from ringmesh.client import ClientNode
from ringmesh.config import load_config
from ringmesh.did import reply_mailbox_id
from ringmesh.keystore import Keys, Keystore
from ringmesh.link import Session
from ringmesh.onion import Hop, build_packet, peel
from ringmesh.wire import (
    BETA_LEN,
    CMD_DELIVER,
    DG_DATA,
    HEADER_LEN,
    LINK_PLAINTEXT_LEN,
    MSG_CLAIM_REPLY,
    MSG_ONION,
    ONION_LEN,
    PAYLOAD_LEN,
    ROLE_CLIENT,
    ROLE_RELAY,
    SLOT_LEN,
)

RINGMESH = [sys.executable, "-m", "ringmesh.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keystore(root: Path, name: str, role: int) -> Keys:
    store = Keystore(root / name, role, 86400, 3600)
    (root / name).mkdir(mode=0o700)
    store.init()
    return store.load()


def relay_config(root: Path, name: str, port: int, relays: list[tuple[str, int]]) -> Path:
    path = root / f"{name}.toml"
    text = f"""[node]
role = "relay"
name = "{name}"
state_dir = "{root / name}"
listen = "127.0.0.1:{port}"
log_level = "warning"
[metrics]
listen = ""
[mixing]
mean_delay_ms = 0
"""
    for did, p in relays:
        text += f'[[relays]]\ndid = "{did}"\naddress = "127.0.0.1:{p}"\n'
    path.write_text(text)
    return path


def start_relay(config: Path, root: Path) -> subprocess.Popen[bytes]:
    log = open(root / f"{config.stem}.log", "wb")  # noqa: SIM115 - lives with the process
    command = [*RINGMESH, "run", "--config", str(config)]
    profile = os.environ.get("RINGMESH_BENCH_PROFILE")  # write a cProfile of the relay there
    if profile and config.stem == "relay":
        command = [sys.executable, "-m", "cProfile", "-o", profile, *command[1:]]
    return subprocess.Popen(command, stdout=log, stderr=log)


class Endpoint(SocketEndpoint):
    """The harness's own nodes: a LinkEndpoint on a loopback UDP socket, pumped by hand."""

    def __init__(self, keys: Keys) -> None:
        super().__init__(identity=lambda: (keys.current.descriptor, keys.current.link_key))
        self.keys = keys
        self.port = int(self.sock.getsockname()[1])

    @property
    def sessions(self) -> list[Session]:
        return self.up


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Runs beside the measured forwarding: given the relay's address and pid (bench_flood.py).
Load = Callable[[tuple[str, int], int], AbstractContextManager[object]]


def bench_throughput(
    root: Path, total: int, window: int, load: Load | None = None
) -> tuple[float, float]:
    """(packets/s of wall time, packets per CPU-second of the relay process)."""
    relay_keys = keystore(root, "relay", ROLE_RELAY)
    nxt = Endpoint(keystore(root, "next", ROLE_RELAY))
    client = Endpoint(keystore(root, "client", ROLE_CLIENT))
    port = free_port()
    config = relay_config(root, "relay", port, [(relay_keys.did, port), (nxt.keys.did, nxt.port)])
    proc = start_relay(config, root)
    try:
        relay_addr = ("127.0.0.1", port)
        deadline = time.time() + 20
        connected = False
        while not (client.sessions and nxt.sessions):
            if time.time() > deadline:
                raise SystemExit("relay did not come up")
            if not connected:
                try:
                    client.link.connect(relay_addr, relay_keys.identity_public, time.time())
                    connected = True
                except OSError:
                    pass
            client.pump(time.time())
            nxt.pump(time.time())
            time.sleep(0.01)
            if not client.sessions and client.link.counters["handshake_failed:timeout"]:
                connected = False
                client.link.counters.clear()
        session = client.sessions[0]
        relay_desc = session.peer
        hops = [
            Hop(relay_desc.node_id, relay_desc.onion_key()),
            Hop(nxt.keys.current.descriptor.node_id, nxt.keys.current.descriptor.onion_key()),
        ]
        print(f"  building {total} onion packets ...", flush=True)
        datagrams = []
        for _ in range(total):
            _, packet = build_packet(hops, CMD_DELIVER, os.urandom(16), os.urandom(PAYLOAD_LEN))
            datagrams.append(client.link.seal(session, bytes([MSG_ONION]) + packet))
        sent = received = 0
        sock, sink = client.sock, nxt.sock
        with load(relay_addr, proc.pid) if load else contextlib.nullcontext():
            cpu_start = process_cpu(proc.pid)
            start = time.perf_counter()
            while received < total:
                while sent < total and sent - received < window:
                    sock.sendto(datagrams[sent], relay_addr)
                    sent += 1
                ready, _, _ = select.select([sink], [], [], 2.0)
                if not ready:
                    print(f"  stalled at {received}/{total} (lost datagrams); stopping")
                    break
                while True:
                    try:
                        data = sink.recv(4096)
                    except BlockingIOError:
                        break
                    if data[0] == DG_DATA:
                        received += 1
            elapsed = time.perf_counter() - start
            cpu = process_cpu(proc.pid) - cpu_start
        return received / elapsed, received / cpu
    finally:
        proc.terminate()
        proc.wait(10)


def bench_crypto(n: int) -> float:
    """Seconds per packet for exactly the primitives one hop runs."""
    onion_key = X25519PrivateKey.generate()
    alphas = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(n)]
    body = os.urandom(BETA_LEN + SLOT_LEN + PAYLOAD_LEN)
    link_in, link_out = AESGCM(os.urandom(32)), AESGCM(os.urandom(32))
    header = os.urandom(17)
    sealed = link_in.encrypt(bytes(12), os.urandom(LINK_PLAINTEXT_LEN), header)
    start = time.process_time()  # CPU time, like (a): comparable on a busy machine
    for alpha in alphas:
        plain = link_in.decrypt(bytes(12), sealed, header)
        shared = onion_key.exchange(X25519PublicKey.from_public_bytes(alpha))
        keys = hashlib.blake2b(b"keys", key=shared, digest_size=64).digest()
        hashlib.blake2b(b"replay", key=shared, digest_size=16).digest()
        hashlib.blake2b(body[:BETA_LEN], key=keys[32:], digest_size=16).digest()
        cipher = Cipher(algorithms.ChaCha20(keys[:32], bytes(16)), mode=None)
        cipher.encryptor().update(body)
        link_out.encrypt(bytes(12), plain, header)
    return (time.process_time() - start) / n


def bench_peel(n: int) -> float:
    key = X25519PrivateKey.generate()
    hop = Hop(os.urandom(16), key.public_key())
    packets = [build_packet([hop], CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))[1] for _ in range(n)]
    start = time.process_time()
    for packet in packets:
        peel(key.exchange(X25519PublicKey.from_public_bytes(packet[:32])), packet)
    return (time.process_time() - start) / n


async def _latency(root: Path, samples: int) -> list[float]:
    names = ["hop1", "hop2", "hop3"]
    keys = {n: keystore(root, n, ROLE_RELAY) for n in names}
    ports = {n: free_port() for n in names}
    pins = [(keys[n].did, ports[n]) for n in names]
    procs = [start_relay(relay_config(root, n, ports[n], pins), root) for n in names]
    try:
        client_keys = keystore(root, "lat-client", ROLE_CLIENT)
        cfg_path = root / "lat-client.toml"
        text = f'[node]\nrole = "client"\nstate_dir = "{root / "lat-client"}"\n'
        text += f'[client]\nhome = "{keys["hop3"].did}"\n'
        text += "".join(f'[[relays]]\ndid = "{d}"\naddress = "127.0.0.1:{p}"\n' for d, p in pins)
        cfg_path.write_text(text)
        node = ClientNode(load_config(cfg_path), client_keys)
        await node.start()
        await asyncio.sleep(1.5)  # relays peer with each other
        first = await node.session(keys["hop1"].identity_public)
        last = await node.session(keys["hop3"].identity_public)
        descs = await node.fetch_descriptors(last)
        token = os.urandom(32)
        node.send(last, bytes([MSG_CLAIM_REPLY]) + token)
        mailbox = reply_mailbox_id(token)
        path = [descs[k.identity_public] for k in keys.values()]
        hops = [Hop(d.node_id, d.onion_key()) for d in path]
        await asyncio.sleep(0.3)
        latencies = []
        for _ in range(samples):
            _, packet = build_packet(hops, CMD_DELIVER, mailbox, os.urandom(PAYLOAD_LEN))
            start = time.perf_counter()
            node.send(first, bytes([MSG_ONION]) + packet)
            await asyncio.wait_for(node.items.get(), 5)
            latencies.append(time.perf_counter() - start)
        await node.close()
        return latencies
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=10000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--latency-samples", type=int, default=500)
    args = parser.parse_args()
    assert HEADER_LEN + PAYLOAD_LEN == ONION_LEN
    with tempfile.TemporaryDirectory(prefix="ringmesh-bench-") as tmp:
        root = Path(tmp)
        print("(a) relay process, one hop, socket in -> socket out")
        wall_rate, rate = bench_throughput(root, args.packets, args.window)
        print(f"    {wall_rate:,.0f} packets/s wall clock (harness and relay share the machine)")
        print(f"    {rate:,.0f} packets per CPU-second of the relay process (per core)")
        per_packet = min(bench_crypto(3000) for _ in range(3))
        ceiling = 1 / per_packet
        print("(b) raw crypto per hop (X25519 + BLAKE2b KDF/MAC + ChaCha20 + AES-GCM open/seal)")
        us = per_packet * 1e6
        print(f"    {us:.1f} us CPU/packet, ceiling {ceiling:,.0f} packets/s per core")
        print(f"    ratio (a, per core)/ceiling = {rate / ceiling:.2f}")
        print(f"    (sans-I/O peel() alone: {1 / bench_peel(3000):,.0f} packets per CPU-second)")
        print("(c) 3-hop path, mixing delays off, one packet at a time")
        lat = sorted(asyncio.run(_latency(root, args.latency_samples)))
        p50 = statistics.median(lat) * 1e3
        p99 = lat[int(0.99 * (len(lat) - 1))] * 1e3
        print(f"    p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(lat)} packets")


if __name__ == "__main__":
    main()
