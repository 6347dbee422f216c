"""Shows notices on the desktop: through the freedesktop Notifications service on the session
bus (org.freedesktop.Notifications, with "Reconnect" and "Disconnect" buttons where the server
shows actions), else as a tray balloon when there is a tray, and always in the log.

Everything goes through :class:`gui.notify.RateLimiter` first. :attr:`Notifier.shown` records
what was shown and where, for the tests and for anyone debugging why a message did or did not
appear.

D-Bus goes through jeepney (pure Python, already a dependency): QtDBus in PySide6 cannot build
the uint32 argument Notify's signature (``susssasa{sv}i``) needs, and a shell-out to
notify-send could not hear which button was pressed. :class:`DesktopNotifications` sends
Notify calls; a :class:`_SignalReader` (daemon) thread listens for ``ActionInvoked`` and
``NotificationClosed`` and hands them to the GUI thread as a Qt signal.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QSystemTrayIcon

from gui.notify import Kind, Notice, RateLimiter

__all__ = ["ACTIONS", "DesktopNotifications", "Notifier", "Shown"]

log = logging.getLogger(__name__)

FLUSH_EVERY = 5000
"""Milliseconds between looks at notices the rate limiter held back."""
SHOW_FOR = 6000
"""Milliseconds a notification stays up."""
BUS_TIMEOUT: Final = 2.0
"""Seconds a Notify call may take before the notice goes to the next channel."""
SERVICE: Final = "org.freedesktop.Notifications"
PATH: Final = "/org/freedesktop/Notifications"
ACTIONS: Final = {"reconnect": "Reconnect", "disconnect": "Disconnect"}
"""Action keys sent to the server, and the button labels it shows."""
DESKTOP_ENTRY: Final = "org.tunseal.Tunseal"
"""The ``desktop-entry`` hint: the server shows the app's name and icon (gui/app.py)."""


@dataclass(frozen=True, slots=True)
class Shown:
    time: float
    notice: Notice
    channel: str
    """'dbus', 'tray' or 'log' (no desktop channel was available)."""
    actions: tuple[str, ...] = ()
    """The action keys offered with it (dbus only)."""


def actions_for(notice: Notice) -> tuple[str, ...]:
    """What the user may do from the notice itself: get a lost or failed tunnel back (or give
    up on it), bring a disconnected one back, take a connected one down."""
    if not notice.tunnel or notice.kind in (Kind.HINT, Kind.LOCKDOWN_ON, Kind.LOCKDOWN_OFF):
        return ()
    if notice.kind in (Kind.DROPPED, Kind.FAILED):
        return ("reconnect", "disconnect")
    if notice.kind is Kind.DISCONNECTED:
        return ("reconnect",)
    return ("disconnect",)


class _Bridge(QObject):
    """Carries the reader thread's findings to the GUI thread (a queued signal)."""

    received = Signal(str, int, str)
    """member ('ActionInvoked' or 'NotificationClosed'), notification id, action key or ''."""


class _SignalReader:
    """Reads the Notifications service's signals on a daemon thread until :meth:`stop`. A plain
    thread, not a QThread: a QThread object collected while running aborts the process, and a
    notifier may be dropped without being closed."""

    def __init__(self, bridge: _Bridge):
        self._bridge = bridge
        self._stopping = threading.Event()
        self.ready = threading.Event()
        """Set once the match rule is in place (signals sent after that are seen)."""
        self._thread = threading.Thread(target=self._run, name="notification-signals",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from jeepney import MatchRule
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        try:
            conn = open_dbus_connection(bus="SESSION")
        except (OSError, KeyError, ValueError) as e:
            log.info("no session bus for notification actions: %s", e)
            self.ready.set()
            return
        try:
            rule = MatchRule(type="signal", interface=SERVICE, path=PATH)
            conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=BUS_TIMEOUT)
            with conn.filter(rule) as queue:
                self.ready.set()
                while not self._stopping.is_set():
                    try:
                        msg = conn.recv_until_filtered(queue, timeout=0.25)
                    except TimeoutError:
                        continue
                    self._forward(msg)
        except (OSError, ConnectionError, RuntimeError) as e:  # RuntimeError: bridge deleted
            if not self._stopping.is_set():
                log.info("notification signals stopped: %s", e)
        finally:
            self.ready.set()
            conn.close()

    def _forward(self, msg: Any) -> None:
        from jeepney import HeaderFields

        member = msg.header.fields.get(HeaderFields.member, "")
        body = msg.body
        if member == "ActionInvoked" and len(body) == 2:
            self._bridge.received.emit(member, int(body[0]), str(body[1]))
        elif member == "NotificationClosed" and body:
            self._bridge.received.emit(member, int(body[0]), "")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(3.0)


class DesktopNotifications(QObject):
    """The desktop's notification service, when one is on the session bus.

    :meth:`notify` returns the server's id for the notification (None when there is no server
    or it failed); :attr:`actionInvoked` says which button of which notification was pressed."""

    actionInvoked = Signal(int, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._conn: Any = None
        self._caps: set[str] | None = None
        self._reader: _SignalReader | None = None
        self._bridge = _Bridge(self)
        self._bridge.received.connect(self._on_signal)

    def _connection(self) -> Any:
        if self._conn is None:
            from jeepney.io.blocking import open_dbus_connection

            self._conn = open_dbus_connection(bus="SESSION")
        return self._conn

    def _call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import unwrap_msg

        address = DBusAddress(PATH, bus_name=SERVICE, interface=SERVICE)
        msg = new_method_call(address, method, signature, body)
        return unwrap_msg(self._connection().send_and_get_reply(msg, timeout=BUS_TIMEOUT))

    def capabilities(self) -> set[str]:
        """What the server says it can do ('actions', 'body', ...); empty without a server."""
        if self._caps is None:
            self._caps = set(self._call("GetCapabilities")[0])
        return self._caps

    def start_listening(self) -> None:
        if self._reader is None:
            self._reader = _SignalReader(self._bridge)
            self._reader.start()
            self._reader.ready.wait(BUS_TIMEOUT)

    def notify(self, notice: Notice, actions: tuple[str, ...]) -> int | None:
        from jeepney.wrappers import DBusErrorResponse

        try:
            caps = self.capabilities()
            offered = actions if "actions" in caps else ()
            if offered:
                self.start_listening()
            flat = [word for key in offered for word in (key, ACTIONS[key])]
            hints = {"urgency": ("y", 2 if notice.is_problem else 1),
                     "desktop-entry": ("s", DESKTOP_ENTRY)}
            icon = "dialog-warning" if notice.is_problem else "network-vpn"
            reply = self._call("Notify", "susssasa{sv}i",
                               ("Tunseal", 0, icon, notice.title, notice.body, flat, hints,
                                SHOW_FOR))
        except (OSError, KeyError, ValueError, TimeoutError, DBusErrorResponse) as e:
            # No session bus, nobody owns the name (ServiceUnknown), or it did not answer.
            log.debug("no desktop notification service: %s", e)
            self.close_connection()
            return None
        return int(reply[0])

    def _on_signal(self, member: str, notification_id: int, action: str) -> None:
        if member == "ActionInvoked":
            self.actionInvoked.emit(notification_id, action)

    def close_connection(self) -> None:
        conn, self._conn, self._caps = self._conn, None, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self.close_connection()


class Notifier(QObject):
    actionRequested = Signal(str, str)
    """(action key, tunnel): a button on a notification was pressed."""

    def __init__(self, *, tray: QSystemTrayIcon | None = None,
                 limiter: RateLimiter | None = None, parent: QObject | None = None,
                 desktop: DesktopNotifications | None = None):
        super().__init__(parent)
        self.tray = tray
        self.limiter = limiter or RateLimiter()
        self.desktop = desktop if desktop is not None else DesktopNotifications(self)
        self.desktop.actionInvoked.connect(self._on_action)
        self.shown: list[Shown] = []
        self._tunnel_of: dict[int, str] = {}
        """Notification id -> the tunnel it is about (for its buttons)."""
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(FLUSH_EVERY)
        self.flush_timer.timeout.connect(self.flush)
        self.flush_timer.start()

    def notify(self, notice: Notice) -> None:
        passed = self.limiter.admit(notice)
        if passed is None:
            log.info("notification held back (rate limit): %s", notice.title)
            return
        self._show(passed)

    def flush(self) -> None:
        for notice in self.limiter.due():
            self._show(notice)

    def close(self) -> None:
        self.flush_timer.stop()
        self.desktop.close()

    def _show(self, notice: Notice) -> None:
        channel = "log"
        offered: tuple[str, ...] = ()
        wanted = actions_for(notice)
        notification_id = self.desktop.notify(notice, wanted)
        tray = self.tray
        if notification_id is not None:
            channel = "dbus"
            offered = wanted if "actions" in self.desktop.capabilities() else ()
            if offered:
                self._tunnel_of[notification_id] = notice.tunnel
        elif tray is not None and tray.isVisible() and tray.supportsMessages():
            icon = (QSystemTrayIcon.MessageIcon.Warning if notice.is_problem
                    else QSystemTrayIcon.MessageIcon.Information)
            tray.showMessage(notice.title, notice.body, icon, SHOW_FOR)
            channel = "tray"
        log.info("notification (%s): %s: %s", channel, notice.title, notice.body)
        self.shown.append(Shown(time.time(), notice, channel, offered))

    def _on_action(self, notification_id: int, action: str) -> None:
        tunnel = self._tunnel_of.get(notification_id)
        if tunnel is None or action not in ACTIONS:
            return  # another program's notification, or a key we never offered
        log.info("notification action %r for %s", action, tunnel)
        self.actionRequested.emit(action, tunnel)
