"""Relay benchmark (run on demand): python appliance/node/bench/bench_relay.py [--packets N]

(a) per-hop unwrap + forward throughput of one `ringmesh run` process, socket in to socket out;
(b) the raw crypto a hop needs (X25519, KDF, MAC, header ChaCha20, LIONESS over the payload,
    AES-GCM open + seal), its ceiling in packets/s, and the ratio (a) / ceiling;
(c) p50 / p99 latency of single packets over a 3-hop path on loopback, mixing delays off;
(d) end-to-end latency of a 10 KiB message between two clients with the default Loopix
    rates and delays (Poisson sending, sender-chosen hop delays), to arrival and to the ack;
(e) what an idle client costs: the cover traffic it sends, in packets/s and bytes/s.
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
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the tests' UDP endpoints

from endpoints import SocketEndpoint
from ringmesh import client_io, lioness
from ringmesh.client import MessageAcked, MessageReceived
from ringmesh.config import Config, RelayEntry, render_config
from ringmesh.did import reply_mailbox_id
from ringmesh.keystore import Keys, Keystore
from ringmesh.link import Session
from ringmesh.onion import Hop, build_packet, peel
from ringmesh.primitives import keystream_xor
from ringmesh.wire import (
    BETA_LEN,
    CMD_DELIVER,
    DG_DATA,
    HEADER_LEN,
    LINK_PLAINTEXT_LEN,
    MSG_CLAIM_REPLY,
    MSG_MAILBOX_ITEM,
    MSG_ONION,
    ONION_LEN,
    PAYLOAD_LEN,
    ROLE_CLIENT,
    ROLE_RELAY,
    SLOT_LEN,
)

RINGMESH = [sys.executable, "-m", "ringmesh.cli"]
TEN_KIB = 10 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keystore(root: Path, name: str, role: int) -> Keys:
    store = Keystore(root / name, role, 86400, 3600)
    (root / name).mkdir(mode=0o700)
    store.init()
    return store.load()


def write_config(path: Path, config: Config) -> Path:
    path.write_text(render_config(config))
    return path


def relay_config(
    root: Path, name: str, port: int, relays: list[tuple[str, int]], **values: object
) -> Path:
    config = Config(
        root / f"{name}.toml",
        name=name,
        state_dir=root / name,
        listen=("127.0.0.1", port),
        log_level="warning",
        metrics_listen=None,
        relays=tuple(RelayEntry.from_did(did, ("127.0.0.1", p)) for did, p in relays),
    )
    return write_config(config.path, replace(config, **values))  # type: ignore[arg-type]


def client_config(root: Path, name: str, home: str, relays: list[tuple[str, int]]) -> Config:
    """A client with the package's default Loopix rates and delays."""
    config = Config(
        root / f"{name}.toml",
        role="client",
        name=name,
        state_dir=root / name,
        client_home=home,
        relays=tuple(RelayEntry.from_did(did, ("127.0.0.1", p)) for did, p in relays),
    )
    write_config(config.path, config)
    return config


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
        self._pending: list[bytes] = []  # handshake ids

    @property
    def sessions(self) -> list[Session]:
        return self.up

    def connect(self, addr: tuple[str, int], identity: bytes, timeout: float = 20) -> Session:
        """A session with the relay at addr (retried while the relay starts)."""
        deadline = time.time() + timeout
        have = len(self.sessions)
        while len(self.sessions) == have:
            if time.time() > deadline:
                raise SystemExit("relay did not come up")
            if not any(self.link.handshake_pending(h) for h in self._pending):
                self._pending = [self.link.connect(addr, identity, time.time())]
            self.pump(time.time())
            time.sleep(0.01)
        return self.sessions[-1]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hop_of(keys: Keys) -> Hop:
    desc = keys.current.descriptor
    return Hop(desc.node_id, desc.onion_key())  # delay 0: mixing off


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
    pins = [(relay_keys.did, port), (nxt.keys.did, nxt.port)]
    config = relay_config(root, "relay", port, pins, loop_rate=0.0, drop_rate=0.0)
    proc = start_relay(config, root)
    try:
        relay_addr = ("127.0.0.1", port)
        session = client.connect(relay_addr, relay_keys.identity_public)
        while not nxt.sessions:  # the relay dials its pinned peer
            nxt.pump(time.time())
            client.pump(time.time())
            time.sleep(0.01)
        hops = [hop_of(relay_keys), hop_of(nxt.keys)]
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
    header = os.urandom(BETA_LEN + SLOT_LEN)
    payload = os.urandom(PAYLOAD_LEN)
    link_in, link_out = AESGCM(os.urandom(32)), AESGCM(os.urandom(32))
    aad = os.urandom(17)
    sealed = link_in.encrypt(bytes(12), os.urandom(LINK_PLAINTEXT_LEN), aad)
    start = time.process_time()  # CPU time, like (a): comparable on a busy machine
    for alpha in alphas:
        plain = link_in.decrypt(bytes(12), sealed, aad)
        shared = onion_key.exchange(X25519PublicKey.from_public_bytes(alpha))
        okm = [
            hashlib.blake2b(label, key=shared, digest_size=64).digest()
            for label in (b"header", b"payload-1", b"payload-2")
        ]
        hashlib.blake2b(b"replay", key=shared, digest_size=16).digest()
        hashlib.blake2b(header[:BETA_LEN], key=okm[0][32:], digest_size=16).digest()
        keystream_xor(okm[0][:32], header)
        lioness.decrypt(lioness.LionessKey.from_bytes(okm[1] + okm[2]), payload)
        link_out.encrypt(bytes(12), plain, aad)
    return (time.process_time() - start) / n


def bench_peel(n: int) -> float:
    key = X25519PrivateKey.generate()
    hop = Hop(os.urandom(16), key.public_key())
    packets = [build_packet([hop], CMD_DELIVER, bytes(16), bytes(PAYLOAD_LEN))[1] for _ in range(n)]
    start = time.process_time()
    for packet in packets:
        peel(key.exchange(X25519PublicKey.from_public_bytes(packet[:32])), packet)
    return (time.process_time() - start) / n


class Fleet3:
    """Three relay processes (relay cover at its defaults) for (c), (d) and (e)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = ["hop1", "hop2", "hop3"]
        self.keys = {n: keystore(root, n, ROLE_RELAY) for n in self.names}
        self.ports = {n: free_port() for n in self.names}
        self.pins = [(self.keys[n].did, self.ports[n]) for n in self.names]
        self.procs = [
            start_relay(relay_config(root, n, self.ports[n], self.pins), root) for n in self.names
        ]

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)


def bench_latency(fleet: Fleet3, samples: int) -> list[float]:
    """Single packets hop1 -> hop2 -> hop3 (delay 0 at every hop), submit to mailbox push."""
    harness = Endpoint(keystore(fleet.root, "lat-client", ROLE_CLIENT))
    first = harness.connect(("127.0.0.1", fleet.ports["hop1"]), fleet.keys["hop1"].identity_public)
    last = harness.connect(("127.0.0.1", fleet.ports["hop3"]), fleet.keys["hop3"].identity_public)
    token = os.urandom(32)
    harness.link.send(last, bytes([MSG_CLAIM_REPLY]) + token)
    mailbox = reply_mailbox_id(token)
    hops = [hop_of(fleet.keys[n]) for n in fleet.names]
    time.sleep(1.5)  # relays peer with each other
    harness.pump(time.time())
    latencies = []
    for _ in range(samples):
        harness.received.clear()
        _, packet = build_packet(hops, CMD_DELIVER, mailbox, os.urandom(PAYLOAD_LEN))
        start = time.perf_counter()
        harness.link.send(first, bytes([MSG_ONION]) + packet)
        harness.pump(time.time())
        while not any(m[0] == MSG_MAILBOX_ITEM for m in harness.received):
            select.select([harness.sock], [], [], 5)
            harness.pump(time.time())
        latencies.append(time.perf_counter() - start)
    return latencies


async def _end_to_end(fleet: Fleet3, samples: int) -> tuple[list[float], list[float]]:
    """alice (home hop1) sends bob (home hop3) 10 KiB: seconds to bob's copy, to alice's ack."""
    hop1, hop3 = fleet.keys["hop1"].did, fleet.keys["hop3"].did
    alice_cfg = client_config(fleet.root, "alice", hop1, fleet.pins)
    bob_cfg = client_config(fleet.root, "bob", hop3, fleet.pins)
    alice_keys = keystore(fleet.root, "alice", ROLE_CLIENT)
    bob_keys = keystore(fleet.root, "bob", ROLE_CLIENT)
    alice, _ = await client_io.open_client(alice_cfg, alice_keys)
    bob, _ = await client_io.open_client(bob_cfg, bob_keys, receive=True)
    arrived, acked = [], []
    try:
        for _ in range(samples):
            start = time.perf_counter()
            body = os.urandom(TEN_KIB)
            mid = alice.client.send_message(
                body, bob_keys.identity_public, fleet.keys["hop3"].identity_public, time.time()
            )
            alice.flush()
            got_at = done_at = None
            while got_at is None or done_at is None:
                for shell in (alice, bob):
                    event = await shell.next_event(0.01)
                    if isinstance(event, MessageReceived) and event.body == body:
                        got_at = time.perf_counter()
                    elif isinstance(event, MessageAcked) and event.message_id == mid:
                        done_at = time.perf_counter()
                if time.perf_counter() - start > 60:
                    raise SystemExit("(d) a message was not delivered within 60 s")
            arrived.append(got_at - start)
            acked.append(done_at - start)
    finally:
        await alice.close()
        await bob.close()
    return arrived, acked


async def _cover_cost(fleet: Fleet3, seconds: float) -> tuple[float, float, Config]:
    config = client_config(fleet.root, "idle", fleet.keys["hop2"].did, fleet.pins)
    shell, _ = await client_io.open_client(config, keystore(fleet.root, "idle", ROLE_CLIENT))
    try:
        sent0, bytes0 = shell.datagrams_sent, shell.bytes_sent
        await asyncio.sleep(seconds)
        rate = (shell.datagrams_sent - sent0) / seconds
        volume = (shell.bytes_sent - bytes0) / seconds
    finally:
        await shell.close()
    return rate, volume, config


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=10000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--messages", type=int, default=20, help="10 KiB messages for (d)")
    parser.add_argument("--cover-seconds", type=float, default=20.0, help="idle time for (e)")
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
        print("(b) raw crypto per hop (X25519 + BLAKE2b KDF/MAC + ChaCha20 header + LIONESS")
        print("    payload + AES-GCM open/seal)")
        us = per_packet * 1e6
        print(f"    {us:.1f} us CPU/packet, ceiling {ceiling:,.0f} packets/s per core")
        print(f"    ratio (a, per core)/ceiling = {rate / ceiling:.2f}")
        print(f"    (sans-I/O peel() alone: {1 / bench_peel(3000):,.0f} packets per CPU-second)")
        fleet = Fleet3(root)
        try:
            print("(c) 3-hop path, mixing delays off, one packet at a time")
            lat = bench_latency(fleet, args.latency_samples)
            p50, p99 = statistics.median(lat) * 1e3, percentile(lat, 0.99) * 1e3
            print(f"    p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(lat)} packets")
            defaults = Config(Path("-"))
            print(
                f"(d) 10 KiB end to end, default Loopix rates: send_rate {defaults.send_rate}/s, "
                f"loop {defaults.client_loop_rate}/s, hop delay mean {defaults.mean_delay_ms} ms"
            )
            arrived, acked = asyncio.run(_end_to_end(fleet, args.messages))
            for name, values in (("arrived", arrived), ("acked", acked)):
                print(
                    f"    {name}: p50 {statistics.median(values):.2f} s, "
                    f"p90 {percentile(values, 0.9):.2f} s, max {max(values):.2f} s "
                    f"over {len(values)} messages"
                )
            print(f"(e) an idle client's cover traffic over {args.cover_seconds:.0f} s")
            packets, volume, _ = asyncio.run(_cover_cost(fleet, args.cover_seconds))
            expected = defaults.send_rate + defaults.client_loop_rate
            print(
                f"    {packets:.1f} packets/s ({expected:.0f} expected), "
                f"{volume / 1000:.1f} kB/s ({volume * 8 / 1e6:.2f} Mbit/s) to its home relay"
            )
        finally:
            fleet.close()


if __name__ == "__main__":
    main()
