"""What the window shows, as plain data: profiles, tunnel status, rate history, logs, whether
the helper can be reached, and the tray's overall state.

No Qt here: :class:`gui.state.LiveState` feeds a :class:`Model` from the helper's replies and
events and tells the widgets what changed.
"""

from __future__ import annotations

import collections
import enum
import grp
import logging
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.constants import Mode
from core.errors import ProfileError
from core.fields import NAME_PATTERN
from core.profile import Profile, profile_from_dict
from core.status import TunnelStatus

__all__ = [
    "HISTORY_SECONDS",
    "Availability",
    "LogBook",
    "LogEntry",
    "Model",
    "RateHistory",
    "TrayState",
    "duplicate_name",
    "guidance",
    "socket_group",
]

log = logging.getLogger(__name__)

HISTORY_SECONDS = 300.0
"""The throughput graph shows the last five minutes."""
LOG_LINES = 5000
"""Log entries kept (all tunnels together); the oldest go first."""
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class TrayState(enum.Enum):
    """The tray icon: one picture for everything Tunseal is doing."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    PROBLEM = "problem"
    BLOCKED = "blocked"
    """Lockdown is on and no tunnel is up: nothing leaves the machine (docs/LOCKDOWN.md)."""


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether the helper answers; ``code`` is HelperUnavailable's (``unavailable`` or
    ``forbidden``) when it does not."""

    ok: bool
    code: str = ""
    message: str = ""


def socket_group(path: str) -> str | None:
    """The group whose members may use the helper's socket at ``path`` (its group, when the
    socket is group-writable), or None: no socket, or root only."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not st.st_mode & stat.S_IWGRP:
        return None
    try:
        return grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        return str(st.st_gid)


def guidance(availability: Availability, socket: str = "/run/tunseal/helper.sock",
             group: str | None = None) -> tuple[str, str, str]:
    """(headline, what to do, the command that does it) for a helper that cannot be used, in
    words for a person, naming the socket in use and the group that may use it (None: the
    socket admits root only, or there is none)."""
    if availability.code == "forbidden":
        if group:
            return ("You are not allowed to use the Tunseal helper.",
                    f"Only members of the group '{group}' may use the helper (its socket is "
                    f"{socket}), and your account is not one. Ask an administrator to add you "
                    "with the command below, then log out, log in again and press Retry.",
                    f"sudo usermod -aG {group} $USER")
        return ("You are not allowed to use the Tunseal helper.",
                f"The helper's socket {socket} admits only root: the helper found no group for "
                "its users. An administrator creates the group 'tunseal', adds you and "
                "restarts the helper with the command below; then log out, log in again and "
                "press Retry.",
                "sudo groupadd -f tunseal && sudo usermod -aG tunseal $USER && "
                "sudo systemctl restart tunseal-helper")
    return ("The Tunseal helper is not running.",
            f"Tunseal needs its background service to set up tunnels, and nothing answers on "
            f"{socket}. Start it with the command below (add 'enable --now' instead of "
            "'start' to start it at every boot), then press Retry.",
            "sudo systemctl start tunseal-helper")


@dataclass(frozen=True, slots=True)
class LogEntry:
    time: float
    level: str
    tunnel: str
    message: str

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> LogEntry:
        return cls(float(data.get("time") or 0.0), str(data.get("level") or "INFO"),
                   str(data.get("tunnel") or ""), str(data.get("message") or ""))

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{stamp} {self.level:<7} {self.message}"


def level_rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 1


class LogBook:
    """The helper's log events, newest last, filterable by tunnel, level and text."""

    def __init__(self, limit: int = LOG_LINES):
        self._entries: collections.deque[LogEntry] = collections.deque(maxlen=limit)

    def add(self, entry: LogEntry) -> None:
        self._entries.append(entry)

    def merge(self, entries: Iterable[LogEntry]) -> bool:
        """Add entries fetched from the helper's recent log, skipping those already here (a
        live event and its copy in the history are equal); True if any was new."""
        have = set(self._entries)
        new = [e for e in entries if e not in have]
        if not new:
            return False
        limit = self._entries.maxlen
        combined = sorted([*self._entries, *new], key=lambda e: e.time)
        self._entries = collections.deque(combined, maxlen=limit)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def matches(entry: LogEntry, *, tunnel: str | None, min_level: str = "DEBUG",
                text: str = "", helper_too: bool = False) -> bool:
        """``tunnel`` None: every entry. Otherwise that tunnel's entries, and with
        ``helper_too`` also the helper's own (entries about no tunnel)."""
        if tunnel is not None and entry.tunnel != tunnel and not (helper_too
                                                                 and not entry.tunnel):
            return False
        if level_rank(entry.level) < level_rank(min_level):
            return False
        return not text or text.casefold() in entry.message.casefold()

    def filtered(self, **criteria: Any) -> list[LogEntry]:
        return [e for e in self._entries if self.matches(e, **criteria)]


class RateHistory:
    """Receive and send rates of one tunnel over the last :data:`HISTORY_SECONDS`."""

    def __init__(self, seconds: float = HISTORY_SECONDS):
        self.seconds = seconds
        self._points: collections.deque[tuple[float, float, float]] = collections.deque()

    def add(self, t: float, rx_rate: float, tx_rate: float) -> None:
        if self._points and t < self._points[-1][0]:
            self._points.clear()  # the clock went backwards: start over rather than zigzag
        self._points.append((t, max(0.0, rx_rate), max(0.0, tx_rate)))
        self.trim(t)

    def trim(self, now: float) -> None:
        # Keep one point older than the window so the lines reach the left edge.
        while len(self._points) > 1 and now - self._points[1][0] > self.seconds:
            self._points.popleft()

    def points(self) -> list[tuple[float, float, float]]:
        return list(self._points)

    def peak(self) -> float:
        return max((max(rx, tx) for _, rx, tx in self._points), default=0.0)

    def __len__(self) -> int:
        return len(self._points)

    def clear(self) -> None:
        self._points.clear()


def duplicate_name(name: str, taken: Iterable[str]) -> str:
    """A free name for a copy of ``name``: 'office-copy', 'office-copy2', ... (at most 32
    characters, like every profile name)."""
    used = set(taken)
    for n in range(1, 1000):
        suffix = "-copy" if n == 1 else f"-copy{n}"
        candidate = name[: 32 - len(suffix)] + suffix
        if candidate not in used and NAME_PATTERN.fullmatch(candidate):
            return candidate
    raise ValueError(f"no free name for a copy of {name!r}")


class Model:
    """Profiles and tunnels as last reported by the helper."""

    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self.statuses: dict[str, TunnelStatus] = {}
        self.histories: dict[str, RateHistory] = {}
        self.recovered: dict[str, float] = {}
        """When each tunnel last came back up after losing its session (unix time)."""
        self.interfaces: dict[str, str] = {}
        """The link each tunnel last used, to name it while the tunnel is down."""
        self.logs = LogBook()
        self.availability = Availability(ok=False, code="unavailable",
                                         message="not connected to the helper yet")
        self.last_used: str = ""
        self.lockdown: dict[str, Any] = {}
        """The helper's last lockdown status (the ``lockdown`` op's result and event)."""

    @property
    def blocked(self) -> bool:
        """Lockdown is in force and no tunnel under it is up: "Blocked: no tunnel"."""
        return self.availability.ok and bool(self.lockdown.get("blocked"))

    # --- profiles ------------------------------------------------------------------------

    def set_profiles(self, dicts: Iterable[Mapping[str, Any]]) -> None:
        profiles: dict[str, Profile] = {}
        for d in dicts:
            try:
                p = profile_from_dict(d)
            except ProfileError as e:  # a newer helper's profile this client cannot read
                log.warning("ignoring a profile the helper sent: %s", e)
                continue
            profiles[p.name] = p
        self.profiles = profiles
        for name in [n for n in self.statuses if n not in profiles]:
            if self.statuses[name].state == "down":
                del self.statuses[name]
                self.histories.pop(name, None)

    def names(self) -> list[str]:
        return sorted(set(self.profiles) | {n for n, s in self.statuses.items()
                                            if s.state != "down"})

    # --- status --------------------------------------------------------------------------

    def apply_status(self, data: Mapping[str, Any], now: float) -> TunnelStatus:
        st = TunnelStatus.from_dict(dict(data))
        previous = self.statuses.get(st.name)
        self.statuses[st.name] = st
        if st.interface:
            self.interfaces[st.name] = st.interface
        if (st.state == "up" and previous is not None and previous.state not in ("up", "down")
                and previous.last_handshake is not None):
            self.recovered[st.name] = now
        history = self.histories.setdefault(st.name, RateHistory())
        if st.state == "down":
            if previous is not None and previous.state != "down":
                history.add(now, 0.0, 0.0)  # the graph drops to zero instead of stopping high
        else:
            history.add(now, st.rx_rate, st.tx_rate)
        return st

    def status(self, name: str) -> TunnelStatus:
        return self.statuses.get(name) or TunnelStatus(name=name, state="down")

    def state(self, name: str) -> str:
        return self.status(name).state

    def active(self) -> list[str]:
        """Names of tunnels that are running (in any state but down)."""
        return sorted(n for n, s in self.statuses.items() if s.state != "down")

    def mode(self, name: str) -> str:
        st = self.statuses.get(name)
        if st is not None and st.state != "down" and st.mode:
            return st.mode
        p = self.profiles.get(name)
        return p.mode if p is not None else ""

    def is_unsafe(self, name: str) -> bool:
        return self.mode(name) == Mode.PLAIN

    def tray_state(self) -> TrayState:
        if not self.availability.ok:
            return TrayState.PROBLEM
        if self.blocked:
            return TrayState.BLOCKED
        states = {s.state for s in self.statuses.values()}
        if states & {"error", "failed", "unreachable"}:
            return TrayState.PROBLEM
        if "up" in states:
            return TrayState.CONNECTED
        if states & {"connecting", "handshaking"}:
            return TrayState.CONNECTING
        return TrayState.DISCONNECTED

    def forget_tunnels(self) -> None:
        """The helper went away: its tunnels' state is unknown until it answers again."""
        self.statuses.clear()
        self.lockdown = {}
        for history in self.histories.values():
            history.clear()
