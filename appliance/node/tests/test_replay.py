from __future__ import annotations

import contextlib
import hashlib
import io
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh.replay import (
    FILTER_HEADER_LEN,
    MAX_COUNTER,
    WINDOW_BITS,
    OnionReplayFilter,
    ReplayFilterError,
    ReplayWindow,
    filter_dimensions,
)


def accept(window: ReplayWindow, counter: int) -> bool:
    if window.check(counter):
        window.record(counter)
        return True
    return False


class ReferenceWindow:
    """The replay rule written plainly: every accepted counter kept in a set."""

    def __init__(self) -> None:
        self.highest = -1
        self.seen: set[int] = set()

    def accept(self, counter: int) -> bool:
        if not 0 <= counter <= MAX_COUNTER or counter in self.seen:
            return False
        if counter <= self.highest - WINDOW_BITS:
            return False
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        return True


def test_in_order_and_duplicates() -> None:
    w = ReplayWindow()
    assert all(accept(w, i) for i in range(1, 100))
    assert not accept(w, 50)
    assert not accept(w, 99)


def test_reordering_within_window() -> None:
    w = ReplayWindow()
    assert accept(w, 10)
    assert accept(w, 5)
    assert not accept(w, 5)
    assert accept(w, 7)


def test_too_old_is_rejected() -> None:
    w = ReplayWindow()
    assert accept(w, WINDOW_BITS + 10)
    assert not accept(w, 5)
    assert accept(w, WINDOW_BITS + 9)


def test_the_whole_64_bit_range_and_nothing_outside_it() -> None:
    w = ReplayWindow()
    assert accept(w, 0)
    assert accept(w, 1 << 63)
    assert not accept(w, 1 << 63)
    assert not accept(w, 0)  # now far behind the window
    assert accept(w, MAX_COUNTER)
    assert not accept(w, MAX_COUNTER)
    assert accept(w, MAX_COUNTER - 1)
    assert not accept(w, MAX_COUNTER + 1)
    assert not ReplayWindow().check(-1)


def _peak_bytes_of_record(window: ReplayWindow, counter: int) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        window.record(counter)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_jump_to_2_63_costs_what_a_step_costs() -> None:
    """Memory is the cost that scaled with the jump (a 2^28 jump took ~60 MB): Python's int
    operations are linear in the size of their operands, so a bounded peak allocation during
    `record` bounds its work too. Both a one-step and a 2^63 jump stay within the window's
    own size (2048 bits = 256 bytes, plus int object overhead)."""
    bound = 3 * (WINDOW_BITS // 8 + 64)  # a few window-sized temporaries, with object headers
    for jump in (1, WINDOW_BITS - 1, WINDOW_BITS, 1 << 28, 1 << 63):
        w = ReplayWindow()
        for c in range(0, 3 * WINDOW_BITS, 3):  # a full, irregular bitmap
            accept(w, c)
        peak = _peak_bytes_of_record(w, w.highest + jump)
        assert peak <= bound, (jump, peak)
        assert w.state_bits <= WINDOW_BITS


counters = st.one_of(
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=MAX_COUNTER),
    st.integers(min_value=MAX_COUNTER - 5000, max_value=MAX_COUNTER + 3),
    st.integers(min_value=-3, max_value=-1),
)


@settings(max_examples=300)
@given(st.lists(counters, max_size=300))
def test_agrees_with_the_reference_model(sequence: list[int]) -> None:
    w, ref = ReplayWindow(), ReferenceWindow()
    for c in sequence:
        assert accept(w, c) == ref.accept(c), c
        assert w.state_bits <= WINDOW_BITS


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=300))
def test_never_accepts_twice(sequence: list[int]) -> None:
    w = ReplayWindow()
    accepted: set[int] = set()
    for c in sequence:
        if accept(w, c):
            assert c not in accepted
            accepted.add(c)


# --- the onion replay filter ----------------------------------------------------------------

KEY = bytes(range(32))


def tag(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def test_dimensions_follow_the_bloom_formulas() -> None:
    bits, hashes = filter_dimensions(8_400_000, 1e-5)
    assert 23.9 < bits / 8_400_000 < 24.0  # -ln(1e-5) / ln(2)^2 = 23.96 bits per packet
    assert hashes == 17
    assert bits % 8 == 0
    with pytest.raises(ValueError):
        filter_dimensions(0, 1e-5)
    with pytest.raises(ValueError):
        filter_dimensions(10, 1.0)


def test_measured_false_positive_rate_matches_the_stated_one() -> None:
    f = OnionReplayFilter(KEY, budget=20_000, false_positive_rate=1e-3)
    while_filling = sum(f.seen_before(tag(i)) for i in range(20_000))
    assert while_filling <= 20  # the rate climbs towards 1e-3 as the filter fills
    assert f.count == 20_000 - while_filling
    assert all(tag(i) in f for i in range(20_000))  # no false negatives: a replay is caught
    false_positives = sum(tag(i) in f for i in range(1_000_000, 1_100_000))
    assert 50 <= false_positives <= 200  # at its budget, 1e-3 of 100,000 is 100
    assert f.count == 20_000 - while_filling  # membership tests recorded nothing
    more = iter(range(2_000_000, 2_000_100))
    while not f.full:
        f.seen_before(tag(next(more)))
    assert f.count == f.budget


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=16, max_size=16), max_size=300))
def test_filter_agrees_with_a_set_below_its_budget(tags: list[bytes]) -> None:
    f = OnionReplayFilter(KEY, budget=1000, false_positive_rate=1e-12)
    seen: set[bytes] = set()
    for t in tags:
        assert f.seen_before(t) == (t in seen)
        seen.add(t)
    assert f.count == len(seen)


def test_stored_filter_round_trips_and_names_what_is_wrong() -> None:
    f = OnionReplayFilter(KEY, budget=500, false_positive_rate=1e-6)
    for i in range(100):
        f.seen_before(tag(i))
    stored = f.header() + bytes(f.bits)
    assert len(stored) == FILTER_HEADER_LEN + f.size_bytes
    again = OnionReplayFilter.read_from(io.BytesIO(stored), KEY)
    assert (again.count, again.budget, again.hashes) == (100, 500, f.hashes)
    assert all(again.seen_before(tag(i)) for i in range(100))
    assert not again.seen_before(tag(100))
    for data, key, problem in [
        (stored, bytes(32), "does not belong"),
        (stored[:10], KEY, "truncated header"),
        (stored[:-1], KEY, "size its header states"),
        (stored + b"x", KEY, "size its header states"),
        (b"XXXX" + stored[4:], KEY, "not a replay filter"),
    ]:
        with pytest.raises(ReplayFilterError, match=problem):
            OnionReplayFilter.read_from(io.BytesIO(data), key)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_stored_bytes_load_or_raise_replay_filter_error(data: bytes) -> None:
    good_header = OnionReplayFilter(KEY, budget=10, false_positive_rate=0.01).header()
    for blob in (data, good_header[: len(data) % 64] + data):
        with contextlib.suppress(ReplayFilterError):
            OnionReplayFilter.read_from(io.BytesIO(blob), KEY)
