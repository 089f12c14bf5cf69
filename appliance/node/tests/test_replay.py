from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringmesh.replay import WINDOW_BITS, ReplayWindow


def accept(window: ReplayWindow, counter: int) -> bool:
    if window.check(counter):
        window.record(counter)
        return True
    return False


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


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=300))
def test_never_accepts_twice(counters: list[int]) -> None:
    w = ReplayWindow()
    accepted: set[int] = set()
    for c in counters:
        if accept(w, c):
            assert c not in accepted
            accepted.add(c)
