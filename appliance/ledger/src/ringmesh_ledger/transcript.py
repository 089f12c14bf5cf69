"""A Merlin-style Fiat-Shamir transcript over BLAKE2b.

Like Merlin (which runs STROBE over Keccak) every message is framed with its label and length
and every challenge depends on everything appended before it; it is not byte-compatible with
Merlin. Proofs start from a transcript that already holds the digest of the transaction body,
so a proof is bound to every public input of the transaction it sits in.
"""

from __future__ import annotations

import hashlib

from .group import L, scalar_bytes


class Transcript:
    def __init__(self, label: bytes) -> None:
        self._state = hashlib.blake2b(b"ringmesh-ledger-transcript-v1", digest_size=64).digest()
        self.append(b"dom-sep", label)

    def append(self, label: bytes, message: bytes) -> None:
        h = hashlib.blake2b(self._state, digest_size=64)
        for part in (b"A", label, message):
            h.update(len(part).to_bytes(4, "little"))
            h.update(part)
        self._state = h.digest()

    def append_u64(self, label: bytes, value: int) -> None:
        self.append(label, value.to_bytes(8, "little"))

    def append_scalar(self, label: bytes, value: int) -> None:
        self.append(label, scalar_bytes(value))

    def challenge(self, label: bytes) -> int:
        h = hashlib.blake2b(self._state, digest_size=64)
        h.update(b"C")
        h.update(len(label).to_bytes(4, "little"))
        h.update(label)
        out = h.digest()
        self._state = hashlib.blake2b(self._state + b"R" + out, digest_size=64).digest()
        challenge = int.from_bytes(out, "little") % L
        # A zero challenge would make inverses undefined; the chance is 2^-252.
        return challenge or 1
