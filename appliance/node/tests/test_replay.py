from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from ringmesh.replay import MAX_COUNTER, WINDOW_BITS, ReplayWindow


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
