"""Real relays and clients (the sans-I/O objects) on a simulated network with a fake clock.

Datagrams arrive instantly; time jumps from one timer to the next, so Poisson schedules
and mixing delays play out exactly as written, in a fraction of the wall-clock time.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from ringmesh.client import Client, Event
from ringmesh.config import Config, RelayEntry
from ringmesh.keystore import Keys, Keystore
from ringmesh.link import Addr
from ringmesh.relay import Relay
from ringmesh.wire import ROLE_CLIENT, ROLE_RELAY

E = TypeVar("E")
# (time, source, destination, datagram) -> the datagram to deliver, or None to drop it
Tamper = Callable[[float, Addr, Addr, bytes], bytes | None]


@dataclass
class Sent:
    time: float
    src: Addr
    dst: Addr
    datagram: bytes


@dataclass
class SimClient:
    client: Client
    addr: Addr
    keys: Keys
    events: list[Event] = field(default_factory=list)


class SimNet:
    def __init__(
        self,
        tmp: Path,
        n_relays: int,
        seed: int = 1,
        relay_config: dict[str, object] | None = None,
    ) -> None:
        self.tmp = tmp
        self.now = time.time()
        self.seed = seed
        self.stores: list[Keystore] = []
        self.keys: list[Keys] = []
        for i in range(n_relays):
            self.keys.append(self.keystore(f"relay{i}", ROLE_RELAY))
        self.addrs: list[Addr] = [("10.0.0.1", 7000 + i) for i in range(n_relays)]
        self.ring = tuple(
            RelayEntry.from_did(k.did, a) for k, a in zip(self.keys, self.addrs, strict=True)
        )
        base = Config(tmp / "relay.toml", relays=self.ring, mean_delay_ms=0, loop_rate=0.0)
        self.relay_config = replace(base, **(relay_config or {}))  # type: ignore[arg-type]
        self.relays: dict[Addr, Relay] = {
            a: Relay(self.relay_config, k, self.now, random.Random(seed + i))
            for i, (k, a) in enumerate(zip(self.keys, self.addrs, strict=True))
        }
        self.clients: dict[Addr, SimClient] = {}
        self.wire: list[Sent] = []
        self.tamper: Tamper | None = None
        self.latency = 0.0  # seconds every datagram spends on the wire
        self._in_flight: list[tuple[float, int, Addr, Addr, bytes]] = []

    def keystore(self, name: str, role: int) -> Keys:
        store = Keystore(self.tmp / name, role, 3600, 600)
        store.init(self.now)
        self.stores.append(store)
        return store.load(self.now)

    def client_config(self, home: int, **values: object) -> Config:
        defaults: dict[str, object] = {"send_rate": 20.0, "client_loop_rate": 2.0}
        defaults["mean_delay_ms"] = 5
        return replace(
            Config(self.tmp / "client.toml", role="client", relays=self.ring),
            client_home=self.ring[home].did,
            **(defaults | values),  # type: ignore[arg-type]
        )

    def add_client(
        self,
        name: str,
        home: int,
        keys: Keys | None = None,
        reply_keys: dict[bytes, bytes] | None = None,
        **values: object,
    ) -> SimClient:
        """A client (new keys unless given: a later run of the same user) at relay `home`."""
        keys = keys or self.keystore(name, ROLE_CLIENT)
        rng = random.Random(f"{self.seed}-{name}-{len(self.clients)}")
        client = Client(self.client_config(home, **values), keys, rng, reply_keys)
        addr = ("10.0.1.1", 5000 + len(self.clients))
        sim = SimClient(client, addr, keys)
        self.clients[addr] = sim
        return sim

    # --- the network -------------------------------------------------------------------------

    def _outputs(self) -> list[tuple[Addr, list[tuple[bytes, Addr]]]]:
        out = [(a, r.datagrams_to_send()) for a, r in self.relays.items()]
        out += [(a, c.client.datagrams_to_send()) for a, c in self.clients.items()]
        return out

    def _arrive(self, src: Addr, dst: Addr, datagram: bytes) -> None:
        if self.tamper is not None:
            tampered = self.tamper(self.now, src, dst, datagram)
            if tampered is None:
                return
            datagram = tampered
        if dst in self.relays:
            self.relays[dst].receive_datagram(datagram, src, self.now)
        elif dst in self.clients:
            self.clients[dst].client.receive_datagram(datagram, src, self.now)

    def _deliver(self) -> None:
        while True:
            moved = False
            while self._in_flight and self._in_flight[0][0] <= self.now:
                _, _, src, dst, datagram = heapq.heappop(self._in_flight)
                moved = True
                self._arrive(src, dst, datagram)
            for src, datagrams in self._outputs():
                for datagram, dst in datagrams:
                    moved = True
                    self.wire.append(Sent(self.now, src, dst, datagram))
                    if self.latency > 0:
                        entry = (self.now + self.latency, len(self.wire), src, dst, datagram)
                        heapq.heappush(self._in_flight, entry)
                    else:
                        self._arrive(src, dst, datagram)
            for sim in self.clients.values():
                while (event := sim.client.next_event()) is not None:
                    sim.events.append(event)
            if not moved:
                return

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Advance the fake clock by `seconds`, or until `until()` holds."""
        end = self.now + seconds
        nodes: list[Relay | Client] = [*self.relays.values()]
        while True:
            nodes = [*self.relays.values(), *(c.client for c in self.clients.values())]
            self._deliver()
            if until is not None and until():
                return
            due = min(n.next_timer() for n in nodes)
            if self._in_flight:
                due = min(due, self._in_flight[0][0])
            if due > end:
                self.now = end
                return
            self.now = max(self.now, due)
            for node in nodes:
                if node.next_timer() <= self.now:
                    node.handle_timer(self.now)

    def connect(self, *clients: SimClient, seconds: float = 10.0) -> None:
        for sim in clients:
            sim.client.connect(self.now)
        self.run(seconds, until=lambda: all(c.client.state.value == "ready" for c in clients))
        states = {c.client.state.value for c in clients}
        assert states == {"ready"}, (states, [c.events for c in clients])

    @staticmethod
    def events_of(sim: SimClient, kind: type[E]) -> list[E]:
        return [e for e in sim.events if isinstance(e, kind)]
