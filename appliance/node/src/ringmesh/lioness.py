"""LIONESS wide-block cipher over ChaCha20 and BLAKE2b (Anderson and Biham, "BEAR and LION").

The Sphinx paper encrypts each hop's payload layer with LIONESS so that a change anywhere
in the block turns the whole block into noise at the next decryption: a relay that flips
payload bits cannot have a colluding later relay flip them back. Four unbalanced Feistel
rounds over a block split into L (32 bytes) and R (the rest), with independent round keys:

    R ^= ChaCha20(L ^ k1, R);  L ^= BLAKE2b(k2, R);  R ^= ChaCha20(L ^ k3, R);  L ^= BLAKE2b(k4, R)

as in Katzenpost's LIONESS-BLAKE2b-ChaCha20 (without its tweak: every key is used once).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from . import primitives

L_LEN = 32  # a ChaCha20 key and a BLAKE2b-256 digest
KEY_LEN = 4 * L_LEN


class LionessKey(NamedTuple):
    k1: int  # XORed into L before it keys ChaCha20: kept as integers for a cheap XOR
    k2: bytes
    k3: int
    k4: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> LionessKey:
        if len(raw) != KEY_LEN:
            raise ValueError(f"a LIONESS key is {KEY_LEN} bytes")
        return cls(
            int.from_bytes(raw[:32], "little"),
            raw[32:64],
            int.from_bytes(raw[64:96], "little"),
            raw[96:128],
        )

    def to_bytes(self) -> bytes:
        return self.k1.to_bytes(32, "little") + self.k2 + self.k3.to_bytes(32, "little") + self.k4


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _round_key(left: bytes, k: int) -> bytes:
    return (int.from_bytes(left, "little") ^ k).to_bytes(L_LEN, "little")


def _hash(key: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(right, key=key, digest_size=L_LEN).digest()


def encrypt(key: LionessKey, block: bytes) -> bytes:
    if len(block) <= L_LEN:
        raise ValueError(f"a LIONESS block is longer than {L_LEN} bytes")
    left, right = block[:L_LEN], block[L_LEN:]
    right = primitives.keystream_xor(_round_key(left, key.k1), right)
    left = _xor(left, _hash(key.k2, right))
    right = primitives.keystream_xor(_round_key(left, key.k3), right)
    left = _xor(left, _hash(key.k4, right))
    return left + right


def decrypt(key: LionessKey, block: bytes) -> bytes:
    if len(block) <= L_LEN:
        raise ValueError(f"a LIONESS block is longer than {L_LEN} bytes")
    left, right = block[:L_LEN], block[L_LEN:]
    left = _xor(left, _hash(key.k4, right))
    right = primitives.keystream_xor(_round_key(left, key.k3), right)
    left = _xor(left, _hash(key.k2, right))
    right = primitives.keystream_xor(_round_key(left, key.k1), right)
    return left + right
