"""Descriptors: a node's per-epoch link and onion public keys, signed by its identity key."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from .did import did_from_public, node_id

_CONTEXT = b"ringmesh-descriptor-v1"
_BODY = struct.Struct("!BB32sIQQ32s32s")
VERSION = 1
DESCRIPTOR_LEN = _BODY.size + 64


class DescriptorError(ValueError):
    """A descriptor is malformed, badly signed or expired."""


@dataclass(frozen=True)
class Descriptor:
    role: int
    identity: bytes
    epoch: int
    valid_from: int
    expires: int
    link_public: bytes
    onion_public: bytes
    signature: bytes

    @property
    def did(self) -> str:
        return did_from_public(self.identity)

    @property
    def node_id(self) -> bytes:
        return node_id(self.identity)

    def body(self) -> bytes:
        return _BODY.pack(
            VERSION,
            self.role,
            self.identity,
            self.epoch,
            self.valid_from,
            self.expires,
            self.link_public,
            self.onion_public,
        )

    def encode(self) -> bytes:
        return self.body() + self.signature

    def onion_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.onion_public)

    @classmethod
    def sign(
        cls,
        identity_key: Ed25519PrivateKey,
        *,
        role: int,
        epoch: int,
        valid_from: int,
        expires: int,
        link_public: bytes,
        onion_public: bytes,
    ) -> Descriptor:
        identity = identity_key.public_key().public_bytes_raw()
        unsigned = cls(role, identity, epoch, valid_from, expires, link_public, onion_public, b"")
        signature = identity_key.sign(_CONTEXT + unsigned.body())
        return cls(role, identity, epoch, valid_from, expires, link_public, onion_public, signature)

    @classmethod
    def decode(cls, data: bytes) -> Descriptor:
        """Parse and check the identity signature (not the validity window)."""
        if len(data) != DESCRIPTOR_LEN:
            raise DescriptorError("descriptor has the wrong length")
        version, role, identity, epoch, valid_from, expires, link_pub, onion_pub = _BODY.unpack(
            data[: _BODY.size]
        )
        if version != VERSION:
            raise DescriptorError("unknown descriptor version")
        signature = data[_BODY.size :]
        try:
            Ed25519PublicKey.from_public_bytes(identity).verify(
                signature, _CONTEXT + data[: _BODY.size]
            )
        except (InvalidSignature, ValueError):
            raise DescriptorError("descriptor signature does not verify") from None
        return cls(role, identity, epoch, valid_from, expires, link_pub, onion_pub, signature)

    def check_valid(self, now: float) -> None:
        if not self.valid_from - 300 <= now < self.expires:
            raise DescriptorError("descriptor is outside its validity window")
