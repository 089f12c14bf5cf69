"""Whole transactions: honest ones apply, every tampered or dishonest one is rejected."""

from __future__ import annotations

import dataclasses
import random

import pytest

from factories import Ledger, replace, spend, transfer
from ringmesh_ledger import builder, codec, group, sigma, verify
from ringmesh_ledger.keys import SigningKey
from ringmesh_ledger.model import OutputCoin, OutputMemo, Script, Signature, Transaction
from ringmesh_ledger.verify import Reject, Rejected


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def _rejected(ledger: Ledger, tx: Transaction) -> Reject:
    with pytest.raises(Rejected) as info:
        checked = verify.check_transaction(tx, ledger.utxos.get, ledger.height, ledger.issuer.did)
        verify.verify_proofs(checked)
    return info.value.reason


def test_transfer_moves_value_and_only_the_recipient_reads_it(ledger: Ledger) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    coins = ledger.issue(alice, 100, 50)
    built = transfer(ledger, alice, coins, bob, 120, fee=1)
    ledger.apply(built)
    to_bob, change = built.openings
    assert isinstance(to_bob.output, OutputCoin) and isinstance(change.output, OutputCoin)
    assert sigma.decrypt(bob.elgamal_secret, to_bob.output.encrypt) == 120
    assert sigma.decrypt(alice.elgamal_secret, change.output.encrypt) == 29
    assert sigma.decrypt(alice.elgamal_secret, to_bob.output.encrypt, bits=20) is None
    assert set(ledger.utxos) == {to_bob.utxo_id, change.utxo_id}


def _tampered(tx: Transaction) -> list[Transaction]:
    """One copy of tx per public field, each with that field changed."""
    body, proofs = tx.body, tx.proofs
    out: list[Transaction] = []

    def with_body(**kw: object) -> None:
        out.append(replace(tx, body=replace(body, **kw)))

    with_body(fee=body.fee + 1)
    with_body(issue=body.issue + 1)
    with_body(inputs=body.inputs[::-1])
    for i, o in enumerate(body.outputs):
        assert isinstance(o, OutputCoin)
        outputs = list(body.outputs)
        outputs[i] = replace(o, owner=SigningKey.generate().did)
        with_body(outputs=tuple(outputs))
        for part in ("handle", "commitment"):
            changed = replace(o.encrypt, **{part: group.add(getattr(o.encrypt, part), group.H)})
            outputs[i] = replace(o, encrypt=changed)
            with_body(outputs=tuple(outputs))
    for i, v in enumerate(proofs.validity):
        for f in dataclasses.fields(v):
            value = getattr(v, f.name)
            bad = group.add(value, group.G) if isinstance(value, bytes) else (value + 1) % group.L
            validity = list(proofs.validity)
            validity[i] = replace(v, **{f.name: bad})
            out.append(replace(tx, proofs=replace(proofs, validity=tuple(validity))))
    assert proofs.range is not None
    rp = replace(proofs.range, t_x=(proofs.range.t_x + 1) % group.L)
    out.append(replace(tx, proofs=replace(proofs, range=rp)))
    out.append(replace(tx, proofs=replace(proofs, range=None)))
    ex = replace(proofs.excess, blinding_response=(proofs.excess.blinding_response + 1) % group.L)
    out.append(replace(tx, proofs=replace(proofs, excess=ex)))
    sig = tx.signatures[0]
    forged = replace(sig, signature=bytes(64))
    out.append(replace(tx, signatures=(forged,)))
    out.append(replace(tx, signatures=()))
    return out


def test_every_tampered_field_is_rejected(ledger: Ledger) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    coins = ledger.issue(alice, 10, 20)
    built = transfer(ledger, alice, coins, bob, 25, fee=2)
    variants = _tampered(built.tx)
    assert len(variants) == 3 + 2 * 3 + 2 * 4 + 2 + 1 + 2
    for bad in variants:
        _rejected(ledger, bad)
    ledger.apply(built)  # the original still applies


def test_flipped_bytes_never_pass(ledger: Ledger) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    built = transfer(ledger, alice, ledger.issue(alice, 9), bob, 4)
    encoded = codec.encode_transaction(built.tx)
    rng = random.Random(7)
    for pos in rng.sample(range(len(encoded)), 40):
        data = bytearray(encoded)
        data[pos] ^= 1 << rng.randrange(8)
        try:
            tx = codec.decode_transaction(bytes(data))
        except codec.ParseError:
            continue
        _rejected(ledger, tx)


def test_dishonest_witnesses_are_rejected(ledger: Ledger) -> None:
    alice, bob, mallory = (SigningKey.generate() for _ in range(3))
    coins = ledger.issue(alice, 10)
    # Claiming the coin holds more than it does: outputs exceed inputs.
    inflated = builder.build([spend(coins[0], 1000)], [builder.CoinSpec(bob.did, 1000)], [alice])
    assert _rejected(ledger, inflated.tx) == Reject.BAD_BALANCE_PROOF
    # Unbalanced in the other direction (value destroyed without a fee) is refused too.
    lost = builder.build(
        [spend(coins[0], 10)],
        [builder.CoinSpec(bob.did, 3), builder.CoinSpec(bob.did, 2)],
        [alice],
        fee=5,
    )
    lost_body = replace(lost.tx.body, fee=4)
    assert _rejected(ledger, replace(lost.tx, body=lost_body)) in {
        Reject.BAD_SIGNATURES,
        Reject.BAD_BALANCE_PROOF,
    }
    # Mallory signs and proves with her own key for Alice's coin.
    theft = builder.build([spend(coins[0])], [builder.CoinSpec(mallory.did, 10)], [mallory, alice])
    stolen = replace(theft.tx, signatures=(Signature(mallory.public, mallory.sign(b"x")),))
    assert _rejected(ledger, stolen) == Reject.BAD_SIGNATURES
    with pytest.raises(builder.BuildError):
        builder.build([spend(coins[0])], [builder.CoinSpec(mallory.did, 10)], [mallory])
    # Issuing without being the issuer.
    fake = builder.build(
        [], [builder.CoinSpec(mallory.did, 5)], [mallory], issue=5, issuer=mallory.did
    )
    assert _rejected(ledger, fake.tx) == Reject.BAD_SIGNATURES


def test_double_spend_and_unknown_inputs(ledger: Ledger) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    coins = ledger.issue(alice, 10)
    first = transfer(ledger, alice, coins, bob, 5)
    second = transfer(ledger, alice, coins, bob, 6)
    ledger.apply(first)
    assert _rejected(ledger, second.tx) == Reject.UNKNOWN_INPUT
    twice = builder.build(
        [spend(coins[0]), spend(coins[0])], [builder.CoinSpec(bob.did, 20)], [alice]
    )
    assert _rejected(ledger, twice.tx) == Reject.DUPLICATE_INPUT


def test_memo_state_scripts_locks_and_nonces(ledger: Ledger) -> None:
    alice, carol = SigningKey.generate(), SigningKey.generate()
    (coin,) = ledger.issue(alice, 30)
    script = Script(owner_signature=True, signers=(carol.did,), not_before=0)
    memo = builder.build(
        [spend(coin)],
        [builder.MemoSpec(alice.did, script, 30, (b"note",), timebounds=150)],
        [alice],
    )
    assert memo.tx.proofs.range is None  # same-value: coin -> memo
    ledger.apply(memo)
    (m,) = memo.openings
    assert isinstance(m.output, OutputMemo)
    assert m.output.script_address == codec.script_address(script)

    def from_memo(
        spec: builder.OutputSpec, keys: list[SigningKey], with_script: Script
    ) -> builder.Built:
        return builder.build(
            [builder.Spend(m.utxo_id, m.output, 30, m.blinding, with_script)], [spec], keys
        )

    state_spec = builder.StateSpec(alice.did, script, 30, 0, (b"v0",))
    assert _rejected(ledger, from_memo(state_spec, [alice, carol], script).tx) == Reject.LOCKED
    ledger.height = 150
    other = Script(owner_signature=False)
    assert (
        _rejected(ledger, from_memo(state_spec, [alice, carol], other).tx) == Reject.SCRIPT_MISMATCH
    )
    with pytest.raises(builder.BuildError):
        from_memo(state_spec, [alice], script)  # carol must sign too
    wrong_start = builder.StateSpec(alice.did, script, 30, 3, (b"v0",))
    assert _rejected(ledger, from_memo(wrong_start, [alice, carol], script).tx) == Reject.BAD_NONCE
    created = from_memo(state_spec, [alice, carol], script)
    ledger.apply(created)
    (s0,) = created.openings

    def update(nonce: int) -> builder.Built:
        spec = builder.StateSpec(alice.did, script, 30, nonce, (b"v%d" % nonce,))
        return builder.build(
            [builder.Spend(s0.utxo_id, s0.output, 30, s0.blinding, script)], [spec], [alice, carol]
        )

    assert _rejected(ledger, update(2).tx) == Reject.BAD_NONCE
    assert _rejected(ledger, update(0).tx) == Reject.BAD_NONCE
    ledger.apply(update(1))
