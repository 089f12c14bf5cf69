"""node.toml: parsed with tomllib and validated; every error names the field."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from .admission import LinkLimits
from .did import DidError, public_from_did
from .replay import MAX_FILTER_BYTES, filter_dimensions
from .wire import MAX_HOPS, MIN_PATH

DEFAULT_CONFIG = "/etc/ringmesh/node.toml"
DEFAULT_PORT = 7733
MAX_MEAN_DELAY_MS = 60_000
# Key epochs: why one hour and ten minutes, see the node README ("Key epochs").
DEFAULT_EPOCH_SECONDS = 3600
DEFAULT_GRACE_SECONDS = 600
DEFAULT_REPLAY_PACKETS_PER_SECOND = 2000
DEFAULT_REPLAY_FALSE_POSITIVE_RATE = 1e-5
DEFAULT_REPLAY_SAVE_SECONDS = 60


class ConfigError(Exception):
    """Bad configuration; str() is 'config error: <field>: <problem>'."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"config error: {field_name}: {problem}")
        self.field = field_name


@dataclass(frozen=True)
class RelayEntry:
    did: str
    identity: bytes
    address: tuple[str, int]

    @classmethod
    def from_did(cls, did: str, address: tuple[str, int]) -> RelayEntry:
        return cls(did, public_from_did(did), address)


@dataclass(frozen=True)
class Config:
    path: Path
    role: str = "relay"
    name: str = ""
    state_dir: Path = Path("/var/lib/ringmesh")
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    advertise: str = ""
    log_level: str = "info"
    epoch_seconds: int = DEFAULT_EPOCH_SECONDS
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    replay_packets_per_second: int = DEFAULT_REPLAY_PACKETS_PER_SECOND
    replay_false_positive_rate: float = DEFAULT_REPLAY_FALSE_POSITIVE_RATE
    replay_save_seconds: int = DEFAULT_REPLAY_SAVE_SECONDS
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9733)
    # Loopix defaults as Nym's clients use them (nym-client-core config): per-hop delay mean
    # 50 ms, message stream 20 ms between packets (50/s), loop cover 200 ms (5/s).
    mean_delay_ms: int = 50
    loop_rate: float = 1.0
    drop_rate: float = 0.0
    mailbox_ttl_seconds: int = 3600
    mailbox_max_packets: int = 10000
    # Global caps on what anyone with a session can make a relay hold (see the node README,
    # "Memory caps"): mailboxes holding packets, the bytes they hold, packets in the mix.
    mailbox_max_mailboxes: int = 100_000
    mailbox_max_bytes: int = 256 << 20
    max_held_packets: int = 50_000
    client_home: str | None = None
    path_length: int = 3
    send_rate: float = 50.0
    client_loop_rate: float = 5.0
    relays: tuple[RelayEntry, ...] = field(default_factory=tuple)
    link: LinkLimits = field(default_factory=LinkLimits)

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def replay_budget(self) -> int:
        """Onion packets one epoch's replay filter is sized for: its key is used for the
        epoch and then the grace period."""
        return self.replay_packets_per_second * (self.epoch_seconds + self.grace_seconds)


_SECTIONS: dict[str, set[str]] = {
    "node": {"role", "name", "state_dir", "listen", "advertise", "log_level"},
    "keys": {"epoch_seconds", "grace_seconds"},
    "replay": {"packets_per_second", "false_positive_rate", "save_seconds"},
    "link": {f.name for f in fields(LinkLimits)},
    "metrics": {"listen"},
    "mixing": {"mean_delay_ms", "loop_rate", "drop_rate", "max_held_packets"},
    "mailbox": {"ttl_seconds", "max_packets", "max_mailboxes", "max_bytes"},
    "client": {"home", "path_length", "send_rate", "loop_rate"},
}
_DEFAULTS = Config(Path(DEFAULT_CONFIG))


def parse_hostport(value: object, name: str, allow_empty: bool = False) -> tuple[str, int] | None:
    if not isinstance(value, str):
        raise ConfigError(name, "must be a string 'host:port'")
    if value == "" and allow_empty:
        return None
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(name, f"must be 'host:port' with a port 1-65535, got {value!r}")
    return host, int(port_text)


def _int(table: dict[str, Any], key: str, name: str, default: int, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise ConfigError(name, f"must be {kind}")
    return value


def _float(
    table: dict[str, Any], key: str, name: str, default: float, positive: bool = False
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(name, "must be a non-negative number")
    if positive and value == 0:
        raise ConfigError(name, "must be greater than 0")
    return float(value)


def _str(table: dict[str, Any], key: str, name: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(name, "must be a string")
    return value


def _did(value: object, name: str) -> tuple[str, bytes]:
    if not isinstance(value, str):
        raise ConfigError(name, "must be a did:key string")
    try:
        return value, public_from_did(value)
    except DidError as exc:
        raise ConfigError(name, str(exc)) from None


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at path; a missing, unreadable or malformed file is a ConfigError."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config", f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError("config", f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML ({exc})") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(read_toml(path), path)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    for key, value in raw.items():
        if key == "relays":
            continue
        if key not in _SECTIONS:
            raise ConfigError(key, "unknown section")
        if not isinstance(value, dict):
            raise ConfigError(key, "must be a table")
        for sub in value:
            if sub not in _SECTIONS[key]:
                raise ConfigError(f"{key}.{sub}", "unknown field")

    node = raw.get("node", {})
    role = _str(node, "role", "node.role", "relay")
    if role not in ("relay", "client"):
        raise ConfigError("node.role", "must be 'relay' or 'client'")
    log_level = _str(node, "log_level", "node.log_level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("node.log_level", "must be one of debug, info, warning, error")
    state_dir = _str(node, "state_dir", "node.state_dir", "/var/lib/ringmesh")
    if not state_dir.startswith("/"):
        raise ConfigError("node.state_dir", "must be an absolute path")
    listen = parse_hostport(node.get("listen", f"0.0.0.0:{DEFAULT_PORT}"), "node.listen")
    assert listen is not None
    try:
        ipaddress.ip_address(listen[0])
    except ValueError:
        raise ConfigError("node.listen", "host must be an IP address") from None
    advertise = _str(node, "advertise", "node.advertise", "")
    if advertise:
        parse_hostport(advertise, "node.advertise")

    d = _DEFAULTS
    keys = raw.get("keys", {})
    epoch_seconds = _int(keys, "epoch_seconds", "keys.epoch_seconds", d.epoch_seconds, 1)
    grace_seconds = _int(keys, "grace_seconds", "keys.grace_seconds", d.grace_seconds, 0)

    replay = raw.get("replay", {})
    replay_rate = _int(
        replay,
        "packets_per_second",
        "replay.packets_per_second",
        d.replay_packets_per_second,
        1,
    )
    false_positive_rate = _float(
        replay,
        "false_positive_rate",
        "replay.false_positive_rate",
        d.replay_false_positive_rate,
    )
    if not 0 < false_positive_rate < 0.5:
        raise ConfigError("replay.false_positive_rate", "must be above 0 and below 0.5")
    bits, _ = filter_dimensions(replay_rate * (epoch_seconds + grace_seconds), false_positive_rate)
    if bits // 8 > MAX_FILTER_BYTES:
        raise ConfigError(
            "replay.packets_per_second",
            f"sizes each epoch's replay filter at {bits // 8 >> 20} MiB (more than "
            f"{MAX_FILTER_BYTES >> 20} MiB); lower it, or keys.epoch_seconds / keys.grace_seconds",
        )
    save_seconds = _int(replay, "save_seconds", "replay.save_seconds", d.replay_save_seconds, 1)

    metrics = raw.get("metrics", {})
    metrics_listen = parse_hostport(
        metrics.get("listen", "127.0.0.1:9733"), "metrics.listen", allow_empty=True
    )

    link_table = raw.get("link", {})
    defaults = LinkLimits()
    link_values = {
        f.name: _int(link_table, f.name, f"link.{f.name}", getattr(defaults, f.name), 1)
        for f in fields(LinkLimits)
        if f.name != "reserved_relay_sessions"
    }
    reserved = _int(
        link_table,
        "reserved_relay_sessions",
        "link.reserved_relay_sessions",
        defaults.reserved_relay_sessions,
        0,
    )
    if reserved >= link_values["max_sessions"]:
        raise ConfigError("link.reserved_relay_sessions", "must be below link.max_sessions")
    link = LinkLimits(**link_values, reserved_relay_sessions=reserved)

    mixing = raw.get("mixing", {})
    mean_delay_ms = _int(mixing, "mean_delay_ms", "mixing.mean_delay_ms", d.mean_delay_ms, 0)
    if mean_delay_ms > MAX_MEAN_DELAY_MS:
        raise ConfigError("mixing.mean_delay_ms", f"must be at most {MAX_MEAN_DELAY_MS}")
    loop_rate = _float(mixing, "loop_rate", "mixing.loop_rate", d.loop_rate)
    drop_rate = _float(mixing, "drop_rate", "mixing.drop_rate", d.drop_rate)
    max_held = _int(mixing, "max_held_packets", "mixing.max_held_packets", d.max_held_packets, 1)

    mailbox = raw.get("mailbox", {})
    ttl = _int(mailbox, "ttl_seconds", "mailbox.ttl_seconds", d.mailbox_ttl_seconds, 1)
    max_packets = _int(mailbox, "max_packets", "mailbox.max_packets", d.mailbox_max_packets, 1)
    max_mailboxes = _int(
        mailbox, "max_mailboxes", "mailbox.max_mailboxes", d.mailbox_max_mailboxes, 1
    )
    max_bytes = _int(mailbox, "max_bytes", "mailbox.max_bytes", d.mailbox_max_bytes, 1 << 16)

    client = raw.get("client", {})
    home: str | None = None
    if "home" in client:
        home, _ = _did(client["home"], "client.home")
    path_length = _int(client, "path_length", "client.path_length", d.path_length, 0)
    if not MIN_PATH <= path_length <= MAX_HOPS:
        raise ConfigError("client.path_length", f"must be between {MIN_PATH} and {MAX_HOPS}")
    send_rate = _float(client, "send_rate", "client.send_rate", d.send_rate, positive=True)
    client_loop_rate = _float(client, "loop_rate", "client.loop_rate", d.client_loop_rate)
    if role == "client" and home is None:
        raise ConfigError("client.home", "is required when node.role is 'client'")

    relays_raw = raw.get("relays", [])
    if not isinstance(relays_raw, list):
        raise ConfigError("relays", "must be an array of tables ([[relays]])")
    relays = []
    seen: set[bytes] = set()
    for i, entry in enumerate(relays_raw):
        name = f"relays[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(name, "must be a table")
        for sub in entry:
            if sub not in ("did", "address"):
                raise ConfigError(f"{name}.{sub}", "unknown field")
        if "did" not in entry:
            raise ConfigError(f"{name}.did", "is required")
        if "address" not in entry:
            raise ConfigError(f"{name}.address", "is required")
        did, identity = _did(entry["did"], f"{name}.did")
        address = parse_hostport(entry["address"], f"{name}.address")
        assert address is not None
        if identity in seen:
            raise ConfigError(f"{name}.did", "is listed twice")
        seen.add(identity)
        relays.append(RelayEntry(did, identity, address))
    if home is not None and home not in {r.did for r in relays}:
        raise ConfigError("client.home", "must be one of the [[relays]] dids")

    return Config(
        path=path,
        role=role,
        name=_str(node, "name", "node.name", ""),
        state_dir=Path(state_dir),
        listen=listen,
        advertise=advertise,
        log_level=log_level,
        epoch_seconds=epoch_seconds,
        grace_seconds=grace_seconds,
        replay_packets_per_second=replay_rate,
        replay_false_positive_rate=false_positive_rate,
        replay_save_seconds=save_seconds,
        metrics_listen=metrics_listen,
        mean_delay_ms=mean_delay_ms,
        loop_rate=loop_rate,
        drop_rate=drop_rate,
        mailbox_ttl_seconds=ttl,
        mailbox_max_packets=max_packets,
        mailbox_max_mailboxes=max_mailboxes,
        mailbox_max_bytes=max_bytes,
        max_held_packets=max_held,
        client_home=home,
        path_length=path_length,
        send_rate=send_rate,
        client_loop_rate=client_loop_rate,
        relays=tuple(relays),
        link=link,
    )


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_config(config: Config) -> str:
    """node.toml text for config; parse_config reads it back as the same Config.

    The single writer of the schema in Python (tests, benchmark); the Ansible role renders
    the same schema from its Jinja template.
    """
    client: dict[str, Any] = {
        "path_length": config.path_length,
        "send_rate": config.send_rate,
        "loop_rate": config.client_loop_rate,
    }
    if config.client_home is not None:
        client["home"] = config.client_home
    document: dict[str, Any] = {
        "node": {
            "role": config.role,
            "name": config.name,
            "state_dir": str(config.state_dir),
            "listen": _hostport(config.listen),
            "advertise": config.advertise,
            "log_level": config.log_level,
        },
        "keys": {"epoch_seconds": config.epoch_seconds, "grace_seconds": config.grace_seconds},
        "replay": {
            "packets_per_second": config.replay_packets_per_second,
            "false_positive_rate": config.replay_false_positive_rate,
            "save_seconds": config.replay_save_seconds,
        },
        "link": asdict(config.link),
        "metrics": {
            "listen": "" if config.metrics_listen is None else _hostport(config.metrics_listen)
        },
        "mixing": {
            "mean_delay_ms": config.mean_delay_ms,
            "loop_rate": config.loop_rate,
            "drop_rate": config.drop_rate,
            "max_held_packets": config.max_held_packets,
        },
        "mailbox": {
            "ttl_seconds": config.mailbox_ttl_seconds,
            "max_packets": config.mailbox_max_packets,
            "max_mailboxes": config.mailbox_max_mailboxes,
            "max_bytes": config.mailbox_max_bytes,
        },
        "client": client,
        "relays": [{"did": r.did, "address": _hostport(r.address)} for r in config.relays],
    }
    return tomli_w.dumps(document)
