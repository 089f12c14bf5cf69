"""Canonical binary encoding of transactions, UTXOs and scripts, and its strict parser.

Every field has one encoding (fixed-size integers, canonical points and scalars, sorted and
unique lists where order carries no meaning), so hashes of encodings identify things.
`ParseError` names the field that is wrong; nothing else escapes the parser.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from ringmesh.did import DidError, did_from_public, public_from_did

from . import group
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
    UtxoType,
)
from .rangeproof import BITS, MAX_AGGREGATION, RangeProof
from .sigma import ElGamalCommitment, ExcessProof, ValidityProof

VERSION = 1
MAX_INPUTS = 16
MAX_OUTPUTS = MAX_AGGREGATION
MAX_DATA_ITEMS = 16
MAX_DATA_BYTES = 1024
MAX_SIGNERS = 8
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1

T = TypeVar("T")


class ParseError(ValueError):
    """Bytes that are not a canonical encoding; str() names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self._parts.append(v.to_bytes(1, "little"))

    def u16(self, v: int) -> None:
        self._parts.append(v.to_bytes(2, "little"))

    def u32(self, v: int) -> None:
        self._parts.append(v.to_bytes(4, "little"))

    def u64(self, v: int) -> None:
        self._parts.append(v.to_bytes(8, "little"))

    def raw(self, b: bytes) -> None:
        self._parts.append(b)

    def scalar(self, s: int) -> None:
        self._parts.append(group.scalar_bytes(s))

    def blob(self, b: bytes) -> None:
        self.u32(len(b))
        self._parts.append(b)

    def did(self, did: str) -> None:
        self._parts.append(public_from_did(did))

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int, field: str) -> bytes:
        if self._pos + n > len(self._data):
            raise ParseError(field, "truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def point(self, field: str) -> bytes:
        data = self.take(32, field)
        try:
            return group.check_point(data)
        except group.PointError:
            raise ParseError(field, "not a canonical ristretto255 point") from None

    def scalar(self, field: str) -> int:
        try:
            return group.scalar_from_bytes(self.take(32, field))
        except ValueError:
            raise ParseError(field, "scalar not reduced modulo the group order") from None

    def blob(self, field: str, limit: int) -> bytes:
        n = self.u32(field)
        if n > limit:
            raise ParseError(field, f"longer than {limit} bytes")
        return self.take(n, field)

    def did(self, field: str) -> str:
        return did_from_public(self.take(32, field))

    def flag(self, field: str) -> bool:
        value = self.u8(field)
        if value > 1:
            raise ParseError(field, "flag must be 0 or 1")
        return value == 1

    def items(self, field: str, limit: int, read: Callable[[str], T]) -> list[T]:
        count = self.u16(field)
        if count > limit:
            raise ParseError(field, f"more than {limit} entries")
        return [read(f"{field}[{i}]") for i in range(count)]

    def end(self, field: str) -> None:
        if self._pos != len(self._data):
            raise ParseError(field, "trailing bytes")


def _parse(data: bytes, field: str, read: Callable[[Reader], T]) -> T:
    if not isinstance(data, bytes):
        raise ParseError(field, "must be bytes")
    reader = Reader(data)
    value = read(reader)
    reader.end(field)
    return value


# Scripts -----------------------------------------------------------------------------------


def encode_script(script: Script) -> bytes:
    w = Writer()
    w.u8(VERSION)
    w.u8(1 if script.owner_signature else 0)
    w.u32(script.not_before)
    signers = sorted(public_from_did(d) for d in script.signers)
    w.u16(len(signers))
    for s in signers:
        w.raw(s)
    return w.bytes()


def _read_script(r: Reader, field: str) -> Script:
    if r.u8(f"{field}.version") != VERSION:
        raise ParseError(f"{field}.version", "unknown version")
    owner_signature = r.flag(f"{field}.owner_signature")
    not_before = r.u32(f"{field}.not_before")
    raw = r.items(f"{field}.signers", MAX_SIGNERS, lambda f: r.take(32, f))
    if raw != sorted(set(raw)):
        raise ParseError(f"{field}.signers", "must be sorted and unique")
    return Script(owner_signature, tuple(did_from_public(s) for s in raw), not_before)


def decode_script(data: bytes) -> Script:
    return _parse(data, "script", lambda r: _read_script(r, "script"))


def script_address(script: Script) -> str:
    return hashlib.sha256(b"ringmesh-ledger-script-v1" + encode_script(script)).hexdigest()


# Outputs -----------------------------------------------------------------------------------


def _write_address(w: Writer, address: str) -> None:
    w.raw(bytes.fromhex(address))


def _read_address(r: Reader, field: str) -> str:
    return r.take(32, field).hex()


def _write_data(w: Writer, data: tuple[bytes, ...] | None) -> None:
    if data is None:
        w.u8(0)
        return
    w.u8(1)
    w.u16(len(data))
    for item in data:
        w.blob(item)


def _read_data(r: Reader, field: str) -> tuple[bytes, ...] | None:
    if not r.flag(field):
        return None
    return tuple(r.items(field, MAX_DATA_ITEMS, lambda f: r.blob(f, MAX_DATA_BYTES)))


def write_output(w: Writer, output: Output) -> None:
    if isinstance(output, OutputCoin):
        w.u8(UtxoType.COIN)
        w.raw(output.encrypt.handle)
        w.raw(output.encrypt.commitment)
        w.did(output.owner)
    elif isinstance(output, OutputMemo):
        w.u8(UtxoType.MEMO)
        _write_address(w, output.script_address)
        w.did(output.owner)
        w.raw(output.commitment)
        _write_data(w, output.data)
        w.u32(output.timebounds)
    else:
        w.u8(UtxoType.STATE)
        w.u32(output.nonce)
        _write_address(w, output.script_address)
        w.did(output.owner)
        w.raw(output.commitment)
        _write_data(w, output.state_variables)
        w.u32(output.timebounds)


def read_output(r: Reader, field: str) -> Output:
    kind = r.u8(f"{field}.type")
    if kind == UtxoType.COIN:
        handle = r.point(f"{field}.encrypt.handle")
        commitment = r.point(f"{field}.encrypt.commitment")
        return OutputCoin(ElGamalCommitment(handle, commitment), r.did(f"{field}.owner"))
    if kind == UtxoType.MEMO:
        return OutputMemo(
            script_address=_read_address(r, f"{field}.script_address"),
            owner=r.did(f"{field}.owner"),
            commitment=r.point(f"{field}.commitment"),
            data=_read_data(r, f"{field}.data"),
            timebounds=r.u32(f"{field}.timebounds"),
        )
    if kind == UtxoType.STATE:
        return OutputState(
            nonce=r.u32(f"{field}.nonce"),
            script_address=_read_address(r, f"{field}.script_address"),
            owner=r.did(f"{field}.owner"),
            commitment=r.point(f"{field}.commitment"),
            state_variables=_read_data(r, f"{field}.state_variables"),
            timebounds=r.u32(f"{field}.timebounds"),
        )
    raise ParseError(f"{field}.type", f"unknown UTXO type {kind}")


def encode_output(output: Output) -> bytes:
    w = Writer()
    write_output(w, output)
    return w.bytes()


def decode_output(data: bytes) -> Output:
    return _parse(data, "output", lambda r: read_output(r, "output"))


# Transactions ------------------------------------------------------------------------------


def encode_body(body: TransactionBody) -> bytes:
    w = Writer()
    w.u8(VERSION)
    w.u16(len(body.inputs))
    for inp in body.inputs:
        w.raw(inp.utxo_id)
        if inp.script is None:
            w.u8(0)
        else:
            w.u8(1)
            w.blob(encode_script(inp.script))
    w.u16(len(body.outputs))
    for out in body.outputs:
        write_output(w, out)
    w.u64(body.fee)
    w.u64(body.issue)
    return w.bytes()


def _read_input(r: Reader, field: str) -> Input:
    utxo_id = r.take(32, f"{field}.utxo_id")
    script = None
    if r.flag(f"{field}.script"):
        raw = r.blob(f"{field}.script", 16 + 32 * MAX_SIGNERS)
        script = _parse(raw, f"{field}.script", lambda sr: _read_script(sr, f"{field}.script"))
    return Input(utxo_id, script)


def _read_body(r: Reader) -> TransactionBody:
    if r.u8("body.version") != VERSION:
        raise ParseError("body.version", "unknown version")
    inputs = r.items("body.inputs", MAX_INPUTS, lambda f: _read_input(r, f))
    outputs = r.items("body.outputs", MAX_OUTPUTS, lambda f: read_output(r, f))
    return TransactionBody(tuple(inputs), tuple(outputs), r.u64("body.fee"), r.u64("body.issue"))


def encode_proofs(proofs: Proofs) -> bytes:
    w = Writer()
    w.u16(len(proofs.validity))
    for v in proofs.validity:
        w.raw(v.commitment_nonce)
        w.raw(v.handle_nonce)
        w.scalar(v.value_response)
        w.scalar(v.blinding_response)
    rp = proofs.range
    if rp is None:
        w.u8(0)
    else:
        w.u8(1)
        for p in (rp.A, rp.S, rp.T1, rp.T2):
            w.raw(p)
        for s in (rp.t_x, rp.t_x_blinding, rp.e_blinding):
            w.scalar(s)
        w.u8(len(rp.L_vec))
        for lp, rpt in zip(rp.L_vec, rp.R_vec, strict=True):
            w.raw(lp)
            w.raw(rpt)
        w.scalar(rp.a)
        w.scalar(rp.b)
    ex = proofs.excess
    w.raw(ex.nonce)
    w.u16(len(ex.owner_nonces))
    for n, s in zip(ex.owner_nonces, ex.owner_responses, strict=True):
        w.raw(n)
        w.scalar(s)
    w.scalar(ex.blinding_response)
    return w.bytes()


def _read_validity(r: Reader, field: str) -> ValidityProof:
    return ValidityProof(
        r.point(f"{field}.R1"),
        r.point(f"{field}.R2"),
        r.scalar(f"{field}.s_v"),
        r.scalar(f"{field}.s_r"),
    )


def _read_range(r: Reader) -> RangeProof:
    f = "proofs.range"
    a, s, t1, t2 = (r.point(f"{f}.{n}") for n in ("A", "S", "T1", "T2"))
    t_x, t_x_blinding, e_blinding = (
        r.scalar(f"{f}.{n}") for n in ("t_x", "t_x_blinding", "e_blinding")
    )
    rounds = r.u8(f"{f}.rounds")
    max_rounds = (BITS * MAX_AGGREGATION).bit_length() - 1
    if not 6 <= rounds <= max_rounds:
        raise ParseError(f"{f}.rounds", f"must be 6..{max_rounds}")
    ls, rs = [], []
    for i in range(rounds):
        ls.append(r.point(f"{f}.L[{i}]"))
        rs.append(r.point(f"{f}.R[{i}]"))
    return RangeProof(
        a,
        s,
        t1,
        t2,
        t_x,
        t_x_blinding,
        e_blinding,
        tuple(ls),
        tuple(rs),
        r.scalar(f"{f}.a"),
        r.scalar(f"{f}.b"),
    )


def _read_proofs(r: Reader) -> Proofs:
    validity = r.items("proofs.validity", MAX_OUTPUTS, lambda f: _read_validity(r, f))
    range_proof = _read_range(r) if r.flag("proofs.range") else None
    nonce = r.point("proofs.excess.K")
    owners = r.items(
        "proofs.excess.owners", MAX_INPUTS, lambda f: (r.point(f"{f}.K"), r.scalar(f"{f}.s"))
    )
    blinding = r.scalar("proofs.excess.s_y")
    excess = ExcessProof(nonce, tuple(n for n, _ in owners), tuple(s for _, s in owners), blinding)
    return Proofs(tuple(validity), range_proof, excess)


def encode_transaction(tx: Transaction) -> bytes:
    w = Writer()
    w.blob(encode_body(tx.body))
    w.blob(encode_proofs(tx.proofs))
    w.u16(len(tx.signatures))
    for sig in tx.signatures:
        w.raw(sig.public)
        w.raw(sig.signature)
    return w.bytes()


def _read_transaction(r: Reader) -> Transaction:
    body = _parse(r.blob("body", 1 << 20), "body", _read_body)
    proofs = _parse(r.blob("proofs", 1 << 20), "proofs", _read_proofs)
    sigs = r.items(
        "signatures",
        MAX_INPUTS + 1,
        lambda f: Signature(r.take(32, f"{f}.public"), r.take(64, f"{f}.signature")),
    )
    return Transaction(body, proofs, tuple(sigs))


def decode_transaction(data: bytes) -> Transaction:
    return _parse(data, "transaction", _read_transaction)


def body_digest(body: TransactionBody) -> bytes:
    return hashlib.sha256(b"ringmesh-ledger-tx-body-v1" + encode_body(body)).digest()


def signing_message(tx_body_digest: bytes, proofs: Proofs) -> bytes:
    """What every signer of a transaction signs: the body and the proofs that go with it."""
    return (
        b"ringmesh-ledger-tx-sig-v1"
        + tx_body_digest
        + hashlib.sha256(encode_proofs(proofs)).digest()
    )


def utxo_id(tx_body_digest: bytes, index: int) -> bytes:
    return hashlib.sha256(
        b"ringmesh-ledger-utxo-v1" + tx_body_digest + index.to_bytes(2, "little")
    ).digest()


def check_did(did: str, field: str) -> str:
    try:
        public_from_did(did)
    except DidError as exc:
        raise ParseError(field, str(exc)) from None
    return did
