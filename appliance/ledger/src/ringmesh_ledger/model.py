"""The UTXO model of the ZkOS design: Coins, Memos and State, and the transactions that move them.

UTXOs are immutable: a transaction spends whole inputs and creates new outputs, and an
output's id is derived from the transaction body and its position, so it can never be made
twice. Owners are did:key identifiers (Ed25519); scripts are small declarative access
policies identified by the hash of their canonical encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .rangeproof import RangeProof
from .sigma import ElGamalCommitment, ExcessProof, ValidityProof


class UtxoType(IntEnum):
    COIN = 0
    MEMO = 1
    STATE = 2


@dataclass(frozen=True)
class OutputCoin:
    """A confidential asset: its value encrypted to its owner."""

    encrypt: ElGamalCommitment
    owner: str


@dataclass(frozen=True)
class OutputMemo:
    """A programmable data container, spendable under its script from height `timebounds` on."""

    script_address: str
    owner: str
    commitment: bytes
    data: tuple[bytes, ...] | None
    timebounds: int


@dataclass(frozen=True)
class OutputState:
    """Contract state; each update spends version `nonce` and creates `nonce + 1`."""

    nonce: int
    script_address: str
    owner: str
    commitment: bytes
    state_variables: tuple[bytes, ...] | None
    timebounds: int


Output = OutputCoin | OutputMemo | OutputState


def utxo_type(output: Output) -> UtxoType:
    if isinstance(output, OutputCoin):
        return UtxoType.COIN
    if isinstance(output, OutputMemo):
        return UtxoType.MEMO
    return UtxoType.STATE


def value_commitment(output: Output) -> bytes:
    return output.encrypt.commitment if isinstance(output, OutputCoin) else output.commitment


@dataclass(frozen=True)
class Script:
    """Access policy of a memo or state: who signs, and from which height it may be spent."""

    owner_signature: bool = True
    signers: tuple[str, ...] = ()
    not_before: int = 0


@dataclass(frozen=True)
class Input:
    """A spent UTXO; memo and state inputs show the script their address is the hash of."""

    utxo_id: bytes
    script: Script | None = None


@dataclass(frozen=True)
class TransactionBody:
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    fee: int = 0
    issue: int = 0
    """Public amount created by the ledger's issuer (0 for every other transaction)."""


@dataclass(frozen=True)
class Proofs:
    validity: tuple[ValidityProof, ...]
    """One per coin output, in output order."""
    range: RangeProof | None
    """Over every output's commitment; absent only for a same-value transaction."""
    excess: ExcessProof


@dataclass(frozen=True)
class Signature:
    public: bytes
    signature: bytes


@dataclass(frozen=True)
class Transaction:
    body: TransactionBody
    proofs: Proofs
    signatures: tuple[Signature, ...]


def is_same_value(body: TransactionBody) -> bool:
    """One input becomes one output of the same value (coin -> memo, a state update): the
    excess proof alone shows the values are equal, and no range proof is needed."""
    return len(body.inputs) == 1 and len(body.outputs) == 1 and body.fee == 0 and body.issue == 0
