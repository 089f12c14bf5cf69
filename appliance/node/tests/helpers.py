"""Key material for the sans-I/O tests."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ringmesh.descriptor import Descriptor


def credentials(
    role: int, epoch: int = 1, identity: Ed25519PrivateKey | None = None
) -> tuple[Descriptor, Ed25519PrivateKey]:
    identity = identity or Ed25519PrivateKey.generate()
    link = Ed25519PrivateKey.generate()
    onion = X25519PrivateKey.generate()
    now = int(time.time())
    desc = Descriptor.sign(
        identity,
        role=role,
        epoch=epoch,
        valid_from=now,
        expires=now + 3600,
        link_public=link.public_key().public_bytes_raw(),
        onion_public=onion.public_key().public_bytes_raw(),
    )
    return desc, link
