"""Desktop notifications through org.freedesktop.Notifications on the test session bus, and the
"no tray on this desktop" banner.

The notification server is a small D-Bus service written here (jeepney, a real peer on the
real bus of tests/run.sh): it owns org.freedesktop.Notifications, answers GetCapabilities,
GetServerInformation and Notify (recording every call) and emits ActionInvoked when the test
"presses a button". The bus has no StatusNotifierWatcher of its own; one test registers the
name, as a tray host would.

Both names are unique on the bus, which the test workers share: each test here holds a lock
file for as long as it runs (the xdist group alone did not keep them on one worker).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT
from dbusfake import DBusService, own
from jeepney import DBusAddress, HeaderFields, Message, new_method_return, new_signal
from jeepney.io.blocking import open_dbus_connection
from officelab import OfficeLab
from PySide6.QtCore import QSettings, Qt
from pytestqt.qtbot import QtBot

from gui.app import App, build
from gui.notifier import Notifier
from gui.notify import Kind, Notice
from gui.tray import EXTENSION, WATCHER, TrayNotice, missing_tray_notice, watcher_present

pytestmark = [pytest.mark.xdist_group("session-bus-names")]

LOCK = Path(tempfile.gettempdir()) / "tunseal-test-session-bus-names.lock"


@pytest.fixture(autouse=True)
def bus_names() -> Iterator[None]:
    """One test at a time, across workers, owns (or counts on nobody owning) the bus names."""
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

PATH = "/org/freedesktop/Notifications"
NAME = "org.freedesktop.Notifications"
class NotificationServer(DBusService):
    """org.freedesktop.Notifications, recording what it is asked to show."""

    def __init__(self, capabilities: tuple[str, ...] = ("actions", "body")):
        self.capabilities = list(capabilities)
        self.calls: list[dict[str, Any]] = []
        super().__init__("SESSION", NAME)

    def answer(self, msg: Message) -> Message | None:
        member = msg.header.fields.get(HeaderFields.member)
        if member == "GetCapabilities":
            return new_method_return(msg, "as", (self.capabilities,))
        if member == "GetServerInformation":
            return new_method_return(msg, "ssss", ("test", "tunseal", "1", "1.2"))
        if member != "Notify":
            return None
        app, replaces, icon, summary, body, actions, hints, timeout = msg.body
        self.calls.append({"app": app, "replaces": replaces, "icon": icon, "summary": summary,
                           "body": body, "actions": list(actions), "hints": dict(hints),
                           "timeout": timeout, "id": len(self.calls) + 1,
                           "signature": msg.header.fields.get(HeaderFields.signature)})
        return new_method_return(msg, "u", (len(self.calls),))

    def press(self, notification_id: int, action: str) -> None:
        """The user clicks a button: the server emits ActionInvoked (and closes it)."""
        address = DBusAddress(PATH, interface=NAME)
        self.send(new_signal(address, "ActionInvoked", "us", (notification_id, action)))
        self.send(new_signal(address, "NotificationClosed", "uu", (notification_id, 2)))


@pytest.fixture
def server() -> Iterator[NotificationServer]:
    s = NotificationServer()
    yield s
    s.close()


def notice(kind: Kind, tunnel: str = "office") -> Notice:
    return Notice(kind, tunnel, f"{kind.value} {tunnel}", "body text")


def test_notify_goes_over_dbus_with_actions(qtbot: QtBot, server: NotificationServer) -> None:
    notifier = Notifier()
    try:
        notifier.notify(notice(Kind.DROPPED))
        assert notifier.shown[-1].channel == "dbus"
        call = server.calls[-1]
        assert call["signature"] == "susssasa{sv}i"  # the uint32 replaces_id, as servers need
        assert call["app"] == "Tunseal" and call["summary"] == "dropped office"
        assert call["actions"] == ["reconnect", "Reconnect", "disconnect", "Disconnect"]
        assert call["hints"]["urgency"] == ("y", 2)
        assert call["hints"]["desktop-entry"] == ("s", "org.tunseal.Tunseal")
        notifier.notify(notice(Kind.CONNECTED, "lab"))
        assert server.calls[-1]["actions"] == ["disconnect", "Disconnect"]
        assert server.calls[-1]["hints"]["urgency"] == ("y", 1)

        with qtbot.waitSignal(notifier.actionRequested, timeout=WAIT) as pressed:
            server.press(1, "reconnect")
        assert pressed.args == ["reconnect", "office"]
        with qtbot.waitSignal(notifier.actionRequested, timeout=WAIT) as pressed:
            server.press(2, "disconnect")
        assert pressed.args == ["disconnect", "lab"]
        # Another program's notification (an id we never got) does nothing.
        with qtbot.assertNotEmitted(notifier.actionRequested, wait=500):
            server.press(99, "reconnect")
    finally:
        notifier.close()


def test_a_server_without_actions_gets_none() -> None:
    s = NotificationServer(capabilities=("body",))
    notifier = Notifier()
    try:
        notifier.notify(notice(Kind.FAILED))
        assert s.calls[-1]["actions"] == []
        assert notifier.shown[-1].channel == "dbus" and notifier.shown[-1].actions == ()
    finally:
        notifier.close()
        s.close()


def test_without_a_server_the_notice_goes_to_the_log() -> None:
    notifier = Notifier()
    try:
        notifier.notify(notice(Kind.CONNECTED))
        assert notifier.shown[-1].channel == "log"  # no server, no tray (offscreen)
    finally:
        notifier.close()


def test_the_disconnect_button_disconnects_for_real(qtbot: QtBot, server: NotificationServer,
                                                    gui: App, world: OfficeLab,
                                                    office: str) -> None:
    gui.actions.connect_tunnel(office)
    qtbot.waitUntil(lambda: any(c["summary"].startswith("Connected") for c in server.calls),
                    timeout=WAIT)
    call = next(c for c in server.calls if c["summary"].startswith("Connected"))
    assert call["actions"] == ["disconnect", "Disconnect"]
    server.press(call["id"], "disconnect")
    qtbot.waitUntil(lambda: world.laptop.call("status", name=office)["tunnels"][0]["state"]
                    == "down", timeout=WAIT)
    # The server was then told, with a Reconnect button, and that button connects again.
    qtbot.waitUntil(lambda: any(c["summary"].startswith("Disconnected") for c in server.calls),
                    timeout=WAIT)
    down = next(c for c in server.calls if c["summary"].startswith("Disconnected"))
    assert down["actions"] == ["reconnect", "Reconnect"]
    server.press(down["id"], "reconnect")
    qtbot.waitUntil(lambda: world.laptop.call("status", name=office)["tunnels"][0]["state"]
                    != "down", timeout=WAIT)


# --- the tray ------------------------------------------------------------------------------------


def test_no_watcher_on_the_bus_shows_the_banner_once(qtbot: QtBot, gui: App,
                                                     tmp_path: Path) -> None:
    assert watcher_present() is False  # the test bus has no tray host
    banner = gui.window.tray_notice
    assert banner.isVisible()
    assert EXTENSION in banner.text.text()
    assert "this window is the way in" in banner.text.text()
    # $TUNSEAL_SCREENSHOTS keeps the picture (docs/screenshots/no-tray.png).
    shots = Path(os.environ.get("TUNSEAL_SCREENSHOTS") or tmp_path)
    assert gui.window.grab().save(str(shots / "no-tray.png"))
    # Dismissed, and remembered: the next start does not say it again.
    settings = QSettings(str(tmp_path / "gui.ini"), QSettings.Format.IniFormat)
    again = TrayNotice()
    qtbot.addWidget(again)
    assert again.offer(missing_tray_notice(tray_available=False), settings)
    again.show()
    qtbot.mouseClick(again.dismiss_button, Qt.MouseButton.LeftButton)
    assert again.isHidden()
    later = TrayNotice()
    qtbot.addWidget(later)
    assert not later.offer(missing_tray_notice(tray_available=False), settings)


def test_with_a_watcher_on_the_bus_there_is_no_banner(qtbot: QtBot, world: OfficeLab) -> None:
    host = open_dbus_connection(bus="SESSION")
    try:
        own(host, WATCHER)
        assert watcher_present() is True
        assert missing_tray_notice(tray_available=False) == ""
        app = build(str(world.laptop.socket), native_dialogs=False)
        qtbot.addWidget(app.window)
        app.start()
        try:
            assert app.window.isVisible() and not app.window.tray_notice.isVisible()
        finally:
            app.close()
    finally:
        host.close()
    assert watcher_present() is False  # the name went with the connection
