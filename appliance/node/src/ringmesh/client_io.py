"""The asyncio shell around the sans-I/O Client: a UDP socket, one timer, and the reply keys
and end-to-end prekeys kept between runs. Every protocol decision is in client.py."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .client import (
    CONNECT_TIMEOUT,
    Client,
    ClientError,
    Event,
    Failed,
    MailboxSynced,
    MessageAcked,
    MessageFailed,
    MessageReceived,
    PrekeyFetched,
    Ready,
    ReplyKeysIssued,
    ReplyKeysUsed,
    ReplyReceived,
    ReplySent,
    State,
    SurbKeys,
)
from .config import Config
from .keystore import Keys
from .prekeys import PrekeyBundle, PrekeyStore

DRAIN_LIMIT = 5.0  # seconds to let queued acks and replies leave before closing
# End-to-end prekeys: a new one each week, the replaced one kept a day for messages on their
# way (or held by the home relay while the user is offline), then destroyed.
PREKEY_LIFETIME = 7 * 86400
PREKEY_GRACE = 86400
PREKEY_WAIT = 5.0  # seconds a sender waits for the recipient's bundle before sending without


class _RecordFile:
    """A small JSON object file (0600) that concurrent `ringmesh` commands share, under a lock."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = Path(state_dir) / f"{name}.json"
        self._lock = Path(state_dir) / f".{name}.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                records = json.loads(self.path.read_text())
            except (FileNotFoundError, ValueError):
                records = {}
            before = dict(records)
            yield records
            if records != before:
                tmp = self.path.with_name(self.path.name + ".tmp")
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(out, "w") as f:
                    json.dump(records, f)
                os.replace(tmp, self.path)
        finally:
            os.close(fd)


class BundleCache(_RecordFile):
    """<state_dir>/prekey-bundles.json: recipients' certified prekey bundles (public), used
    again until they expire, so a sender fetches each once a week rather than per message."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, "prekey-bundles")

    def get(self, recipient: bytes, now: float) -> PrekeyBundle | None:
        with self._locked() as records:
            raw = records.get(recipient.hex())
            if raw is None:
                return None
            try:
                return PrekeyBundle.decode(bytes.fromhex(raw), recipient, now)
            except ValueError:  # expired or damaged: fetch a new one
                del records[recipient.hex()]
                return None

    def put(self, bundle: PrekeyBundle) -> None:
        with self._locked() as records:
            records[bundle.identity.hex()] = bundle.encode().hex()


class ReplyKeyStore(_RecordFile):
    """<state_dir>/reply-keys.json (0600): the keys of reply blocks this user handed out, so
    a later `ringmesh recv` can read the replies. Each is deleted once used or expired."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, "reply-keys")

    def load(self, now: float) -> dict[bytes, bytes]:
        with self._locked() as records:
            for surb_id, record in list(records.items()):
                try:
                    if SurbKeys.decode(bytes.fromhex(record)).expires > now:
                        continue
                except ValueError:
                    pass
                del records[surb_id]
            return {bytes.fromhex(k): bytes.fromhex(v) for k, v in records.items()}

    def add(self, surb_id: bytes, record: bytes) -> None:
        with self._locked() as records:
            records[surb_id.hex()] = record.hex()

    def remove(self, surb_id: bytes) -> None:
        with self._locked() as records:
            records.pop(surb_id.hex(), None)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, shell: ClientShell) -> None:
        self.shell = shell

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.shell.on_datagram(data, addr[:2])


class ClientShell:
    def __init__(self, client: Client, store: ReplyKeyStore | None = None) -> None:
        self.client = client
        self.store = store
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._backlog: deque[Event] = deque()  # taken out early, handed out first
        # Traffic on the wire, for the benchmark's cover-traffic cost.
        self.datagrams_sent = self.bytes_sent = 0

    async def start(self) -> Ready:
        """Connect to the home relay and wait for a usable directory."""
        host = "::" if ":" in self.client.home.address[0] else "0.0.0.0"
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, 0)
        )
        self.transport = transport
        self.client.connect(time.time())
        self.flush()
        deadline = time.monotonic() + 3 * CONNECT_TIMEOUT
        early: list[Event] = []  # e.g. messages the home relay held, handed over at once
        while True:
            event = await self.next_event(deadline - time.monotonic())
            if isinstance(event, Ready):
                self._backlog.extendleft(reversed(early))
                return event
            if event is None:
                raise ClientError(f"no answer from the home relay {self.client.home.did}")
            if isinstance(event, Failed):
                raise ClientError(event.reason)
            early.append(event)

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client.receive_datagram(data, addr, time.time())
        self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.client.handle_timer(time.time())
        self.flush()

    def flush(self) -> None:
        """Send what the client produced, handle its events, re-arm the timer."""
        for datagram, addr in self.client.datagrams_to_send():
            if self.transport is not None:
                self.transport.sendto(datagram, addr)
                self.datagrams_sent += 1
                self.bytes_sent += len(datagram)
        while (event := self.client.next_event()) is not None:
            if isinstance(event, ReplyKeysIssued):
                if self.store is not None:
                    self.store.add(event.surb_id, event.record)
            elif isinstance(event, ReplyKeysUsed):
                if self.store is not None:
                    self.store.remove(event.surb_id)
            else:
                self._events.put_nowait(event)
        due = self.client.next_timer()
        if due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            delay = max(0.0, min(due - time.time(), 3600.0))
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    async def next_event(self, timeout: float) -> Event | None:
        if self._backlog:
            return self._backlog.popleft()
        if timeout <= 0 and self._events.empty():
            return None
        try:
            return await asyncio.wait_for(self._events.get(), max(timeout, 0.0))
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Let queued acks and replies leave in their ticks, then end the session."""
        deadline = time.monotonic() + DRAIN_LIMIT
        while self.client.pending() and time.monotonic() < deadline:
            if self.client.state is not State.READY:
                break
            await asyncio.sleep(0.02)
        self.client.close(time.time())
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def open_client(
    config: Config, keys: Keys, receive: bool = False
) -> tuple[ClientShell, Ready]:
    store = ReplyKeyStore(config.state_dir)
    client = Client(config, keys, reply_keys=store.load(time.time()))
    prekeys = PrekeyStore(config.state_dir / "keys", keys.identity, PREKEY_LIFETIME, PREKEY_GRACE)
    client.set_prekeys(prekeys.maintain(time.time()), prekeys.held())
    if receive:
        client.receive_messages()
    shell = ClientShell(client, store)
    try:
        ready = await shell.start()
    except BaseException:
        await shell.close()
        raise
    return shell, ready


@dataclass
class SendResult:
    message_id: bytes
    acked: bool
    attempts: int
    forward_secret: bool  # sealed to the recipient's prekey


async def fetch_prekey(
    shell: ClientShell, recipient: bytes, recipient_home: bytes, wait: float
) -> PrekeyBundle | None:
    """The recipient's bundle through the mixnet, or None when none came within `wait`."""
    shell.client.fetch_prekey(recipient, recipient_home, time.time())
    shell.flush()
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        event = await shell.next_event(left)
        if isinstance(event, PrekeyFetched) and event.recipient == recipient:
            return event.bundle
        if isinstance(event, Failed):
            raise ClientError(event.reason)
    return None


async def send_message(
    shell: ClientShell,
    body: bytes,
    recipient: bytes,
    recipient_home: bytes,
    timeout: float,
    retransmit: float,
) -> SendResult:
    client = shell.client
    cache = BundleCache(client.config.state_dir)
    bundle = cache.get(recipient, time.time())
    if bundle is None:
        bundle = await fetch_prekey(shell, recipient, recipient_home, min(PREKEY_WAIT, timeout))
        if bundle is not None:
            cache.put(bundle)
    message_id = client.send_message(
        body, recipient, recipient_home, time.time(), timeout, retransmit, bundle
    )
    sealed = bundle is not None
    shell.flush()
    deadline = time.monotonic() + timeout + 1.0
    while (left := deadline - time.monotonic()) > 0:
        event = await shell.next_event(left)
        if isinstance(event, MessageAcked) and event.message_id == message_id:
            return SendResult(message_id, True, event.attempts, sealed)
        if isinstance(event, MessageFailed) and event.message_id == message_id:
            return SendResult(message_id, False, event.attempts, sealed)
        if isinstance(event, Failed):
            raise ClientError(event.reason)
    return SendResult(message_id, False, 0, sealed)


async def send_reply(shell: ClientShell, handle: bytes, body: bytes, timeout: float) -> bool:
    """True once the reply has left for the home relay (there is no ack for a reply)."""
    shell.client.send_reply(handle, body, time.time())
    shell.flush()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = await shell.next_event(left)
        if isinstance(event, ReplySent):
            return True
        if isinstance(event, Failed):
            raise ClientError(event.reason)
    return False


@dataclass
class Received:
    message_id: bytes | None  # None for a reply
    body: bytes
    reply_handle: bytes | None  # to answer a message; None for a reply to one of ours
    in_reply_to: bytes | None  # a reply: the id of our message it answers


async def receive_messages(
    shell: ClientShell,
    wait: float,
    count: int | None,
    quiet: float = 0.5,
    stop: asyncio.Event | None = None,
) -> list[Received]:
    """Collect whole messages and replies (the client acks each message itself).

    Without `count`: return once the held packets are handed over and, with `wait`, 0.5 s
    after the last arrival or after `wait` seconds. With `count`: once that many arrived.
    """
    got: list[Received] = []
    synced = False
    start = time.monotonic()
    last = start
    while True:
        now = time.monotonic()
        if stop is not None and stop.is_set():
            break
        if count is not None and len(got) >= count:
            break
        if count is None and synced and (wait <= 0 or (got and now - last >= quiet)):
            break
        if now >= start + max(wait, 0 if synced else CONNECT_TIMEOUT):
            break
        event = await shell.next_event(0.05)
        if isinstance(event, MessageReceived):
            got.append(Received(event.message_id, event.body, event.reply_handle, None))
            last = time.monotonic()
        elif isinstance(event, ReplyReceived):
            got.append(Received(None, event.body, None, event.in_reply_to))
            last = time.monotonic()
        elif isinstance(event, MailboxSynced):
            synced = True
        elif isinstance(event, Failed):
            raise ClientError(event.reason)
    return got
