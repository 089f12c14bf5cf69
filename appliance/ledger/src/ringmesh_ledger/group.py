"""ristretto255 through libsodium (rbcl): scalars as Python ints mod L, points as 32-byte encodings.

libsodium's API decodes and encodes a point on every call, so a multi-scalar multiplication
is one scalar multiplication per term plus additions; terms that share a point are merged
first, which is what makes batch verification cheap (the Bulletproofs generators are shared
by every proof in a batch).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from functools import lru_cache

from . import libsodium

libsodium.provide()

import rbcl  # noqa: E402  (after libsodium.provide(): see libsodium.py)

L = 2**252 + 27742317777372353535851937790883648493
"""Order of the ristretto255 group."""

IDENTITY = bytes(32)
DOMAIN = b"ringmesh-ledger-v1/"

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_INVSQRT_A_MINUS_D = 54469307008909316920995813868745141605393597292927456921205312896311721017578


class PointError(ValueError):
    """Bytes that are not the canonical encoding of a ristretto255 point."""


def scalar_bytes(s: int) -> bytes:
    return (s % L).to_bytes(32, "little")


def scalar_from_bytes(data: bytes) -> int:
    """A canonical scalar (< L); anything else is refused so encodings stay unique."""
    if len(data) != 32:
        raise ValueError("scalar must be 32 bytes")
    value = int.from_bytes(data, "little")
    if value >= L:
        raise ValueError("scalar is not reduced modulo the group order")
    return value


def random_scalar() -> int:
    return int.from_bytes(secrets.token_bytes(64), "little") % L


def hash_to_scalar(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=64)
    for part in parts:
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little") % L


def inv(s: int) -> int:
    return pow(s, L - 2, L)


def check_point(data: bytes) -> bytes:
    if len(data) != 32 or not rbcl.crypto_core_ristretto255_is_valid_point(data):
        raise PointError("not a valid ristretto255 point encoding")
    return data


def hash_to_point(label: bytes) -> bytes:
    return bytes(rbcl.crypto_core_ristretto255_from_hash(hashlib.sha512(DOMAIN + label).digest()))


def add(p: bytes, q: bytes) -> bytes:
    return bytes(rbcl.crypto_core_ristretto255_add(p, q))


def sub(p: bytes, q: bytes) -> bytes:
    return bytes(rbcl.crypto_core_ristretto255_sub(p, q))


def mul(s: int, p: bytes) -> bytes:
    s %= L
    if s == 0 or p == IDENTITY:
        return IDENTITY
    return bytes(rbcl.crypto_scalarmult_ristretto255(s.to_bytes(32, "little"), p))


def base_mul(s: int) -> bytes:
    s %= L
    if s == 0:
        return IDENTITY
    return bytes(rbcl.crypto_scalarmult_ristretto255_base(s.to_bytes(32, "little")))


def msm(terms: Iterable[tuple[int, bytes]]) -> bytes:
    """sum(s * P) with the scalars of equal points merged before any point arithmetic."""
    merged: dict[bytes, int] = {}
    for s, p in terms:
        merged[p] = (merged.get(p, 0) + s) % L
    total = IDENTITY
    for p, s in merged.items():
        if s:
            total = add(total, base_mul(s) if p == G else mul(s, p))
    return total


G = base_mul(1)
"""Blinding generator (the ristretto255 base point, so Ed25519 public keys are ElGamal keys)."""
H = hash_to_point(b"pedersen-value")
"""Value generator of Pedersen commitments."""


@lru_cache(maxsize=8)
def bulletproof_generators(count: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    gs = tuple(hash_to_point(b"bulletproofs-G" + i.to_bytes(4, "little")) for i in range(count))
    hs = tuple(hash_to_point(b"bulletproofs-H" + i.to_bytes(4, "little")) for i in range(count))
    return gs, hs


def commit(value: int, blinding: int) -> bytes:
    """Pedersen commitment value*H + blinding*G."""
    return add(mul(value, H), base_mul(blinding))


def _sqrt_ratio_m1(u: int, v: int) -> tuple[bool, int]:
    """RFC 9496 section 4.2: (u/v is square, a non-negative square root of u/v or i*u/v)."""
    r = (u * pow(v, 3, _P)) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    check = v * r * r % _P
    correct = check == u % _P
    flipped = check == (-u) % _P
    flipped_i = check == (-u * _SQRT_M1) % _P
    if flipped or flipped_i:
        r = r * _SQRT_M1 % _P
    if r & 1:
        r = _P - r
    return correct or flipped, r


def ed25519_public_to_point(public_raw: bytes) -> bytes:
    """The ristretto255 encoding of an Ed25519 public key (RFC 8032 decode, RFC 9496 encode).

    An Ed25519 key made honestly is a multiple of the base point, so the same secret scalar
    that signs for a did:key decrypts twisted-ElGamal ciphertexts made to it.
    """
    if len(public_raw) != 32:
        raise PointError("Ed25519 public key must be 32 bytes")
    y = int.from_bytes(public_raw, "little") & ((1 << 255) - 1)
    sign = public_raw[31] >> 7
    if y >= _P:
        raise PointError("Ed25519 public key is not canonical")
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    square, x = _sqrt_ratio_m1(u, v)
    if not square or (x == 0 and sign):
        raise PointError("Ed25519 public key is not a curve point")
    if (x & 1) != sign:
        x = _P - x
    # Extended coordinates with Z = 1, then the ristretto255 encoding (RFC 9496 4.3.2).
    x0, y0, z0, t0 = x, y, 1, x * y % _P
    u1 = (z0 + y0) * (z0 - y0) % _P
    u2 = x0 * y0 % _P
    _, invsqrt = _sqrt_ratio_m1(1, u1 * u2 * u2 % _P)
    den1 = invsqrt * u1 % _P
    den2 = invsqrt * u2 % _P
    z_inv = den1 * den2 * t0 % _P
    rotate = (t0 * z_inv % _P) & 1
    if rotate:
        x0, y0 = y0 * _SQRT_M1 % _P, x0 * _SQRT_M1 % _P
        den_inv = den1 * _INVSQRT_A_MINUS_D % _P
    else:
        den_inv = den2
    if (x0 * z_inv % _P) & 1:
        y0 = _P - y0
    s = den_inv * (z0 - y0) % _P
    if s & 1:
        s = _P - s
    return check_point(s.to_bytes(32, "little"))
