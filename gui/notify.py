"""Which tunnel state changes deserve a desktop notification, and how many of them to show.

Pure: no Qt. :class:`TransitionTracker` turns the stream of status states into notices
(connected, disconnected, connection lost, reconnected, could not connect); :class:`RateLimiter`
keeps a flapping link from spamming the desktop and tells the user, in the next notice it lets
through, how many it held back. :mod:`gui.notifier` shows what passes.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["LOCKDOWN", "Kind", "LockdownTracker", "Notice", "RateLimiter", "TransitionTracker"]

LOCKDOWN = "lockdown"
"""The ``tunnel`` of lockdown notices (they are about the machine, not one tunnel)."""

_TRYING = frozenset({"connecting", "handshaking"})
_PROBLEM = frozenset({"unreachable", "error", "failed"})


class Kind(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DROPPED = "dropped"
    """The tunnel was up and lost its session (or failed) without anyone asking."""
    RECOVERED = "recovered"
    """Up again after a drop."""
    FAILED = "failed"
    """Never got up: the tunnel failed to start or the peer never answered."""
    LOCKDOWN_ON = "lockdown_on"
    LOCKDOWN_OFF = "lockdown_off"
    HINT = "hint"
    """About the client itself (the window went to the tray), not about a tunnel."""


@dataclass(frozen=True, slots=True)
class Notice:
    kind: Kind
    tunnel: str
    title: str
    body: str

    @property
    def is_problem(self) -> bool:
        return self.kind in (Kind.DROPPED, Kind.FAILED)


class TransitionTracker:
    """Remembers each tunnel's last state and says what a new one means to the user.

    The first state seen for a tunnel (the snapshot at start-up or after reconnecting to the
    helper) is not news and gives no notice."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._dropped: set[str] = set()

    def baseline(self, tunnel: str, state: str) -> None:
        """Record a state known without a status event (a brand-new profile is down), unless
        one was already seen."""
        self._last.setdefault(tunnel, state)

    def observe(self, tunnel: str, state: str, *, error: str = "") -> Notice | None:
        old = self._last.get(tunnel)
        self._last[tunnel] = state
        if old is None or old == state:
            return None
        if state == "up":
            if tunnel in self._dropped:
                self._dropped.discard(tunnel)
                return Notice(Kind.RECOVERED, tunnel, f"{tunnel}: reconnected",
                              "The tunnel is up again.")
            return Notice(Kind.CONNECTED, tunnel, f"Connected to {tunnel}",
                          "Your traffic to this network now goes through the tunnel.")
        if state == "down":
            self._dropped.discard(tunnel)
            return Notice(Kind.DISCONNECTED, tunnel, f"Disconnected from {tunnel}",
                          "The tunnel is closed.")
        if state == "failed":
            # Not "keeps trying": a failed tunnel waits for the user (the reason says so).
            self._dropped.discard(tunnel)
            return Notice(Kind.FAILED, tunnel, f"{tunnel}: the tunnel failed",
                          error or "The tunnel stopped carrying traffic.")
        if old == "up" and (state in _TRYING or state in _PROBLEM):
            self._dropped.add(tunnel)
            why = error or "the other end stopped answering"
            return Notice(Kind.DROPPED, tunnel, f"{tunnel}: connection lost",
                          f"{why[:1].upper()}{why[1:]}; Tunseal keeps trying to reconnect.")
        if state in _PROBLEM and tunnel not in self._dropped:
            return Notice(Kind.FAILED, tunnel, f"{tunnel}: could not connect",
                          error or "No answer from the server. Open Tunseal to see the "
                          "likely causes.")
        return None

    def forget(self, tunnel: str) -> None:
        self._last.pop(tunnel, None)
        self._dropped.discard(tunnel)

    def reset(self) -> None:
        """Forget everything (the helper went away: its next snapshot is not news)."""
        self._last.clear()
        self._dropped.clear()


class LockdownTracker:
    """Says when the lockdown starts and ends. The first status seen is not news."""

    def __init__(self) -> None:
        self._active: bool | None = None

    def observe(self, status: dict[str, object]) -> Notice | None:
        active = bool(status.get("active"))
        old, self._active = self._active, active
        if old is None or old == active:
            return None
        if active:
            return Notice(Kind.LOCKDOWN_ON, LOCKDOWN, "Lockdown on",
                          "Nothing leaves this computer except through the tunnel.")
        return Notice(Kind.LOCKDOWN_OFF, LOCKDOWN, "Lockdown off",
                      "Traffic may leave this computer without the tunnel again.")

    def reset(self) -> None:
        self._active = None


class RateLimiter:
    """At most ``burst`` notices per tunnel in any ``window`` seconds.

    A notice over budget is held back, not lost: the limiter keeps the latest held notice of each
    tunnel and counts the others. When budget is free again, :meth:`due` releases that latest one
    (so the user ends up told the state the tunnel settled in), noting how many changes were not
    shown; a new notice that passes first replaces it and carries the note instead."""

    def __init__(self, *, burst: int = 3, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        if burst < 1 or window <= 0:
            raise ValueError("burst must be at least 1 and window positive")
        self.burst = burst
        self.window = window
        self._clock = clock
        self._shown: dict[str, collections.deque[float]] = {}
        self._held: dict[str, tuple[Notice, int]] = {}

    def admit(self, notice: Notice) -> Notice | None:
        """The notice to show now (possibly with a note about held-back ones), or None when it
        is held back."""
        now = self._clock()
        if not self._has_room(notice.tunnel, now):
            _, count = self._held.get(notice.tunnel, (notice, 0))
            self._held[notice.tunnel] = (notice, count + 1)
            return None
        return self._release(notice, now, skipped=self._held.pop(notice.tunnel, (notice, 0))[1])

    def due(self) -> list[Notice]:
        """Held notices whose tunnel has budget again: show these now (call it every few
        seconds)."""
        now = self._clock()
        out = []
        for tunnel in [t for t in self._held if self._has_room(t, now)]:
            notice, count = self._held.pop(tunnel)
            out.append(self._release(notice, now, skipped=count - 1))
        return out

    def held(self, tunnel: str) -> int:
        """Notices held back for ``tunnel`` and not yet released."""
        return self._held.get(tunnel, (None, 0))[1]

    def _has_room(self, tunnel: str, now: float) -> bool:
        shown = self._shown.setdefault(tunnel, collections.deque())
        while shown and now - shown[0] >= self.window:
            shown.popleft()
        return len(shown) < self.burst

    def _release(self, notice: Notice, now: float, *, skipped: int) -> Notice:
        self._shown[notice.tunnel].append(now)
        if skipped <= 0:
            return notice
        changes = "change" if skipped == 1 else "changes"
        return replace(notice, body=f"{notice.body} ({skipped} earlier {changes} not shown: "
                       "the connection is unstable.)")
