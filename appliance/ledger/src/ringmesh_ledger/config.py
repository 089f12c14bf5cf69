"""ledger.toml: parsed with tomllib and validated; every error names the field."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringmesh.config import ConfigError, parse_hostport, read_toml
from ringmesh.did import DidError, public_from_did

DEFAULT_CONFIG = "/etc/ringmesh/ledger.toml"


@dataclass(frozen=True)
class Peer:
    did: str
    url: str


@dataclass(frozen=True)
class LedgerConfig:
    path: Path
    name: str
    state_dir: Path
    database: str
    issuer: str | None
    snapshot_interval: int
    snapshot_keep: int
    log_level: str
    api_listen: tuple[str, int]
    tls_cert: str
    tls_key: str
    rate: float
    burst: int
    metrics_listen: tuple[str, int] | None
    etcd_endpoints: tuple[str, ...]
    etcd_ca: str
    etcd_cert: str
    etcd_key: str
    etcd_prefix: str
    first_ring: tuple[Peer, ...]

    @property
    def key_file(self) -> Path:
        return self.state_dir / "ledger.key"


_FIELDS: dict[str, set[str]] = {
    "ledger": {
        "name",
        "state_dir",
        "database",
        "issuer",
        "snapshot_interval",
        "snapshot_keep",
        "log_level",
    },
    "api": {"listen", "tls_cert", "tls_key", "rate", "burst"},
    "metrics": {"listen"},
    "etcd": {"endpoints", "ca", "cert", "key", "prefix"},
}


def _get(table: dict[str, Any], key: str, name: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ConfigError(name, f"must be a {kind.__name__}")
    return value


def _did(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, "must be a did:key string")
    try:
        public_from_did(value)
    except DidError as exc:
        raise ConfigError(name, str(exc)) from None
    return value


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_config(path: str | Path) -> LedgerConfig:
    path = Path(path)
    return parse_config(read_toml(path), path)


def parse_config(raw: dict[str, Any], path: Path) -> LedgerConfig:
    for section, value in raw.items():
        if section == "first_ring":
            continue
        if section not in _FIELDS:
            raise ConfigError(section, "unknown section")
        if not isinstance(value, dict):
            raise ConfigError(section, "must be a table")
        for key in value:
            if key not in _FIELDS[section]:
                raise ConfigError(f"{section}.{key}", "unknown field")
    ledger, api = raw.get("ledger", {}), raw.get("api", {})
    metrics, etcd = raw.get("metrics", {}), raw.get("etcd", {})

    state_dir = _get(ledger, "state_dir", "ledger.state_dir", str, "/var/lib/ringmesh-ledger")
    if not state_dir.startswith("/"):
        raise ConfigError("ledger.state_dir", "must be an absolute path")
    database = _get(ledger, "database", "ledger.database", str, f"sqlite://{state_dir}/ledger.db")
    if not database.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("ledger.database", "must be sqlite:///PATH or postgresql://...")
    issuer = _did(ledger["issuer"], "ledger.issuer") if "issuer" in ledger else None
    interval = _get(ledger, "snapshot_interval", "ledger.snapshot_interval", int, 100)
    keep = _get(ledger, "snapshot_keep", "ledger.snapshot_keep", int, 3)
    if interval < 1 or keep < 1:
        raise ConfigError(
            "ledger.snapshot_interval" if interval < 1 else "ledger.snapshot_keep", "must be >= 1"
        )
    log_level = _get(ledger, "log_level", "ledger.log_level", str, "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("ledger.log_level", "must be one of debug, info, warning, error")

    listen = parse_hostport(_get(api, "listen", "api.listen", str, "127.0.0.1:8740"), "api.listen")
    assert listen is not None
    tls_cert = _get(api, "tls_cert", "api.tls_cert", str, "")
    tls_key = _get(api, "tls_key", "api.tls_key", str, "")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError(
            "api.tls_key" if tls_cert else "api.tls_cert", "tls_cert and tls_key go together"
        )
    if not is_loopback(listen[0]) and not tls_cert:
        raise ConfigError("api.tls_cert", "is required when api.listen is not a loopback address")
    rate = _get(api, "rate", "api.rate", (int, float), 20.0)  # type: ignore[arg-type]
    burst = _get(api, "burst", "api.burst", int, 40)
    if rate <= 0 or burst < 1:
        raise ConfigError("api.rate" if rate <= 0 else "api.burst", "must be positive")
    metrics_listen = parse_hostport(
        _get(metrics, "listen", "metrics.listen", str, "127.0.0.1:9740"),
        "metrics.listen",
        allow_empty=True,
    )

    endpoints = _get(etcd, "endpoints", "etcd.endpoints", list, [])
    if not endpoints or not all(
        isinstance(e, str) and e.startswith(("https://", "http://")) for e in endpoints
    ):
        raise ConfigError("etcd.endpoints", "must be a non-empty list of https:// URLs")
    ca = _get(etcd, "ca", "etcd.ca", str, "")
    cert = _get(etcd, "cert", "etcd.cert", str, "")
    key = _get(etcd, "key", "etcd.key", str, "")
    if any(e.startswith("https://") for e in endpoints) and not (ca and cert and key):
        raise ConfigError(
            "etcd.ca", "etcd.ca, etcd.cert and etcd.key are required for https endpoints"
        )
    prefix = _get(etcd, "prefix", "etcd.prefix", str, "/ringmesh-ledger")
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError("etcd.prefix", "must start with '/' and not end with it")

    ring_raw = raw.get("first_ring", [])
    if not isinstance(ring_raw, list):
        raise ConfigError("first_ring", "must be an array of tables ([[first_ring]])")
    ring = []
    for i, entry in enumerate(ring_raw):
        name = f"first_ring[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"did", "url"}:
            raise ConfigError(name, "must have exactly 'did' and 'url'")
        if not isinstance(entry["url"], str) or not entry["url"].startswith(
            ("https://", "http://")
        ):
            raise ConfigError(f"{name}.url", "must be an http(s):// URL")
        ring.append(Peer(_did(entry["did"], f"{name}.did"), entry["url"].rstrip("/")))

    return LedgerConfig(
        path=path,
        name=_get(ledger, "name", "ledger.name", str, ""),
        state_dir=Path(state_dir),
        database=database,
        issuer=issuer,
        snapshot_interval=interval,
        snapshot_keep=keep,
        log_level=log_level,
        api_listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        rate=float(rate),
        burst=burst,
        metrics_listen=metrics_listen,
        etcd_endpoints=tuple(e.rstrip("/") for e in endpoints),
        etcd_ca=ca,
        etcd_cert=cert,
        etcd_key=key,
        etcd_prefix=prefix,
        first_ring=tuple(ring),
    )
