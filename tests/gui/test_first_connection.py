"""A new profile's first connection, against the real helpers: a key pair is made on save or
import, the next step (give the public key to the administrator) is shown with Copy and QR,
a "no key" error offers Generate, and a server that never answers gets its likely causes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QDialogButtonBox, QLineEdit, QMessageBox, QWidget
from pytestqt.qtbot import QtBot

from core import noise
from gui.app import App
from gui.next_step import NextStepDialog
from gui.qr import qr_matrix

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]

NO_ANSWER_WAIT = 45_000
"""The helper calls a server unreachable after about 12 s of unanswered handshakes."""


def click(qtbot: QtBot, widget: QWidget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def office_knows(world: OfficeLab) -> Iterator[list[str]]:
    """Append a public key to tell the office's server about it (as an administrator would:
    set the peer key and restart the gateway); the lab's own laptop key is restored after."""
    def use(key: str) -> None:
        world.office.call("set_peer_key", name="gw", public_key=key)
        world.office.call("disconnect", name="gw")
        world.office.call("connect", name="gw")

    class Teller(list[str]):
        def append(self, key: str) -> None:
            super().append(key)
            use(key)

    teller = Teller()
    yield teller
    if teller:
        use(b64(noise.public_key(world.laptop_key)))


def next_step(qtbot: QtBot, app: App) -> NextStepDialog:
    qtbot.waitUntil(lambda: app.window.next_step is not None
                    and app.window.next_step.isVisible(), timeout=WAIT)
    dialog = app.window.next_step
    assert dialog is not None
    return dialog


def test_create_generates_a_key_shows_it_and_connects(qtbot: QtBot, gui: App,
                                                      world: OfficeLab, no_profiles: None,
                                                      office_knows: list[str]) -> None:
    gui.window.new_action.trigger()
    editor = gui.window.editor
    assert editor is not None
    office_key = b64(noise.public_key(world.office_key))
    for key, text in (("tunnel.name", "home"), ("peer.endpoint", "198.18.9.1:51900"),
                      ("peer.public_key", office_key), ("interface.addresses", "10.77.0.2/24"),
                      ("peer.allowed_ips", "10.77.0.0/24")):
        widget = editor.inputs[key]
        assert isinstance(widget, QLineEdit)
        widget.setText(text)
    click(qtbot, editor.buttons.button(QDialogButtonBox.StandardButton.Save))

    dialog = next_step(qtbot, gui)
    public = world.laptop.call("public_key", name="home")["public_key"]
    assert dialog.key.text() == public and "administrator" in dialog.explanation.text()
    assert dialog.qr.isVisible() and dialog.qr.matrix == qr_matrix(public)
    click(qtbot, dialog.copy_button)
    assert QGuiApplication.clipboard().text() == public

    # Connect before the server knows the key: no answer, and the window says why that may be.
    click(qtbot, dialog.connect_button)
    qtbot.waitUntil(lambda: gui.state.model.state("home") == "unreachable",
                    timeout=NO_ANSWER_WAIT)
    gui.window.select("home")
    problem = gui.window.status_panel.problem
    qtbot.waitUntil(problem.isVisible, timeout=WAIT)
    assert "does not know this computer's public key" in problem.text()
    assert "198.18.9.1" in problem.text() and "UDP port 51900" in problem.text()
    assert gui.window.header_state.text() == "No answer from the server"
    gui.actions.disconnect_tunnel("home")
    qtbot.waitUntil(lambda: gui.state.model.state("home") == "down", timeout=WAIT)
    assert not problem.isVisible()

    office_knows.append(public)  # the administrator adds the key
    click(qtbot, gui.window.connect_button)
    qtbot.waitUntil(lambda: gui.window.header_state.text() == "Connected", timeout=WAIT)


def test_import_without_a_key_generates_one(qtbot: QtBot, gui: App, world: OfficeLab,
                                            no_profiles: None, tmp_path: Path) -> None:
    path = tmp_path / "branch.tunseal"
    path.write_text(world.profile_text("branch", with_secret=False))
    gui.window.import_file(str(path))
    dialog = next_step(qtbot, gui)
    assert dialog.name == "branch"
    assert dialog.key.text() == world.laptop.call("public_key", name="branch")["public_key"]
    qtbot.waitUntil(lambda: gui.window.selected == "branch", timeout=WAIT)
    dialog.reject()

    # A file that carries its key keeps it, and no next step is shown.
    gui.window.import_file(str(world.write_profile(tmp_path, "lab")))
    qtbot.waitUntil(lambda: gui.window.selected == "lab", timeout=WAIT)
    assert world.laptop.call("public_key", name="lab")["public_key"] == b64(
        noise.public_key(world.laptop_key))
    assert gui.window.next_step is None


def test_a_missing_key_error_offers_generate(qtbot: QtBot, gui: App, world: OfficeLab,
                                            no_profiles: None) -> None:
    # Imported behind the window's back (as the CLI would), so nothing generated a key.
    world.laptop.call("import_profile", text=world.profile_text("bare", with_secret=False))
    qtbot.waitUntil(lambda: "bare" in gui.state.model.profiles, timeout=WAIT)
    gui.window.select("bare")
    click(qtbot, gui.window.connect_button)
    qtbot.waitUntil(lambda: gui.window.question is not None
                    and gui.window.question.isVisible(), timeout=WAIT)
    box = gui.window.question
    assert isinstance(box, QMessageBox)
    assert "no key pair" in box.windowTitle() and "tunseal genkey" not in box.text()
    click(qtbot, next(b for b in box.buttons() if b.text() == "Generate key pair"))
    dialog = next_step(qtbot, gui)
    assert dialog.key.text() == world.laptop.call("public_key", name="bare")["public_key"]
