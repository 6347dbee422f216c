"""gui.notify: which state changes become notifications, and the rate limiter (pure, no Qt)."""

from __future__ import annotations

import pytest

from gui.notify import Kind, Notice, RateLimiter, TransitionTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kinds(tracker: TransitionTracker, tunnel: str, *states: str) -> list[Kind | None]:
    out = []
    for state in states:
        notice = tracker.observe(tunnel, state)
        out.append(None if notice is None else notice.kind)
    return out


def test_the_first_state_seen_is_not_news() -> None:
    assert kinds(TransitionTracker(), "office", "up", "up") == [None, None]


def test_connect_disconnect() -> None:
    t = TransitionTracker()
    assert kinds(t, "office", "down", "connecting", "handshaking", "up", "down") == [
        None, None, None, Kind.CONNECTED, Kind.DISCONNECTED]


def test_drop_and_recovery() -> None:
    t = TransitionTracker()
    assert kinds(t, "office", "down", "up", "handshaking", "connecting", "up", "down") == [
        None, Kind.CONNECTED, Kind.DROPPED, None, Kind.RECOVERED, Kind.DISCONNECTED]


def test_a_drop_says_why_when_the_helper_does() -> None:
    t = TransitionTracker()
    t.observe("office", "up")
    notice = t.observe("office", "error", error="the network is unreachable")
    assert notice is not None and notice.kind is Kind.DROPPED and notice.is_problem
    assert notice.body.startswith("The network is unreachable")


def test_failing_to_connect_is_not_a_drop() -> None:
    t = TransitionTracker()
    assert kinds(t, "office", "down", "connecting", "error") == [None, None, Kind.FAILED]
    assert kinds(t, "office", "connecting", "up") == [None, Kind.CONNECTED]


def test_tunnels_are_tracked_apart_and_reset_forgets() -> None:
    t = TransitionTracker()
    kinds(t, "a", "down")
    kinds(t, "b", "up")
    assert kinds(t, "a", "up") == [Kind.CONNECTED]
    t.reset()
    assert kinds(t, "b", "down") == [None]


def notice(tunnel: str = "office", kind: Kind = Kind.CONNECTED, title: str = "t") -> Notice:
    return Notice(kind, tunnel, title, "body")


def test_limiter_lets_a_burst_through_then_holds_back() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, window=60, clock=clock)
    shown = [limiter.admit(notice(title=str(i))) for i in range(5)]
    assert [n.title if n else None for n in shown] == ["0", "1", "2", None, None]
    assert limiter.held("office") == 2
    assert limiter.admit(notice("other")) is not None  # another tunnel has its own budget


def test_a_flapping_link_ends_with_its_latest_state_and_a_count() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=2, window=60, clock=clock)
    flaps = [Kind.CONNECTED, Kind.DROPPED, Kind.RECOVERED, Kind.DROPPED, Kind.RECOVERED]
    passed = [limiter.admit(notice(kind=k, title=k.value)) for k in flaps]
    assert [p.kind if p else None for p in passed] == [Kind.CONNECTED, Kind.DROPPED, None, None,
                                                      None]
    assert limiter.due() == []  # still no budget
    clock.now += 61
    released = limiter.due()
    assert [n.kind for n in released] == [Kind.RECOVERED]
    assert "(2 earlier changes not shown" in released[0].body
    assert limiter.held("office") == 0 and limiter.due() == []


def test_a_new_notice_carries_the_count_of_held_ones() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=1, window=10, clock=clock)
    assert limiter.admit(notice()) is not None
    assert limiter.admit(notice(kind=Kind.DROPPED)) is None
    clock.now += 10
    passed = limiter.admit(notice(kind=Kind.DISCONNECTED))
    assert passed is not None and passed.kind is Kind.DISCONNECTED
    assert "(1 earlier change not shown" in passed.body
    assert limiter.due() == []


def test_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0)


def test_a_new_profile_is_a_down_baseline_so_its_first_up_is_news() -> None:
    tracker = TransitionTracker()
    tracker.baseline("office", "down")
    notice = tracker.observe("office", "up")
    assert notice is not None and notice.kind is Kind.CONNECTED
    tracker.baseline("office", "down")  # already known: a baseline never overrides a state
    assert tracker.observe("office", "up") is None
