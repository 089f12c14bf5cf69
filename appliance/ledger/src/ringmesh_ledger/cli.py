"""ringmesh-ledger: the ledger service (run, status) and a wallet (keys, balance, transfer,
issue, memo and state operations). `--json` gives machine output; errors exit 2 naming the
field or file."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

from ringmesh.config import ConfigError

from . import builder, codec, sigma
from .client import LedgerClient, NodeError, UntrustedAnswer, request
from .config import DEFAULT_CONFIG, LedgerConfig, load_config
from .keys import KeyFileError, load, load_or_create
from .model import OutputCoin, OutputState, Script

DEFAULT_WALLET = Path.home() / ".ringmesh-ledger"


class Wallet:
    """A key and the openings of the memos and states this wallet made (their blindings)."""

    def __init__(self, directory: Path, create: bool = False) -> None:
        self.dir = directory
        self.key = (
            load_or_create(directory / "wallet.key")[0]
            if create
            else load(directory / "wallet.key")
        )
        self._notes_file = directory / "notes.json"
        self.notes: dict[str, dict[str, Any]] = (
            json.loads(self._notes_file.read_text()) if self._notes_file.exists() else {}
        )

    def remember(self, opening: builder.Opening, script: Script | None) -> None:
        self.notes[opening.utxo_id.hex()] = {
            "value": opening.value,
            "blinding": opening.blinding,
            "script": codec.encode_script(script).hex() if script else None,
        }
        self._notes_file.write_text(json.dumps(self.notes))
        self._notes_file.chmod(0o600)

    def spends(self, client: LedgerClient) -> list[builder.Spend]:
        """Everything this wallet can spend, read from a majority-signed state."""
        answer = client.trusted(f"/v1/owners/{self.key.did}/utxos")
        out = []
        for utxo_id, output in answer.utxos:
            if isinstance(output, OutputCoin):
                value = sigma.decrypt(self.key.elgamal_secret, output.encrypt)
                if value is not None:
                    out.append(builder.Spend(utxo_id, output, value))
            elif utxo_id.hex() in self.notes:
                note = self.notes[utxo_id.hex()]
                script = codec.decode_script(bytes.fromhex(note["script"]))
                out.append(builder.Spend(utxo_id, output, note["value"], note["blinding"], script))
        return out


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if args.json else text)


def _fleet_tls(config: LedgerConfig) -> ssl.SSLContext | None:
    """The first ring's API certificates come from the fleet CA that also signs etcd's."""
    return ssl.create_default_context(cafile=config.etcd_ca) if config.etcd_ca else None


def _client(config: LedgerConfig) -> LedgerClient:
    return LedgerClient(config.first_ring, _fleet_tls(config))


def _submit(args: argparse.Namespace, config: LedgerConfig, built: builder.Built) -> dict[str, Any]:
    return _client(config).submit(codec.encode_transaction(built.tx))


def _coins(wallet: Wallet, client: LedgerClient, amount: int) -> list[builder.Spend]:
    coins = [s for s in wallet.spends(client) if isinstance(s.output, OutputCoin)]
    chosen, total = [], 0
    for coin in sorted(coins, key=lambda s: -s.value):
        if total >= amount:
            break
        chosen.append(coin)
        total += coin.value
    if total < amount:
        raise SystemExit(f"error: balance {sum(c.value for c in coins)} is less than {amount}")
    return chosen


def cmd_run(args: argparse.Namespace, config: LedgerConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(_run(config))
    return 0


async def _run(config: LedgerConfig) -> None:
    from .service import LedgerService

    await LedgerService(config).run()


def cmd_status(args: argparse.Namespace, config: LedgerConfig) -> int:
    host, port = config.api_listen
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask it on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    scheme = "https" if config.tls_cert else "http"
    context = _fleet_tls(config) if config.tls_cert else None
    try:
        status = request(f"{scheme}://{host}:{port}/v1/status", timeout=5, context=context)
    except (OSError, NodeError) as exc:
        _print(args, {"error": str(exc)}, f"ledger node not answering: {exc}")
        return 1
    _print(args, status, "\n".join(f"{k}: {v}" for k, v in status.items()))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "init":
        key, created = load_or_create(args.wallet / "wallet.key")
        _print(args, {"did": key.did, "created": created}, "created" if created else "exists")
    else:
        key = load(args.wallet / "wallet.key")
        _print(args, {"did": key.did}, key.did)
    return 0


def cmd_node_key(args: argparse.Namespace) -> int:
    key, created = load_or_create(args.state_dir / "ledger.key")
    _print(args, {"did": key.did, "created": created}, "created" if created else key.did)
    return 0


def cmd_balance(args: argparse.Namespace, config: LedgerConfig) -> int:
    wallet = Wallet(args.wallet)
    spends = wallet.spends(_client(config))
    coins = [s for s in spends if isinstance(s.output, OutputCoin)]
    data = {
        "did": wallet.key.did,
        "balance": sum(c.value for c in coins),
        "coins": [{"id": c.utxo_id.hex(), "value": c.value} for c in coins],
        "memos_and_states": [
            {"id": s.utxo_id.hex(), "value": s.value, "type": type(s.output).__name__}
            for s in spends
            if s not in coins
        ],
    }
    _print(args, data, f"{data['balance']}")
    return 0


def cmd_transfer(args: argparse.Namespace, config: LedgerConfig) -> int:
    wallet = Wallet(args.wallet)
    coins = _coins(wallet, _client(config), args.amount + args.fee)
    change = sum(c.value for c in coins) - args.amount - args.fee
    built = builder.build(
        coins,
        [builder.CoinSpec(args.to, args.amount), builder.CoinSpec(wallet.key.did, change)],
        [wallet.key],
        fee=args.fee,
    )
    result = _submit(args, config, built)
    _print(args, result, f"committed {result['tx_id']} at revision {result['revision']}")
    return 0 if result["applied"] else 1


def cmd_issue(args: argparse.Namespace, config: LedgerConfig) -> int:
    wallet = Wallet(args.wallet)
    built = builder.build(
        [],
        [builder.CoinSpec(args.to, args.amount)],
        [wallet.key],
        issue=args.amount,
        issuer=wallet.key.did,
    )
    result = _submit(args, config, built)
    _print(args, result, f"issued {args.amount} in {result['tx_id']}")
    return 0 if result["applied"] else 1


def _script(args: argparse.Namespace) -> Script:
    return Script(
        owner_signature=True, signers=tuple(args.signer or ()), not_before=args.not_before
    )


def cmd_memo_or_state(args: argparse.Namespace, config: LedgerConfig) -> int:
    wallet = Wallet(args.wallet)
    client = _client(config)
    data = tuple(d.encode() for d in args.data) or None
    script = _script(args)
    spec: builder.OutputSpec
    if args.kind == "state" and args.action == "update":
        prior = next((s for s in wallet.spends(client) if s.utxo_id.hex() == args.id), None)
        if prior is None or not isinstance(prior.output, OutputState) or prior.script is None:
            raise SystemExit(f"error: --id {args.id} is not a state this wallet made")
        spec = builder.StateSpec(
            wallet.key.did, prior.script, prior.value, prior.output.nonce + 1, data
        )
        spends, script = [prior], prior.script
    else:
        spends = _coins(wallet, client, args.amount)
        if args.kind == "memo":
            spec = builder.MemoSpec(wallet.key.did, script, args.amount, data, args.lock)
        else:
            spec = builder.StateSpec(wallet.key.did, script, args.amount, 0, data, args.lock)
        change = sum(s.value for s in spends) - args.amount
        specs: list[builder.OutputSpec] = [spec] + (
            [builder.CoinSpec(wallet.key.did, change)] if change else []
        )
        built = builder.build(spends, specs, [wallet.key])
    if args.kind == "state" and args.action == "update":
        built = builder.build(spends, [spec], [wallet.key])
    result = _submit(args, config, built)
    wallet.remember(built.openings[0], script)
    _print(args, {**result, "id": built.openings[0].utxo_id.hex()}, built.openings[0].utxo_id.hex())
    return 0 if result["applied"] else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringmesh-ledger", description=__doc__)
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"ledger.toml (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--wallet", type=Path, default=DEFAULT_WALLET, help="wallet directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the ledger node, in the foreground").set_defaults(func=cmd_run)
    sub.add_parser("status", help="the local node's height, digest and counters").set_defaults(
        func=cmd_status
    )
    keys = sub.add_parser("keys", help="the wallet key (a did:key)")
    keys.add_argument("action", choices=["init", "show"])
    keys.set_defaults(without_config=cmd_keys)
    node_key = sub.add_parser(
        "node-key", help="create the ledger node's signing key if absent and show its did"
    )
    node_key.add_argument(
        "--state-dir", type=Path, required=True, help="the node's state_dir (key in ledger.key)"
    )
    node_key.set_defaults(without_config=cmd_node_key)
    sub.add_parser("balance", help="coins, memos and states of this wallet").set_defaults(
        func=cmd_balance
    )
    t = sub.add_parser("transfer", help="send a confidential amount to a did")
    t.add_argument("--to", required=True)
    t.add_argument("--amount", type=int, required=True)
    t.add_argument("--fee", type=int, default=0)
    t.set_defaults(func=cmd_transfer)
    i = sub.add_parser("issue", help="create coins (the ledger's issuer only)")
    i.add_argument("--to", required=True)
    i.add_argument("--amount", type=int, required=True)
    i.set_defaults(func=cmd_issue)
    for kind in ("memo", "state"):
        k = sub.add_parser(kind, help=f"{kind} operations")
        k.add_argument("action", choices=["create"] if kind == "memo" else ["create", "update"])
        k.add_argument("--amount", type=int, default=0)
        k.add_argument("--data", action="append", default=[])
        k.add_argument("--lock", type=int, default=0, help="height from which it may be spent")
        k.add_argument("--not-before", type=int, default=0)
        k.add_argument("--signer", action="append", help="another did that must sign to spend it")
        k.add_argument("--id", help="the state to update")
        k.set_defaults(func=cmd_memo_or_state, kind=kind)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        # Keys come before any config: the config names them (issuer, [[first_ring]]).
        if hasattr(args, "without_config"):
            return int(args.without_config(args))
        config = load_config(args.config)
        return int(args.func(args, config))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"key error: {exc}", file=sys.stderr)
        return 2
    except (NodeError, UntrustedAnswer, builder.BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
