"""The relay daemon: asyncio owns the UDP socket, timers, signals and the control socket."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .keystore import (
    EpochKeys,
    Keystore,
    KeystoreError,
    certificate_summary,
    check_certificate,
)
from .metrics import serve_metrics
from .reasons import Drop
from .relay import Relay
from .replay import OnionReplayFilter
from .wire import ROLE_RELAY

log = logging.getLogger("ringmesh")
ROTATE_CHECK_EVERY = 5.0
CERTIFICATE_WARN_EVERY = 3600.0  # an offline identity's certificate that expires soon


READ_BATCH = 64  # datagrams handled per wake-up before the replies are flushed
SOCKET_BUFFER = 4 << 20


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.keystore = Keystore(
            config.state_dir, ROLE_RELAY, config.epoch_seconds, config.grace_seconds
        )
        self.keys = self.keystore.load()
        self._warned_at = -CERTIFICATE_WARN_EVERY
        self._check_certificate()  # refuses to start on an expired one
        self.exit_code = 0
        self.relay = Relay(config, self.keys, time.time(), replay_filter=self._open_replay_filter)
        self.sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stop = asyncio.Event()

    # --- plumbing ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Drain a batch of datagrams straight from the socket (one wake-up, many packets)."""
        sock = self.sock
        assert sock is not None
        receive = self.relay.receive_datagram
        now = time.time()
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP errors from unreachable peers surface here
                self.relay.counters[Drop.SOCKET_ERROR.counter] += 1
                continue
            try:
                receive(data, addr[:2], now)
            except Exception as exc:  # a bug must not stop the relay; log no packet data
                self.relay.counters[Drop.INTERNAL_ERROR.counter] += 1
                log.error("internal error handling a datagram: %s", type(exc).__name__)
        self.flush()

    def flush(self) -> None:
        outbox = self.relay.datagrams_to_send()
        if outbox:
            sendto = self.sock.sendto  # type: ignore[union-attr]
            for datagram, addr in outbox:
                try:
                    sendto(datagram, addr)
                except OSError:  # full send buffer or unreachable: UDP may drop
                    self.relay.counters[Drop.SEND_FAILED.counter] += 1
        due = self.relay.next_timer()
        if due < self._timer_at:
            self._schedule(due)

    def _schedule(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(due - time.time(), 3600.0))
        self._timer_at = due
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        try:
            self.relay.handle_timer(time.time())
        except Exception as exc:  # keep the timer chain alive; log no packet data
            self.relay.counters[Drop.INTERNAL_ERROR.counter] += 1
            log.error("internal error in the relay timer: %s", type(exc).__name__)
        self.flush()

    # --- replay filters ------------------------------------------------------------------------

    def _open_replay_filter(self, ep: EpochKeys) -> OnionReplayFilter:
        return self.keystore.open_replay_filter(
            ep, self.config.replay_budget, self.config.replay_false_positive_rate
        )

    def save_replay_filters(self) -> None:
        """Write every changed filter beside its epoch's keys (periodically and at shutdown)."""
        for key in self.relay.onion_keys:
            if not key.replay.dirty:
                continue
            try:
                self.keystore.save_replay_filter(key.epoch, key.replay)
            except OSError as exc:
                log.error("saving the replay filter of epoch %d: %s", key.epoch, exc.strerror)

    async def _save_replay_filters(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.config.replay_save_seconds)
            self.save_replay_filters()

    def _replay_budget_spent(self) -> bool:
        """The current epoch recorded its packet budget and no older epoch is held: starting a
        new epoch now keeps every filter within its false-positive rate and at most two
        filters in memory."""
        return len(self.relay.onion_keys) == 1 and self.relay.onion_keys[0].replay.full

    # --- reload / rotation -------------------------------------------------------------------

    def _check_certificate(self) -> None:
        now = time.time()
        warning = check_certificate(self.keys, now)
        if warning is not None and now - self._warned_at >= CERTIFICATE_WARN_EVERY:
            self._warned_at = now
            log.warning("%s", warning)

    def _stop_on_expired_certificate(self) -> bool:
        """A relay whose certificate expired stops offering itself (peers refuse its
        descriptor and votes anyway) and exits non-zero until a new one is installed."""
        try:
            self._check_certificate()
        except KeystoreError as exc:
            log.error("stopping: %s", exc)
            self.exit_code = 1
            self._stop.set()
            return True
        return False

    def reload(self, rotated: bool = False) -> dict[str, Any]:
        """Reload keys and [[relays]] without a restart (SIGHUP, control socket)."""
        now = time.time()
        try:
            config = load_config(self.config.path)
            self.relay.update_peers(config.relays, now)
            self.config = config
        except ConfigError as exc:
            log.error("reload: keeping the old peer list: %s", exc)
        try:
            self.keystore.prune(now)
            keys = self.keystore.load(now)
            self.relay.update_keys(keys, now)
            self.keys = keys
            self._check_certificate()
        except KeystoreError as exc:
            log.error("reload: keeping the old keys: %s", exc)
            return {"ok": False, "error": str(exc)}
        self.flush()
        log.info(
            "reloaded: epoch %d, %d pinned peers",
            self.keys.current.epoch,
            len(self.relay.peers.peers),
        )
        return {"ok": True, "epoch": self.keys.current.epoch}

    async def _key_schedule(self) -> None:
        """Rotate when the current epoch expires; destroy keys past their grace period."""
        while not self._stop.is_set():
            await asyncio.sleep(ROTATE_CHECK_EVERY)
            now = time.time()
            if self._stop_on_expired_certificate():
                return
            try:
                if now >= self.keys.current.expires or self._replay_budget_spent():
                    if now < self.keys.current.expires:
                        log.info(
                            "epoch %d used its replay budget: rotating early",
                            self.keys.current.epoch,
                        )
                    self.keystore.rotate(now)
                    self.reload()
                elif len(self.keys.epochs) > 1 and self.keystore.prune(now):
                    self.reload()
            except KeystoreError as exc:
                log.error("key schedule: %s", exc)

    # --- control socket ----------------------------------------------------------------------

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            request = json.loads(line or b"{}")
            cmd = request.get("cmd") if isinstance(request, dict) else None
            if cmd == "status":
                answer: dict[str, Any] = self.status()
            elif cmd == "reload":
                answer = self.reload()
            else:
                answer = {"ok": False, "error": "unknown command"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    def status(self) -> dict[str, Any]:
        out = self.relay.status(time.time())
        out["pid"] = os.getpid()
        out["half_open"] = self.relay.link.half_open()
        out["client_sessions"] = self.relay.link.admission.client_sessions
        out["replay_filters"] = [
            {
                "epoch": key.epoch,
                "packets": key.replay.count,
                "budget": key.replay.budget,
                "bytes": key.replay.size_bytes,
            }
            for key in self.relay.onion_keys
        ]
        out.update(certificate_summary(self.keys))  # offline identity: the expiry
        out["ok"] = True
        return out

    # --- run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.config.listen[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind(self.config.listen)
        sock.setblocking(False)
        self.sock = sock
        loop.add_reader(sock.fileno(), self._on_readable)
        sock_path = self.config.control_socket
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._control, path=str(sock_path))
        finally:
            os.umask(old_umask)
        os.chmod(sock_path, 0o600)
        if self.config.metrics_listen is not None:
            serve_metrics(self.config.metrics_listen, lambda: self.relay)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        schedule = asyncio.create_task(self._key_schedule())
        saver = asyncio.create_task(self._save_replay_filters())
        gc.freeze()  # start-up objects leave the collector's young generations
        self._on_timer()
        log.info(
            "relay %s (%s) listening on %s:%d, epoch %d, %d pinned peers",
            self.config.name or "-",
            self.keys.did,
            *self.config.listen,
            self.keys.current.epoch,
            len(self.relay.peers.peers),
        )
        try:
            await self._stop.wait()
        finally:
            log.info("stopping")
            schedule.cancel()
            saver.cancel()
            self.save_replay_filters()
            if self._timer is not None:
                self._timer.cancel()
            server.close()
            loop.remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                Path(sock_path).unlink()


def run_daemon(config: Config) -> int:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=__import__("sys").stdout,
    )
    daemon = Daemon(config)
    asyncio.run(daemon.run())
    return daemon.exit_code
