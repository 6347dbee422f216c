"""core.replay: the RFC 6479 anti-replay window, against its definition and a reference model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.constants import REJECT_AFTER_MESSAGES
from core.replay import WINDOW_SIZE, ReplayWindow, Verdict


class ReferenceWindow:
    """The window's definition, with no cleverness: every counter seen, and the highest.

    A counter is accepted once, if it is above the highest seen or less than WINDOW_SIZE below
    it. (A fresh window behaves as if the highest seen were 0, with 0 itself not yet seen.)
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest = 0

    def verdict(self, counter: int) -> Verdict:
        if counter >= REJECT_AFTER_MESSAGES:
            return Verdict.EXHAUSTED
        if counter > self.highest:
            return Verdict.OK
        if self.highest - counter >= WINDOW_SIZE:
            return Verdict.TOO_OLD
        return Verdict.DUPLICATE if counter in self.seen else Verdict.OK

    def update(self, counter: int) -> Verdict:
        v = self.verdict(counter)
        if v is Verdict.OK:
            self.seen.add(counter)
            self.highest = max(self.highest, counter)
        return v


def window_after(counters: list[int]) -> ReplayWindow:
    w = ReplayWindow()
    for c in counters:
        assert w.update(c) is Verdict.OK, c
    return w


def test_window_size_is_the_protocol_window() -> None:
    assert WINDOW_SIZE >= 4096
    assert WINDOW_SIZE % 64 == 0


def test_in_order_accepted_and_duplicates_rejected() -> None:
    w = ReplayWindow()
    for c in range(3 * WINDOW_SIZE):
        assert w.check(c) is Verdict.OK
        assert w.update(c) is Verdict.OK
        assert w.highest == c
        assert w.check(c) is Verdict.DUPLICATE
        assert w.update(c) is Verdict.DUPLICATE
    for c in range(2 * WINDOW_SIZE + 1, 3 * WINDOW_SIZE):
        assert w.update(c) is Verdict.DUPLICATE


def test_reordered_within_window_accepted_exactly_once() -> None:
    rng = random.Random(6479)
    base = 10 * WINDOW_SIZE + 17
    order = list(range(base, base + WINDOW_SIZE))
    rng.shuffle(order)
    w = ReplayWindow()
    w.update(base - 1)
    for c in order:
        assert w.update(c) is Verdict.OK, c
    for c in order:
        assert w.update(c) is Verdict.DUPLICATE, c
    assert w.highest == base + WINDOW_SIZE - 1


def test_late_packet_just_inside_window_accepted_once() -> None:
    top = 50_000
    w = window_after([top])
    oldest_allowed = top - WINDOW_SIZE + 1
    assert w.check(oldest_allowed) is Verdict.OK
    assert w.update(oldest_allowed) is Verdict.OK
    assert w.update(oldest_allowed) is Verdict.DUPLICATE


@pytest.mark.parametrize("top", [WINDOW_SIZE, WINDOW_SIZE + 1, 64 * 1000 + 63, 10**9 + 5])
def test_too_old_at_exactly_the_boundary_and_beyond(top: int) -> None:
    w = window_after([top])
    for c in (top - WINDOW_SIZE, top - WINDOW_SIZE - 1, top - WINDOW_SIZE - 64, 0):
        assert w.check(c) is Verdict.TOO_OLD, c
        assert w.update(c) is Verdict.TOO_OLD, c
    assert w.update(top - WINDOW_SIZE + 1) is Verdict.OK
    assert w.highest == top


def test_fresh_window_accepts_counter_zero_once() -> None:
    w = ReplayWindow()
    assert w.update(0) is Verdict.OK
    assert w.update(0) is Verdict.DUPLICATE
    assert w.update(1) is Verdict.OK


@pytest.mark.parametrize("jump", [
    64, WINDOW_SIZE - 1, WINDOW_SIZE, WINDOW_SIZE + 64, WINDOW_SIZE + 65 * 64,
    2 * WINDOW_SIZE + 1, 65 * 64 * 7, 10**7,
])
def test_big_jump_forward_clears_stale_bits(jump: int) -> None:
    """Every bit of the ring is set, then the window jumps: counters that land on the same ring
    slots as old ones must be fresh, not reported as duplicates of the stale bits."""
    w = window_after(list(range(WINDOW_SIZE + 64)))
    top = WINDOW_SIZE + 63 + jump
    assert w.update(top) is Verdict.OK
    for c in range(max(0, top - WINDOW_SIZE + 1), top):
        expected = Verdict.DUPLICATE if c < WINDOW_SIZE + 64 else Verdict.OK
        assert w.check(c) is expected, c
        assert w.update(c) is expected, c


def test_jump_to_the_last_usable_counter() -> None:
    last = REJECT_AFTER_MESSAGES - 1
    w = window_after([0, 1, 2])
    assert w.update(last) is Verdict.OK
    assert w.update(last - 1) is Verdict.OK
    assert w.update(last - WINDOW_SIZE + 1) is Verdict.OK
    assert w.update(last) is Verdict.DUPLICATE
    assert w.update(2) is Verdict.TOO_OLD


@pytest.mark.parametrize("counter", [REJECT_AFTER_MESSAGES, REJECT_AFTER_MESSAGES + 1,
                                     (1 << 64) - 1])
def test_counters_past_the_nonce_limit_are_exhausted(counter: int) -> None:
    w = window_after([5])
    assert w.check(counter) is Verdict.EXHAUSTED
    assert w.update(counter) is Verdict.EXHAUSTED
    assert w.highest == 5
    assert w.update(6) is Verdict.OK


# --- model-based --------------------------------------------------------------------------------

steps = st.lists(st.one_of(
    st.integers(-WINDOW_SIZE - 130, 130),                 # around the top: late, dup, next
    st.integers(-WINDOW_SIZE - 2, -WINDOW_SIZE + 2),      # right at the boundary
    st.integers(WINDOW_SIZE - 130, 3 * WINDOW_SIZE),      # jumps of about a window or more
    st.integers(0, 10**6),                                # anything in the bounded range
), max_size=300)
"""Each step is an offset from the highest counter seen so far (clamped at 0), so sequences
keep probing the interesting region instead of wandering off."""


@settings(max_examples=300)
@given(steps=steps, probes=st.lists(st.integers(-2 * WINDOW_SIZE, 200), max_size=20))
def test_matches_reference_model(steps: list[int], probes: list[int]) -> None:
    w, ref = ReplayWindow(), ReferenceWindow()
    for step in steps:
        counter = max(0, ref.highest + step)
        # check() predicts update(), and both agree with the definition.
        expected = ref.verdict(counter)
        assert w.check(counter) is expected, (counter, ref.highest)
        assert w.update(counter) is ref.update(counter) is expected
        assert w.highest == ref.highest
    for offset in probes:
        counter = max(0, ref.highest + offset)
        assert w.check(counter) is ref.verdict(counter), counter


@settings(max_examples=200)
@given(history=steps, checks=st.lists(st.integers(0, 10**6 + 3 * WINDOW_SIZE), max_size=200),
       probes=st.lists(st.integers(-WINDOW_SIZE - 70, 70), min_size=1, max_size=100))
def test_check_never_mutates(history: list[int], checks: list[int], probes: list[int]) -> None:
    """A window that answered many check() calls behaves exactly like one that answered
    none (check runs before decryption, on forged packets too)."""
    checked, untouched = ReplayWindow(), ReplayWindow()
    top = 0
    for step in history:
        counter = max(0, top + step)
        checked.update(counter)
        untouched.update(counter)
        top = untouched.highest
    for c in checks:
        checked.check(c)
    assert checked.highest == untouched.highest
    for offset in probes:
        counter = max(0, top + offset)
        assert checked.update(counter) is untouched.update(counter), counter
