"""Which fleet members hold whose backups: a ring over the fleet group, in inventory order.

Each member backs up to the `count` members after it (wrapping round), so every member
is also the target of exactly `count` others and the choice depends only on the inventory.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any


def _ring(members: list[Any], count: Any) -> tuple[list[str], int]:
    names = list(dict.fromkeys(str(m) for m in members))  # inventory order, no duplicates
    return names, max(0, min(int(count), len(names) - 1))


def backup_peers_of(members: list[Any], client: str, count: Any) -> list[str]:
    """The members that hold `client`'s repositories."""
    names, k = _ring(members, count)
    if client not in names:
        return []
    start = names.index(client)
    return [names[(start + step) % len(names)] for step in range(1, k + 1)]


def backup_clients_of(members: list[Any], peer: str, count: Any) -> list[str]:
    """The members whose repositories `peer` holds."""
    names, _ = _ring(members, count)
    return [name for name in names if peer in backup_peers_of(names, name, count)]


def backup_derive_secret(secret: str, purpose: str, client: str) -> str:
    """A per-host, per-tool secret: HMAC-SHA256 of the fleet secret over purpose and name."""
    if not secret:
        return ""
    message = f"ringmesh-backup/{purpose}/{client}".encode()
    return hmac.new(str(secret).encode(), message, hashlib.sha256).hexdigest()


_ELAPSE = re.compile(r"^\s*(?:Next elapse|Iter(?:\.|ation) #\d+):\s+\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.MULTILINE)


def backup_calendar_interval(analyze_output: str) -> int:
    """Seconds between the first two elapses in `systemd-analyze calendar --iterations=2` output."""
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S") for m in _ELAPSE.findall(analyze_output)]
    if len(stamps) < 2:
        raise ValueError(f"no two elapse times in: {analyze_output!r}")
    return int((stamps[1] - stamps[0]).total_seconds())


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "backup_peers_of": backup_peers_of,
            "backup_clients_of": backup_clients_of,
            "backup_derive_secret": backup_derive_secret,
            "backup_calendar_interval": backup_calendar_interval,
        }
