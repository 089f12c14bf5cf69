"""A real 3-member etcd cluster (mutual TLS) and 3 ledger node processes on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import EtcdCluster, LedgerNode, make_nodes, wait_for
from factories import issuance, spend
from ringmesh_ledger import builder, codec, group, sigma
from ringmesh_ledger import etcd as etcd_client
from ringmesh_ledger.client import LedgerClient, NodeError, UntrustedAnswer
from ringmesh_ledger.config import Peer
from ringmesh_ledger.keys import SigningKey, load
from ringmesh_ledger.ledger import check_signed_digest, digest_message
from ringmesh_ledger.model import OutputCoin, Script
from ringmesh_ledger.store import UtxoStore, state_digest


class Fleet:
    def __init__(self, root: Path) -> None:
        self.issuer = SigningKey.generate()
        self.etcd = EtcdCluster.create(root / "etcd")
        self.etcd.start_all()
        self.nodes = make_nodes(root, self.etcd, self.issuer.did)
        for node in self.nodes:
            node.start()
        self.ring = tuple(Peer(n.did(), n.url) for n in self.nodes)
        self.client = LedgerClient(self.ring)

    def submit(self, built: builder.Built, node: LedgerNode | None = None) -> dict[str, object]:
        data = codec.encode_transaction(built.tx)
        if node is None:
            return self.client.submit(data)
        return LedgerClient((Peer("", node.url),)).submit(data)

    def issue(self, owner: SigningKey, *values: int) -> list[builder.Opening]:
        built = issuance(self.issuer, owner, *values)
        assert self.submit(built)["applied"]
        return list(built.openings)

    def heights(self) -> list[int]:
        return [int(n.get("/v1/status")["height"]) for n in self.nodes if n.proc is not None]

    def settled(self) -> None:
        wait_for(lambda: len(set(self.heights())) == 1, what="nodes to reach one height")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.etcd.stop_all()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="ledger-cluster-"))
    f = Fleet(root)
    try:
        yield f
    finally:
        f.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_transfer_memo_and_state_commit_and_all_nodes_agree(fleet: Fleet) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    coins = fleet.issue(alice, 100)
    sent = builder.build(
        [spend(coins[0])],
        [builder.CoinSpec(bob.did, 60), builder.CoinSpec(alice.did, 39)],
        [alice],
        fee=1,
    )
    assert fleet.submit(sent, fleet.nodes[1])["applied"]
    answer = fleet.client.trusted(f"/v1/owners/{bob.did}/utxos")
    assert len(answer.signers) == 3
    ((utxo_id, coin),) = answer.utxos
    assert isinstance(coin, OutputCoin) and sigma.decrypt(bob.elgamal_secret, coin.encrypt) == 60

    script = Script()
    memo = builder.build(
        [builder.Spend(utxo_id, coin, 60)], [builder.MemoSpec(bob.did, script, 60, (b"m",))], [bob]
    )
    assert fleet.submit(memo, fleet.nodes[2])["applied"]
    m = memo.openings[0]
    state = builder.build(
        [builder.Spend(m.utxo_id, m.output, 60, m.blinding, script)],
        [builder.StateSpec(bob.did, script, 60, 0, (b"v0",))],
        [bob],
    )
    assert fleet.submit(state)["applied"]
    s = state.openings[0]
    update = builder.build(
        [builder.Spend(s.utxo_id, s.output, 60, s.blinding, script)],
        [builder.StateSpec(bob.did, script, 60, 1, (b"v1",))],
        [bob],
    )
    assert fleet.submit(update)["applied"]
    fleet.settled()
    digests = {n.get("/v1/status")["digest"] for n in fleet.nodes}
    assert len(digests) == 1
    kinds = [type(o).__name__ for _, o in fleet.client.trusted(f"/v1/owners/{bob.did}/utxos").utxos]
    assert kinds == ["OutputState"]


def test_fifty_concurrent_spends_of_one_coin_commit_once(fleet: Fleet) -> None:
    alice = SigningKey.generate()
    (coin,) = fleet.issue(alice, 50)
    attempts = [
        builder.build([spend(coin)], [builder.CoinSpec(SigningKey.generate().did, 50)], [alice])
        for _ in range(50)
    ]

    def submit(i: int) -> str:
        try:
            return (
                "applied"
                if fleet.submit(attempts[i], fleet.nodes[i % 3])["applied"]
                else "not-applied"
            )
        except NodeError as exc:
            return str(exc.body.get("error"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(submit, range(50)))
    assert outcomes.count("applied") == 1, outcomes
    assert set(outcomes) <= {"applied", "double_spend", "unknown_input"}
    fleet.settled()
    winner = attempts[outcomes.index("applied")].openings[0].utxo_id.hex()
    for node in fleet.nodes:
        assert node.get(f"/v1/utxos/{winner}")["utxos"][0]["id"] == winner
    for i, attempt in enumerate(attempts):
        if outcomes[i] != "applied":
            with pytest.raises(urllib.error.HTTPError):
                fleet.nodes[0].get(f"/v1/utxos/{attempt.openings[0].utxo_id.hex()}")


def test_killing_one_etcd_member_keeps_committing(fleet: Fleet) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    coins = fleet.issue(alice, 10, 10)
    victim = fleet.etcd.members[0]
    fleet.etcd.kill(victim)
    try:
        for c in coins:
            built = builder.build([spend(c)], [builder.CoinSpec(bob.did, 10)], [alice])
            assert fleet.submit(built)["applied"]
        fleet.settled()
    finally:
        fleet.etcd.start(victim)


def test_restarted_node_catches_up_from_its_snapshot(fleet: Fleet) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    node = fleet.nodes[2]
    node.stop(signal.SIGKILL)
    coins = fleet.issue(alice, *range(1, 8))
    for c in coins:
        assert fleet.submit(
            builder.build([spend(c)], [builder.CoinSpec(bob.did, c.value)], [alice])
        )["applied"]
    # Lose the live tables: the node must start from its newest snapshot and replay etcd.
    db = sqlite3.connect(node.directory / "ledger.db")
    db.execute("DELETE FROM ledger_utxo")
    db.commit()
    db.close()
    node.start()
    fleet.settled()
    digests = {n.get("/v1/status")["digest"] for n in fleet.nodes}
    assert len(digests) == 1
    assert "restored the snapshot" in (node.directory / "node.log").read_text()


def test_invalid_transaction_written_into_etcd_is_ignored_and_outvoted(fleet: Fleet) -> None:
    """ledger2 turns rogue: it writes an inflating transaction straight into etcd and signs the
    digest of a set that contains it. The honest nodes skip it; a client trusts them."""
    alice, mallory = SigningKey.generate(), SigningKey.generate()
    (coin,) = fleet.issue(alice, 5)
    fleet.settled()
    rogue = fleet.nodes[2]
    rogue.stop()
    forged = builder.build([spend(coin, 5_000)], [builder.CoinSpec(mallory.did, 5_000)], [alice])
    data = codec.encode_transaction(forged.tx)
    store_key = b"/ringmesh-ledger/tx/" + forged.digest.hex().encode()

    cert, key = fleet.etcd.ca.issue("rogue")
    ctx = etcd_client.tls_context(str(fleet.etcd.ca.ca_file), str(cert), str(key))

    async def write() -> int:
        async with etcd_client.EtcdClient(fleet.etcd.endpoints, ctx) as c:
            return await c.put(store_key, data)

    revision = asyncio.run(write())
    wait_for(
        lambda: all(h >= revision for h in fleet.heights()), what="honest nodes to pass the forgery"
    )
    status = fleet.nodes[0].get("/v1/status")
    assert status["counters"].get("rejected:bad_balance_proof", 0) >= 1
    answer = fleet.client.trusted(f"/v1/owners/{mallory.did}/utxos")
    assert answer.utxos == ()
    # The rogue's view: the forged coin applied; it signs that digest at the same height.
    honest = fleet.nodes[0].get(f"/v1/digests/{revision}")
    rogue_store = UtxoStore()
    rogue_key = load(rogue.directory / "ledger.key")
    rogue_store.add(forged.openings[0].utxo_id, forged.openings[0].output)
    rogue_digest = state_digest(rogue_store.root(), int(honest["issued"]), int(honest["fees"]))
    assert rogue_digest.hex() != honest["digest"]
    rogue_signature = rogue_key.sign(digest_message(revision, rogue_digest))
    assert fleet.client.digest_signers(revision, rogue_digest) == []
    assert check_signed_digest(rogue_key.public, revision, rogue_digest, rogue_signature)
    # Two of three sign the honest digest, only the rogue signs its own: a client trusts the first.
    assert len(fleet.client.digest_signers(revision, bytes.fromhex(honest["digest"]))) == 2
    # A client that can reach only one honest node cannot reach a majority and trusts nothing.
    with pytest.raises(UntrustedAnswer):
        LedgerClient(
            (fleet.ring[0], fleet.ring[2], Peer(SigningKey.generate().did, fleet.nodes[1].url))
        ).trusted(f"/v1/owners/{mallory.did}/utxos")
    rogue.start()
    fleet.settled()


def test_no_value_is_created(fleet: Fleet) -> None:
    """Sum of all unspent commitments = (issued - fees)*H + (sum of blindings)*G, checked with
    the openings of every output this test made, after honest and dishonest attempts."""
    fleet.settled()
    status = fleet.nodes[0].get("/v1/status")
    base_issued, base_fees = int(status["issued"]), int(status["fees"])
    alice, bob = SigningKey.generate(), SigningKey.generate()
    openings = {o.utxo_id: o for o in fleet.issue(alice, 40, 2)}
    first = next(iter(openings.values()))
    sent = builder.build(
        [spend(first)],
        [builder.CoinSpec(bob.did, 30), builder.CoinSpec(alice.did, 7)],
        [alice],
        fee=3,
    )
    assert fleet.submit(sent)["applied"]
    del openings[first.utxo_id]
    openings.update({o.utxo_id: o for o in sent.openings})
    with pytest.raises(NodeError):
        fleet.submit(
            builder.build([spend(sent.openings[1], 700)], [builder.CoinSpec(bob.did, 700)], [alice])
        )
    fleet.settled()
    status = fleet.nodes[0].get("/v1/status")
    issued, fees = int(status["issued"]) - base_issued, int(status["fees"]) - base_fees
    assert (issued, fees) == (42, 3)
    ours = (
        fleet.client.trusted(f"/v1/owners/{alice.did}/utxos").utxos
        + fleet.client.trusted(f"/v1/owners/{bob.did}/utxos").utxos
    )
    total = group.IDENTITY
    for utxo_id, output in ours:
        assert isinstance(output, OutputCoin)
        total = group.add(total, output.encrypt.commitment)
        assert utxo_id in openings
    expected = group.commit(issued - fees, sum(o.blinding for o in openings.values()))
    assert total == expected


def _cli(fleet: Fleet, wallet: Path, *args: str) -> Any:
    config = fleet.nodes[0].config_file
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringmesh_ledger.cli",
            "--config",
            str(config),
            "--wallet",
            str(wallet),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_wallet_and_service_commands(fleet: Fleet, tmp_path: Path) -> None:
    issuer_dir, alice_dir, bob_dir = tmp_path / "issuer", tmp_path / "alice", tmp_path / "bob"
    issuer_dir.mkdir(mode=0o700)
    (issuer_dir / "wallet.key").write_bytes(fleet.issuer.seed)
    (issuer_dir / "wallet.key").chmod(0o600)
    alice = str(_cli(fleet, alice_dir, "keys", "init")["did"])
    bob = str(_cli(fleet, bob_dir, "keys", "init")["did"])
    assert _cli(fleet, alice_dir, "keys", "show")["did"] == alice
    assert _cli(fleet, issuer_dir, "issue", "--to", alice, "--amount", "500")["applied"]
    assert _cli(fleet, alice_dir, "balance")["balance"] == 500
    assert _cli(fleet, alice_dir, "transfer", "--to", bob, "--amount", "120", "--fee", "2")[
        "applied"
    ]
    assert _cli(fleet, bob_dir, "balance")["balance"] == 120
    assert _cli(fleet, alice_dir, "balance")["balance"] == 378
    memo = _cli(fleet, alice_dir, "memo", "create", "--amount", "8", "--data", "hello")
    state = _cli(fleet, alice_dir, "state", "create", "--amount", "10", "--data", "v0")
    updated = _cli(fleet, alice_dir, "state", "update", "--id", str(state["id"]), "--data", "v1")
    assert memo["applied"] and state["applied"] and updated["applied"]
    held = _cli(fleet, alice_dir, "balance")
    assert held["balance"] == 360
    assert {(m["type"], m["value"]) for m in held["memos_and_states"]} == {
        ("OutputMemo", 8),
        ("OutputState", 10),
    }
    status = _cli(fleet, alice_dir, "status")
    assert status["utxos"]["coin"] >= 2
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringmesh_ledger.cli",
            "--config",
            str(tmp_path / "missing.toml"),
            "status",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "missing.toml does not exist" in bad.stderr
