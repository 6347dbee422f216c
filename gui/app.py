"""``tunseal-gui``: puts the desktop client together and runs it.

:func:`build` wires the parts (the tests and gui.screenshots use it too, so they run exactly
what a user runs); :func:`main` adds the QApplication, the settings and the event loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PySide6.QtCore import QByteArray, QSettings
from PySide6.QtWidgets import QApplication

from gui.actions import Actions
from gui.helper_client import HelperClient
from gui.icons import app_icon
from gui.model import Model
from gui.notifier import Notifier
from gui.notify import Kind, Notice
from gui.state import LiveState
from gui.tray import Tray, missing_tray_notice
from gui.window import MainWindow

log = logging.getLogger(__name__)

__all__ = ["DESKTOP_ID", "App", "build", "main"]

DESKTOP_ID = "org.tunseal.Tunseal"
"""The desktop file's name (installers/common/org.tunseal.Tunseal.desktop), the AppStream id
(resources/org.tunseal.Tunseal.metainfo.xml) and so the Wayland app id: one name, so the
compositor matches the window to its menu entry and icon."""


@dataclass
class App:
    helper: HelperClient
    state: LiveState
    actions: Actions
    window: MainWindow
    tray: Tray
    notifier: Notifier
    settings: QSettings | None = None
    """Where the window's geometry is kept between runs (None: not kept)."""
    quit_now: Callable[[], None] = field(default=QApplication.quit)
    """Ends the program (main() passes the QApplication's quit; tests pass their own)."""

    def start(self) -> None:
        """Show the tray icon (where there is a tray) and the window, and reach the helper."""
        if self.tray.show():
            self.window.hide_on_close = True
        self.window.tray_notice.offer(missing_tray_notice(tray_available=self.tray.available()),
                                      self.settings)
        self.window.show()
        self.helper.start()

    def open_window(self) -> None:
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()

    def request_quit(self) -> None:
        """Quit from the tray or the menu: the window says that tunnels stay up first."""
        self.window.confirm_quit(self.quit_now)

    def tell_hidden(self) -> None:
        self.notifier.notify(Notice(Kind.HINT, "", "Tunseal is still running",
                                    "Closing the window keeps Tunseal in the tray, with your "
                                    "tunnels as they are. Use Quit in the tray menu to quit."))

    def close(self) -> None:
        """Stop talking to the helper and take the tray icon away (tunnels keep running: the
        helper owns them)."""
        self.notifier.close()
        if self.settings is not None:
            self.settings.setValue("geometry", self.window.saveGeometry())
        self.tray.hide()
        self.helper.close()
        self.window.hide_on_close = False
        self.window.close()


def build(socket: str | None = None, *, native_dialogs: bool = True,
          last_used: str = "", settings: QSettings | None = None) -> App:
    helper = HelperClient(socket)
    model = Model()
    model.last_used = last_used
    state = LiveState(helper, model)
    actions = Actions(state)
    window = MainWindow(state, actions, native_dialogs=native_dialogs)
    tray = Tray(state)
    notifier = Notifier(tray=tray.icon)
    state.notice.connect(notifier.notify)
    app = App(helper, state, actions, window, tray, notifier, settings=settings)
    geometry = settings.value("geometry") if settings is not None else None
    if isinstance(geometry, QByteArray):
        window.restoreGeometry(geometry)  # size and place of the last run
    tray.toggleRequested.connect(actions.toggle)
    notifier.actionRequested.connect(lambda action, name: _notification_action(
        actions, state, action, name))  # the buttons of a desktop notification
    tray.unblockRequested.connect(actions.unblock)
    tray.trustRequested.connect(actions.trust_current_network)
    helper.available.connect(_session_teller(helper))
    tray.openRequested.connect(app.open_window)
    tray.quitRequested.connect(app.request_quit)
    window.hiddenToTray.connect(app.tell_hidden)
    window.quitRequested.connect(app.request_quit)
    return app


def _session_teller(helper: HelperClient) -> Callable[[bool, str, str], None]:
    """Tell the helper once, when it first answers, that this user's session started: its
    ``autoconnect = "login"`` profiles come up (the client starts with the session, from its
    autostart entry)."""
    told: list[bool] = []

    def tell(ok: bool, _code: str, _message: str) -> None:
        if ok and not told:
            told.append(True)
            helper.call("session_started",
                        on_error=lambda e: log.info("session_started: %s", e))

    return tell


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunseal-gui", description="The Tunseal desktop client.")
    parser.add_argument("--socket", metavar="PATH",
                        help="the helper's socket (default $TUNSEAL_SOCKET or "
                        "/run/tunseal/helper.sock)")
    parser.add_argument("--hidden", action="store_true",
                        help="start in the tray, without opening the window")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(qapp, QApplication)
    qapp.setApplicationName("Tunseal")
    qapp.setOrganizationName("Tunseal")
    qapp.setDesktopFileName(DESKTOP_ID)
    qapp.setWindowIcon(app_icon())
    settings = QSettings()
    last = settings.value("lastProfile", "")
    app = build(args.socket, last_used=last if isinstance(last, str) else "",
                settings=settings)
    app.state.lastUsedChanged.connect(lambda name: settings.setValue("lastProfile", name))
    app.quit_now = qapp.quit
    app.window.tray_hint_given = bool(settings.value("trayHintShown", False, type=bool))
    app.window.hiddenToTray.connect(lambda: settings.setValue("trayHintShown", True))
    qapp.setQuitOnLastWindowClosed(not app.tray.available())
    qapp.aboutToQuit.connect(app.close)
    signal.signal(signal.SIGINT, lambda *_: qapp.quit())
    app.start()
    if args.hidden and app.window.hide_on_close:
        app.window.hide()
    return qapp.exec()


def _notification_action(actions: Actions, state: LiveState, action: str, name: str) -> None:
    if action == "disconnect":
        actions.disconnect_tunnel(name)
    elif state.model.state(name) == "down":
        actions.connect_tunnel(name)
    else:
        actions.reconnect(name)


if __name__ == "__main__":
    sys.exit(main())
