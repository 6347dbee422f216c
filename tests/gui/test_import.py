"""Import and export niceties against the real helper: a name clash offers Replace or a copy,
the file that carried secret keys can be deleted, Export needs a profile, the connected or
last-used profile is selected at start, and the window's size is remembered."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtCore import QSettings, QSize
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from gui.app import App, build

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def question(qtbot: QtBot, app: App, title_part: str) -> QMessageBox:
    qtbot.waitUntil(lambda: app.window.question is not None
                    and app.window.question.isVisible()
                    and title_part in app.window.question.windowTitle(), timeout=WAIT)
    box = app.window.question
    assert box is not None
    return box


def press(box: QMessageBox, text: str) -> None:
    next(b for b in box.buttons() if b.text() == text).click()


def test_a_name_clash_offers_replace_or_a_copy(qtbot: QtBot, gui: App, world: OfficeLab,
                                               office: str, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    path = world.write_profile(tmp_path)  # also named "office", with its secret key
    gui.window.import_file(str(path))
    press(question(qtbot, gui, "already exists"), "Import as a copy")
    qtbot.waitUntil(lambda: gui.window.selected == "office-copy", timeout=WAIT)
    copy = world.laptop.call("get_profile", name="office-copy")["profile"]
    assert copy["keys"] == {"private_key": "profile:office-copy:private"}
    assert world.laptop.call("public_key", name="office-copy") == world.laptop.call(
        "public_key", name=office)
    assert "private key is now in your keyring" in gui.window.statusBar().currentMessage()
    box = question(qtbot, gui, "secret keys")
    assert "Anyone who gets the file" in box.text()
    box.reject()  # keep it for now
    assert path.exists()

    path.write_text(world.profile_text().replace("keepalive = 5", "keepalive = 7"))
    gui.window.import_file(str(path))
    press(question(qtbot, gui, "already exists"), "Replace")
    qtbot.waitUntil(lambda: world.laptop.call("get_profile", name=office)["profile"]["peer"]
                    ["keepalive"] == 7, timeout=WAIT)
    press(question(qtbot, gui, "secret keys"), "Delete the file")
    qtbot.waitUntil(lambda: not path.exists(), timeout=WAIT)
    world.laptop.call("remove_profile", name="office-copy")


def test_export_needs_a_profile(qtbot: QtBot, gui: App, world: OfficeLab, no_profiles: None,
                                tmp_path: Path) -> None:
    # The window learns of the removals (no_profiles) from the helper's events: wait for it.
    qtbot.waitUntil(lambda: not gui.state.model.profiles, timeout=WAIT)
    assert not gui.window.export_button.isEnabled()
    world.laptop.call("import_profile", text=world.profile_text("lab"))
    qtbot.waitUntil(lambda: gui.window.selected == "lab", timeout=WAIT)
    assert gui.window.export_button.isEnabled()


def test_start_selects_the_connected_then_the_last_used(qtbot: QtBot, world: OfficeLab,
                                                        office: str) -> None:
    world.laptop.call("import_profile", text=world.profile_text("aaa"))
    try:
        world.laptop.call("connect", name=office)
        app = build(str(world.laptop.socket), native_dialogs=False)
        qtbot.addWidget(app.window)
        app.start()
        try:
            qtbot.waitUntil(lambda: app.window.selected == office and
                            app.state.model.state(office) != "down", timeout=WAIT)
        finally:
            app.close()
        world.laptop.call("disconnect", name=office)
        for last, wanted in (("", "aaa"), (office, office)):
            later = build(str(world.laptop.socket), native_dialogs=False, last_used=last)
            qtbot.addWidget(later.window)
            later.start()
            try:
                qtbot.waitUntil(lambda a=later: len(a.state.model.profiles) == 2, timeout=WAIT)
                assert later.window.selected == wanted
            finally:
                later.close()
    finally:
        world.laptop.call("remove_profile", name="aaa")


def test_window_size_and_place_are_remembered(qtbot: QtBot, world: OfficeLab, office: str,
                                              tmp_path: Path) -> None:
    settings = QSettings(str(tmp_path / "tunseal.ini"), QSettings.Format.IniFormat)
    app = build(str(world.laptop.socket), native_dialogs=False, settings=settings)
    qtbot.addWidget(app.window)
    app.start()
    # Heights only: restoring fits the width to the screen, and offscreen's is narrower than
    # the window's minimum width.
    wanted = QSize(app.window.width(), app.window.height() + 23)
    app.window.resize(wanted)
    qtbot.waitUntil(lambda: app.window.size() == wanted, timeout=WAIT)
    app.close()
    settings.sync()

    again = build(str(world.laptop.socket), native_dialogs=False,
                  settings=QSettings(str(tmp_path / "tunseal.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(again.window)
    again.start()
    try:
        qtbot.waitUntil(lambda: again.window.height() == wanted.height(), timeout=WAIT)
    finally:
        again.close()
