"""End-to-end layer, pure: envelopes, fragmentation/reassembly, acks, path choice.

A message is split into fragments; each fragment is sealed to the recipient with a fresh
ephemeral X25519 key (the recipient's X25519 key is derived from its did:key) and fills one
onion payload exactly. Fragment 0 also carries a reply header (a Sphinx header that routes
back to a one-off mailbox at the sender's home relay) and a one-time ack key: the recipient
acknowledges by putting an ack sealed with that key under that header.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .wire import HEADER_LEN, MAX_HOPS, PAYLOAD_LEN

ENVELOPE_PLAIN_LEN = PAYLOAD_LEN - 32 - 16
KIND_FRAGMENT = 1
MSG_ID_LEN = 16
_FRAG = struct.Struct("!B16sHHIH")
ACK_KEY_LEN = 32
REPLY_LEN = HEADER_LEN + ACK_KEY_LEN
FIRST_CHUNK = ENVELOPE_PLAIN_LEN - _FRAG.size - REPLY_LEN
OTHER_CHUNK = ENVELOPE_PLAIN_LEN - _FRAG.size
MAX_MESSAGE = 4 * 1024 * 1024
_ZERO_NONCE = bytes(12)


class EnvelopeError(ValueError):
    """Not a valid envelope or fragment for this recipient."""


# --- envelope ---------------------------------------------------------------------------------


def _envelope_key(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"ringmesh-e2e-v1" + eph + recipient).derive(
        shared
    )


def seal(recipient: X25519PublicKey, plaintext: bytes) -> bytes:
    if len(plaintext) != ENVELOPE_PLAIN_LEN:
        raise EnvelopeError("envelope plaintext has the wrong length")
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    key = _envelope_key(eph.exchange(recipient), eph_pub, recipient.public_bytes_raw())
    return eph_pub + ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, eph_pub)


def open_envelope(recipient: X25519PrivateKey, payload: bytes) -> bytes:
    if len(payload) != PAYLOAD_LEN:
        raise EnvelopeError("payload has the wrong length")
    eph_pub = payload[:32]
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _envelope_key(shared, eph_pub, recipient.public_key().public_bytes_raw())
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, payload[32:], eph_pub)
    except (ValueError, InvalidTag):
        raise EnvelopeError("payload does not open for this recipient") from None


# --- fragments --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    message_id: bytes
    index: int
    count: int
    total_len: int
    chunk: bytes
    reply: bytes | None  # reply header + ack key (fragment 0 only)


def fragment_count(length: int) -> int:
    if length <= FIRST_CHUNK:
        return 1
    return 1 + -(-(length - FIRST_CHUNK) // OTHER_CHUNK)


def split_message(message_id: bytes, body: bytes, reply: bytes) -> list[bytes]:
    """Envelope plaintexts (ENVELOPE_PLAIN_LEN each) for every fragment of body."""
    if len(body) > MAX_MESSAGE:
        raise EnvelopeError(f"message is larger than {MAX_MESSAGE} bytes")
    if len(reply) != REPLY_LEN:
        raise EnvelopeError("reply block has the wrong length")
    count = fragment_count(len(body))
    out = []
    offset = 0
    for index in range(count):
        size = FIRST_CHUNK if index == 0 else OTHER_CHUNK
        chunk = body[offset : offset + size]
        offset += len(chunk)
        head = _FRAG.pack(KIND_FRAGMENT, message_id, index, count, len(body), len(chunk))
        plain = head + (reply if index == 0 else b"") + chunk
        out.append(plain + bytes(ENVELOPE_PLAIN_LEN - len(plain)))
    return out


def parse_fragment(plain: bytes) -> Fragment:
    if len(plain) != ENVELOPE_PLAIN_LEN:
        raise EnvelopeError("fragment has the wrong length")
    kind, message_id, index, count, total, chunk_len = _FRAG.unpack_from(plain)
    if kind != KIND_FRAGMENT or count == 0 or index >= count or total > MAX_MESSAGE:
        raise EnvelopeError("bad fragment header")
    if count != fragment_count(total):
        raise EnvelopeError("fragment count does not match the length")
    o = _FRAG.size
    reply = None
    capacity = OTHER_CHUNK
    if index == 0:
        reply = plain[o : o + REPLY_LEN]
        o += REPLY_LEN
        capacity = FIRST_CHUNK
    if chunk_len > capacity:
        raise EnvelopeError("bad chunk length")
    return Fragment(message_id, index, count, total, plain[o : o + chunk_len], reply)


@dataclass
class _Partial:
    count: int
    total_len: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Complete:
    message_id: bytes
    body: bytes


class Reassembler:
    """Collects fragments (any order, duplicates ignored) into whole messages."""

    def __init__(self, ttl: float = 300.0, max_pending: int = 256) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self._partial: dict[bytes, _Partial] = {}
        self.done: dict[bytes, float] = {}  # message ids already delivered

    def add(self, frag: Fragment, now: float) -> Complete | None:
        if frag.message_id in self.done:
            return None
        partial = self._partial.get(frag.message_id)
        if partial is None:
            self.expire(now)
            if len(self._partial) >= self.max_pending:
                return None
            partial = _Partial(frag.count, frag.total_len, now)
            self._partial[frag.message_id] = partial
        if (partial.count, partial.total_len) != (frag.count, frag.total_len):
            return None
        partial.chunks.setdefault(frag.index, frag.chunk)
        if len(partial.chunks) < partial.count:
            return None
        del self._partial[frag.message_id]
        body = b"".join(partial.chunks[i] for i in range(partial.count))
        if len(body) != partial.total_len:
            return None
        self.done[frag.message_id] = now
        return Complete(frag.message_id, body)

    def expire(self, now: float) -> None:
        for mid in [m for m, p in self._partial.items() if now - p.started > self.ttl]:
            del self._partial[mid]

    @property
    def pending(self) -> int:
        return len(self._partial)


# --- acks -------------------------------------------------------------------------------------


def seal_ack(ack_key: bytes, message_id: bytes) -> bytes:
    plain = b"ACK" + message_id
    plain += bytes(PAYLOAD_LEN - 16 - len(plain))
    return ChaCha20Poly1305(ack_key).encrypt(_ZERO_NONCE, plain, b"ringmesh-ack")


def open_ack(ack_key: bytes, payload: bytes) -> bytes | None:
    try:
        plain = ChaCha20Poly1305(ack_key).decrypt(_ZERO_NONCE, payload, b"ringmesh-ack")
    except (InvalidTag, ValueError):
        return None
    if plain[:3] != b"ACK":
        return None
    return plain[3 : 3 + MSG_ID_LEN]


def new_message_id() -> bytes:
    return os.urandom(MSG_ID_LEN)


# --- paths ------------------------------------------------------------------------------------


def choose_path(
    candidates: Iterable[bytes],
    destination: bytes,
    length: int,
    failures: dict[bytes, int],
    rng: random.Random,
) -> list[bytes]:
    """length relays ending at destination, no relay twice, avoiding relays that failed.

    Among all choices of intermediates, picks at random one with the fewest recorded failures.
    """
    pool = [c for c in dict.fromkeys(candidates) if c != destination]
    rng.shuffle(pool)
    pool.sort(key=lambda c: failures.get(c, 0))
    k = min(length - 1, len(pool))
    if k <= 0:
        return [destination]
    cutoff = failures.get(pool[k - 1], 0)
    best = [c for c in pool if failures.get(c, 0) < cutoff]
    tied = [c for c in pool if failures.get(c, 0) == cutoff]
    chosen = best + rng.sample(tied, k - len(best))
    rng.shuffle(chosen)
    return [*chosen, destination]


def reply_path(forward: list[bytes], recipient_home: bytes, sender_home: bytes) -> list[bytes]:
    """Reply route: recipient's home (where the ack enters), the forward intermediates
    reversed (they just carried the message, so they are alive), then the sender's home."""
    if recipient_home == sender_home:
        return [sender_home]
    middle = [h for h in reversed(forward[:-1]) if h not in (recipient_home, sender_home)]
    middle = list(dict.fromkeys(middle))[: MAX_HOPS - 2]
    return [recipient_home, *middle, sender_home]
