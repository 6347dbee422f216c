"""The profile editor in the user's words, against the real helper: errors go as the field is
corrected, a bad name is blamed on the name alone, focus starts on Name, a connected profile
is reconnected to apply changes, deleting a connected one warns, plain mode hides key fields."""

from __future__ import annotations

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDialogButtonBox, QLineEdit, QMessageBox, QWidget
from pytestqt.qtbot import QtBot

from gui.app import App
from gui.editor import ProfileEditor

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def click(qtbot: QtBot, widget: QWidget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def line(editor: ProfileEditor, key: str) -> QLineEdit:
    widget = editor.inputs[key]
    assert isinstance(widget, QLineEdit)
    return widget


def save(qtbot: QtBot, editor: ProfileEditor) -> None:
    click(qtbot, editor.buttons.button(QDialogButtonBox.StandardButton.Save))


def open_editor(gui: App, name: str | None) -> ProfileEditor:
    if name is None:
        gui.window.new_action.trigger()
    else:
        gui.window.select(name)
        gui.window.edit_action.trigger()
    editor = gui.window.editor
    assert editor is not None and editor.isVisible()
    return editor


def test_errors_clear_as_the_field_is_corrected(qtbot: QtBot, gui: App, office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    editor = open_editor(gui, office)
    assert editor.focusWidget() is editor.inputs["tunnel.name"]
    line(editor, "peer.endpoint").setText("vpn.example.com:99999")
    line(editor, "tunnel.mtu").setText("big")
    save(qtbot, editor)
    assert "out of range" in editor.error_text("peer.endpoint")
    assert editor.error_text("tunnel.mtu") == "'big' is not a whole number"
    line(editor, "peer.endpoint").setText("vpn.example.com:5190")  # no Save
    assert editor.error_text("peer.endpoint") == ""
    assert editor.error_text("tunnel.mtu") != ""
    line(editor, "tunnel.mtu").setText("1400")
    assert editor.error_text("tunnel.mtu") == ""
    line(editor, "tunnel.name").setText("x y")  # no error shown yet while typing a new one
    assert editor.error_text("tunnel.name") == ""
    editor.reject()


def test_a_bad_name_is_blamed_on_the_name_in_words(qtbot: QtBot, gui: App,
                                                   no_profiles: None) -> None:
    editor = open_editor(gui, None)
    assert editor.focusWidget() is editor.inputs["tunnel.name"]
    line(editor, "tunnel.name").setText("my office!")
    save(qtbot, editor)
    assert "not a valid name" in editor.error_text("tunnel.name")
    assert not editor.advanced.isChecked()  # nothing in Advanced is wrong
    assert editor.error_text("keys.private_key") == ""
    assert editor.error_text("interface.listen_port") == ""
    assert editor.error_text("interface.addresses") == "Required, e.g. 10.77.0.2/24"
    assert editor.error_text("peer.endpoint").startswith("Required: the server's address")
    line(editor, "peer.public_key").setText("not a key")
    save(qtbot, editor)
    assert "paste the 44 characters" in editor.error_text("peer.public_key")
    texts = [editor.error_text(k) for k in editor.errors] + [editor.general_error.text()]
    assert not any("[" in t or "needs" in t for t in texts), texts
    editor.reject()


def test_plain_mode_hides_the_key_fields(qtbot: QtBot, gui: App, no_profiles: None) -> None:
    editor = open_editor(gui, None)
    editor.advanced.setChecked(True)
    keys = ("peer.public_key", "keys.private_key", "keys.psk", "tunnel.cipher")
    assert all(editor.inputs[k].isVisibleTo(editor) for k in keys)
    mode = editor.inputs["tunnel.mode"]
    assert isinstance(mode, QComboBox)
    mode.setCurrentIndex(mode.findData("plain"))
    assert not any(editor.inputs[k].isVisibleTo(editor) for k in keys)
    assert editor.unsafe.isVisibleTo(editor)
    mode.setCurrentIndex(mode.findData("ephemeral"))
    assert all(editor.inputs[k].isVisibleTo(editor) for k in keys)
    editor.reject()


def test_a_connected_profile_reconnects_to_apply_and_warns_on_delete(
        qtbot: QtBot, gui: App, world: OfficeLab, office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    gui.actions.connect_tunnel(office)
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up", timeout=WAIT)
    assert gui.state.model.status(office).mtu == 1408

    editor = open_editor(gui, office)
    assert editor.reconnect_note.isVisibleTo(editor)
    line(editor, "tunnel.mtu").setText("1400")
    save(qtbot, editor)
    qtbot.waitUntil(lambda: gui.window.editor is None and gui.window.question is not None,
                    timeout=WAIT)
    box = gui.window.question
    assert box is not None and "old settings" in box.text()
    click(qtbot, next(b for b in box.buttons() if b.text() == "Reconnect now"))
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up"
                    and gui.state.model.status(office).mtu == 1400, timeout=WAIT)

    gui.window.delete_action.trigger()
    box = gui.window.question
    assert isinstance(box, QMessageBox)
    assert "deleting it disconnects it first" in box.text()
    assert any(b.text() == "Disconnect and delete" for b in box.buttons())
    click(qtbot, box.button(QMessageBox.StandardButton.Cancel))
    assert world.laptop.call("status", name=office)["tunnels"][0]["state"] == "up"
