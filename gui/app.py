"""``tunseal-gui``: puts the desktop client together and runs it.

:func:`build` wires the parts (the tests and gui.screenshots use it too, so they run exactly
what a user runs); :func:`main` adds the QApplication, the settings and the event loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from gui.actions import Actions
from gui.helper_client import HelperClient
from gui.icons import app_icon
from gui.model import Model
from gui.notifier import Notifier
from gui.state import LiveState
from gui.tray import Tray
from gui.window import MainWindow

__all__ = ["App", "build", "main"]


@dataclass
class App:
    helper: HelperClient
    state: LiveState
    actions: Actions
    window: MainWindow
    tray: Tray
    notifier: Notifier

    def start(self) -> None:
        """Show the tray icon (where there is a tray) and the window, and reach the helper."""
        if self.tray.show():
            self.window.hide_on_close = True
        self.window.show()
        self.helper.start()

    def open_window(self) -> None:
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()

    def close(self) -> None:
        """Stop talking to the helper and take the tray icon away (tunnels keep running: the
        helper owns them)."""
        self.notifier.flush_timer.stop()
        self.tray.hide()
        self.helper.close()
        self.window.hide_on_close = False
        self.window.close()


def build(socket: str | None = None, *, native_dialogs: bool = True,
          last_used: str = "") -> App:
    helper = HelperClient(socket)
    model = Model()
    model.last_used = last_used
    state = LiveState(helper, model)
    actions = Actions(state)
    window = MainWindow(state, actions, native_dialogs=native_dialogs)
    tray = Tray(state)
    notifier = Notifier(tray=tray.icon)
    state.notice.connect(notifier.notify)
    app = App(helper, state, actions, window, tray, notifier)
    tray.toggleRequested.connect(actions.toggle)
    tray.unblockRequested.connect(actions.unblock)
    tray.openRequested.connect(app.open_window)
    return app


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
    qapp.setDesktopFileName("tunseal-gui")
    qapp.setWindowIcon(app_icon())
    settings = QSettings()
    last = settings.value("lastProfile", "")
    app = build(args.socket, last_used=last if isinstance(last, str) else "")
    app.state.lastUsedChanged.connect(lambda name: settings.setValue("lastProfile", name))
    app.tray.quitRequested.connect(qapp.quit)
    qapp.setQuitOnLastWindowClosed(not app.tray.available())
    qapp.aboutToQuit.connect(app.close)
    signal.signal(signal.SIGINT, lambda *_: qapp.quit())
    app.start()
    if args.hidden and app.window.hide_on_close:
        app.window.hide()
    return qapp.exec()


if __name__ == "__main__":
    sys.exit(main())
