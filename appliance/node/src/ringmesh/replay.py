"""Replay protection: a sliding window for link counters, a per-epoch tag cache for onion hops."""

from __future__ import annotations

WINDOW_BITS = 2048


class ReplayWindow:
    """Accepts each counter at most once, and none older than WINDOW_BITS behind the highest."""

    __slots__ = ("_bits", "highest")

    def __init__(self) -> None:
        self.highest = -1
        self._bits = 0  # bit i set: counter (highest - i) was seen

    def check(self, counter: int) -> bool:
        """True when counter is new (does not record it)."""
        if counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < WINDOW_BITS and not (self._bits >> offset) & 1

    def record(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << WINDOW_BITS) - 1)
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)


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
