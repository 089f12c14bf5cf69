"""Sphinx-style onion packets: fixed header slots, one X25519 KEM per hop, layered streams.

Packet: alpha (32) | gamma (16) | beta (MAX_HOPS * SLOT_LEN) | payload (PAYLOAD_LEN).
alpha is the hop's ephemeral X25519 public key; gamma is the hop's MAC over beta; beta holds
one encrypted routing slot per remaining hop (command, next id, next alpha, next gamma),
shifted by one slot at every hop and refilled with keystream, so every hop sees the same
length and cannot tell its position. Each hop decrypts the payload with LIONESS under its own
key, so a bit changed at one hop turns the whole payload into noise at the next (no tagging).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import lioness
from .lioness import LionessKey
from .primitives import keystream_xor
from .wire import (
    ALPHA_LEN,
    BETA_LEN,
    CMD_DELIVER,
    CMD_DROP,
    CMD_FORWARD,
    GAMMA_LEN,
    HEADER_LEN,
    MAX_HOPS,
    NODE_ID_LEN,
    ONION_LEN,
    PAYLOAD_LEN,
    SLOT_LEN,
)

_PERSON = b"ringmesh-sphx-v2"
_ZERO_SLOT = bytes(SLOT_LEN)
_STREAM_LEN = BETA_LEN + SLOT_LEN


class OnionError(ValueError):
    """A packet failed to unwrap (bad length, bad MAC, bad command)."""


class HopKeys(NamedTuple):
    """stream: ChaCha20 key whose keystream covers beta and one fresh slot."""

    stream: bytes
    mac: bytes
    tag: bytes
    payload: LionessKey


def derive_hop_keys(shared: bytes) -> HopKeys:
    # BLAKE2b keyed by the X25519 output is the KDF: four C calls on the hot path
    # (HKDF objects cost ~10x more per packet in Python).
    blake2b = hashlib.blake2b
    header = blake2b(b"header", key=shared, person=_PERSON).digest()
    payload = (
        blake2b(b"payload-1", key=shared, person=_PERSON).digest()
        + blake2b(b"payload-2", key=shared, person=_PERSON).digest()
    )
    tag = blake2b(b"replay", key=shared, person=_PERSON, digest_size=16).digest()
    return HopKeys(header[:32], header[32:], tag, LionessKey.from_bytes(payload))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=GAMMA_LEN).digest()


@dataclass(frozen=True)
class Hop:
    node_id: bytes
    onion_key: X25519PublicKey


@dataclass(frozen=True)
class Header:
    """A header built by the sender; for a reply block the payload streams stay with the sender."""

    first_hop: bytes
    data: bytes
    payload_keys: tuple[LionessKey, ...]  # one per hop, in path order


def build_header(hops: list[Hop], final_cmd: int, final_id: bytes) -> Header:
    n = len(hops)
    if not 1 <= n <= MAX_HOPS:
        raise OnionError(f"path must have 1..{MAX_HOPS} hops")
    if final_cmd not in (CMD_DELIVER, CMD_DROP) or len(final_id) != NODE_ID_LEN:
        raise OnionError("bad final command")
    ephemerals = [X25519PrivateKey.generate() for _ in hops]
    alphas = [e.public_key().public_bytes_raw() for e in ephemerals]
    keys = [derive_hop_keys(e.exchange(h.onion_key)) for e, h in zip(ephemerals, hops, strict=True)]
    streams = [keystream_xor(k.stream, bytes(_STREAM_LEN)) for k in keys]

    filler = b""
    for i in range(n - 1):
        padded = filler + _ZERO_SLOT
        filler = _xor(padded, streams[i][_STREAM_LEN - len(padded) :])

    last_slot = bytes([final_cmd]) + final_id + os.urandom(ALPHA_LEN + GAMMA_LEN)
    body = last_slot + os.urandom(BETA_LEN - SLOT_LEN - len(filler))
    beta = _xor(body, streams[n - 1][: len(body)]) + filler
    gamma = _mac(keys[n - 1].mac, beta)
    for i in range(n - 2, -1, -1):
        slot = bytes([CMD_FORWARD]) + hops[i + 1].node_id + alphas[i + 1] + gamma
        beta = _xor(slot + beta[: BETA_LEN - SLOT_LEN], streams[i][:BETA_LEN])
        gamma = _mac(keys[i].mac, beta)
    return Header(hops[0].node_id, alphas[0] + gamma + beta, tuple(k.payload for k in keys))


def build_packet(
    hops: list[Hop], final_cmd: int, final_id: bytes, payload: bytes
) -> tuple[bytes, bytes]:
    """Returns (first hop node id, packet)."""
    if len(payload) != PAYLOAD_LEN:
        raise OnionError("payload has the wrong length")
    header = build_header(hops, final_cmd, final_id)
    return header.first_hop, header.data + wrap_payload(header.payload_keys, payload)


def wrap_payload(payload_keys: tuple[LionessKey, ...], payload: bytes) -> bytes:
    """Encrypt under every hop's key, last hop first: each hop then decrypts one layer.

    For a reply header the same call undoes what the hops did to the replier's payload.
    """
    for key in reversed(payload_keys):
        payload = lioness.encrypt(key, payload)
    return payload


class Unwrapped(NamedTuple):
    cmd: int
    next_id: bytes  # next relay's id (FORWARD), mailbox id (DELIVER), unused (DROP)
    packet: bytes  # FORWARD: the packet for the next hop; otherwise the bare payload


def peel(shared: bytes, packet: bytes) -> tuple[HopKeys, Unwrapped]:
    """Remove one layer. `shared` is X25519(onion key, alpha). Raises OnionError."""
    keys = derive_hop_keys(shared)
    beta = packet[ALPHA_LEN + GAMMA_LEN : HEADER_LEN]
    if not hmac.compare_digest(_mac(keys.mac, beta), packet[ALPHA_LEN : ALPHA_LEN + GAMMA_LEN]):
        raise OnionError("header MAC does not verify")
    plain = keystream_xor(keys.stream, beta + _ZERO_SLOT)
    cmd = plain[0]
    next_id = plain[1 : 1 + NODE_ID_LEN]
    if cmd not in (CMD_FORWARD, CMD_DELIVER, CMD_DROP):
        raise OnionError("unknown routing command")
    payload = lioness.decrypt(keys.payload, packet[HEADER_LEN:])
    if cmd == CMD_FORWARD:
        # next alpha, next gamma and the shifted beta are contiguous in `plain`.
        return keys, Unwrapped(cmd, next_id, plain[1 + NODE_ID_LEN :] + payload)
    return keys, Unwrapped(cmd, next_id, payload)


def split_alpha(packet: bytes) -> bytes:
    if len(packet) != ONION_LEN:
        raise OnionError("packet has the wrong length")
    return packet[:ALPHA_LEN]
