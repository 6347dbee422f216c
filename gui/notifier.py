"""Shows notices on the desktop: as a tray balloon when there is a tray, else through the
freedesktop notification service (through notify-send) when it is installed, and always in the
log.

Everything goes through :class:`gui.notify.RateLimiter` first. :attr:`Notifier.shown` records
what was shown and where, for the tests and for anyone debugging why a message did or did not
appear.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

from PySide6.QtCore import QObject, QProcess, QTimer
from PySide6.QtWidgets import QSystemTrayIcon

from gui.notify import Notice, RateLimiter

__all__ = ["Notifier", "Shown"]

log = logging.getLogger(__name__)

FLUSH_EVERY = 5000
"""Milliseconds between looks at notices the rate limiter held back."""
SHOW_FOR = 6000
"""Milliseconds a notification stays up."""


@dataclass(frozen=True, slots=True)
class Shown:
    time: float
    notice: Notice
    channel: str
    """'tray', 'notify-send' or 'log' (no desktop channel was available)."""


class Notifier(QObject):
    def __init__(self, *, tray: QSystemTrayIcon | None = None,
                 limiter: RateLimiter | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.tray = tray
        self.limiter = limiter or RateLimiter()
        self.shown: list[Shown] = []
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

    def _show(self, notice: Notice) -> None:
        channel = "log"
        tray = self.tray
        if tray is not None and tray.isVisible() and tray.supportsMessages():
            icon = (QSystemTrayIcon.MessageIcon.Warning if notice.is_problem
                    else QSystemTrayIcon.MessageIcon.Information)
            tray.showMessage(notice.title, notice.body, icon, SHOW_FOR)
            channel = "tray"
        elif _notify_send(notice):
            channel = "notify-send"
        log.info("notification (%s): %s: %s", channel, notice.title, notice.body)
        self.shown.append(Shown(time.time(), notice, channel))


def _notify_send(notice: Notice) -> bool:
    """The desktop's notification service (org.freedesktop.Notifications) through libnotify's
    ``notify-send``, when it is installed. Not through QtDBus: PySide6 cannot build the uint32
    argument Notify's signature (susssasa{sv}i) requires, and servers refuse an int32."""
    program = shutil.which("notify-send")
    if program is None:
        return False
    urgency = "critical" if notice.is_problem else "normal"
    icon = "dialog-warning" if notice.is_problem else "network-vpn"
    return bool(QProcess.startDetached(program, [
        "--app-name=Tunseal", f"--urgency={urgency}", f"--icon={icon}",
        f"--expire-time={SHOW_FOR}", notice.title, notice.body]))
