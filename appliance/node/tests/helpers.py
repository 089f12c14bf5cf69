"""Key material for the sans-I/O tests."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ringmesh.certificate import SigningCertificate
from ringmesh.descriptor import Descriptor


def credentials(
    role: int,
    epoch: int = 1,
    identity: Ed25519PrivateKey | None = None,
    certificate: SigningCertificate | None = None,
) -> tuple[Descriptor, Ed25519PrivateKey]:
    """A descriptor signed by `identity`, or by it as the signing key `certificate` names."""
    identity = identity or Ed25519PrivateKey.generate()
    link = Ed25519PrivateKey.generate()
    onion = X25519PrivateKey.generate()
    now = int(time.time())
    desc = Descriptor.sign(
        identity,
        certificate=certificate,
        role=role,
        epoch=epoch,
        valid_from=now,
        expires=now + 3600,
        link_public=link.public_key().public_bytes_raw(),
        onion_public=onion.public_key().public_bytes_raw(),
    )
    return desc, link


def certified_credentials(
    role: int, offline_identity: Ed25519PrivateKey, lifetime: float = 3600
) -> tuple[Descriptor, Ed25519PrivateKey]:
    """Credentials of a node whose identity key stays offline: a fresh signing key,
    certified by `offline_identity` for `lifetime` seconds, signs the descriptor."""
    signing = Ed25519PrivateKey.generate()
    certificate = SigningCertificate.issue(
        offline_identity,
        signing.public_key().public_bytes_raw(),
        int(time.time() + lifetime),
    )
    return credentials(role, identity=signing, certificate=certificate)
