"""Replay protection: a sliding window for link counters, a per-epoch Bloom filter of onion
hop tags."""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

WINDOW_BITS = 2048
MAX_COUNTER = (1 << 64) - 1  # counters are 64-bit on the wire
_WINDOW_MASK = (1 << WINDOW_BITS) - 1


class ReplayWindow:
    """Accepts each counter at most once, and none older than WINDOW_BITS behind the highest.

    The state is the highest counter and one WINDOW_BITS-bit integer, whatever the counters: a
    jump of WINDOW_BITS or more clears the bitmap instead of shifting it, so a datagram whose
    counter leaps to 2^63 costs what any other does (RFC 6479 bounds its bitmap the same way).
    """

    __slots__ = ("_bits", "highest")

    def __init__(self) -> None:
        self.highest = -1
        self._bits = 0  # bit i set: counter (highest - i) was seen

    def check(self, counter: int) -> bool:
        """True when counter is new (does not record it)."""
        if not 0 <= counter <= MAX_COUNTER:
            return False
        if counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < WINDOW_BITS and not (self._bits >> offset) & 1

    def record(self, counter: int) -> None:
        """Record a counter that `check` accepted."""
        if counter > self.highest:
            shift = counter - self.highest
            if shift >= WINDOW_BITS:
                self._bits = 1
            else:
                # mask before shifting: no intermediate is wider than the window
                self._bits = ((self._bits & (_WINDOW_MASK >> shift)) << shift) | 1
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)

    @property
    def state_bits(self) -> int:
        """Bits of state the bitmap holds now (never more than WINDOW_BITS)."""
        return self._bits.bit_length()


class ReplayFilterError(ValueError):
    """A stored replay filter is malformed or belongs to another key."""


FILTER_MAGIC = b"RMRF"
FILTER_VERSION = 1
MAX_FILTER_BYTES = 256 << 20  # per epoch; config refuses budgets that need more
# magic, version, hash count, bits, budget, packets recorded, key check
_FILTER_HEADER = struct.Struct("!4sBB2xQQQ16s")
FILTER_HEADER_LEN = _FILTER_HEADER.size


def filter_dimensions(budget: int, false_positive_rate: float) -> tuple[int, int]:
    """(bits, hash functions) of the smallest Bloom filter that holds `budget` items at
    `false_positive_rate`: m = -n ln p / (ln 2)^2 rounded up to whole bytes, k = (m / n) ln 2."""
    if budget < 1 or not 0 < false_positive_rate < 1:
        raise ValueError("a replay filter needs a budget >= 1 and 0 < false_positive_rate < 1")
    bits = math.ceil(-budget * math.log(false_positive_rate) / math.log(2) ** 2)
    bits = max(64, -(-bits // 8) * 8)
    hashes = max(1, round(bits / budget * math.log(2)))
    return bits, hashes


def epoch_filter_key(onion_key: X25519PrivateKey) -> bytes:
    """The key that places hop tags in an epoch's filter: derived from the epoch's onion key,
    so the stored filter is meaningless without it and dies with it."""
    return hashlib.blake2b(
        b"ringmesh-replay-filter-v1", key=onion_key.private_bytes_raw(), digest_size=32
    ).digest()


def _key_check(key: bytes) -> bytes:
    return hashlib.blake2b(b"ringmesh-replay-filter-check", key=key, digest_size=16).digest()


class OnionReplayFilter:
    """The hop tags seen under one onion key epoch, in a Bloom filter of fixed size.

    Sized for the epoch's packet budget at a stated false-positive rate; past the budget it
    keeps working with a rising false-positive rate (a false positive drops a packet, a replay
    is never missed), and `full` tells the daemon to start a new epoch. Positions are
    BLAKE2b(key, tag) with Kirsch-Mitzenmacher double hashing.
    """

    __slots__ = ("_bits", "_check", "_key", "bit_count", "budget", "count", "dirty", "hashes")

    def __init__(self, key: bytes, budget: int, false_positive_rate: float) -> None:
        bit_count, hashes = filter_dimensions(budget, false_positive_rate)
        self._init(key, bit_count, hashes, budget)

    def _init(self, key: bytes, bit_count: int, hashes: int, budget: int) -> None:
        if bit_count // 8 > MAX_FILTER_BYTES:
            raise ValueError(f"a replay filter of {bit_count // 8 >> 20} MiB is too large")
        self._key = key
        self._check = _key_check(key)
        self.bit_count = bit_count
        self.hashes = hashes
        self.budget = budget
        self.count = 0
        self.dirty = False  # changed since it was last saved
        self._bits = bytearray(bit_count // 8)

    @classmethod
    def for_epoch(
        cls, onion_key: X25519PrivateKey, budget: int, false_positive_rate: float
    ) -> OnionReplayFilter:
        return cls(epoch_filter_key(onion_key), budget, false_positive_rate)

    def seen_before(self, tag: bytes) -> bool:
        """Record tag; True when it (or, rarely, a false positive) was already recorded."""
        return self._probe(tag, record=True)

    def __contains__(self, tag: object) -> bool:
        """Membership without recording."""
        return isinstance(tag, bytes) and self._probe(tag, record=False)

    def _probe(self, tag: bytes, record: bool) -> bool:
        digest = hashlib.blake2b(tag, key=self._key, digest_size=16).digest()
        position = int.from_bytes(digest[:8], "little")
        step = int.from_bytes(digest[8:], "little") | 1
        m, bits = self.bit_count, self._bits
        seen = True
        for _ in range(self.hashes):  # test and set in one pass: a new tag leaves a bit unset
            p = position % m
            mask = 1 << (p & 7)
            if not bits[p >> 3] & mask:
                if not record:
                    return False
                bits[p >> 3] |= mask
                seen = False
            position += step
        if not seen:
            self.count += 1
            self.dirty = True
        return seen

    @property
    def full(self) -> bool:
        return self.count >= self.budget

    @property
    def size_bytes(self) -> int:
        return len(self._bits)

    # --- storage ----------------------------------------------------------------------------

    def header(self) -> bytes:
        return _FILTER_HEADER.pack(
            FILTER_MAGIC,
            FILTER_VERSION,
            self.hashes,
            self.bit_count,
            self.budget,
            self.count,
            self._check,
        )

    @property
    def bits(self) -> memoryview:
        """The filter's bytes, stored after `header()` (a view: nothing is copied)."""
        return memoryview(self._bits)

    @classmethod
    def read_from(cls, stream: io.BufferedIOBase, key: bytes) -> OnionReplayFilter:
        """Load what `header()` and `bits` wrote; ReplayFilterError names what is wrong."""
        header = stream.read(FILTER_HEADER_LEN)
        if len(header) != FILTER_HEADER_LEN:
            raise ReplayFilterError("truncated header")
        magic, version, hashes, bit_count, budget, count, check = _FILTER_HEADER.unpack(header)
        if magic != FILTER_MAGIC or version != FILTER_VERSION:
            raise ReplayFilterError("not a replay filter of this version")
        if not hmac.compare_digest(check, _key_check(key)):
            raise ReplayFilterError("does not belong to this epoch's key")
        if not (1 <= hashes <= 64 and budget >= 1 and bit_count >= 64 and bit_count % 8 == 0):
            raise ReplayFilterError("impossible dimensions")
        if bit_count // 8 > MAX_FILTER_BYTES:
            raise ReplayFilterError("larger than any filter this node makes")
        replay = cls.__new__(cls)
        replay._init(key, bit_count, hashes, budget)
        if stream.readinto(replay._bits) != len(replay._bits) or stream.read(1):
            raise ReplayFilterError("the bitmap does not have the size its header states")
        replay.count = count
        return replay
