"""Range, validity and excess proofs against their definitions."""

from __future__ import annotations

import dataclasses

import pytest

from factories import replace
from ringmesh_ledger import group, rangeproof, sigma
from ringmesh_ledger.group import IDENTITY, G, H, L, msm, random_scalar
from ringmesh_ledger.transcript import Transcript


def _t() -> Transcript:
    t = Transcript(b"test")
    t.append(b"statement", b"bound public input")
    return t


def _range_case(values: list[int]) -> tuple[list[bytes], rangeproof.RangeProof]:
    blindings = [random_scalar() for _ in values]
    proof = rangeproof.prove(_t(), values, blindings)
    return [group.commit(v, r) for v, r in zip(values, blindings, strict=True)], proof


@pytest.mark.parametrize("values", [[0], [2**64 - 1, 1], [5, 6, 7], [1, 2**63, 3, 2**32]])
def test_honest_range_proofs_verify(values: list[int]) -> None:
    commitments, proof = _range_case(values)
    assert rangeproof.verify(_t(), commitments, proof)


def test_range_proof_rejects_every_tampered_field() -> None:
    commitments, proof = _range_case([7, 9])
    changed: list[rangeproof.RangeProof] = []
    for f in dataclasses.fields(proof):
        value = getattr(proof, f.name)
        if isinstance(value, bytes):
            changed.append(replace(proof, **{f.name: group.add(value, G)}))
        elif isinstance(value, int):
            changed.append(replace(proof, **{f.name: (value + 1) % L}))
        else:
            for i in range(len(value)):
                items = list(value)
                items[i] = group.add(items[i], G)
                changed.append(replace(proof, **{f.name: tuple(items)}))
    assert len(changed) == 4 + 5 + 2 * 7
    for bad in changed:
        assert not rangeproof.verify(_t(), commitments, bad)
    # Wrong statement: other commitments, other order, another transcript, a dropped round.
    assert not rangeproof.verify(_t(), commitments[::-1], proof)
    assert not rangeproof.verify(_t(), [commitments[0], group.add(commitments[1], H)], proof)
    assert not rangeproof.verify(Transcript(b"test"), commitments, proof)
    short = replace(proof, L_vec=proof.L_vec[1:], R_vec=proof.R_vec[1:])
    assert not rangeproof.verify(_t(), commitments, short)


def test_out_of_range_values_cannot_be_proved() -> None:
    with pytest.raises(rangeproof.RangeProofError):
        rangeproof.prove(_t(), [2**64], [1])
    with pytest.raises(rangeproof.RangeProofError):
        rangeproof.prove(_t(), [-1], [1])
    # A proof made for the in-range residue does not verify against the real commitment.
    r = random_scalar()
    proof = rangeproof.prove(_t(), [2**64 - 1], [r])
    assert rangeproof.verify(_t(), [group.commit(2**64 - 1, r)], proof)
    assert not rangeproof.verify(_t(), [group.commit(-1, r)], proof)
    assert not rangeproof.verify(_t(), [group.commit(2**64 + 2**64 - 1, r)], proof)


def test_batch_of_range_proofs_is_one_check_that_any_bad_proof_breaks() -> None:
    cases = [_range_case([i, i + 1]) for i in range(3)]
    terms = []
    for commitments, proof in cases:
        terms += rangeproof.verification_terms(_t(), commitments, proof, rangeproof.random_weight())
    assert msm(terms) == IDENTITY
    commitments, proof = cases[1]
    bad = replace(proof, t_x=(proof.t_x + 1) % L)
    terms = []
    for c, p in [cases[0], (commitments, bad), cases[2]]:
        terms += rangeproof.verification_terms(_t(), c, p, rangeproof.random_weight())
    assert msm(terms) != IDENTITY


def test_twisted_elgamal_decrypts_for_the_owner_only() -> None:
    sk, other = random_scalar(), random_scalar()
    pk = group.base_mul(sk)
    ct = sigma.encrypt(4_000_000_000, pk, random_scalar())
    assert sigma.decrypt(sk, ct) == 4_000_000_000
    assert sigma.decrypt(other, ct, bits=20) is None
    assert sigma.decrypt_to_point(sk, ct) == group.mul(4_000_000_000, H)


def _validity_ok(pk: bytes, ct: sigma.ElGamalCommitment, proof: sigma.ValidityProof) -> bool:
    return msm(sigma.validity_terms(_t(), pk, ct, proof, rangeproof.random_weight())) == IDENTITY


def test_validity_proof() -> None:
    pk = group.base_mul(random_scalar())
    r = random_scalar()
    ct = sigma.encrypt(42, pk, r)
    proof = sigma.prove_validity(_t(), pk, ct, 42, r)
    assert _validity_ok(pk, ct, proof)
    # A handle that is not r*pk (it would let its owner move value), another key, wrong witness.
    assert not _validity_ok(
        pk, sigma.ElGamalCommitment(group.add(ct.handle, H), ct.commitment), proof
    )
    assert not _validity_ok(group.base_mul(random_scalar()), ct, proof)
    assert not _validity_ok(pk, ct, sigma.prove_validity(_t(), pk, ct, 43, r))
    assert not _validity_ok(pk, ct, sigma.prove_validity(_t(), pk, ct, 42, r + 1))
    for f in dataclasses.fields(proof):
        value = getattr(proof, f.name)
        bad = group.add(value, G) if isinstance(value, bytes) else (value + 1) % L
        assert not _validity_ok(pk, ct, replace(proof, **{f.name: bad}))


def _excess_ok(
    st: sigma.ExcessStatement, proof: sigma.ExcessProof, label: bytes = b"balance"
) -> bool:
    return msm(sigma.excess_terms(_t(), label, st, proof, rangeproof.random_weight())) == IDENTITY


def test_balance_proof_inputs_equal_outputs_plus_fee() -> None:
    sk = random_scalar()
    pk = group.base_mul(sk)
    r_in, r_out = random_scalar(), random_scalar()
    coin = sigma.encrypt(100, pk, r_in)

    def statement(out_value: int, fee: int) -> sigma.ExcessStatement:
        out = group.commit(out_value, r_out)
        terms = ((1, coin.commitment), (L - 1, out), ((-fee) % L, H))
        return sigma.ExcessStatement(terms, ((pk, coin.handle),))

    good = statement(97, 3)
    proof = sigma.prove_excess(_t(), b"balance", good, [sk], -r_out)
    assert _excess_ok(good, proof)
    assert not _excess_ok(good, proof, label=b"same-value")
    for out_value, fee in [(98, 3), (97, 2), (100, 3)]:  # unbalanced: value created or lost
        bad = statement(out_value, fee)
        assert not _excess_ok(bad, sigma.prove_excess(_t(), b"balance", bad, [sk], -r_out))
    # Someone else's key cannot spend the coin, even for a balanced statement.
    assert not _excess_ok(
        good, sigma.prove_excess(_t(), b"balance", good, [random_scalar()], -r_out)
    )
    for f in dataclasses.fields(proof):
        value = getattr(proof, f.name)
        if isinstance(value, tuple):
            value = tuple(group.add(v, G) if isinstance(v, bytes) else (v + 1) % L for v in value)
        else:
            value = group.add(value, G) if isinstance(value, bytes) else (value + 1) % L
        assert not _excess_ok(good, replace(proof, **{f.name: value}))


def test_same_value_proof_coin_to_memo() -> None:
    sk = random_scalar()
    pk = group.base_mul(sk)
    coin = sigma.encrypt(55, pk, random_scalar())
    r_memo = random_scalar()
    for memo_value, ok in [(55, True), (56, False), (54, False)]:
        st = sigma.ExcessStatement(
            ((1, coin.commitment), (L - 1, group.commit(memo_value, r_memo))), ((pk, coin.handle),)
        )
        proof = sigma.prove_excess(_t(), b"same-value", st, [sk], -r_memo)
        assert _excess_ok(st, proof, label=b"same-value") is ok
