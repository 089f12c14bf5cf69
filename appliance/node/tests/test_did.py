from __future__ import annotations

import contextlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ringmesh.base58 import b58decode, b58encode
from ringmesh.did import (
    DidError,
    did_from_public,
    did_from_seed,
    ed25519_public_to_x25519,
    ed25519_seed_to_x25519,
    public_from_did,
)

# W3C did-method-key test vectors (Ed25519, seed -> did).
VECTORS = [
    (bytes(32), "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"),
]
# Public-key -> did vectors from the did:key spec examples.
PUBLIC_VECTORS = [
    "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
    "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
]


# Published (publicKeyBase58 Ed25519, did, keyAgreement X25519 publicKeyBase58) triples: the
# X25519 key is the did:key method's Ed25519 -> X25519 conversion.
CONVERSION_VECTORS = [
    (
        "8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K",
        "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
        "79CXkde3j8TNuMXxPdV7nLUrT2g7JAEjH5TreyVY7GEZ",
    ),
    (
        "HrBXe7XnjMbscM1roSDTSMCcLNraetDQM9wSVjnzDxn3",
        "did:key:z6MkwJSaEMnE4u6LiqrZV1BJHSkc9x8S4mTm3ArNL1m19BZR",
        "Bc2RDrL8ppNGVpA9b3Hd8S9VeWbH34KxekvdxmcfxtNc",
    ),
]


@pytest.mark.parametrize(("ed_b58", "did", "x_b58"), CONVERSION_VECTORS)
def test_published_did_and_x25519_vectors(ed_b58: str, did: str, x_b58: str) -> None:
    public = b58decode(ed_b58)
    assert did_from_public(public) == did
    assert public_from_did(did) == public
    assert ed25519_public_to_x25519(public).public_bytes_raw() == b58decode(x_b58)


@pytest.mark.parametrize(("seed", "did"), VECTORS)
def test_w3c_seed_vectors(seed: bytes, did: str) -> None:
    assert did_from_seed(seed) == did


@pytest.mark.parametrize("did", PUBLIC_VECTORS)
def test_did_round_trip(did: str) -> None:
    assert did_from_public(public_from_did(did)) == did


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "did:web:example.com",
        "did:key:zzzz",
        "did:key:z0OIl",  # not base58
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1, not Ed25519
    ],
)
def test_bad_dids_rejected(bad: str) -> None:
    with pytest.raises(DidError):
        public_from_did(bad)


@given(st.binary(max_size=64))
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


@given(st.text(max_size=80))
def test_did_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(DidError):
        public_from_did(text)


def test_ed25519_to_x25519_matches_private_derivation() -> None:
    for _ in range(20):
        seed = os.urandom(32)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        assert (
            ed25519_public_to_x25519(public).public_bytes_raw()
            == ed25519_seed_to_x25519(seed).public_key().public_bytes_raw()
        )


@pytest.mark.parametrize(
    "public",
    [
        (1).to_bytes(32, "little"),  # the neutral point (y = 1): small order
        (2**255 - 20).to_bytes(32, "little"),  # y = -1: order 2
        (2).to_bytes(32, "little"),  # y = 2 is on no point of the curve
        bytes(31),  # not 32 bytes
    ],
)
def test_keys_libsodium_refuses_to_convert_are_did_errors(public: bytes) -> None:
    with pytest.raises(DidError):
        ed25519_public_to_x25519(public)
