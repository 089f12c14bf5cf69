"""did:key identifiers (Ed25519) and the identifiers derived from an identity key."""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .base58 import b58decode, b58encode

ED25519_MULTICODEC = b"\xed\x01"
DID_PREFIX = "did:key:z"


class DidError(ValueError):
    """A string is not a valid Ed25519 did:key."""


def did_from_public(public_raw: bytes) -> str:
    if len(public_raw) != 32:
        raise DidError("Ed25519 public key must be 32 bytes")
    return DID_PREFIX + b58encode(ED25519_MULTICODEC + public_raw)


def public_from_did(did: str) -> bytes:
    if not isinstance(did, str) or not did.startswith(DID_PREFIX):
        raise DidError("not a did:key with base58btc ('z') multibase")
    try:
        raw = b58decode(did[len(DID_PREFIX) :])
    except ValueError as exc:
        raise DidError(str(exc)) from None
    if len(raw) != 34 or raw[:2] != ED25519_MULTICODEC:
        raise DidError("not an Ed25519 did:key (multicodec 0xed01, 32-byte key)")
    return raw[2:]


def did_from_seed(seed: bytes) -> str:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return did_from_public(key.public_key().public_bytes_raw())


def node_id(identity_public: bytes) -> bytes:
    """16-byte routing id of a relay, used in onion headers."""
    return hashlib.sha256(b"ringmesh-node-id" + identity_public).digest()[:16]


def user_mailbox_id(identity_public: bytes) -> bytes:
    """16-byte mailbox id of a mesh user at its home relay."""
    return hashlib.sha256(b"ringmesh-mailbox" + identity_public).digest()[:16]


def prekey_mailbox_id(identity_public: bytes) -> bytes:
    """16-byte id a sender delivers a prekey request to, at the user's home relay."""
    return hashlib.sha256(b"ringmesh-prekeys" + identity_public).digest()[:16]


def reply_mailbox_id(token: bytes) -> bytes:
    """16-byte id of a one-off reply mailbox, claimable by whoever knows the token."""
    return hashlib.sha256(b"ringmesh-reply" + token).digest()[:16]


def fingerprint(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:32]


def ed25519_public_to_x25519(public_raw: bytes) -> X25519PublicKey:
    """libsodium's map (crypto_sign_ed25519_pk_to_curve25519): Edwards y -> Montgomery
    u = (1 + y) / (1 - y) (RFC 7748 section 4.1), refusing points off the curve or of small
    order."""
    if len(public_raw) != 32:
        raise DidError("Ed25519 public key must be 32 bytes")
    try:
        u = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_raw)
    except nacl.exceptions.CryptoError:
        raise DidError("Ed25519 public key cannot be converted") from None
    return X25519PublicKey.from_public_bytes(u)


def ed25519_seed_to_x25519(seed: bytes) -> X25519PrivateKey:
    """The X25519 key whose public half is ed25519_public_to_x25519 of the seed's public key
    (libsodium's crypto_sign_ed25519_sk_to_curve25519)."""
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return X25519PrivateKey.from_private_bytes(
        nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + public)
    )
