"""The tests' own link endpoints on real UDP sockets, pumped by hand: clients that talk to
`ringmesh run` processes, and the attackers of the flood tests (and benchmark)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from helpers import credentials
from ringmesh import handshake as hs
from ringmesh.descriptor import Descriptor
from ringmesh.link import HandshakeFailed, LinkEndpoint, Session, SessionUp
from ringmesh.onion import Hop, build_packet
from ringmesh.wire import (
    CMD_DROP,
    DG_HS_COOKIE,
    DG_HS_RESP,
    MSG_ONION,
    NODE_ID_LEN,
    PAYLOAD_LEN,
    ROLE_CLIENT,
)

Addr = tuple[str, int]


def fresh_client() -> tuple[Descriptor, Ed25519PrivateKey]:
    """A new self-made client identity, as anyone can make (one per handshake)."""
    return credentials(ROLE_CLIENT)


class SocketEndpoint:
    """A LinkEndpoint on a UDP socket bound to `host` (any 127.0.0.0/8 address on Linux)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        identity: Callable[[], tuple[Descriptor, Ed25519PrivateKey]] | None = None,
    ) -> None:
        if identity is None:
            fixed = fresh_client()
            identity = lambda: fixed  # noqa: E731 - one identity for every handshake
        self.link = LinkEndpoint(identity, lambda desc: None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.up: list[Session] = []
        self.failed: list[HandshakeFailed] = []
        self.received: list[bytes] = []

    def pump(self, now: float) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                break
            result = self.link.receive(data, addr, now)
            if result is not None:
                self.received.append(result[1])
        self.link.tick(now)
        for datagram, addr in self.link.outbox:
            with contextlib.suppress(BlockingIOError):  # full send buffer: UDP may drop
                self.sock.sendto(datagram, addr)
        self.link.outbox.clear()
        for event in self.link.events:
            if isinstance(event, SessionUp):
                self.up.append(event.session)
            elif isinstance(event, HandshakeFailed):
                self.failed.append(event)
        self.link.events.clear()

    def close(self) -> None:
        self.sock.close()


def pump_until(
    endpoints: Iterable[SocketEndpoint], done: Callable[[], bool], timeout: float
) -> bool:
    """Pump every endpoint until `done()` or `timeout` seconds; returns done()."""
    endpoints = list(endpoints)
    socks = {e.sock: e for e in endpoints}
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        select.select(list(socks), [], [], 0.02)
        now = time.time()
        for endpoint in endpoints:
            endpoint.pump(now)
    return True


def connect(endpoint: SocketEndpoint, relay: Addr, timeout: float = 20) -> Session:
    """One session with the relay (retrying while it starts up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ups, failures = len(endpoint.up), len(endpoint.failed)
        endpoint.link.connect(relay, None, time.time())
        pump_until(
            [endpoint],
            lambda: len(endpoint.up) > ups or len(endpoint.failed) > failures,  # noqa: B023
            6,
        )
        if len(endpoint.up) > ups:
            return endpoint.up[-1]
    raise AssertionError(f"no session with {relay}: {endpoint.failed}")


def send_onion(endpoint: SocketEndpoint, session: Session, packet: bytes) -> None:
    endpoint.link.send(session, bytes([MSG_ONION]) + packet)
    endpoint.pump(time.time())


def cover_packet(relay: Descriptor) -> bytes:
    """A one-hop drop-cover packet to the relay, which it peels and discards."""
    hop = Hop(relay.node_id, relay.onion_key())
    _, packet = build_packet([hop], CMD_DROP, os.urandom(NODE_ID_LEN), os.urandom(PAYLOAD_LEN))
    return packet


def half_open_flood(relay: Addr, host: str, count: int, timeout: float) -> tuple[int, int]:
    """`count` handshakes from `count` ports of `host`, each proving its address with the
    cookie and then never finishing: (cookies answered, responses received)."""
    socks = []
    states: dict[socket.socket, hs.InitiatorState] = {}
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            socks.append(sock)
            states[sock] = hs.InitiatorState.new()
            sock.sendto(states[sock].init_datagram(), relay)
        cookies = responses = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and cookies + responses < 2 * count:
            readable, _, _ = select.select(socks, [], [], 0.3)
            if not readable and cookies == count:
                break  # every cookie answered; the responses that come have come
            for sock in readable:
                data = sock.recv(4096)
                if data[0] == DG_HS_COOKIE:  # prove the address, as a real initiator would
                    _, cookie = hs.parse_cookie(data)
                    sock.sendto(states[sock].init_datagram(cookie), relay)
                    cookies += 1
                elif data[0] == DG_HS_RESP:
                    responses += 1
        return cookies, responses
    finally:
        for sock in socks:
            sock.close()


def session_flood(
    relay: Addr, hosts: list[str], per_host: int, timeout: float
) -> tuple[list[SocketEndpoint], int]:
    """`per_host` full handshakes from each address, each with a new self-made client
    identity: (the endpoints, which keep their sessions open; sessions the relay accepted)."""
    endpoints = [SocketEndpoint(host, identity=fresh_client) for host in hosts]
    now = time.time()
    for endpoint in endpoints:
        for _ in range(per_host):
            endpoint.link.connect(relay, None, now)
    wanted = len(hosts) * per_host
    pump_until(
        endpoints, lambda: sum(len(e.up) + len(e.failed) for e in endpoints) >= wanted, timeout
    )
    return endpoints, sum(len(e.up) for e in endpoints)
