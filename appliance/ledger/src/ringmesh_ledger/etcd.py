"""etcd v3 through its JSON gRPC gateway (POST /v3/kv/..., /v3/watch), over mutual TLS.

Only what the ledger needs: a transaction (compare + puts), a range read ordered by
modification revision, and a watch stream. etcd encodes keys and values in base64 and
64-bit integers as strings, and leaves out fields that hold their default value.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


class EtcdError(Exception):
    """No endpoint answered, or one answered with an error."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        base64.b64decode(raw.get("key", "")),
        base64.b64decode(raw.get("value", "")),
        int(raw.get("create_revision", "0")),
        int(raw.get("mod_revision", "0")),
    )


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


class EtcdClient:
    def __init__(self, endpoints: list[str], ssl_context: ssl.SSLContext | None) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoints configured")
        self.endpoints = list(endpoints)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else False
        self._session: aiohttp.ClientSession | None = None
        self._current = 0

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=3)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """POST to the current endpoint, moving on to the next one when it does not answer."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints[self._current] + path
            try:
                async with self._http().post(
                    url, json=body, ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    data: dict[str, Any] = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise EtcdError(f"{path}: HTTP {resp.status}: {data.get('message', '')}")
                    return data
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                last = exc
                self._current = (self._current + 1) % len(self.endpoints)
        raise EtcdError(f"no etcd endpoint answered {path}: {last!r}")

    async def put(self, key: bytes, value: bytes) -> int:
        data = await self._post("/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(data["header"]["revision"])

    async def create_all(
        self, absent: list[bytes], puts: list[tuple[bytes, bytes]]
    ) -> tuple[bool, int]:
        """One etcd transaction: if no key of `absent` exists, write every put.

        Returns (succeeded, revision)."""
        body = {
            "compare": [
                {"key": b64(k), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                for k in absent
            ],
            "success": [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in puts],
        }
        data = await self._post("/v3/kv/txn", body)
        return bool(data.get("succeeded", False)), int(data["header"]["revision"])

    async def range_prefix(
        self, prefix: bytes, min_create_revision: int = 0, limit: int = 500
    ) -> tuple[list[KeyValue], int, bool]:
        """Keys under prefix created at or after min_create_revision, oldest first.
        Returns (kvs, header revision, more)."""
        body: dict[str, Any] = {
            "key": b64(prefix),
            "range_end": b64(prefix_end(prefix)),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
            "limit": str(limit),
        }
        if min_create_revision:
            body["min_create_revision"] = str(min_create_revision)
        data = await self._post("/v3/kv/range", body)
        kvs = [_kv(raw) for raw in data.get("kvs", [])]
        return kvs, int(data["header"]["revision"]), bool(data.get("more", False))

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[KeyValue]]:
        """PUT events under prefix from start_revision on, one list per watch response."""
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
                "filters": ["NODELETE"],
            }
        }
        url = self.endpoints[self._current] + "/v3/watch"
        try:
            async with self._http().post(url, json=body, ssl=self._ssl) as resp:
                if resp.status != 200:
                    raise EtcdError(f"/v3/watch: HTTP {resp.status}")
                async for line in resp.content:
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdError(f"watch: {message['error'].get('message', '')}")
                    result = message.get("result", {})
                    if result.get("compact_revision"):
                        raise EtcdError("watch: revisions compacted")
                    events = result.get("events", [])
                    if events:
                        yield [_kv(e["kv"]) for e in events if "kv" in e]
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._current = (self._current + 1) % len(self.endpoints)
            raise EtcdError(f"watch on {url} ended: {exc!r}") from None
        self._current = (self._current + 1) % len(self.endpoints)
        raise EtcdError(f"watch on {url} ended")
