"""Ledger benchmark (on demand): raw ristretto255 costs, prove/verify of a 2-in 2-out
transfer, verified transfers per CPU-second (one by one and batched), and committed
transactions per second on a 3-member etcd + 3-node loopback cluster.

    python appliance/ledger/bench/bench_ledger.py [--transfers 64] [--batch 16] [--committed 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster import EtcdCluster, make_nodes, wait_for
from factories import Ledger, transfer
from ringmesh_ledger import builder, codec, group, verify
from ringmesh_ledger.client import LedgerClient
from ringmesh_ledger.config import Peer
from ringmesh_ledger.keys import SigningKey


def cpu_per_call(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def transfers(count: int) -> tuple[Ledger, list[builder.Built]]:
    """`count` independent 2-input 2-output transfers, each spending two fresh coins."""
    ledger = Ledger()
    out = []
    for _ in range(count):
        alice, bob = SigningKey.generate(), SigningKey.generate()
        coins = ledger.issue(alice, 70, 30)
        out.append(transfer(ledger, alice, coins, bob, 55, fee=1))
    return ledger, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--transfers", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--committed", type=int, default=60)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")

    s, pt = group.random_scalar(), group.mul(5, group.H)
    print("(a) ristretto255 through rbcl, CPU per call:")
    for name, fn in [
        ("scalar mult", lambda: group.mul(s, pt)),
        ("base mult", lambda: group.base_mul(s)),
        ("point add", lambda: group.add(pt, pt)),
        ("hash to point", lambda: group.hash_to_point(b"x")),
    ]:
        print(f"    {name:14s} {cpu_per_call(fn, 2000) * 1e6:7.1f} us")

    alice, bob = SigningKey.generate(), SigningKey.generate()
    ledger = Ledger()
    coins = ledger.issue(alice, 70, 30)
    prove = cpu_per_call(lambda: transfer(ledger, alice, coins, bob, 55, fee=1), 10)
    ledger, txs = transfers(args.transfers)
    encoded = [codec.encode_transaction(b.tx) for b in txs]
    size = len(encoded[0])

    def check(data: bytes) -> verify.Checked:
        return verify.check_transaction(
            codec.decode_transaction(data), ledger.utxos.get, 1000, ledger.issuer.did
        )

    start = time.process_time()
    for data in encoded:
        verify.verify_proofs(check(data))
    single = (time.process_time() - start) / len(encoded)
    start = time.process_time()
    for i in range(0, len(encoded), args.batch):
        assert verify.verify_batch([check(d) for d in encoded[i : i + args.batch]])
    batched = (time.process_time() - start) / len(encoded)
    print(
        f"(b) 2-in 2-out transfer ({size} bytes): prove {prove * 1e3:.1f} ms, "
        f"verify {single * 1e3:.1f} ms CPU"
    )
    print(
        f"(c) verified transfers per CPU-second: {1 / single:.1f} one by one, "
        f"{1 / batched:.1f} in batches of {args.batch} (parse, state checks, signatures, proofs)"
    )

    root = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    cluster = EtcdCluster.create(root / "etcd")
    nodes = []
    try:
        cluster.start_all()
        issuer = ledger.issuer
        nodes = make_nodes(root, cluster, issuer.did)
        for n in nodes:
            n.start()
        client = LedgerClient(tuple(Peer(n.did(), n.url) for n in nodes))
        # Fund the senders through the cluster, then submit all transfers concurrently.
        fresh = Ledger(issuer=issuer)
        pending = []
        for _ in range(args.committed):
            a, b = SigningKey.generate(), SigningKey.generate()
            built = builder.build(
                [],
                [builder.CoinSpec(a.did, 70), builder.CoinSpec(a.did, 30)],
                [issuer],
                issue=100,
                issuer=issuer.did,
            )
            client.submit(codec.encode_transaction(built.tx))
            pending.append(transfer(fresh, a, list(built.openings), b, 55, fee=1))
        start_height = max(int(n.get("/v1/status")["height"]) for n in nodes)
        started = time.monotonic()

        def submit(i: int) -> bool:
            peer = client.ring[i % 3]
            return bool(
                LedgerClient((peer,)).submit(codec.encode_transaction(pending[i].tx))["applied"]
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            ok = sum(pool.map(submit, range(len(pending))))
        wait_for(
            lambda: len({n.get("/v1/status")["digest"] for n in nodes}) == 1, 120, "nodes to agree"
        )
        elapsed = time.monotonic() - started
        heights = {int(n.get("/v1/status")["height"]) for n in nodes}
        print(
            f"(d) committed on 3 etcd members + 3 ledger nodes: {ok}/{len(pending)} transfers in "
            f"{elapsed:.2f} s = {ok / elapsed:.1f} tx/s (heights {start_height} -> {heights})"
        )
    finally:
        for n in nodes:
            n.stop()
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
