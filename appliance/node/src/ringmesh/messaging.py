"""End-to-end layer, pure: envelopes, fragments, reply blocks, path choice.

A message is split into fragments; each fragment is sealed to the recipient with a fresh
ephemeral X25519 key (the recipient's X25519 key is derived from its did:key) and fills one
onion payload exactly. Fragment 0 also carries two single-use reply blocks (SURBs) built by
the sender over paths chosen independently of the forward path: one for the ack (to a
mailbox of the sending process) and one the recipient may answer through (to the sender's
own mailbox). A reply block is a Sphinx header plus the key that seals what goes under it;
the recipient learns neither the sender's identity nor its home relay from it. A message
whose fragments are KIND_SEALED carries a body sealed to one of the recipient's prekeys
(prekeys.py), which the recipient opens once the message is whole.
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

from .wire import HEADER_LEN, MAX_HOPS, MIN_PATH, PAYLOAD_LEN

ENVELOPE_PLAIN_LEN = PAYLOAD_LEN - 32 - 16
KIND_FRAGMENT = 1
KIND_SEALED = 2  # the reassembled body is sealed to one of the recipient's prekeys (HPKE)
MSG_ID_LEN = 16
_FRAG = struct.Struct("!B16sHHIH")
SURB_KEY_LEN = 32
SURB_LEN = HEADER_LEN + SURB_KEY_LEN
FIRST_CHUNK = ENVELOPE_PLAIN_LEN - _FRAG.size - 2 * SURB_LEN
OTHER_CHUNK = ENVELOPE_PLAIN_LEN - _FRAG.size
MAX_MESSAGE = 4 * 1024 * 1024
_ZERO_NONCE = bytes(12)

# What travels under a reply block: kind (1) | length (2) | body, sealed with the block's key.
SURB_ACK = 1
SURB_REPLY = 2
SURB_PREKEY = 3  # half of a prekey bundle, from the recipient's home relay: index (1) | half
# A prekey request, delivered to the user's prekey mailbox: two reply blocks, as a bundle
# (1,350 bytes) is larger than one reply (MAX_REPLY).
PREKEY_REQUEST_LEN = 2 * SURB_LEN
_SURB_HEAD = struct.Struct("!BH")
SURB_PLAIN_LEN = PAYLOAD_LEN - 16
MAX_REPLY = SURB_PLAIN_LEN - _SURB_HEAD.size


class EnvelopeError(ValueError):
    """Not a valid envelope, fragment or reply for this recipient."""


class PathError(ValueError):
    """The directory has too few relays for the path asked for."""


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


# --- reply blocks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyBlock:
    """A single-use reply block as the replier holds it: where to send, and the sealing key."""

    header: bytes
    key: bytes

    def encode(self) -> bytes:
        return self.header + self.key

    @classmethod
    def decode(cls, raw: bytes) -> ReplyBlock:
        if len(raw) != SURB_LEN:
            raise EnvelopeError(f"a reply block is {SURB_LEN} bytes")
        return cls(raw[:HEADER_LEN], raw[HEADER_LEN:])

    def packet(self, kind: int, body: bytes) -> bytes:
        """The onion packet that answers through this block."""
        return self.header + seal_surb_payload(self.key, kind, body)


def seal_surb_payload(key: bytes, kind: int, body: bytes) -> bytes:
    if len(body) > MAX_REPLY:
        raise EnvelopeError(f"a reply holds at most {MAX_REPLY} bytes")
    plain = _SURB_HEAD.pack(kind, len(body)) + body
    plain += bytes(SURB_PLAIN_LEN - len(plain))
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plain, b"ringmesh-surb-v1")


def open_surb_payload(key: bytes, payload: bytes) -> tuple[int, bytes]:
    """(kind, body); raises EnvelopeError when the payload was changed on the way."""
    try:
        plain = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, payload, b"ringmesh-surb-v1")
    except (InvalidTag, ValueError):
        raise EnvelopeError("reply does not open with this reply block's key") from None
    kind, length = _SURB_HEAD.unpack_from(plain)
    if kind not in (SURB_ACK, SURB_REPLY, SURB_PREKEY) or length > MAX_REPLY:
        raise EnvelopeError("bad reply header")
    return kind, plain[_SURB_HEAD.size : _SURB_HEAD.size + length]


# --- fragments --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    message_id: bytes
    index: int
    count: int
    total_len: int
    chunk: bytes
    ack_block: bytes | None  # encoded ReplyBlock for the ack (fragment 0 only)
    reply_block: bytes | None  # encoded ReplyBlock the recipient may answer through
    sealed: bool = False  # KIND_SEALED: the whole body is sealed to a prekey


def fragment_count(length: int) -> int:
    if length <= FIRST_CHUNK:
        return 1
    return 1 + -(-(length - FIRST_CHUNK) // OTHER_CHUNK)


def split_message(
    message_id: bytes, body: bytes, ack_block: bytes, reply_block: bytes, sealed: bool = False
) -> list[bytes]:
    """Envelope plaintexts (ENVELOPE_PLAIN_LEN each) for every fragment of body."""
    if len(body) > MAX_MESSAGE:
        raise EnvelopeError(f"message is larger than {MAX_MESSAGE} bytes")
    if len(ack_block) != SURB_LEN or len(reply_block) != SURB_LEN:
        raise EnvelopeError("reply block has the wrong length")
    count = fragment_count(len(body))
    out = []
    offset = 0
    for index in range(count):
        size = FIRST_CHUNK if index == 0 else OTHER_CHUNK
        chunk = body[offset : offset + size]
        offset += len(chunk)
        kind = KIND_SEALED if sealed else KIND_FRAGMENT
        head = _FRAG.pack(kind, message_id, index, count, len(body), len(chunk))
        plain = head + (ack_block + reply_block if index == 0 else b"") + chunk
        out.append(plain + bytes(ENVELOPE_PLAIN_LEN - len(plain)))
    return out


def parse_fragment(plain: bytes) -> Fragment:
    if len(plain) != ENVELOPE_PLAIN_LEN:
        raise EnvelopeError("fragment has the wrong length")
    kind, message_id, index, count, total, chunk_len = _FRAG.unpack_from(plain)
    if kind not in (KIND_FRAGMENT, KIND_SEALED) or count == 0 or index >= count:
        raise EnvelopeError("bad fragment header")
    if total > MAX_MESSAGE:
        raise EnvelopeError("bad fragment header")
    if count != fragment_count(total):
        raise EnvelopeError("fragment count does not match the length")
    o = _FRAG.size
    ack = reply = None
    capacity = OTHER_CHUNK
    if index == 0:
        ack, reply = plain[o : o + SURB_LEN], plain[o + SURB_LEN : o + 2 * SURB_LEN]
        o += 2 * SURB_LEN
        capacity = FIRST_CHUNK
    if chunk_len > capacity:
        raise EnvelopeError("bad chunk length")
    chunk = plain[o : o + chunk_len]
    return Fragment(message_id, index, count, total, chunk, ack, reply, kind == KIND_SEALED)


@dataclass
class _Partial:
    count: int
    total_len: int
    started: float
    sealed: bool
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Complete:
    message_id: bytes
    body: bytes
    sealed: bool = False


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
            partial = _Partial(frag.count, frag.total_len, now, frag.sealed)
            self._partial[frag.message_id] = partial
        if (partial.count, partial.total_len, partial.sealed) != (
            frag.count,
            frag.total_len,
            frag.sealed,
        ):
            return None
        partial.chunks.setdefault(frag.index, frag.chunk)
        if len(partial.chunks) < partial.count:
            return None
        del self._partial[frag.message_id]
        body = b"".join(partial.chunks[i] for i in range(partial.count))
        if len(body) != partial.total_len:
            return None
        self.done[frag.message_id] = now
        return Complete(frag.message_id, body, partial.sealed)

    def expire(self, now: float) -> None:
        for mid in [m for m, p in self._partial.items() if now - p.started > self.ttl]:
            del self._partial[mid]
        for mid in [m for m, t in self.done.items() if now - t > self.ttl]:
            del self.done[mid]

    @property
    def pending(self) -> int:
        return len(self._partial)


def new_message_id() -> bytes:
    return os.urandom(MSG_ID_LEN)


# --- paths ------------------------------------------------------------------------------------


def choose_mixes(
    candidates: Iterable[bytes],
    count: int,
    failures: dict[bytes, int],
    rng: random.Random,
    avoid: frozenset[bytes] = frozenset(),
    suspect: int = 1 << 30,
) -> list[bytes]:
    """count distinct relays, in random order. Preferred: relays with fewer than `suspect`
    recorded failures (among suspects, those with fewer), then relays outside `avoid`, then
    relays with fewer failures. Fewer than count when there are not enough."""

    def preference(relay: bytes) -> tuple[int, bool, int]:
        marks = failures.get(relay, 0)
        return (marks if marks >= suspect else 0, relay in avoid, marks)

    pool = list(dict.fromkeys(candidates))
    rng.shuffle(pool)
    pool.sort(key=preference)
    chosen = pool[:count]
    rng.shuffle(chosen)
    return chosen


def mix_count(length: int) -> int:
    if not MIN_PATH <= length <= MAX_HOPS:
        raise PathError(f"a path has {MIN_PATH}..{MAX_HOPS} relays")
    return length - 2


def route(
    relays: Iterable[bytes],
    entry: bytes,
    exit_: bytes,
    length: int,
    failures: dict[bytes, int],
    rng: random.Random,
    avoid: frozenset[bytes] = frozenset(),
    suspect: int = 1 << 30,
) -> list[bytes]:
    """entry, then mixes that are neither end (see choose_mixes), then exit.

    Messages enter at the sender's home relay and leave at the recipient's; a reply block
    runs the other way and avoids the forward path's mixes, so the two share no relay but
    the two home relays whenever the directory has enough relays that are not `suspect`.
    """
    candidates = [r for r in relays if r not in (entry, exit_)]
    mixes = choose_mixes(candidates, mix_count(length), failures, rng, avoid, suspect)
    if not mixes:
        raise PathError("the directory has no relay besides the two home relays")
    return [entry, *mixes, exit_]
