"""Transaction validity: every rule of the ledger in one place, with one enumeration of reasons.

`check_transaction` does the checks that depend on the UTXO set (inputs unspent, scripts,
time bounds, nonces, signatures) and turns the proofs into multi-scalar-multiplication terms;
`verify_proofs` evaluates them for one transaction (naming the proof that failed) and
`verify_batch` for many at once in a single multi-scalar multiplication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from ringmesh.did import public_from_did

from . import codec, rangeproof, sigma
from .group import IDENTITY, H, L, PointError, msm
from .keys import elgamal_public, verify_signature
from .model import (
    Output,
    OutputCoin,
    OutputState,
    Transaction,
    TransactionBody,
    is_same_value,
    value_commitment,
)
from .rangeproof import random_weight
from .transcript import Transcript


class Reject(StrEnum):
    """Why a transaction was refused; shared by API answers, logs, metrics and docs."""

    MALFORMED = "malformed"
    NO_INPUTS = "no_inputs"
    DUPLICATE_INPUT = "duplicate_input"
    UNKNOWN_INPUT = "unknown_input"
    SCRIPT_MISMATCH = "script_mismatch"
    LOCKED = "locked"
    BAD_NONCE = "bad_nonce"
    NOT_ISSUER = "not_issuer"
    BAD_SIGNATURES = "bad_signatures"
    BAD_VALIDITY_PROOF = "bad_validity_proof"
    BAD_RANGE_PROOF = "bad_range_proof"
    BAD_BALANCE_PROOF = "bad_balance_proof"
    DOUBLE_SPEND = "double_spend"


class Rejected(Exception):
    def __init__(self, reason: Reject, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


Lookup = Callable[[bytes], Output | None]


@dataclass
class Checked:
    """A transaction that passed the state checks, with its proofs ready to evaluate."""

    tx: Transaction
    digest: bytes
    spent: list[bytes]
    created: list[tuple[bytes, Output]]
    proof_terms: dict[Reject, list[tuple[int, bytes]]] = field(default_factory=dict)


def base_transcript(digest: bytes, label: bytes) -> Transcript:
    t = Transcript(b"ringmesh-ledger-tx")
    t.append(b"body", digest)
    t.append(b"proof", label)
    return t


def excess_label(body: TransactionBody) -> bytes:
    return b"same-value" if is_same_value(body) else b"balance"


def required_signers(
    body: TransactionBody, inputs: list[Output], issuer: str | None
) -> list[bytes]:
    """Sorted public keys that must sign: coin owners, script-named signers, the issuer."""
    signers: set[bytes] = set()
    for inp, spent in zip(body.inputs, inputs, strict=True):
        if isinstance(spent, OutputCoin):
            signers.add(public_from_did(spent.owner))
            continue
        script = inp.script
        assert script is not None
        if script.owner_signature:
            signers.add(public_from_did(spent.owner))
        signers.update(public_from_did(d) for d in script.signers)
    if body.issue:
        assert issuer is not None
        signers.add(public_from_did(issuer))
    return sorted(signers)


def excess_statement(body: TransactionBody, inputs: list[Output]) -> sigma.ExcessStatement:
    terms: list[tuple[int, bytes]] = [(1, value_commitment(o)) for o in inputs]
    terms += [(L - 1, value_commitment(o)) for o in body.outputs]
    if body.issue:
        terms.append((body.issue, H))
    if body.fee:
        terms.append(((-body.fee) % L, H))
    handles: dict[str, bytes] = {}
    for o in inputs:
        if isinstance(o, OutputCoin):
            previous = handles.get(o.owner, IDENTITY)
            handles[o.owner] = msm([(1, previous), (1, o.encrypt.handle)])
    owners = tuple(
        (elgamal_public(did), handles[did]) for did in sorted(handles, key=public_from_did)
    )
    return sigma.ExcessStatement(tuple(terms), owners)


def coin_outputs(body: TransactionBody) -> list[OutputCoin]:
    return [o for o in body.outputs if isinstance(o, OutputCoin)]


def check_transaction(tx: Transaction, lookup: Lookup, height: int, issuer: str | None) -> Checked:
    try:
        return _check_transaction(tx, lookup, height, issuer)
    except PointError:
        # An owner did:key whose Ed25519 key is not a curve point cannot hold coins.
        raise Rejected(Reject.MALFORMED, "an owner key is not a valid Ed25519 point") from None


def _check_transaction(tx: Transaction, lookup: Lookup, height: int, issuer: str | None) -> Checked:
    body = tx.body
    digest = codec.body_digest(body)
    if not body.inputs and not body.issue:
        raise Rejected(Reject.NO_INPUTS, "a transaction spends at least one input or issues")
    if body.issue and issuer is None:
        raise Rejected(Reject.NOT_ISSUER, "this ledger has no issuer")
    if not body.outputs:
        raise Rejected(Reject.MALFORMED, "a transaction creates at least one output")
    ids = [i.utxo_id for i in body.inputs]
    if len(set(ids)) != len(ids):
        raise Rejected(Reject.DUPLICATE_INPUT, "an input is listed twice")

    inputs: list[Output] = []
    for n, inp in enumerate(body.inputs):
        spent = lookup(inp.utxo_id)
        if spent is None:
            raise Rejected(Reject.UNKNOWN_INPUT, f"input {n} is not in the UTXO set")
        if isinstance(spent, OutputCoin):
            if inp.script is not None:
                raise Rejected(Reject.SCRIPT_MISMATCH, f"input {n} is a coin and takes no script")
        else:
            if inp.script is None or codec.script_address(inp.script) != spent.script_address:
                raise Rejected(
                    Reject.SCRIPT_MISMATCH, f"input {n}: script does not hash to its address"
                )
            unlock = max(spent.timebounds, inp.script.not_before)
            if height < unlock:
                raise Rejected(Reject.LOCKED, f"input {n} is locked until height {unlock}")
        inputs.append(spent)
    _check_nonces(body, inputs)

    # Signatures: exactly the required signers, sorted, each over body and proofs.
    expected = required_signers(body, inputs, issuer)
    if [s.public for s in tx.signatures] != expected:
        raise Rejected(
            Reject.BAD_SIGNATURES, f"expected {len(expected)} signatures from the input owners"
        )
    message = codec.signing_message(digest, tx.proofs)
    for s in tx.signatures:
        if not verify_signature(s.public, s.signature, message):
            raise Rejected(Reject.BAD_SIGNATURES, "a signature does not verify")

    checked = Checked(
        tx, digest, ids, [(codec.utxo_id(digest, i), o) for i, o in enumerate(body.outputs)]
    )
    _proof_terms(checked, inputs)
    return checked


def _check_nonces(body: TransactionBody, inputs: list[Output]) -> None:
    continued = {(o.script_address, o.nonce + 1) for o in inputs if isinstance(o, OutputState)}
    outputs = [(o.script_address, o.nonce) for o in body.outputs if isinstance(o, OutputState)]
    if len(set(outputs)) != len(outputs):
        raise Rejected(Reject.BAD_NONCE, "two state outputs share script and nonce")
    for address, nonce in continued:
        if (address, nonce) not in outputs:
            raise Rejected(Reject.BAD_NONCE, "a spent state must continue with nonce + 1")
    for address, nonce in outputs:
        if nonce != 0 and (address, nonce) not in continued:
            raise Rejected(Reject.BAD_NONCE, "a new state starts at nonce 0")


def _proof_terms(checked: Checked, inputs: list[Output]) -> None:
    body, proofs, digest = checked.tx.body, checked.tx.proofs, checked.digest
    coins = coin_outputs(body)
    if len(proofs.validity) != len(coins):
        raise Rejected(Reject.BAD_VALIDITY_PROOF, "one validity proof per coin output")
    validity: list[tuple[int, bytes]] = []
    for i, (coin, proof) in enumerate(zip(coins, proofs.validity, strict=True)):
        t = base_transcript(digest, b"validity" + i.to_bytes(2, "little"))
        validity += sigma.validity_terms(
            t, elgamal_public(coin.owner), coin.encrypt, proof, random_weight()
        )
    checked.proof_terms[Reject.BAD_VALIDITY_PROOF] = validity

    if is_same_value(body):
        if proofs.range is not None:
            raise Rejected(
                Reject.BAD_RANGE_PROOF, "a same-value transaction carries no range proof"
            )
    else:
        if proofs.range is None:
            raise Rejected(Reject.BAD_RANGE_PROOF, "range proof missing")
        commitments = [value_commitment(o) for o in body.outputs]
        try:
            checked.proof_terms[Reject.BAD_RANGE_PROOF] = rangeproof.verification_terms(
                base_transcript(digest, b"range"), commitments, proofs.range, random_weight()
            )
        except rangeproof.RangeProofError as exc:
            raise Rejected(Reject.BAD_RANGE_PROOF, str(exc)) from None

    statement = excess_statement(body, inputs)
    try:
        checked.proof_terms[Reject.BAD_BALANCE_PROOF] = sigma.excess_terms(
            base_transcript(digest, b"excess"),
            excess_label(body),
            statement,
            proofs.excess,
            random_weight(),
        )
    except ValueError as exc:
        raise Rejected(Reject.BAD_BALANCE_PROOF, str(exc)) from None


def verify_proofs(checked: Checked) -> None:
    """Evaluate each proof of one transaction; raise naming the first that fails."""
    for reason, terms in checked.proof_terms.items():
        if msm(terms) != IDENTITY:
            raise Rejected(reason, "proof does not verify")


def verify_batch(batch: Iterable[Checked]) -> bool:
    """True when every proof of every transaction verifies (one multi-scalar multiplication)."""
    return msm(t for c in batch for terms in c.proof_terms.values() for t in terms) == IDENTITY
