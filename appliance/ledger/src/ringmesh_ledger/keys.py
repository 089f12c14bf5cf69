"""A wallet or ledger node key: one Ed25519 seed, shown to the world as its did:key.

The same secret scalar that signs for the did decrypts the coins sent to it: an Ed25519 public
key is a multiple of the base point, which is the blinding generator G of the commitments.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ringmesh.did import did_from_public, public_from_did

from .group import L, ed25519_public_to_point


class KeyFileError(Exception):
    """A key file that is missing, malformed or readable by others."""


@dataclass(frozen=True)
class SigningKey:
    seed: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(secrets.token_bytes(32))

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    @property
    def did(self) -> str:
        return did_from_public(self.public)

    @property
    def elgamal_secret(self) -> int:
        """The Ed25519 secret scalar (RFC 8032 clamping), reduced modulo the group order."""
        h = bytearray(hashlib.sha512(self.seed).digest()[:32])
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        return int.from_bytes(h, "little") % L

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey({self.did})"


def elgamal_public(did: str) -> bytes:
    return ed25519_public_to_point(public_from_did(did))


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_or_create(path: Path) -> tuple[SigningKey, bool]:
    """The key in `path` (0600, made here if absent); True when it was created."""
    if path.exists():
        return load(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.seed)
    return key, True


def load(path: Path) -> SigningKey:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyFileError(f"{path}: must not be readable by group or others (chmod 600)")
    if len(data) != 32:
        raise KeyFileError(f"{path}: not a 32-byte key seed")
    return SigningKey(data)
