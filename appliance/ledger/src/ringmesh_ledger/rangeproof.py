"""Aggregated Bulletproofs range proofs (Bünz et al. 2018), shaped after the dalek notes.

One proof shows that each of m Pedersen commitments V_j = v_j*H + gamma_j*G holds a value in
[0, 2^64). The verifier's two checks (the polynomial t(x) and the inner-product argument)
become one list of (scalar, point) terms whose sum must be the identity; terms from several
proofs add up into one multi-scalar multiplication, each proof under its own random weight.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from . import group
from .group import IDENTITY, G, H, L, inv, msm, random_scalar
from .transcript import Transcript

BITS = 64
MAX_AGGREGATION = 16


class RangeProofError(ValueError):
    """A proof whose shape does not fit its statement."""


@dataclass(frozen=True)
class RangeProof:
    A: bytes
    S: bytes
    T1: bytes
    T2: bytes
    t_x: int
    t_x_blinding: int
    e_blinding: int
    L_vec: tuple[bytes, ...]
    R_vec: tuple[bytes, ...]
    a: int
    b: int


def padded_size(count: int) -> int:
    """Proofs aggregate a power of two of values; the rest are commitments to 0 with blinding 0."""
    if not 1 <= count <= MAX_AGGREGATION:
        raise RangeProofError(f"can aggregate 1..{MAX_AGGREGATION} values, got {count}")
    m = 1
    while m < count:
        m *= 2
    return m


def _generators(size: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    gs, hs = group.bulletproof_generators(BITS * MAX_AGGREGATION)
    return gs[:size], hs[:size]


def _powers(base: int, count: int) -> list[int]:
    out = [1] * count
    for i in range(1, count):
        out[i] = out[i - 1] * base % L
    return out


def _inner(a: list[int], b: list[int]) -> int:
    return sum(x * y for x, y in zip(a, b, strict=True)) % L


def _start(transcript: Transcript, commitments: list[bytes], m: int) -> None:
    transcript.append_u64(b"rangeproof-n", BITS)
    transcript.append_u64(b"rangeproof-m", m)
    for v in commitments:
        transcript.append(b"V", v)


def prove(transcript: Transcript, values: list[int], blindings: list[int]) -> RangeProof:
    if len(values) != len(blindings):
        raise RangeProofError("one blinding per value")
    for v in values:
        if not 0 <= v < 2**BITS:
            raise RangeProofError("value out of range")
    m = padded_size(len(values))
    values = values + [0] * (m - len(values))
    blindings = blindings + [0] * (m - len(blindings))
    n = BITS * m
    gs, hs = _generators(n)
    commitments = [group.commit(v, g) for v, g in zip(values, blindings, strict=True)]
    _start(transcript, commitments, m)

    a_l = [(values[i // BITS] >> (i % BITS)) & 1 for i in range(n)]
    a_r = [(bit - 1) % L for bit in a_l]
    alpha = random_scalar()
    big_a = group.base_mul(alpha)
    for i, bit in enumerate(a_l):
        big_a = group.add(big_a, gs[i]) if bit else group.sub(big_a, hs[i])
    s_l = [random_scalar() for _ in range(n)]
    s_r = [random_scalar() for _ in range(n)]
    rho = random_scalar()
    big_s = msm([(rho, G), *zip(s_l, gs, strict=True), *zip(s_r, hs, strict=True)])
    transcript.append(b"A", big_a)
    transcript.append(b"S", big_s)
    y = transcript.challenge(b"y")
    z = transcript.challenge(b"z")

    y_pow = _powers(y, n)
    z_pow = _powers(z, m + 2)
    two_pow = _powers(2, BITS)
    l0 = [(x - z) % L for x in a_l]
    l1 = s_l
    r0 = [
        (y_pow[i] * (a_r[i] + z) + z_pow[2 + i // BITS] * two_pow[i % BITS]) % L for i in range(n)
    ]
    r1 = [y_pow[i] * s_r[i] % L for i in range(n)]
    t1 = (_inner(l0, r1) + _inner(l1, r0)) % L
    t2 = _inner(l1, r1)
    tau1, tau2 = random_scalar(), random_scalar()
    big_t1 = group.commit(t1, tau1)
    big_t2 = group.commit(t2, tau2)
    transcript.append(b"T1", big_t1)
    transcript.append(b"T2", big_t2)
    x = transcript.challenge(b"x")

    l_vec = [(l0[i] + l1[i] * x) % L for i in range(n)]
    r_vec = [(r0[i] + r1[i] * x) % L for i in range(n)]
    t_x = _inner(l_vec, r_vec)
    t_x_blinding = (tau2 * x * x + tau1 * x) % L
    for j in range(m):
        t_x_blinding = (t_x_blinding + z_pow[2 + j] * blindings[j]) % L
    e_blinding = (alpha + rho * x) % L
    transcript.append_scalar(b"t_x", t_x)
    transcript.append_scalar(b"t_x_blinding", t_x_blinding)
    transcript.append_scalar(b"e_blinding", e_blinding)
    w = transcript.challenge(b"w")
    q = group.mul(w, H)

    y_inv_pow = _powers(inv(y), n)
    ls, rs, a, b = _inner_product_prove(transcript, q, y_inv_pow, list(gs), list(hs), l_vec, r_vec)
    return RangeProof(big_a, big_s, big_t1, big_t2, t_x, t_x_blinding, e_blinding, ls, rs, a, b)


def _inner_product_prove(
    transcript: Transcript,
    q: bytes,
    h_factors: list[int],
    gs: list[bytes],
    hs: list[bytes],
    a: list[int],
    b: list[int],
) -> tuple[tuple[bytes, ...], tuple[bytes, ...], int, int]:
    n = len(a)
    transcript.append_u64(b"ipp-n", n)
    ls: list[bytes] = []
    rs: list[bytes] = []
    # The H generators carry y^-i; they are folded into the scalars in the first round and
    # into the points from then on.
    factors = h_factors
    while n > 1:
        n //= 2
        a_lo, a_hi, b_lo, b_hi = a[:n], a[n:], b[:n], b[n:]
        c_l = _inner(a_lo, b_hi)
        c_r = _inner(a_hi, b_lo)
        big_l = msm(
            [
                *zip(a_lo, gs[n:], strict=True),
                *((b_hi[i] * factors[i] % L, hs[i]) for i in range(n)),
                (c_l, q),
            ]
        )
        big_r = msm(
            [
                *zip(a_hi, gs[:n], strict=True),
                *((b_lo[i] * factors[n + i] % L, hs[n + i]) for i in range(n)),
                (c_r, q),
            ]
        )
        ls.append(big_l)
        rs.append(big_r)
        transcript.append(b"L", big_l)
        transcript.append(b"R", big_r)
        u = transcript.challenge(b"u")
        u_inv = inv(u)
        a = [(a_lo[i] * u + u_inv * a_hi[i]) % L for i in range(n)]
        b = [(b_lo[i] * u_inv + u * b_hi[i]) % L for i in range(n)]
        if n > 1:
            gs = [msm([(u_inv, gs[i]), (u, gs[n + i])]) for i in range(n)]
            hs = [
                msm([(u * factors[i], hs[i]), (u_inv * factors[n + i], hs[n + i])])
                for i in range(n)
            ]
        else:
            gs, hs = gs[:1], hs[:1]
        factors = [1] * n
    return tuple(ls), tuple(rs), a[0], b[0]


def verification_terms(
    transcript: Transcript, commitments: list[bytes], proof: RangeProof, weight: int
) -> list[tuple[int, bytes]]:
    """Terms whose sum is the identity exactly when the proof verifies (for a random weight)."""
    m = padded_size(len(commitments))
    n = BITS * m
    rounds = n.bit_length() - 1
    if len(proof.L_vec) != rounds or len(proof.R_vec) != rounds:
        raise RangeProofError(f"expected {rounds} inner-product rounds")
    commitments = commitments + [IDENTITY] * (m - len(commitments))
    gs, hs = _generators(n)
    _start(transcript, commitments, m)
    transcript.append(b"A", proof.A)
    transcript.append(b"S", proof.S)
    y = transcript.challenge(b"y")
    z = transcript.challenge(b"z")
    transcript.append(b"T1", proof.T1)
    transcript.append(b"T2", proof.T2)
    x = transcript.challenge(b"x")
    transcript.append_scalar(b"t_x", proof.t_x)
    transcript.append_scalar(b"t_x_blinding", proof.t_x_blinding)
    transcript.append_scalar(b"e_blinding", proof.e_blinding)
    w = transcript.challenge(b"w")
    transcript.append_u64(b"ipp-n", n)
    us = []
    for big_l, big_r in zip(proof.L_vec, proof.R_vec, strict=True):
        transcript.append(b"L", big_l)
        transcript.append(b"R", big_r)
        us.append(transcript.challenge(b"u"))

    # s_i = prod_k u_k^(+1 or -1) by the bits of i, built by doubling (dalek's method).
    u_sq = [u * u % L for u in us]
    u_inv = [inv(u) for u in us]
    all_inv = 1
    for ui in u_inv:
        all_inv = all_inv * ui % L
    s = [all_inv] * n
    for i in range(1, n):
        lg = i.bit_length() - 1
        s[i] = s[i - (1 << lg)] * u_sq[rounds - 1 - lg] % L

    c = random_scalar()
    a, b = proof.a, proof.b
    z_sq = z * z % L
    y_inv = inv(y)
    y_inv_pow = 1
    z_pow = _powers(z, m + 3)
    two_pow = _powers(2, BITS)
    terms: list[tuple[int, bytes]] = []
    for i in range(n):
        j, k = divmod(i, BITS)
        terms.append((weight * (-z - a * s[i]), gs[i]))
        h_scalar = z + y_inv_pow * (z_sq * z_pow[j] * two_pow[k] - b * s[n - 1 - i])
        terms.append((weight * h_scalar, hs[i]))
        y_inv_pow = y_inv_pow * y_inv % L
    sum_y = (pow(y, n, L) - 1) * inv(y - 1) % L if y != 1 else n
    delta = ((z - z_sq) * sum_y - sum(z_pow[j + 3] for j in range(m)) * (2**BITS - 1)) % L
    terms += [
        (weight, proof.A),
        (weight * x, proof.S),
        (weight * c * x, proof.T1),
        (weight * c * x * x, proof.T2),
        (weight * (-proof.e_blinding - c * proof.t_x_blinding), G),
        (weight * (w * (proof.t_x - a * b) + c * (delta - proof.t_x)), H),
    ]
    terms += [(weight * u2, lp) for u2, lp in zip(u_sq, proof.L_vec, strict=True)]
    terms += [(weight * ui * ui, rp) for ui, rp in zip(u_inv, proof.R_vec, strict=True)]
    terms += [(weight * c * z_sq * z_pow[j], v) for j, v in enumerate(commitments)]
    return terms


def verify(transcript: Transcript, commitments: list[bytes], proof: RangeProof) -> bool:
    try:
        terms = verification_terms(transcript, commitments, proof, random_weight())
    except RangeProofError:
        return False
    return msm(terms) == IDENTITY


def random_weight() -> int:
    """A non-zero random scalar that keeps one proof's terms from cancelling another's."""
    return secrets.randbelow(L - 1) + 1
