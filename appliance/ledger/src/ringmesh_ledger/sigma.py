"""Twisted ElGamal on ristretto255 and the Sigma proofs around it (PGC, Chen et al. 2019).

A coin's value v is encrypted to an owner key pk = sk*G as (D, C) = (r*pk, v*H + r*G): C is an
ordinary Pedersen commitment (so range and balance proofs work on it) and the owner recovers
v*H = C - sk^-1*D, then v by baby-step giant-step. The sender proves the ciphertext is
well formed (`ValidityProof`); a spender proves a transaction creates no value with an
`ExcessProof`, which needs the input owners' keys instead of the input blindings, which only
the senders know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from . import group
from .group import IDENTITY, G, H, L, inv, msm, random_scalar
from .transcript import Transcript

DECRYPT_BITS = 32
"""Values below 2^32 are what the owner's decryption recovers (baby-step giant-step)."""
_BABY_BITS = 16


@dataclass(frozen=True)
class ElGamalCommitment:
    """Twisted ElGamal ciphertext: handle D = r*pk, commitment C = v*H + r*G."""

    handle: bytes
    commitment: bytes


def encrypt(value: int, public: bytes, blinding: int) -> ElGamalCommitment:
    return ElGamalCommitment(group.mul(blinding, public), group.commit(value, blinding))


def decrypt_to_point(secret: int, ciphertext: ElGamalCommitment) -> bytes:
    """v*H for the owner's secret scalar."""
    return group.sub(ciphertext.commitment, group.mul(inv(secret), ciphertext.handle))


@lru_cache(maxsize=1)
def _baby_steps() -> dict[bytes, int]:
    table: dict[bytes, int] = {}
    point = IDENTITY
    for j in range(1 << _BABY_BITS):
        table[point] = j
        point = group.add(point, H)
    return table


def discrete_log(value_point: bytes, bits: int = DECRYPT_BITS) -> int | None:
    """v with v*H == value_point and 0 <= v < 2^bits, or None (baby-step giant-step)."""
    table = _baby_steps()
    giant = group.mul(1 << _BABY_BITS, H)
    point = value_point
    for i in range(1 << max(0, bits - _BABY_BITS)):
        j = table.get(point)
        if j is not None:
            return (i << _BABY_BITS) + j
        point = group.sub(point, giant)
    return None


def decrypt(secret: int, ciphertext: ElGamalCommitment, bits: int = DECRYPT_BITS) -> int | None:
    return discrete_log(decrypt_to_point(secret, ciphertext), bits)


@dataclass(frozen=True)
class ValidityProof:
    """Knowledge of (v, r) with C = v*H + r*G and D = r*pk."""

    commitment_nonce: bytes
    handle_nonce: bytes
    value_response: int
    blinding_response: int


def _validity_transcript(transcript: Transcript, public: bytes, ct: ElGamalCommitment) -> None:
    transcript.append(b"validity-pk", public)
    transcript.append(b"validity-D", ct.handle)
    transcript.append(b"validity-C", ct.commitment)


def prove_validity(
    transcript: Transcript, public: bytes, ct: ElGamalCommitment, value: int, blinding: int
) -> ValidityProof:
    _validity_transcript(transcript, public, ct)
    k_v, k_r = random_scalar(), random_scalar()
    r1 = group.commit(k_v, k_r)
    r2 = group.mul(k_r, public)
    transcript.append(b"validity-R1", r1)
    transcript.append(b"validity-R2", r2)
    c = transcript.challenge(b"validity-c")
    return ValidityProof(r1, r2, (k_v + c * value) % L, (k_r + c * blinding) % L)


def validity_terms(
    transcript: Transcript, public: bytes, ct: ElGamalCommitment, proof: ValidityProof, weight: int
) -> list[tuple[int, bytes]]:
    _validity_transcript(transcript, public, ct)
    transcript.append(b"validity-R1", proof.commitment_nonce)
    transcript.append(b"validity-R2", proof.handle_nonce)
    c = transcript.challenge(b"validity-c")
    # Two equations; the second gets weight^2 so they cannot cancel each other.
    w2 = weight * weight % L
    return [
        (weight * proof.value_response, H),
        (weight * proof.blinding_response, G),
        (-weight, proof.commitment_nonce),
        (-weight * c, ct.commitment),
        (w2 * proof.blinding_response, public),
        (-w2, proof.handle_nonce),
        (-w2 * c, ct.handle),
    ]


@dataclass(frozen=True)
class ExcessStatement:
    """E = sum(x_o * D_o) + y*G with x_o*pk_o = G: E commits to zero.

    `excess` is given as (scalar, point) terms (1 for inputs, -1 for outputs, the public
    issuance and -fee on H) so a verifier can put it straight into a batch; `owners` pairs
    each input owner's key with the sum of the handles of the coins it spends.
    """

    excess: tuple[tuple[int, bytes], ...]
    owners: tuple[tuple[bytes, bytes], ...]

    def excess_point(self) -> bytes:
        return msm(self.excess)


@dataclass(frozen=True)
class ExcessProof:
    nonce: bytes
    owner_nonces: tuple[bytes, ...]
    owner_responses: tuple[int, ...]
    blinding_response: int


def _excess_transcript(transcript: Transcript, label: bytes, st: ExcessStatement) -> None:
    transcript.append(b"excess", label)
    for scalar, point in st.excess:
        transcript.append(b"excess-term", group.scalar_bytes(scalar) + point)
    for public, handles in st.owners:
        transcript.append(b"excess-owner", public + handles)


def prove_excess(
    transcript: Transcript,
    label: bytes,
    st: ExcessStatement,
    owner_secrets: Sequence[int],
    blinding: int,
) -> ExcessProof:
    if len(owner_secrets) != len(st.owners):
        raise ValueError("one secret per owner")
    _excess_transcript(transcript, label, st)
    ks = [random_scalar() for _ in st.owners]
    k_y = random_scalar()
    owners = st.owners
    nonce = msm([(k_y, G), *((k, handles) for k, (_, handles) in zip(ks, owners, strict=True))])
    owner_nonces = tuple(group.mul(k, public) for k, (public, _) in zip(ks, st.owners, strict=True))
    transcript.append(b"excess-K", nonce)
    for n in owner_nonces:
        transcript.append(b"excess-Ko", n)
    c = transcript.challenge(b"excess-c")
    xs = [inv(sk) for sk in owner_secrets]
    return ExcessProof(
        nonce,
        owner_nonces,
        tuple((k + c * x) % L for k, x in zip(ks, xs, strict=True)),
        (k_y + c * blinding) % L,
    )


def excess_terms(
    transcript: Transcript, label: bytes, st: ExcessStatement, proof: ExcessProof, weight: int
) -> list[tuple[int, bytes]]:
    if len(proof.owner_nonces) != len(st.owners) or len(proof.owner_responses) != len(st.owners):
        raise ValueError("one response per input owner")
    _excess_transcript(transcript, label, st)
    transcript.append(b"excess-K", proof.nonce)
    for n in proof.owner_nonces:
        transcript.append(b"excess-Ko", n)
    c = transcript.challenge(b"excess-c")
    terms: list[tuple[int, bytes]] = [(weight * proof.blinding_response, G), (-weight, proof.nonce)]
    terms += [(-weight * c * scalar, point) for scalar, point in st.excess]
    w = weight
    for (public, handles), response, owner_nonce in zip(
        st.owners, proof.owner_responses, proof.owner_nonces, strict=True
    ):
        terms.append((weight * response, handles))
        # Each x_o*pk_o = G check under its own power of the weight.
        w = w * weight % L
        terms += [(w * response, public), (-w, owner_nonce), (-w * c, G)]
    return terms
