"""Properties of the transaction parser: round trips, canonical encodings, only ParseError."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh.did import did_from_public
from ringmesh_ledger import codec, group
from ringmesh_ledger.model import (
    Input,
    OutputCoin,
    OutputMemo,
    OutputState,
    Proofs,
    Script,
    Signature,
    Transaction,
    TransactionBody,
)
from ringmesh_ledger.rangeproof import RangeProof
from ringmesh_ledger.sigma import ElGamalCommitment, ExcessProof, ValidityProof

points = st.binary(min_size=8, max_size=8).map(group.hash_to_point)
scalars = st.integers(min_value=0, max_value=group.L - 1)
u32 = st.integers(min_value=0, max_value=codec.MAX_U32)
u64 = st.integers(min_value=0, max_value=codec.MAX_U64)
dids = st.binary(min_size=32, max_size=32).map(did_from_public)
addresses = st.binary(min_size=32, max_size=32).map(bytes.hex)
data = st.none() | st.lists(st.binary(max_size=40), max_size=3).map(tuple)
scripts = st.builds(
    Script,
    st.booleans(),
    st.lists(st.binary(min_size=32, max_size=32), max_size=3, unique=True).map(
        lambda keys: tuple(did_from_public(k) for k in sorted(keys))
    ),
    u32,
)
outputs = st.one_of(
    st.builds(OutputCoin, st.builds(ElGamalCommitment, points, points), dids),
    st.builds(OutputMemo, addresses, dids, points, data, u32),
    st.builds(OutputState, u32, addresses, dids, points, data, u32),
)
bodies = st.builds(
    TransactionBody,
    st.lists(
        st.builds(Input, st.binary(min_size=32, max_size=32), st.none() | scripts), max_size=3
    ).map(tuple),
    st.lists(outputs, min_size=1, max_size=3).map(tuple),
    u64,
    u64,
)
range_proofs = st.integers(min_value=6, max_value=8).flatmap(
    lambda rounds: st.builds(
        RangeProof,
        points,
        points,
        points,
        points,
        scalars,
        scalars,
        scalars,
        st.lists(points, min_size=rounds, max_size=rounds).map(tuple),
        st.lists(points, min_size=rounds, max_size=rounds).map(tuple),
        scalars,
        scalars,
    )
)
excess = st.integers(min_value=0, max_value=2).flatmap(
    lambda n: st.builds(
        ExcessProof,
        points,
        st.lists(points, min_size=n, max_size=n).map(tuple),
        st.lists(scalars, min_size=n, max_size=n).map(tuple),
        scalars,
    )
)
proofs = st.builds(
    Proofs,
    st.lists(st.builds(ValidityProof, points, points, scalars, scalars), max_size=2).map(tuple),
    st.none() | range_proofs,
    excess,
)
transactions = st.builds(
    Transaction,
    bodies,
    proofs,
    st.lists(
        st.builds(
            Signature, st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64)
        ),
        max_size=2,
    ).map(tuple),
)


@settings(max_examples=40, deadline=None)
@given(transactions)
def test_round_trip(tx: Transaction) -> None:
    encoded = codec.encode_transaction(tx)
    assert codec.decode_transaction(encoded) == tx
    assert codec.encode_transaction(codec.decode_transaction(encoded)) == encoded


@settings(max_examples=40, deadline=None)
@given(transactions, st.data())
def test_mutations_raise_only_parse_error_and_what_parses_is_canonical(
    tx: Transaction, draw: st.DataObject
) -> None:
    encoded = bytearray(codec.encode_transaction(tx))
    for _ in range(draw.draw(st.integers(min_value=1, max_value=4))):
        pos = draw.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[pos] = draw.draw(st.integers(min_value=0, max_value=255))
    try:
        parsed = codec.decode_transaction(bytes(encoded))
    except codec.ParseError:
        return
    assert codec.encode_transaction(parsed) == bytes(encoded)


@settings(max_examples=25, deadline=None)
@given(transactions, st.data())
def test_truncation_and_extension_are_parse_errors(tx: Transaction, draw: st.DataObject) -> None:
    encoded = codec.encode_transaction(tx)
    cut = draw.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    for bad in (encoded[:cut], encoded + b"\x00"):
        try:
            codec.decode_transaction(bad)
        except codec.ParseError as exc:
            assert exc.field
        else:
            raise AssertionError("parsed a truncated or extended transaction")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_parse_error(blob: bytes) -> None:
    for decode in (codec.decode_transaction, codec.decode_output, codec.decode_script):
        with contextlib.suppress(codec.ParseError):
            decode(blob)


@settings(max_examples=30, deadline=None)
@given(scripts)
def test_script_address_is_the_hash_of_the_canonical_encoding(script: Script) -> None:
    encoded = codec.encode_script(script)
    assert codec.decode_script(encoded) == script
    assert codec.script_address(codec.decode_script(encoded)) == codec.script_address(script)
