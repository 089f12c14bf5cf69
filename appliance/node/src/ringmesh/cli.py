"""`ringmesh` command line (contract: docs/node-contract.md)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .certificate import (
    DEFAULT_LIFETIME,
    SigningCertificate,
    new_identity_file,
    parse_lifetime,
    read_identity_file,
)
from .config import DEFAULT_CONFIG, Config, ConfigError, load_config
from .did import DidError, did_from_public, public_from_did
from .keystore import Keys, Keystore, KeystoreError, check_certificate, iso, public_summary
from .reasons import Drop
from .wire import ROLE_CLIENT, ROLE_RELAY

EXIT_USAGE = 2


def _keystore(config: Config) -> Keystore:
    role = ROLE_RELAY if config.role == "relay" else ROLE_CLIENT
    return Keystore(config.state_dir, role, config.epoch_seconds, config.grace_seconds)


def control_request(
    config: Config, request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any] | None:
    """Ask the running daemon over its control socket; None when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(config.control_socket))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
        return answer if isinstance(answer, dict) else None
    except (OSError, ValueError):
        return None


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    store = _keystore(config)
    if args.keys_cmd == "init":
        print(store.init(offline_identity=args.offline_identity))
        return 0
    if args.keys_cmd == "signing-request":
        print(json.dumps(store.signing_request(args.renew_within)))
        return 0
    if args.keys_cmd == "install-cert":
        text = Path(args.file).read_text() if args.file else sys.stdin.read()
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError:
            raise KeystoreError(
                "the certificate is not hex (the output of 'keys certify')"
            ) from None
        certificate = store.install_certificate(raw)
        answer = control_request(config, {"cmd": "reload"})
        out = {
            "expires": iso(certificate.expires),
            "expires_timestamp": certificate.expires,
            "reloaded": bool(answer and answer.get("ok")),
        }
        print(json.dumps(out) if args.json else f"installed; expires {out['expires']}")
        return 0
    if args.keys_cmd == "show":
        summary = public_summary(store.load())
        if args.json:
            print(json.dumps(summary))
        else:
            for key, value in summary.items():
                print(f"{key}: {value}")
        return 0
    keys = store.rotate()
    answer = control_request(config, {"cmd": "reload"})
    reloaded = bool(answer and answer.get("ok"))
    if args.json:
        print(json.dumps({"epoch": keys.current.epoch, "reloaded": reloaded}))
    else:
        print(f"rotated to epoch {keys.current.epoch}" + ("; node reloaded" if reloaded else ""))
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    """On the operator's machine: certify a relay's signing request with the identity key."""
    try:
        out = _certify(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json or "certificate" not in out:
        print(json.dumps(out))
    else:
        print(out["certificate"])
    return 0


def _certify(args: argparse.Namespace) -> dict[str, str]:
    """{"did"} of the identity key, and with --request {"certificate", "expires"}; bad input
    raises ValueError naming the option."""
    if args.identity_key == "-" and args.request == "-":
        raise ValueError("--identity-key and --request cannot both read stdin")
    lifetime = parse_lifetime(args.lifetime)
    if args.identity_key == "-":  # from a vault, never written to the disk
        identity = read_identity_file(Path("/dev/stdin"))
    elif args.create:
        identity = new_identity_file(Path(args.identity_key))
    else:
        identity = read_identity_file(Path(args.identity_key))
    did = did_from_public(identity.public_key().public_bytes_raw())
    if args.request is None:  # the public identity, to pin or to init the relay with
        return {"did": did}
    try:
        if args.request.lstrip().startswith("{"):
            text = args.request
        elif args.request == "-":
            text = sys.stdin.read()
        else:
            text = Path(args.request).read_text()
        request = json.loads(text)
        signing_public = bytes.fromhex(request["signing_key"])
        wanted = request["did"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--request: not a signing request ({exc})") from None
    if wanted != did:
        raise ValueError(f"--request is for {wanted}, the identity key is {did}")
    try:
        certificate = SigningCertificate.issue(
            identity, signing_public, int(time.time()) + lifetime
        )
    except ValueError as exc:
        raise ValueError(f"--request: {exc}") from None
    return {"certificate": certificate.encode().hex(), "expires": iso(certificate.expires)}


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from .daemon import run_daemon

    # A reload request that races start-up must not kill the process (SIGHUP's default);
    # the daemon installs its real handler once the loop runs.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if config.role != "relay":
        raise ConfigError("node.role", "must be 'relay' to run the daemon")
    # Refuse early on a missing or loose keystore, or an expired signing certificate.
    check_certificate(_keystore(config).load(), time.time())
    if control_request(config, {"cmd": "status"}, timeout=2.0) is not None:
        print(f"error: a node already runs on {config.control_socket}", file=sys.stderr)
        return 1
    return run_daemon(config)


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    answer = control_request(config, {"cmd": "status"})
    if answer is None:
        if args.json:
            print(json.dumps({"ok": False, "error": "node does not answer"}))
        else:
            print("node does not answer", file=sys.stderr)
        return 1
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer))
    else:
        for key, value in answer.items():
            print(f"{key}: {value}")
    return 0


def _recipient(args: argparse.Namespace, config: Config) -> tuple[bytes, bytes]:
    if args.to is None or args.home is None:
        missing = "--to" if args.to is None else "--home"
        raise ConfigError(missing, "is required (or answer a message with --reply HANDLE)")
    try:
        to = public_from_did(args.to)
    except DidError as exc:
        raise ConfigError("--to", str(exc)) from None
    try:
        home = public_from_did(args.home)
    except DidError as exc:
        raise ConfigError("--home", str(exc)) from None
    if home not in {r.identity for r in config.relays}:
        raise ConfigError("--home", "must be one of the [[relays]] dids in the config")
    return to, home


def _reply_handle(text: str) -> bytes:
    from .messaging import SURB_LEN

    try:
        handle = base64.b64decode(text, validate=True)
    except ValueError:
        handle = b""
    if len(handle) != SURB_LEN:
        raise ConfigError("--reply", "is not a reply handle printed by 'ringmesh recv --json'")
    return handle


def _client_config(config: Config) -> None:
    if config.client_home is None:
        raise ConfigError("client.home", "is required for send and recv")


def _client_keys(config: Config) -> Keys:
    """A client has no daemon to rotate its keys: it starts a new epoch when the current one
    ended, or relays would refuse its expired descriptor."""
    store = _keystore(config)
    keys = store.load()
    if time.time() >= keys.current.expires:
        keys = store.rotate()
    return keys


def cmd_send(args: argparse.Namespace, config: Config) -> int:
    from . import client_io

    _client_config(config)
    if args.reply is not None:
        if args.to is not None or args.home is not None:
            raise ConfigError("--reply", "answers through a handle: leave out --to and --home")
        handle = _reply_handle(args.reply)
    else:
        to, home = _recipient(args, config)
    body = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
    keys = _client_keys(config)

    async def go() -> int:
        shell, ready = await client_io.open_client(config, keys)
        out: dict[str, Any] = {"bytes": len(body), "directory": ready.directory_digest.hex()}
        try:
            if args.reply is not None:
                sent = await client_io.send_reply(shell, handle, body, args.timeout)
                out |= {"reply": True, "sent": sent}
                ok = sent
            else:
                result = await client_io.send_message(
                    shell, body, to, home, args.timeout, args.retransmit
                )
                out |= {
                    "message_id": result.message_id.hex(),
                    "acked": result.acked,
                    "attempts": result.attempts,
                    "forward_secret": result.forward_secret,
                }
                ok = result.acked
        finally:
            await shell.close()
        if args.json:
            print(json.dumps(out))
        elif not ok:
            print("not sent" if args.reply is not None else "not acknowledged", file=sys.stderr)
        return 0 if ok else 1

    return asyncio.run(go())


def cmd_recv(args: argparse.Namespace, config: Config) -> int:
    from . import client_io

    _client_config(config)
    keys = _client_keys(config)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop waiting, print what arrived
            loop.add_signal_handler(sig, stop.set)
        shell, _ = await client_io.open_client(config, keys, receive=True)
        try:
            messages = await client_io.receive_messages(shell, args.wait, args.count, stop=stop)
        finally:
            await shell.close()
        if args.json:
            out = [
                {
                    "id": c.message_id.hex() if c.message_id else None,
                    "body_b64": base64.b64encode(c.body).decode(),
                    "reply": base64.b64encode(c.reply_handle).decode() if c.reply_handle else None,
                    "in_reply_to": c.in_reply_to.hex() if c.in_reply_to else None,
                }
                for c in messages
            ]
            rejected = shell.client.counters[Drop.BAD_FRAGMENT.counter]
            print(json.dumps({"messages": out, "rejected": rejected}))
        else:
            for c in messages:
                sys.stdout.buffer.write(c.body)
            sys.stdout.buffer.flush()
        return 0

    return asyncio.run(go())


def build_parser() -> argparse.ArgumentParser:
    # Options valid before or after the subcommand; sub-levels SUPPRESS their defaults so a
    # value given at the top is not overwritten.
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--config", default=DEFAULT_CONFIG, help="node.toml (default %(default)s)")
    top.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="node.toml")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output"
    )
    parser = argparse.ArgumentParser(prog="ringmesh", parents=[top], description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    keys = sub.add_parser("keys", parents=[common], help="keystore")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    init = keys_sub.add_parser("init", parents=[common], help="create the keystore if absent")
    init.add_argument(
        "--offline-identity",
        metavar="DID",
        help="the identity key (this did:key) stays offline; do not make one here",
    )
    request = keys_sub.add_parser(
        "signing-request",
        parents=[common],
        help="offline identity: print the did and a signing key to certify (JSON, public)",
    )
    request.add_argument(
        "--renew-within",
        type=float,
        metavar="SECONDS",
        help="no new key while the installed certificate has longer than SECONDS left",
    )
    certify = keys_sub.add_parser(
        "certify",
        parents=[common],
        help="on the operator's machine: certify a signing request with the identity key",
    )
    certify.add_argument(
        "--identity-key", required=True, help="FILE with the hex seed ('-': stdin)"
    )
    certify.add_argument(
        "--request", help="the signing request: FILE, '-' (stdin) or the JSON itself"
    )
    certify.add_argument(
        "--lifetime",
        default=f"{DEFAULT_LIFETIME // 86400}d",
        help="how long the certificate lasts: 30d, 12h, SECONDS (default %(default)s)",
    )
    certify.add_argument(
        "--create", action="store_true", help="make the identity key FILE if it is absent"
    )
    install = keys_sub.add_parser(
        "install-cert", parents=[common], help="offline identity: install a certificate"
    )
    install.add_argument("--file", help="read the certificate (hex) from FILE, not stdin")
    show = keys_sub.add_parser("show", parents=[common], help="print the public identity")
    show.add_argument("--public", action="store_true", help="public material only (always)")
    keys_sub.add_parser("rotate", parents=[common], help="new onion and link keys (epoch + 1)")
    sub.add_parser("run", parents=[common], help="run the relay daemon in the foreground")
    sub.add_parser("status", parents=[common], help="ask the running relay for its status")
    send = sub.add_parser("send", parents=[common], help="send a message (stdin or --file)")
    send.add_argument("--to", help="recipient did:key")
    send.add_argument(
        "--home",
        "--via",
        dest="home",
        help="recipient's home relay did:key, which holds the message for them",
    )
    send.add_argument(
        "--reply",
        metavar="HANDLE",
        help="answer a received message through its reply handle (from recv --json)",
    )
    send.add_argument("--file", help="read the message from FILE instead of stdin")
    send.add_argument("--timeout", type=float, default=30.0, help="give up after SECONDS")
    send.add_argument(
        "--retransmit", type=float, default=3.0, help="retry another path after SECONDS"
    )
    recv = sub.add_parser("recv", parents=[common], help="fetch messages held at the home relay")
    recv.add_argument("--wait", type=float, default=0.0, help="wait up to SECONDS for messages")
    recv.add_argument("--count", type=int, help="return once COUNT messages arrived")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "keys" and args.keys_cmd == "certify":
        return cmd_certify(args)  # on the operator's machine: no node config there
    try:
        config = load_config(args.config)
        handler = {
            "keys": cmd_keys,
            "run": cmd_run,
            "status": cmd_status,
            "send": cmd_send,
            "recv": cmd_recv,
        }[args.cmd]
        return handler(args, config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeystoreError as exc:
        print(f"keystore error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # client errors: one line, no traceback, no message content
        from .client import ClientError

        if isinstance(exc, ClientError | OSError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
