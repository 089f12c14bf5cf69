"""Prometheus metrics of a ledger node (the ZkOS names, plus proof timings and outcomes)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .model import UtxoType
from .store import UtxoStore


class LedgerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.counts = {
            UtxoType.COIN: Gauge("utxo_coin_count", "Coin UTXOs in the set", registry=r),
            UtxoType.MEMO: Gauge("utxo_memo_count", "Memo UTXOs in the set", registry=r),
            UtxoType.STATE: Gauge("utxo_state_count", "State UTXOs in the set", registry=r),
        }
        self.block_time = Histogram(
            "block_processing_time",
            "Seconds to verify and apply one batch of etcd events",
            registry=r,
        )
        self.throughput = Gauge(
            "transaction_throughput",
            "Transactions applied per second over the last 10 s",
            registry=r,
        )
        self.proof_time = Histogram(
            "ledger_proof_verification_seconds",
            "Seconds spent verifying the proofs of one submission or one batch",
            ["path"],
            registry=r,
        )
        self.transactions = Counter(
            "ledger_transactions", "Transactions by outcome", ["outcome"], registry=r
        )
        self.height = Gauge(
            "ledger_height", "etcd revision of the last transaction processed", registry=r
        )
        self._applied: deque[tuple[float, int]] = deque()

    def observe_store(self, store: UtxoStore, applied: int) -> None:
        for kind, count in store.counts().items():
            self.counts[kind].set(count)
        self.height.set(store.height)
        now = time.monotonic()
        self._applied.append((now, applied))
        while self._applied and self._applied[0][0] < now - 10:
            self._applied.popleft()
        self.throughput.set(sum(n for _, n in self._applied) / 10)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, host, registry=self.registry)
