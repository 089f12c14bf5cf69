"""The relay under flood (run on demand): python appliance/node/bench/bench_flood.py

Every flood comes from 127.0.0.x sources and is aimed at one `ringmesh run` process on
127.0.0.1 (default limits), from a child process, while the relay forwards onion packets as in
bench_relay.py (a):
(f1) handshakes from many ports of one address (cookie round trips, never finished);
(f2) sessions from many self-made client identities, from many addresses;
(f5) deliveries to random mailboxes, over one client session;
then what each held item costs in resident memory, and the two replay defences:
(f3) a link DATA counter that jumps to 2^63 against one that steps by 1;
(f4) the onion replay filter at the default size: per packet, and one save to disk;
(f6) sealing and opening a message with the hybrid HPKE of the end-to-end prekeys.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the tests' flood helpers

from bench_relay import Load, bench_throughput, free_port, keystore, relay_config, start_relay

from endpoints import SocketEndpoint, connect, half_open_flood, session_flood
from fleet import resident_bytes
from ringmesh.config import parse_config
from ringmesh.keystore import Keystore
from ringmesh.onion import Hop, build_packet
from ringmesh.prekeys import PrekeyStore, open_sealed, seal
from ringmesh.replay import ReplayWindow
from ringmesh.wire import CMD_DELIVER, MSG_ONION, NODE_ID_LEN, PAYLOAD_LEN, ROLE_RELAY

ATTACKER = "127.0.0.9"
BOTNET = [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(200)]
MiB = 1 << 20


def peak_resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmHWM for {pid}")


def _flood(kind: str, relay: tuple[str, int], stop: Event, attempts: Synchronized[int]) -> None:
    """The child process: floods until told to stop, counting handshakes it started."""
    held: list[SocketEndpoint] = []  # sessions the relay accepted stay open
    round_ = 0
    if kind == "mailboxes":
        deliverer = SocketEndpoint(ATTACKER)
        held.append(deliverer)
        session = connect(deliverer, relay)
        hop = Hop(session.peer.node_id, session.peer.onion_key())
    while not stop.is_set():
        if kind == "mailboxes":
            for _ in range(100):  # a fresh packet each: a repeated one is an onion replay
                mailbox = os.urandom(NODE_ID_LEN)
                _, packet = build_packet([hop], CMD_DELIVER, mailbox, os.urandom(PAYLOAD_LEN))
                deliverer.link.send(session, bytes([MSG_ONION]) + packet)
            deliverer.pump(time.time())
            attempts.value += 100
        elif kind == "handshakes":
            half_open_flood(relay, ATTACKER, 200, timeout=3)
            attempts.value += 200
        else:
            hosts = BOTNET[(round_ * 20) % len(BOTNET) :][:20]
            endpoints, _ = session_flood(relay, hosts, 8, timeout=5)
            held += endpoints
            attempts.value += 20 * 8
        round_ += 1
    for endpoint in held:
        endpoint.close()


def flooding(kind: str, report: dict[str, float]) -> Load:
    @contextlib.contextmanager
    def load(relay: tuple[str, int], pid: int) -> Iterator[None]:
        stop = multiprocessing.Event()
        attempts = multiprocessing.Value("q", 0)
        child = multiprocessing.Process(target=_flood, args=(kind, relay, stop, attempts))
        child.start()
        time.sleep(2.0)  # the flood reaches its steady state
        start, before = time.perf_counter(), attempts.value
        try:
            yield
        finally:
            report["flood_rate"] = (attempts.value - before) / (time.perf_counter() - start)
            report["rss"] = resident_bytes(pid)
            report["peak"] = peak_resident_bytes(pid)
            stop.set()
            child.join(20)

    return load


def forwarding_under(root: Path, name: str, load: Load | None, packets: int) -> float:
    sub = root / name
    sub.mkdir()
    wall, _ = bench_throughput(sub, packets, 64, load)
    return wall


@contextlib.contextmanager
def lone_relay(root: Path) -> Iterator[tuple[tuple[str, int], int]]:
    keys = keystore(root, "relay", ROLE_RELAY)
    port = free_port()
    proc = start_relay(relay_config(root, "relay", port, [(keys.did, port)]), root)
    try:
        time.sleep(1.5)  # up and listening
        yield ("127.0.0.1", port), proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def bytes_per_item(root: Path, flood: Callable[[tuple[str, int]], int]) -> tuple[int, float]:
    """(items the relay took, resident bytes each) for one flood against a fresh relay."""
    root.mkdir()
    with lone_relay(root) as (relay, pid):
        before = resident_bytes(pid)
        items = flood(relay)
        time.sleep(0.5)
        return items, (resident_bytes(pid) - before) / max(items, 1)


def half_opens(relay: tuple[str, int]) -> int:
    return sum(half_open_flood(relay, host, 8, timeout=3)[1] for host in BOTNET[:125])


def sessions(relay: tuple[str, int]) -> int:
    endpoints, accepted = session_flood(relay, BOTNET[:40], 50, timeout=120)
    for endpoint in endpoints:
        endpoint.close()
    return accepted


def replay_window_costs() -> tuple[float, float]:
    """Seconds per record() of a +1 step and of a jump to 2^63 (a fresh window each time)."""

    def step() -> None:
        w = ReplayWindow()
        w.record(10)
        w.record(11)

    def jump() -> None:
        w = ReplayWindow()
        w.record(10)
        w.record(1 << 63)

    n = 200_000
    return min(timeit.repeat(step, number=n, repeat=3)) / n, min(
        timeit.repeat(jump, number=n, repeat=3)
    ) / n


def replay_filter_costs(root: Path) -> tuple[int, float, float]:
    """(bytes, seconds per packet, seconds per save) at the default size."""
    cfg = parse_config({}, root / "node.toml")
    store = Keystore(root / "ks", ROLE_RELAY, cfg.epoch_seconds, cfg.grace_seconds)
    (root / "ks").mkdir(mode=0o700)
    store.init()
    epoch = store.load().current
    replay = store.open_replay_filter(epoch, cfg.replay_budget, cfg.replay_false_positive_rate)
    tags = [os.urandom(16) for _ in range(200_000)]
    start = time.process_time()
    for tag in tags:
        replay.seen_before(tag)
    per_packet = (time.process_time() - start) / len(tags)
    start = time.perf_counter()
    store.save_replay_filter(epoch.epoch, replay)
    return replay.size_bytes, per_packet, time.perf_counter() - start


def hpke_costs(root: Path) -> list[tuple[int, float, float]]:
    """(message bytes, seconds to seal, seconds to open) with a prekey bundle as senders get it."""
    keys = root / "prekeys"
    keys.mkdir(mode=0o700)
    store = PrekeyStore(keys, keystore(root, "user", ROLE_RELAY).identity, 7 * 86400, 86400)
    bundle = store.maintain(time.time())
    (prekey,) = store.held()
    out = []
    identity = store.identity_public
    for size in (1024, 10 * 1024):
        body = os.urandom(size)
        sealed = seal(bundle, body)

        def cpu(work: Callable[[], object], n: int = 200) -> float:
            return timeit.timeit(work, number=n, timer=time.process_time) / n

        seal_s = cpu(lambda: seal(bundle, body))  # noqa: B023
        open_s = cpu(lambda: open_sealed(prekey, identity, sealed))  # noqa: B023
        out.append((size, seal_s, open_s))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringmesh-flood-") as tmp:
        root = Path(tmp)
        print("relay forwarding one hop (as bench_relay (a)), packets/s wall clock")
        quiet = forwarding_under(root, "quiet", None, args.packets)
        print(f"    no flood: {quiet:,.0f}")
        for kind, label in (
            ("handshakes", "(f1) handshakes from many ports of 127.0.0.9"),
            ("sessions", "(f2) sessions of self-made identities from 200 addresses"),
            ("mailboxes", "(f5) deliveries to random mailboxes over one session"),
        ):
            report: dict[str, float] = {}
            rate = forwarding_under(root, kind, flooding(kind, report), args.packets)
            unit = "packets" if kind == "mailboxes" else "handshakes started"
            print(f"{label}: {report['flood_rate']:,.0f} {unit}/s")
            print(f"    forwarding meanwhile: {rate:,.0f} ({rate / quiet:.0%} of no flood)")
            print(
                f"    relay resident memory {report['rss'] / MiB:.1f} MiB "
                f"(peak {report['peak'] / MiB:.1f} MiB)"
            )
        n, per = bytes_per_item(root / "memory-half-open", half_opens)
        print(f"half-open handshakes: {n} held, {per / 1024:.1f} KiB each")
        m, per_session = bytes_per_item(root / "memory-sessions", sessions)
        print(f"sessions: {m} held, {per_session / 1024:.1f} KiB each")
        limits = parse_config({}, root / "node.toml").link
        worst = limits.max_half_open * per + limits.max_sessions * per_session
        print(
            f"    at the default limits ({limits.max_half_open} half-open, "
            f"{limits.max_sessions} sessions): {worst / MiB:.0f} MiB at most"
        )
        step, jump = replay_window_costs()
        print(
            f"(f3) replay window record(): +1 step {step * 1e9:.0f} ns, "
            f"jump to 2^63 {jump * 1e9:.0f} ns"
        )
        size, per_packet, save = replay_filter_costs(root)
        print(
            f"(f4) onion replay filter, {size / MiB:.1f} MiB: {per_packet * 1e6:.1f} us CPU "
            f"per packet, one save {save * 1e3:.0f} ms"
        )
        for size, seal_s, open_s in hpke_costs(root):
            print(
                f"(f6) hybrid HPKE, {size:,} bytes: seal {seal_s * 1e6:.0f} us, "
                f"open {open_s * 1e6:.0f} us CPU"
            )


if __name__ == "__main__":
    main()
