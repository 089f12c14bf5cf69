"""The ledger node's asyncio shell: etcd follower, HTTP API, metrics, signals.

All decisions are in `LedgerCore`; this module moves bytes between etcd, the database and
HTTP clients.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import ssl
import time
from typing import Any

from aiohttp import web

from . import etcd, persist
from .config import LedgerConfig
from .keys import load_or_create
from .ledger import LedgerCore
from .metrics import LedgerMetrics
from .model import UtxoType
from .store import SnapshotError, UtxoStore, leaf_hash
from .verify import Reject, Rejected

# How long a submission waits for etcd to elect a leader (its election timeout is about 1 s)
# before it is refused with 503 etcd_unavailable.
COMMIT_RETRY_SECONDS = 10.0

log = logging.getLogger("ringmesh_ledger")


class TokenBuckets:
    """Per-client-address token buckets: `rate` requests per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float) -> bool:
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if len(self._buckets) > 10000:
            self._buckets.clear()
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1, now)
        return True


def open_store(db: persist.Database) -> UtxoStore:
    """The live tables, or the newest good snapshot when they do not match their digest."""
    try:
        return db.load()
    except SnapshotError as exc:
        store = db.latest_snapshot() or UtxoStore()
        log.warning("%s; restored the snapshot at height %d", exc, store.height)
        db.replace_all(store)
        return store


class LedgerService:
    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        key, _ = load_or_create(config.key_file)
        self.db = persist.Database(config.database)
        store = open_store(self.db)
        self.core = LedgerCore(store, key, config.issuer, config.etcd_prefix.encode())
        ctx = None
        if any(e.startswith("https://") for e in config.etcd_endpoints):
            ctx = etcd.tls_context(config.etcd_ca, config.etcd_cert, config.etcd_key)
        self.etcd = etcd.EtcdClient(list(config.etcd_endpoints), ctx)
        self.metrics = LedgerMetrics()
        self.metrics.observe_store(store, 0)
        self.limiter = TokenBuckets(config.rate, config.burst)
        self._applied = asyncio.Condition()
        self._stop = asyncio.Event()
        self._last_snapshot = store.height

    # Following etcd ------------------------------------------------------------------------

    async def follow(self) -> None:
        prefix = self.core.prefix + b"/tx/"
        while not self._stop.is_set():
            try:
                revision = await self._catch_up(prefix)
                async for kvs in self.etcd.watch(prefix, revision + 1):
                    await self._apply([kv for kv in kvs if kv.create_revision == kv.mod_revision])
            except etcd.EtcdError as exc:
                log.warning("etcd: %s; retrying", exc)
                await asyncio.sleep(0.5)

    async def _catch_up(self, prefix: bytes) -> int:
        """Apply what was committed since our height; returns the revision we are current at."""
        while True:
            start = self.core.store.height + 1
            kvs, revision, more = await self.etcd.range_prefix(prefix, min_create_revision=start)
            await self._apply(kvs)
            if not more:
                return max(revision, self.core.store.height)

    async def _apply(self, kvs: list[etcd.KeyValue]) -> None:
        if not kvs:
            return
        started = time.perf_counter()
        proof_before = self.core.proof_seconds
        applied_before = self.core.counters["applied"]
        events = [(kv.create_revision, kv.key, kv.value) for kv in kvs]
        changes = self.core.apply_events(events)
        store = self.core.store
        self.db.commit(store, changes)
        if store.height - self._last_snapshot >= self.config.snapshot_interval:
            self.db.save_snapshot(store, self.config.snapshot_keep)
            self._last_snapshot = store.height
        applied = self.core.counters["applied"] - applied_before
        self.metrics.transactions.labels("applied").inc(applied)
        self.metrics.transactions.labels("rejected").inc(len(kvs) - applied)
        self.metrics.proof_time.labels("batch").observe(self.core.proof_seconds - proof_before)
        self.metrics.block_time.observe(time.perf_counter() - started)
        self.metrics.observe_store(store, applied)
        async with self._applied:
            self._applied.notify_all()

    async def wait_for_height(self, height: int, timeout: float) -> bool:
        async with self._applied:
            try:
                await asyncio.wait_for(
                    self._applied.wait_for(lambda: self.core.store.height >= height), timeout
                )
            except TimeoutError:
                return False
        return True

    # Submission ----------------------------------------------------------------------------

    async def submit(self, data: bytes) -> dict[str, Any]:
        before = self.core.proof_seconds
        try:
            checked = self.core.check_submission(data)
        finally:
            self.metrics.proof_time.labels("submit").observe(self.core.proof_seconds - before)
        absent, puts = self.core.commit_request(checked, data)
        revision = await self._commit(absent, puts, data)
        applied = await self.wait_for_height(revision, 15)
        created = [i.hex() for i, _ in checked.created]
        accepted = applied and all(
            self.core.store.get(bytes.fromhex(i)) is not None for i in created
        )
        return {
            "tx_id": checked.digest.hex(),
            "revision": revision,
            "applied": accepted,
            "outputs": created,
        }

    async def _commit(
        self, absent: list[bytes], puts: list[tuple[bytes, bytes]], data: bytes
    ) -> int:
        """Commit, retrying while etcd elects a leader (bounded by COMMIT_RETRY_SECONDS). A retry
        that finds our own transaction already recorded (an earlier attempt did commit and
        only its answer was lost) counts as success."""
        deadline = time.monotonic() + COMMIT_RETRY_SECONDS
        delay, retried = 0.1, False
        while True:
            try:
                succeeded, revision = await self.etcd.create_all(absent, puts)
            except etcd.EtcdError as exc:
                if time.monotonic() + delay > deadline:
                    raise etcd.EtcdError(
                        f"etcd did not commit within {COMMIT_RETRY_SECONDS:.0f} s "
                        f"(no leader or no quorum): {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay, retried = min(delay * 2, 2.0), True
                continue
            if succeeded:
                return revision
            if retried:
                kvs, _, _ = await self.etcd.range_prefix(absent[0])
                if kvs and kvs[0].key == absent[0] and kvs[0].value == data:
                    return kvs[0].create_revision
            raise Rejected(
                Reject.DOUBLE_SPEND, "an input was spent by a transaction committed first"
            )

    # HTTP API ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        store, latest = self.core.store, self.core.latest
        return {
            "name": self.config.name,
            "did": self.core.key.did,
            "height": store.height,
            "digest": latest.digest.hex(),
            "issued": store.issued,
            "fees": store.fees,
            "utxos": {t.name.lower(): n for t, n in store.counts().items()},
            "counters": dict(self.core.counters),
        }

    def _answer(self, ids: list[bytes]) -> dict[str, Any]:
        store = self.core.store
        return {
            "signed": self.core.latest.to_json(),
            "utxos": [
                {
                    "id": i.hex(),
                    "type": UtxoType(int(store.encoded(i)[0])).name.lower(),
                    "output": base64.b64encode(store.encoded(i)).decode(),
                    "leaf": leaf_hash(i, store.encoded(i)).hex(),
                    "path": [[left, h.hex()] for left, h in store.membership_path(i)],
                }
                for i in ids
            ],
        }

    @web.middleware
    async def _rate_limit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        client = request.remote or "unknown"
        if not self.limiter.allow(client, time.monotonic()):
            return web.json_response({"error": "rate_limited"}, status=429)
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._rate_limit], client_max_size=1 << 20)
        app.router.add_post("/v1/transactions", self._post_tx)
        app.router.add_get("/v1/status", self._get_status)
        app.router.add_get("/v1/digests/{height}", self._get_digest)
        app.router.add_get("/v1/owners/{did}/utxos", self._get_owned)
        app.router.add_get("/v1/utxos/{id}", self._get_utxo)
        return app

    async def _post_tx(self, request: web.Request) -> web.Response:
        data = await request.read()
        try:
            result = await self.submit(data)
        except Rejected as exc:
            self.metrics.transactions.labels(f"refused_{exc.reason.value}").inc()
            status = 409 if exc.reason is Reject.DOUBLE_SPEND else 400
            return web.json_response(
                {"error": exc.reason.value, "detail": exc.detail}, status=status
            )
        except etcd.EtcdError as exc:
            return web.json_response({"error": "etcd_unavailable", "detail": str(exc)}, status=503)
        return web.json_response(result)

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _get_digest(self, request: web.Request) -> web.Response:
        try:
            height = int(request.match_info["height"])
        except ValueError:
            return web.json_response({"error": "height must be an integer"}, status=400)
        if height > self.core.store.height:
            await self.wait_for_height(height, 5)
        signed = self.core.digests.get(height)
        if signed is None:
            return web.json_response({"error": "no digest signed at this height"}, status=404)
        return web.json_response(signed.to_json())

    async def _get_owned(self, request: web.Request) -> web.Response:
        ids = [i for i, _ in self.core.store.owned_by(request.match_info["did"])]
        return web.json_response(self._answer(ids))

    async def _get_utxo(self, request: web.Request) -> web.Response:
        try:
            utxo_id = bytes.fromhex(request.match_info["id"])
        except ValueError:
            return web.json_response({"error": "id must be hex"}, status=400)
        if self.core.store.get(utxo_id) is None:
            return web.json_response(
                {"error": "not in the UTXO set", **self._answer([])}, status=404
            )
        return web.json_response(self._answer([utxo_id]))

    # Running -------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.config.metrics_listen is not None:
            self.metrics.serve(*self.config.metrics_listen)
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        ssl_ctx = None
        if self.config.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        host, port = self.config.api_listen
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx).start()
        log.info(
            "ledger node %s listening on %s:%d at height %d",
            self.core.key.did,
            host,
            port,
            self.core.store.height,
        )
        follower = asyncio.create_task(self.follow())
        await self._stop.wait()
        follower.cancel()
        await runner.cleanup()
        await self.etcd.close()
        self.db.close()
        log.info("ledger node stopped at height %d", self.core.store.height)
