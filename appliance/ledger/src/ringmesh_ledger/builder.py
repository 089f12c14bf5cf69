"""Wallet side: build a transaction and its proofs from the openings the wallet knows."""

from __future__ import annotations

from dataclasses import dataclass

from . import codec, rangeproof, sigma
from .group import L, commit, random_scalar
from .keys import SigningKey, elgamal_public
from .model import (
    Input,
    Output,
    OutputCoin,
    OutputMemo,
    OutputState,
    Proofs,
    Script,
    Signature,
    Transaction,
    TransactionBody,
    is_same_value,
)
from .verify import base_transcript, coin_outputs, excess_label, excess_statement, required_signers


@dataclass(frozen=True)
class Spend:
    """An input the wallet can spend: its value and, for memos and state, the blinding it chose."""

    utxo_id: bytes
    output: Output
    value: int
    blinding: int | None = None
    script: Script | None = None


@dataclass(frozen=True)
class CoinSpec:
    owner: str
    value: int


@dataclass(frozen=True)
class MemoSpec:
    owner: str
    script: Script
    value: int
    data: tuple[bytes, ...] | None = None
    timebounds: int = 0


@dataclass(frozen=True)
class StateSpec:
    owner: str
    script: Script
    value: int
    nonce: int = 0
    state_variables: tuple[bytes, ...] | None = None
    timebounds: int = 0


OutputSpec = CoinSpec | MemoSpec | StateSpec


@dataclass(frozen=True)
class Opening:
    """What the wallet keeps about an output it made: the value and blinding."""

    utxo_id: bytes
    output: Output
    value: int
    blinding: int


@dataclass(frozen=True)
class Built:
    tx: Transaction
    digest: bytes
    openings: tuple[Opening, ...]


class BuildError(ValueError):
    pass


def _output(spec: OutputSpec, blinding: int) -> Output:
    if isinstance(spec, CoinSpec):
        return OutputCoin(
            sigma.encrypt(spec.value, elgamal_public(spec.owner), blinding), spec.owner
        )
    address = codec.script_address(spec.script)
    commitment = commit(spec.value, blinding)
    if isinstance(spec, MemoSpec):
        return OutputMemo(address, spec.owner, commitment, spec.data, spec.timebounds)
    return OutputState(
        spec.nonce, address, spec.owner, commitment, spec.state_variables, spec.timebounds
    )


def build(
    spends: list[Spend],
    specs: list[OutputSpec],
    keys: list[SigningKey],
    fee: int = 0,
    issue: int = 0,
    issuer: str | None = None,
) -> Built:
    """`keys` must hold every required signer (input owners, script signers, the issuer)."""
    if sum(s.value for s in spends) + issue != sum(o.value for o in specs) + fee:
        raise BuildError("inputs + issue must equal outputs + fee")
    for spec in specs:
        if not 0 <= spec.value < 2**rangeproof.BITS:
            raise BuildError("output value out of range")
    blindings = [random_scalar() for _ in specs]
    outputs = tuple(_output(spec, r) for spec, r in zip(specs, blindings, strict=True))
    body = TransactionBody(tuple(Input(s.utxo_id, s.script) for s in spends), outputs, fee, issue)
    digest = codec.body_digest(body)
    by_public = {k.public: k for k in keys}

    validity = []
    coin_specs = [
        (spec, r) for spec, r in zip(specs, blindings, strict=True) if isinstance(spec, CoinSpec)
    ]
    for i, (coin, (spec, r)) in enumerate(zip(coin_outputs(body), coin_specs, strict=True)):
        t = base_transcript(digest, b"validity" + i.to_bytes(2, "little"))
        validity.append(
            sigma.prove_validity(t, elgamal_public(coin.owner), coin.encrypt, spec.value, r)
        )

    range_proof = None
    if not is_same_value(body):
        range_proof = rangeproof.prove(
            base_transcript(digest, b"range"), [s.value for s in specs], blindings
        )

    inputs = [s.output for s in spends]
    statement = excess_statement(body, inputs)
    known = sum(s.blinding for s in spends if s.blinding is not None)
    coin_keys = []
    for public, _ in statement.owners:
        key = next((k for k in keys if elgamal_public(k.did) == public), None)
        if key is None:
            raise BuildError("the key of a coin input's owner is missing")
        coin_keys.append(key.elgamal_secret)
    for s in spends:
        if not isinstance(s.output, OutputCoin) and s.blinding is None:
            raise BuildError("spending a memo or state needs the blinding it was made with")
    excess = sigma.prove_excess(
        base_transcript(digest, b"excess"),
        excess_label(body),
        statement,
        coin_keys,
        (known - sum(blindings)) % L,
    )
    proofs = Proofs(tuple(validity), range_proof, excess)
    message = codec.signing_message(digest, proofs)
    signatures = []
    for public in required_signers(body, inputs, issuer):
        if public not in by_public:
            raise BuildError("a required signer's key is missing")
        signatures.append(Signature(public, by_public[public].sign(message)))
    tx = Transaction(body, proofs, tuple(signatures))
    openings = tuple(
        Opening(codec.utxo_id(digest, i), o, spec.value, r)
        for i, (o, spec, r) in enumerate(zip(outputs, specs, blindings, strict=True))
    )
    return Built(tx, digest, openings)
