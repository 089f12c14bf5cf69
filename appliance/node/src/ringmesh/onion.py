"""Sphinx-style onion packets: fixed header slots, one X25519 KEM per hop, LIONESS payload layers.

Packet: alpha (32) | gamma (16) | beta (MAX_HOPS * SLOT_LEN) | payload (PAYLOAD_LEN).
alpha is the hop's ephemeral X25519 public key; gamma is the hop's MAC over beta; beta holds
one encrypted routing slot per remaining hop, shifted by one slot at every hop and refilled
with keystream, so every hop sees the same length and cannot tell its position. A slot is
command (1) | delay (4, microseconds, chosen by the sender) | id (16) | next alpha (32) |
next gamma (16); a DELIVER or DROP slot carries a reply-block id (16) where a FORWARD slot
has the next alpha. Each hop decrypts the payload with LIONESS under its own key, so a bit
changed at one hop turns the whole payload into noise at the next (no tagging).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct
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
    DELAY_LEN,
    GAMMA_LEN,
    HEADER_LEN,
    MAX_HOP_DELAY_US,
    MAX_HOPS,
    NODE_ID_LEN,
    ONION_LEN,
    PAYLOAD_LEN,
    SLOT_LEN,
    SURB_ID_LEN,
)

_PERSON = b"ringmesh-sphx-v2"
_ZERO_SLOT = bytes(SLOT_LEN)
_STREAM_LEN = BETA_LEN + SLOT_LEN
_DELAY = struct.Struct("!I")
_ID_AT = 1 + DELAY_LEN  # offset of the id in a decrypted slot
_REST_AT = _ID_AT + NODE_ID_LEN  # next alpha (FORWARD) or reply-block id (DELIVER, DROP)


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
    delay_us: int = 0  # how long this hop holds the packet, chosen by the sender


@dataclass(frozen=True)
class Header:
    """A header built by the sender; for a reply block the payload keys stay with the sender."""

    first_hop: bytes
    data: bytes
    payload_keys: tuple[LionessKey, ...]  # one per hop, in path order


def hop_delay_us(rng: random.Random, mean_ms: float) -> int:
    """A Loopix per-hop delay: exponential with the given mean, capped at what relays accept."""
    if mean_ms <= 0:
        return 0
    return min(int(rng.expovariate(1000.0 / mean_ms) * 1e6), MAX_HOP_DELAY_US)


def _slot(cmd: int, delay_us: int, ident: bytes, rest: bytes) -> bytes:
    if not 0 <= delay_us <= MAX_HOP_DELAY_US:
        raise OnionError(f"a hop delay must be 0..{MAX_HOP_DELAY_US} microseconds")
    return bytes([cmd]) + _DELAY.pack(delay_us) + ident + rest


def build_header(
    hops: list[Hop], final_cmd: int, final_id: bytes, surb_id: bytes | None = None
) -> Header:
    """final_id: the mailbox (DELIVER) or anything (DROP); surb_id: what the last hop hands
    over with the payload, so the owner of a reply block finds its keys (random if None)."""
    n = len(hops)
    if not 1 <= n <= MAX_HOPS:
        raise OnionError(f"path must have 1..{MAX_HOPS} hops")
    if final_cmd not in (CMD_DELIVER, CMD_DROP) or len(final_id) != NODE_ID_LEN:
        raise OnionError("bad final command")
    surb_id = os.urandom(SURB_ID_LEN) if surb_id is None else surb_id
    if len(surb_id) != SURB_ID_LEN:
        raise OnionError("bad reply-block id")
    ephemerals = [X25519PrivateKey.generate() for _ in hops]
    alphas = [e.public_key().public_bytes_raw() for e in ephemerals]
    keys = [derive_hop_keys(e.exchange(h.onion_key)) for e, h in zip(ephemerals, hops, strict=True)]
    streams = [keystream_xor(k.stream, bytes(_STREAM_LEN)) for k in keys]

    filler = b""
    for i in range(n - 1):
        padded = filler + _ZERO_SLOT
        filler = _xor(padded, streams[i][_STREAM_LEN - len(padded) :])

    rest = surb_id + os.urandom(ALPHA_LEN + GAMMA_LEN - SURB_ID_LEN)
    last_slot = _slot(final_cmd, hops[-1].delay_us, final_id, rest)
    body = last_slot + os.urandom(BETA_LEN - SLOT_LEN - len(filler))
    beta = _xor(body, streams[n - 1][: len(body)]) + filler
    gamma = _mac(keys[n - 1].mac, beta)
    for i in range(n - 2, -1, -1):
        slot = _slot(CMD_FORWARD, hops[i].delay_us, hops[i + 1].node_id, alphas[i + 1] + gamma)
        beta = _xor(slot + beta[: BETA_LEN - SLOT_LEN], streams[i][:BETA_LEN])
        gamma = _mac(keys[i].mac, beta)
    return Header(hops[0].node_id, alphas[0] + gamma + beta, tuple(k.payload for k in keys))


def build_packet(
    hops: list[Hop], final_cmd: int, final_id: bytes, payload: bytes, surb_id: bytes | None = None
) -> tuple[bytes, bytes]:
    """Returns (first hop node id, packet)."""
    if len(payload) != PAYLOAD_LEN:
        raise OnionError("payload has the wrong length")
    header = build_header(hops, final_cmd, final_id, surb_id)
    return header.first_hop, header.data + wrap_payload(header.payload_keys, payload)


def wrap_payload(payload_keys: tuple[LionessKey, ...], payload: bytes) -> bytes:
    """Encrypt under every hop's key, last hop first: each hop then decrypts one layer.

    For a reply block the same call undoes what the hops did to the replier's payload.
    """
    for key in reversed(payload_keys):
        payload = lioness.encrypt(key, payload)
    return payload


class Unwrapped(NamedTuple):
    cmd: int
    delay_us: int
    next_id: bytes  # next relay's id (FORWARD), mailbox id (DELIVER), unused (DROP)
    surb_id: bytes  # DELIVER and DROP: the reply-block id for the recipient; else empty
    packet: bytes  # FORWARD: the packet for the next hop; otherwise the bare payload


def peel(shared: bytes, packet: bytes) -> tuple[HopKeys, Unwrapped]:
    """Remove one layer. `shared` is X25519(onion key, alpha). Raises OnionError."""
    if len(packet) != ONION_LEN:
        raise OnionError(f"an onion packet is {ONION_LEN} bytes")
    keys = derive_hop_keys(shared)
    beta = packet[ALPHA_LEN + GAMMA_LEN : HEADER_LEN]
    if not hmac.compare_digest(_mac(keys.mac, beta), packet[ALPHA_LEN : ALPHA_LEN + GAMMA_LEN]):
        raise OnionError("header MAC does not verify")
    plain = keystream_xor(keys.stream, beta + _ZERO_SLOT)
    cmd = plain[0]
    (delay_us,) = _DELAY.unpack_from(plain, 1)
    next_id = plain[_ID_AT:_REST_AT]
    if cmd not in (CMD_FORWARD, CMD_DELIVER, CMD_DROP):
        raise OnionError("unknown routing command")
    payload = lioness.decrypt(keys.payload, packet[HEADER_LEN:])
    if cmd == CMD_FORWARD:
        # next alpha, next gamma and the shifted beta are contiguous in `plain`.
        return keys, Unwrapped(cmd, delay_us, next_id, b"", plain[_REST_AT:] + payload)
    surb_id = plain[_REST_AT : _REST_AT + SURB_ID_LEN]
    return keys, Unwrapped(cmd, delay_us, next_id, surb_id, payload)


def split_alpha(packet: bytes) -> bytes:
    if len(packet) != ONION_LEN:
        raise OnionError("packet has the wrong length")
    return packet[:ALPHA_LEN]
