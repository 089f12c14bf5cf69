"""The partitioned UTXO store, its digest and membership paths, persistence on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import postgres_server

from factories import Ledger, transfer
from ringmesh_ledger import builder, codec, verify
from ringmesh_ledger.keys import SigningKey
from ringmesh_ledger.model import Script, UtxoType
from ringmesh_ledger.persist import Database
from ringmesh_ledger.store import (
    Change,
    SnapshotError,
    UtxoStore,
    leaf_hash,
    merkle_root_from_path,
    state_digest,
)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite://{tmp_path}/ledger.db")
    else:
        db = Database(request.getfixturevalue("pg_url"))
        for table in ("ledger_utxo", "ledger_meta", "ledger_snapshot"):
            db._execute(f"DELETE FROM {table}")
    yield db
    db.close()


def _history() -> tuple[UtxoStore, list[Change], SigningKey]:
    """A store after an issue, a transfer, a memo and a state, applied through `verify`."""
    ledger = Ledger()
    store = UtxoStore()
    alice, bob = SigningKey.generate(), SigningKey.generate()
    changes = []

    def apply(built: builder.Built) -> None:
        checked = verify.check_transaction(built.tx, store.get, 200, ledger.issuer.did)
        verify.verify_proofs(checked)
        changes.append(store.apply(checked))
        store.height += 1

    issue = builder.build(
        [],
        [builder.CoinSpec(alice.did, 70), builder.CoinSpec(alice.did, 30)],
        [ledger.issuer],
        issue=100,
        issuer=ledger.issuer.did,
    )
    apply(issue)
    sent = transfer(ledger, alice, [issue.openings[0]], bob, 60, fee=1)
    apply(sent)
    script = Script()
    memo = builder.build(
        [builder.Spend(issue.openings[1].utxo_id, issue.openings[1].output, 30)],
        [builder.MemoSpec(alice.did, script, 30, (b"hi",))],
        [alice],
    )
    apply(memo)
    state = builder.build(
        [builder.Spend(sent.openings[1].utxo_id, sent.openings[1].output, 9)],
        [builder.StateSpec(alice.did, script, 9, 0, (b"x",))],
        [alice],
    )
    apply(state)
    return store, changes, alice


def test_partitions_address_maps_and_digest() -> None:
    store, _, alice = _history()
    assert store.counts() == {UtxoType.COIN: 1, UtxoType.MEMO: 1, UtxoType.STATE: 1}
    assert {type(o).__name__ for _, o in store.owned_by(alice.did)} == {"OutputMemo", "OutputState"}
    assert (store.issued, store.fees, store.height) == (100, 1, 4)
    for utxo_id, _ in store.owned_by(alice.did):
        leaf = leaf_hash(utxo_id, store.encoded(utxo_id))
        root = merkle_root_from_path(leaf, store.membership_path(utxo_id))
        assert root == store.root()
        assert state_digest(root, 100, 1) == store.digest()
        assert (
            merkle_root_from_path(leaf_hash(utxo_id, b"other"), store.membership_path(utxo_id))
            != root
        )
    copy = UtxoStore.from_snapshot(store.snapshot())
    assert copy.digest() == store.digest() and copy.height == store.height
    with pytest.raises(SnapshotError):
        UtxoStore.from_snapshot(store.snapshot()[:-3])


def test_persistence_round_trip_and_snapshots(database: Database) -> None:
    store, changes, _ = _history()
    database.commit(store, changes)
    loaded = database.load()
    assert loaded.digest() == store.digest()
    assert (loaded.height, loaded.issued, loaded.fees) == (store.height, 100, 1)
    assert loaded.counts() == store.counts()
    for height in range(3):
        store.height = 10 + height
        database.save_snapshot(store, keep=2)
    assert database.snapshot_heights() == [11, 12]
    restored = database.latest_snapshot()
    assert restored is not None and restored.height == 12 and restored.digest() == store.digest()
    # A damaged live table no longer matches its digest.
    database._execute("DELETE FROM ledger_utxo WHERE type = ?", (int(UtxoType.MEMO),))
    with pytest.raises(SnapshotError):
        database.load()
    database.replace_all(restored)
    assert database.load().digest() == store.digest()
    assert codec.decode_output(store.encoded(next(iter(store.partitions[UtxoType.COIN]))))
