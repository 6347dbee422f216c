"""The live state of the helper, kept in a :class:`gui.model.Model` and announced as Qt signals.

Feeds the model from the helper's replies and events: a snapshot (profiles and every tunnel's
status) whenever the helper becomes reachable or says its profiles changed, then status and log
events as they come. Widgets read the model and listen to the signals; they never talk to the
helper for state.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.errors import IPCError
from gui.helper_client import HelperClient
from gui.model import Availability, LogEntry, Model, TrayState
from gui.notify import Kind, LockdownTracker, Notice, TransitionTracker

__all__ = ["LiveState"]

log = logging.getLogger(__name__)


class LiveState(QObject):
    profilesChanged = Signal()
    statusChanged = Signal(str)
    """A tunnel's status (and rate history) changed; the argument is its name."""
    logAdded = Signal(object)
    logsMerged = Signal()
    """Entries from the helper's recent log were added (older ones among them)."""
    availabilityChanged = Signal()
    trayStateChanged = Signal()
    lastUsedChanged = Signal(str)
    lockdownChanged = Signal()
    notice = Signal(object)
    """A :class:`gui.notify.Notice` about a tunnel's state change (before rate limiting)."""

    def __init__(self, helper: HelperClient, model: Model | None = None,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.helper = helper
        self.model = model or Model()
        self._tracker = TransitionTracker()
        self._lockdown = LockdownTracker()
        self._tray_state = self.model.tray_state()
        helper.received.connect(self._on_event)
        helper.available.connect(self._on_available)

    def set_last_used(self, name: str) -> None:
        if name and name != self.model.last_used:
            self.model.last_used = name
            self.lastUsedChanged.emit(name)

    def refresh(self) -> None:
        """Ask for a fresh snapshot of profiles and tunnels."""
        # Statuses first: the window's first selection is then a connected tunnel, if any.
        self.helper.statuses(on_result=self._on_statuses, on_error=self._log_error)
        self.helper.list_profiles(on_result=self._on_profiles, on_error=self._log_error)
        self.helper.call("lockdown", action="status", on_result=self._on_lockdown,
                         on_error=self._log_error)

    def fetch_log(self, name: str | None) -> None:
        """Bring in the helper's recent log about ``name`` (what happened before this window
        subscribed)."""
        args = {"name": name} if name else {}

        def merge(result: dict[str, Any]) -> None:
            entries = []
            for data in result.get("entries", []):
                try:
                    entries.append(LogEntry.from_event(data))
                except (TypeError, ValueError):
                    continue  # a malformed entry from a newer helper
            if self.model.logs.merge(entries):
                self.logsMerged.emit()

        self.helper.call("recent_log", on_result=merge,
                         on_error=lambda e: log.info("no recent log from the helper: %s", e),
                         **args)

    # --- from the helper -------------------------------------------------------------------

    def _on_available(self, ok: bool, code: str, message: str) -> None:
        was = self.model.availability
        self.model.availability = Availability(ok, code, message)
        if ok and not was.ok:
            self.refresh()
        elif not ok and was.ok:
            dropped = self.model.active()
            self.model.forget_tunnels()
            self._tracker.reset()
            self._lockdown.reset()
            self.lockdownChanged.emit()
            for name in self.model.names():
                self.statusChanged.emit(name)
            # A helper that stops takes its tunnels down (and one that crashed loses them):
            # traffic no longer goes through them, which the user must hear about.
            for name in dropped:
                self._announce(Notice(Kind.DROPPED, name, f"{name}: disconnected",
                                      "The Tunseal service stopped, and the tunnel went down "
                                      "with it. Start the service again to reconnect."))
        if was != self.model.availability:
            self.availabilityChanged.emit()
        self._tray_changed()

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            self._apply_status(data)
        elif kind == "lockdown":
            self._on_lockdown(data)
        elif kind == "log":
            entry = LogEntry.from_event(data)
            self.model.logs.add(entry)
            self.logAdded.emit(entry)
        elif kind == "profiles":
            self.helper.list_profiles(on_result=self._on_profiles, on_error=self._log_error)
            change, name = data.get("change"), str(data.get("name", ""))
            if change == "removed":
                self._tracker.forget(name)
            elif change in ("added", "imported"):
                # A profile that did not exist a moment ago is down: its first "up" is news
                # (without this baseline the first state seen would count as the snapshot).
                self._tracker.baseline(name, "down")

    def _on_profiles(self, result: dict[str, Any]) -> None:
        self.model.set_profiles(result.get("profiles", []))
        self.profilesChanged.emit()
        self._tray_changed()

    def _on_statuses(self, result: dict[str, Any]) -> None:
        for data in result.get("tunnels", []):
            self._apply_status(data)

    def _apply_status(self, data: dict[str, Any]) -> None:
        try:
            st = self.model.apply_status(data, time.time())
        except (TypeError, ValueError) as e:  # a malformed status from a newer helper
            log.warning("ignoring a status the helper sent: %s", e)
            return
        found = self._tracker.observe(st.name, st.state, error=st.error)
        self.statusChanged.emit(st.name)
        self._tray_changed()
        if found is not None:
            self._announce(found)

    def _on_lockdown(self, data: dict[str, Any]) -> None:
        self.model.lockdown = dict(data)
        found = self._lockdown.observe(self.model.lockdown)
        self.lockdownChanged.emit()
        self._tray_changed()
        if found is not None:
            self._announce(found)

    def _announce(self, notice: Notice) -> None:
        self.notice.emit(notice)

    def _tray_changed(self) -> None:
        state: TrayState = self.model.tray_state()
        if state != self._tray_state:
            self._tray_state = state
            self.trayStateChanged.emit()

    def _log_error(self, error: IPCError) -> None:
        log.warning("refreshing from the helper failed: %s", error)
