"""Replay protection: a sliding window for link counters, a per-epoch tag cache for onion hops."""

from __future__ import annotations

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


class ReplayCache:
    """Per-hop shared-secret tags seen under one onion key epoch.

    Dropped as a whole when the epoch's key is destroyed, so it never outlives the key.
    """

    __slots__ = ("_seen", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._seen: set[bytes] = set()

    def seen_before(self, tag: bytes) -> bool:
        """Record tag; True when it was already recorded."""
        if tag in self._seen:
            return True
        self._seen.add(tag)
        return False

    def __len__(self) -> int:
        return len(self._seen)
