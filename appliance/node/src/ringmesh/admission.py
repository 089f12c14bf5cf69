"""Link-layer resource rules: how many handshakes and sessions the link holds, in all and per
source address, and the session slots kept for pinned relays. Pure bookkeeping: LinkEndpoint
asks before any expensive step and reports what it adds and removes."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from .reasons import HandshakeFailure

Addr = tuple[str, int]


@dataclass(frozen=True)
class LinkLimits:
    # Handshakes answered (a KEM encapsulation and a signature spent) and not yet finished.
    max_half_open: int = 1024
    max_half_open_per_source: int = 8
    # Sessions held, in all; clients may use all but `reserved_relay_sessions` of them.
    max_sessions: int = 8192
    max_sessions_per_source: int = 64  # client sessions per source address
    reserved_relay_sessions: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.reserved_relay_sessions < self.max_sessions:
            raise ValueError("reserved_relay_sessions must be below max_sessions")

    @property
    def client_sessions(self) -> int:
        return self.max_sessions - self.reserved_relay_sessions


def source_of(addr: Addr) -> str:
    """What per-source limits count by: the IP address, never the port (any port of one host
    is the same source). For IPv6 the /64 prefix, which one host or subscriber usually holds."""
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return addr[0]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Admission:
    """Counts half-open handshakes and sessions per source; says which rule refuses a new one."""

    def __init__(self, limits: LinkLimits) -> None:
        self.limits = limits
        # Sources of the pinned relays ([[relays]] addresses): their handshakes do not compete
        # with anyone's for half-open slots (the cookie already proved the address).
        self.reserved_sources: frozenset[str] = frozenset()
        self._half_open: Counter[str] = Counter()
        self._client_sessions: Counter[str] = Counter()
        self.half_open = 0
        self.sessions = 0
        self.client_sessions = 0

    def refuse_handshake(self, source: str) -> HandshakeFailure | None:
        """Before answering a cookie-proven INIT (the expensive step)."""
        limits = self.limits
        if self._half_open[source] >= limits.max_half_open_per_source:
            return HandshakeFailure.SOURCE_HALF_OPEN_FULL
        if source in self.reserved_sources:
            return None if self.sessions < limits.max_sessions else HandshakeFailure.SESSIONS_FULL
        if self.half_open >= limits.max_half_open:
            return HandshakeFailure.HALF_OPEN_FULL
        held = self._client_sessions[source] + self._half_open[source]
        if held >= limits.max_sessions_per_source:
            return HandshakeFailure.SOURCE_SESSIONS_FULL
        if self.client_sessions >= limits.client_sessions:
            return HandshakeFailure.SESSIONS_FULL
        return None

    def refuse_session(self, source: str, relay: bool) -> HandshakeFailure | None:
        """On a verified FINISH, when the peer's identity (pinned relay or client) is known."""
        if self.sessions >= self.limits.max_sessions:
            return HandshakeFailure.SESSIONS_FULL
        if relay:
            return None
        if self.client_sessions >= self.limits.client_sessions:
            return HandshakeFailure.SESSIONS_FULL
        if self._client_sessions[source] >= self.limits.max_sessions_per_source:
            return HandshakeFailure.SOURCE_SESSIONS_FULL
        return None

    def half_open_added(self, source: str) -> None:
        self._half_open[source] += 1
        self.half_open += 1

    def half_open_removed(self, source: str) -> None:
        self.half_open -= 1
        self._half_open[source] -= 1
        if not self._half_open[source]:
            del self._half_open[source]

    def session_added(self, source: str, client: bool) -> None:
        self.sessions += 1
        if client:
            self.client_sessions += 1
            self._client_sessions[source] += 1

    def session_removed(self, source: str, client: bool) -> None:
        self.sessions -= 1
        if client:
            self.client_sessions -= 1
            self._client_sessions[source] -= 1
            if not self._client_sessions[source]:
                del self._client_sessions[source]

    def sources_held(self) -> int:
        """Distinct sources with state (bounded by the global caps)."""
        return len(self._half_open.keys() | self._client_sessions.keys())
