"""The desktop client against real helpers: a laptop and an office namespace, a real tunnel
between them, traffic through it. Every test clicks the real widgets (pytest-qt) and checks what
a user would see, and what the helper then holds.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import (
    QDialogButtonBox,
    QMessageBox,
    QPushButton,
    QToolBar,
    QWidget,
)
from pytestqt.qtbot import QtBot

from core import noise
from core.constants import DEFAULT_CIPHER
from gui.app import App
from gui.model import Availability, TrayState, guidance, socket_group
from gui.notify import Kind
from gui.qr import qr_matrix

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def click(qtbot: QtBot, widget: QWidget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def click_action(qtbot: QtBot, app: App, action_text: str) -> None:
    bar = app.window.findChild(QToolBar, "profileToolbar")
    assert bar is not None
    action = next(a for a in bar.actions() if a.text() == action_text)
    button = bar.widgetForAction(action)
    assert button is not None and button.isEnabled(), action_text
    click(qtbot, button)


def box_button(box: QMessageBox, text: str) -> QWidget:
    return next(b for b in box.buttons() if b.text() == text)


def list_texts(app: App) -> list[str]:
    lst = app.window.profile_list
    return [lst.item(i).text() for i in range(lst.count())]


def connect_by_click(qtbot: QtBot, app: App, name: str) -> None:
    app.window.select(name)
    assert app.window.connect_button.text() == "Connect"
    click(qtbot, app.window.connect_button)
    qtbot.waitUntil(lambda: app.window.header_state.text() == "Connected", timeout=WAIT)


def test_import_connect_live_status_disconnect(qtbot: QtBot, world: OfficeLab, no_profiles: None,
                                               tmp_path: Path) -> None:
    app = _gui(qtbot, world)
    assert app.window.right.currentWidget() is app.window.empty  # "No profiles yet"
    path = world.write_profile(tmp_path)

    click_action(qtbot, app, "Import…")
    dialog = app.window.import_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.selectFile(str(path))
    dialog.accept()  # what the dialog's Open button does: fileSelected -> the import code path
    qtbot.waitUntil(lambda: list_texts(app) == ["office\nDisconnected"], timeout=WAIT)
    assert world.laptop.call("public_key", name="office")["public_key"] == base64.b64encode(
        noise.public_key(world.laptop_key)).decode()  # the [secrets] went to the keyring

    connect_by_click(qtbot, app, "office")
    assert list_texts(app) == ["office\nConnected"]
    assert app.tray.icon.icon().cacheKey() != 0 and app.state.model.tray_state() is \
        TrayState.CONNECTED
    values = app.window.status_panel.values
    assert values["endpoint"].text() == "198.18.9.1:51900"
    assert values["mode"].text() == "ephemeral" and values["cipher"].text() == DEFAULT_CIPHER
    assert values["mtu"].text() == "1408"
    assert values["handshake"].text().endswith(" ago")

    graph = app.window.status_panel.graph
    ping = world.traffic(6)
    qtbot.waitUntil(lambda: graph.point_count() >= 4
                    and app.state.model.histories["office"].peak() > 20_000, timeout=WAIT)
    assert values["received"].text().endswith(("KiB", "MiB"))
    assert values["rates"].text().startswith("↓ ")
    ping.wait(15)

    click(qtbot, app.window.connect_button)  # now labelled Disconnect
    qtbot.waitUntil(lambda: app.window.header_state.text() == "Disconnected", timeout=WAIT)
    assert world.laptop.call("status", name="office")["tunnels"][0]["state"] == "down"
    kinds = [s.notice.kind for s in app.notifier.shown]
    assert kinds == [Kind.CONNECTED, Kind.DISCONNECTED]
    assert app.notifier.shown[-1].notice.title == "Disconnected from office"
    assert app.notifier.shown[-1].channel in ("dbus", "tray", "log")


def _gui(qtbot: QtBot, world: OfficeLab) -> App:
    from gui.app import build

    app = build(str(world.laptop.socket), native_dialogs=False)
    qtbot.addWidget(app.window)
    app.start()
    qtbot.waitUntil(lambda: app.state.model.availability.ok, timeout=WAIT)
    return app


def test_drop_a_file_on_the_window_imports_it(qtbot: QtBot, gui: App, world: OfficeLab,
                                              no_profiles: None, tmp_path: Path) -> None:
    path = world.write_profile(tmp_path, "branch")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    # Qt delivers drag events only inside a real drag session, which offscreen has none of:
    # hand the window's own handlers the events a drag from a file manager brings.
    other = QMimeData()
    other.setUrls([QUrl.fromLocalFile(str(tmp_path / "notes.txt"))])
    for data, wanted in ((other, False), (mime, True)):
        enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, data,
                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
        gui.window.dragEnterEvent(enter)
        assert enter.isAccepted() is wanted
    drop = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    gui.window.dropEvent(drop)
    assert drop.isAccepted()
    qtbot.waitUntil(lambda: list_texts(gui) == ["branch\nDisconnected"], timeout=WAIT)
    # A file that is not a profile is refused with what is wrong with it.
    bad = tmp_path / "broken.tunseal"
    bad.write_text('format = 1\n[tunnel]\nname = "x"\nmode = "fast"\n')
    gui.window.import_file(str(bad))
    qtbot.waitUntil(lambda: gui.window.question is not None
                    and gui.window.question.isVisible(), timeout=WAIT)
    assert "tunnel.mode" in gui.window.question.text()


def test_editor_shows_each_error_next_to_its_field(qtbot: QtBot, gui: App, world: OfficeLab,
                                                   office: str) -> None:
    qtbot.waitUntil(lambda: "office" in gui.state.model.profiles, timeout=WAIT)
    gui.window.select(office)
    click_action(qtbot, gui, "Edit…")
    editor = gui.window.editor
    assert editor is not None and editor.isVisible()
    endpoint, mtu = editor.inputs["peer.endpoint"], editor.inputs["tunnel.mtu"]
    endpoint.setText("vpn.example.com:99999")  # type: ignore[union-attr]
    mtu.setText("100")  # type: ignore[union-attr]
    save = editor.buttons.button(QDialogButtonBox.StandardButton.Save)
    click(qtbot, save)
    assert editor.isVisible()
    assert "Port 99999 is out of range (1-65535)" in editor.error_text("peer.endpoint")
    assert "out of range" in editor.error_text("tunnel.mtu")
    assert editor.errors["tunnel.mtu"].isVisible()  # an advanced field: the section opened
    assert editor.error_text("tunnel.name") == "" and editor.error_text("peer.public_key") == ""

    mode = editor.inputs["tunnel.mode"]
    mode.setCurrentIndex(mode.findData("plain"))  # type: ignore[union-attr]
    assert editor.unsafe.isVisible()

    mode.setCurrentIndex(mode.findData("ephemeral"))  # type: ignore[union-attr]
    endpoint.setText("198.18.9.1:51900")  # type: ignore[union-attr]
    mtu.setText("1400")  # type: ignore[union-attr]
    click(qtbot, save)
    qtbot.waitUntil(lambda: gui.window.editor is None, timeout=WAIT)
    assert world.laptop.call("get_profile", name=office)["profile"]["tunnel"]["mtu"] == 1400


def test_plain_mode_is_marked_unsafe(qtbot: QtBot, gui: App, world: OfficeLab,
                                     office: str) -> None:
    profile = world.laptop.call("get_profile", name=office)["profile"]
    profile["tunnel"]["mode"] = "plain"
    world.laptop.call("update_profile", profile=profile)
    qtbot.waitUntil(lambda: gui.state.model.is_unsafe(office), timeout=WAIT)
    gui.window.select(office)
    assert gui.window.header_unsafe.isVisible()
    assert "no encryption" in gui.window.header_unsafe.text()
    assert list_texts(gui) == ["office\nDisconnected\nUNSAFE (plain)"]
    assert "unsafe" in gui.tray.tunnel_actions[office].text()


def test_export_with_and_without_secrets(qtbot: QtBot, gui: App, office: str,
                                         tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: "office" in gui.state.model.profiles, timeout=WAIT)
    gui.window.select(office)
    plain = tmp_path / "plain.tunseal"
    gui.window.export_action.trigger()
    dialog = gui.window.export_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.selectFile(str(plain))
    dialog.accept()
    qtbot.waitUntil(plain.exists, timeout=WAIT)
    assert "[secrets]" not in plain.read_text() and 'name = "office"' in plain.read_text()

    # With secrets: an explicit confirmation first; Cancel exports nothing.
    gui.window.export_dialog = None
    gui.window.export_secrets_action.trigger()
    box = gui.window.question
    assert box is not None and box.isVisible() and "secret keys" in box.text()
    click(qtbot, box.button(QMessageBox.StandardButton.Cancel))
    assert gui.window.export_dialog is None

    gui.window.export_secrets_action.trigger()
    box = gui.window.question
    assert box is not None
    click(qtbot, box_button(box, "Export secret keys"))
    dialog = gui.window.export_dialog
    assert dialog is not None and dialog.isVisible()
    secret = tmp_path / "secret.tunseal"
    dialog.selectFile(str(secret))
    dialog.accept()
    qtbot.waitUntil(secret.exists, timeout=WAIT)
    assert "[secrets]" in secret.read_text()
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_keys_tab(qtbot: QtBot, gui: App, world: OfficeLab, office: str) -> None:
    qtbot.waitUntil(lambda: "office" in gui.state.model.profiles, timeout=WAIT)
    gui.window.select(office)
    keys = gui.window.keys_panel
    gui.window.tabs.setCurrentWidget(keys)
    expected = world.laptop.call("public_key", name=office)["public_key"]
    qtbot.waitUntil(lambda: keys.public_key.text() == expected, timeout=WAIT)
    assert keys.qr.isVisible() and keys.qr.matrix == qr_matrix(expected)
    click(qtbot, keys.copy_button)
    assert QGuiApplication.clipboard().text() == expected
    private = base64.b64encode(world.laptop_key).decode()
    assert private not in keys.grab().toImage().text() and all(
        private not in w.text() for w in keys.findChildren(QPushButton))

    # A bad peer key is refused next to its field; a good one is stored.
    keys.peer_key.setText("not-a-key")
    click(qtbot, keys.set_peer_button)
    qtbot.waitUntil(lambda: keys.peer_error.isVisible(), timeout=WAIT)
    assert "is not a public key" in keys.peer_error.text()
    new_peer = base64.b64encode(noise.public_key(noise.generate_private_key())).decode()
    keys.peer_key.setText(new_peer)
    click(qtbot, keys.set_peer_button)
    qtbot.waitUntil(lambda: world.laptop.call("get_profile", name=office)["profile"]["peer"]
                    ["public_key"] == new_peer, timeout=WAIT)
    assert not keys.peer_error.isVisible()

    # A new key pair replaces the old one, after a confirmation.
    click(qtbot, keys.generate_button)
    box = next(w for w in keys.findChildren(QMessageBox) if w.isVisible())
    click(qtbot, box_button(box, "Replace"))
    qtbot.waitUntil(lambda: keys.public_key.text() not in ("", expected), timeout=WAIT)
    assert keys.public_key.text() == world.laptop.call("public_key", name=office)["public_key"]


def test_logs_tab_filters_and_copies(qtbot: QtBot, gui: App, office: str) -> None:
    qtbot.waitUntil(lambda: "office" in gui.state.model.profiles, timeout=WAIT)
    connect_by_click(qtbot, gui, office)
    logs = gui.window.logs_panel
    gui.window.tabs.setCurrentWidget(logs)
    qtbot.waitUntil(lambda: "office: connected to office" in logs.visible_text(), timeout=WAIT)
    assert "connect office" not in logs.visible_text()  # the helper's own line: not by default
    logs.helper_too.setChecked(True)
    assert "connect office" in logs.visible_text()
    logs.filter.setText("CONNECTED TO")
    lines = logs.visible_text().splitlines()
    assert lines and all("connected to" in line for line in lines)
    logs.level.setCurrentIndex(logs.level.findData("ERROR"))
    assert logs.visible_text() == "" and logs.empty.isVisible()
    logs.level.setCurrentIndex(logs.level.findData("INFO"))
    click(qtbot, logs.copy_button)
    assert "office: connected to office" in QGuiApplication.clipboard().text()


def test_duplicate_and_delete(qtbot: QtBot, gui: App, world: OfficeLab, office: str) -> None:
    qtbot.waitUntil(lambda: "office" in gui.state.model.profiles, timeout=WAIT)
    gui.window.select(office)
    click_action(qtbot, gui, "Duplicate")
    qtbot.waitUntil(lambda: "office-copy" in gui.state.model.profiles, timeout=WAIT)
    copy = world.laptop.call("get_profile", name="office-copy")["profile"]
    assert copy["keys"] == {"private_key": "profile:office-copy:private"}  # its own item
    gui.window.select("office-copy")
    click_action(qtbot, gui, "Delete…")
    box = gui.window.question
    assert box is not None and "office-copy" in box.text()
    click(qtbot, box_button(box, "Delete"))
    qtbot.waitUntil(lambda: "office-copy" not in gui.state.model.profiles, timeout=WAIT)
    names = [p["tunnel"]["name"] for p in world.laptop.call("list_profiles")["profiles"]]
    assert names == [office]


def test_without_a_helper_the_window_says_what_to_do(qtbot: QtBot, world: OfficeLab,
                                                     office: str) -> None:
    world.laptop.stop()
    try:
        from gui.app import build

        app = build(str(world.laptop.socket), native_dialogs=False)
        qtbot.addWidget(app.window)
        app.start()
        page = app.window.unavailable
        qtbot.waitUntil(lambda: app.window.right.currentWidget() is page
                        and page.command.text() != "", timeout=WAIT)
        assert page.headline.text() == "The Tunseal helper is not running."
        assert page.command.text() == "sudo systemctl start tunseal-helper"
        assert str(world.laptop.socket) in page.advice.text()  # the socket really in use
        click(qtbot, page.copy_button)
        assert QGuiApplication.clipboard().text() == "sudo systemctl start tunseal-helper"
        assert "Traceback" not in page.detail.text()
        assert not app.window.import_action.isEnabled()
        assert app.state.model.tray_state() is TrayState.PROBLEM
        assert app.tray.title_action.text() == "Tunseal: needs attention"

        world.laptop.start()
        click(qtbot, page.retry_button)
        qtbot.waitUntil(lambda: app.window.right.currentWidget() is app.window.detail
                        and list_texts(app) == ["office\nDisconnected"], timeout=WAIT)
        app.close()
    finally:
        world.ensure_laptop_running()


def test_the_helper_going_away_is_shown_and_recovered(qtbot: QtBot, gui: App,
                                                     world: OfficeLab, office: str) -> None:
    qtbot.waitUntil(lambda: "office" in gui.state.model.profiles, timeout=WAIT)
    connect_by_click(qtbot, gui, office)
    world.laptop.stop()
    try:
        page = gui.window.unavailable
        qtbot.waitUntil(lambda: gui.window.right.currentWidget() is page, timeout=WAIT)
        # The list stays, greyed, its states unknown; the dropped tunnel is announced.
        assert gui.window.profile_list.isVisible()
        assert not gui.window.profile_list.isEnabled()
        assert list_texts(gui) == ["office\nunknown (no helper)"]
        dropped = [s.notice for s in gui.notifier.shown if s.notice.kind is Kind.DROPPED]
        assert [n.tunnel for n in dropped] == [office]
        assert "service stopped" in dropped[0].body

        # Retries with details of different lengths do not move the Retry button.
        y = page.retry_button.mapTo(gui.window, QPoint(0, 0)).y()
        for message in ("short", "a much longer message " * 12, ""):
            page.show_availability(Availability(False, "unavailable", message))
            qtbot.wait(10)
            assert page.retry_button.mapTo(gui.window, QPoint(0, 0)).y() == y
    finally:
        world.ensure_laptop_running()
    click(qtbot, gui.window.unavailable.retry_button)
    qtbot.waitUntil(lambda: gui.window.right.currentWidget() is gui.window.detail
                    and gui.window.profile_list.isEnabled(), timeout=WAIT)


def test_guidance_names_the_real_group_and_socket(tmp_path: Path) -> None:
    import grp
    import socket as so

    path = tmp_path / "helper.sock"
    server = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    server.bind(str(path))
    try:
        group = grp.getgrgid(os.getgid()).gr_name
        os.chmod(path, 0o600)
        assert socket_group(str(path)) is None
        _head, advice, command = guidance(Availability(False, "forbidden"), str(path), None)
        assert "admits only root" in advice and str(path) in advice
        os.chmod(path, 0o660)
        assert socket_group(str(path)) == group
        _head, advice, command = guidance(Availability(False, "forbidden"), str(path),
                                          group)
        assert f"'{group}'" in advice and command == f"sudo usermod -aG {group} $USER"
    finally:
        server.close()
