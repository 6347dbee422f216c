"""The tray icon: its picture is the overall state, a click opens the window, and its menu
connects and disconnects profiles by name, opens the window and quits.

A click never changes a tunnel: a stray click on a panel must not drop the VPN (nm-applet,
Tailscale and the WireGuard app behave the same way). Only the named menu items do.

The menu is built whether or not the desktop has a tray (the window's own code paths and the
tests use it); the icon is shown only where a tray exists.
"""

from __future__ import annotations

import logging
from typing import Final

from PySide6.QtCore import QObject, QSettings, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSystemTrayIcon,
    QWidget,
)

from gui import format as fmt
from gui.icons import state_icon
from gui.model import TrayState
from gui.state import LiveState

__all__ = ["EXTENSION", "WATCHER", "Tray", "TrayNotice", "missing_tray_notice",
           "watcher_present"]

log = logging.getLogger(__name__)

WATCHER: Final = "org.kde.StatusNotifierWatcher"
"""The session-bus name of the StatusNotifierItem host: where tray icons live on Wayland and on
KDE; stock GNOME has none."""
EXTENSION: Final = "AppIndicator and KStatusNotifierItem Support"
"""The GNOME Shell extension that provides it (Debian: gnome-shell-extension-appindicator)."""
DISMISSED_KEY: Final = "trayNoticeDismissed"

_TRAY_WORDS = {
    TrayState.DISCONNECTED: "not connected",
    TrayState.CONNECTING: "connecting…",
    TrayState.CONNECTED: "connected",
    TrayState.PROBLEM: "needs attention",
    TrayState.BLOCKED: "Blocked: no tunnel",
}


def watcher_present() -> bool | None:
    """Whether a StatusNotifierWatcher is on the session bus (None: no session bus to ask)."""
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.wrappers import DBusErrorResponse, unwrap_msg

    try:
        with open_dbus_connection(bus="SESSION") as conn:
            reply = conn.send_and_get_reply(message_bus.NameHasOwner(WATCHER), timeout=2.0)
            return bool(unwrap_msg(reply)[0])
    except (OSError, KeyError, ValueError, TimeoutError, DBusErrorResponse) as e:
        log.info("cannot ask the session bus for a tray: %s", e)
        return None


def missing_tray_notice(*, tray_available: bool) -> str:
    """What to tell the user when the desktop shows no tray icons, or "" when it does (a
    watcher is there, Qt found another kind of tray, or there is no session bus to ask)."""
    if tray_available or watcher_present() is not False:
        return ""
    return (f"<b>No tray on this desktop.</b> Tunseal's tray icon needs a StatusNotifierWatcher, "
            f"and this session has none. On GNOME, install and turn on the "
            f"<b>{EXTENSION}</b> extension (Debian and Ubuntu: "
            "<tt>gnome-shell-extension-appindicator</tt>), then log out and in again. Until "
            "then this window is the way in: closing it quits Tunseal, and your tunnels stay "
            "as they are.")


class TrayNotice(QWidget):
    """The dismissible banner that says the tray is missing; once dismissed (remembered in the
    settings), never shown again."""

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("trayNotice")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)  # paint the background
        self.setStyleSheet("#trayNotice { background: #fff4ce; } "
                           "#trayNotice QLabel { color: #3b2f00; }")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setObjectName("trayNoticeText")
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.setObjectName("trayNoticeDismiss")
        self.dismiss_button.clicked.connect(self._dismiss)
        row = QHBoxLayout(self)
        row.addWidget(self.text, 1)
        row.addWidget(self.dismiss_button)
        self._settings: QSettings | None = None
        self.hide()

    def offer(self, text: str, settings: QSettings | None = None) -> bool:
        """Show ``text`` unless it is empty or was dismissed before; returns whether shown."""
        self._settings = settings
        if not text or (settings is not None
                        and settings.value(DISMISSED_KEY, False, type=bool)):
            self.hide()
            return False
        self.text.setText(text)
        self.show()
        return True

    def _dismiss(self) -> None:
        self.hide()
        if self._settings is not None:
            self._settings.setValue(DISMISSED_KEY, True)
        self.dismissed.emit()


class Tray(QObject):
    openRequested = Signal()
    quitRequested = Signal()
    toggleRequested = Signal(str)
    unblockRequested = Signal()
    trustRequested = Signal(str)
    """A profile's name: trust the network this machine is on now (autoconnect)."""

    def __init__(self, state: LiveState, parent: QObject | None = None):
        super().__init__(parent)
        self.state = state
        self.menu = QMenu()
        self.icon = QSystemTrayIcon()
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.tunnel_actions: dict[str, QAction] = {}
        state.profilesChanged.connect(self.rebuild)
        state.statusChanged.connect(self._status_changed)
        state.trayStateChanged.connect(self.refresh_icon)
        state.availabilityChanged.connect(self.rebuild)
        state.lockdownChanged.connect(self.rebuild)
        self.rebuild()

    @staticmethod
    def available() -> bool:
        return QSystemTrayIcon.isSystemTrayAvailable()

    def show(self) -> bool:
        """Show the icon if the desktop has a tray; returns whether it did."""
        if not self.available():
            return False
        self.icon.show()
        return True

    def hide(self) -> None:
        self.icon.hide()

    # --- picture and menu ------------------------------------------------------------------

    def refresh_icon(self) -> None:
        model = self.state.model
        tray_state = model.tray_state()
        self.icon.setIcon(state_icon(tray_state))
        if not model.availability.ok:
            tip = "Tunseal: the helper is not available"
        else:
            active = [f"{n}: {fmt.state_text(model.state(n))}"
                      + (" (UNSAFE: plain)" if model.is_unsafe(n) else "")
                      for n in model.active()]
            tip = "Tunseal\n" + ("\n".join(active) if active else "Not connected")
            if model.blocked:
                tip = "Tunseal: Blocked: no tunnel (lockdown is on)"
        self.icon.setToolTip(tip)
        self.title_action.setText(f"Tunseal: {_TRAY_WORDS[tray_state]}")

    def rebuild(self) -> None:
        model = self.state.model
        self.menu.clear()
        self.tunnel_actions.clear()
        self.title_action = self.menu.addAction("Tunseal")
        self.title_action.setEnabled(False)
        self.menu.addSeparator()
        self.unblock_action: QAction | None = None
        if model.blocked:
            self.unblock_action = self.menu.addAction("Unblock (turn lockdown off)",
                                                      self.unblockRequested.emit)
            self.menu.addSeparator()
        if model.availability.ok:
            for name in model.names():
                action = self.menu.addAction(name)
                action.triggered.connect(lambda _checked=False, n=name:
                                         self.toggleRequested.emit(n))
                self.tunnel_actions[name] = action
                self._label(name)
            if not self.tunnel_actions:
                self.menu.addAction("No profiles yet").setEnabled(False)
            self._trust_items()
        else:
            self.menu.addAction("Helper not available").setEnabled(False)
        self.menu.addSeparator()
        self.open_action = self.menu.addAction("Open Tunseal", self.openRequested.emit)
        self.quit_action = self.menu.addAction("Quit", self.quitRequested.emit)
        self._label_quit()
        self.refresh_icon()

    def _trust_items(self) -> None:
        """"Trust this network" for each profile that connects by itself on untrusted
        networks: the helper adds the network it sees now to the profile's trusted list."""
        self.trust_actions: dict[str, QAction] = {}
        names = [n for n, p in sorted(self.state.model.profiles.items())
                 if p.autoconnect == "untrusted"]
        if names:
            self.menu.addSeparator()
        for name in names:
            text = "Trust this network" if len(names) == 1 else f"Trust this network ({name})"
            action = self.menu.addAction(text)
            action.setToolTip(f"{name} stays disconnected on this network from now on")
            action.triggered.connect(lambda _checked=False, n=name: self.trustRequested.emit(n))
            self.trust_actions[name] = action

    def _label(self, name: str) -> None:
        action = self.tunnel_actions.get(name)
        if action is None:
            return
        model = self.state.model
        state = model.state(name)
        verb = "Connect" if state == "down" else "Disconnect"
        unsafe = "  ⚠ unsafe (plain)" if model.is_unsafe(name) else ""
        action.setText(f"{verb} {name}  ({fmt.state_text(state)}){unsafe}")
        action.setIcon(state_icon(state))

    def _label_quit(self) -> None:
        # Quitting the client leaves the helper's tunnels up: say so before anyone relies on
        # Quit to disconnect.
        stays = bool(self.state.model.active())
        self.quit_action.setText("Quit Tunseal (tunnels stay connected)…" if stays
                                 else "Quit Tunseal")

    def _status_changed(self, name: str) -> None:
        if name in self.tunnel_actions:
            self._label(name)
            self._label_quit()
        elif name in self.state.model.names():
            self.rebuild()
        self.refresh_icon()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        # Trigger (a left click) and DoubleClick open the window; Context (a right click)
        # opens the menu, which Qt does by itself.
        if reason in (QSystemTrayIcon.ActivationReason.Trigger,
                      QSystemTrayIcon.ActivationReason.DoubleClick):
            self.openRequested.emit()
