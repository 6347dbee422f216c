"""Help > Diagnose…: the window runs tunseal doctor's checks against the real laptop helper (and
through it a real handshake with the office), shows each with what to do, and copies the report.
One check fails for its real cause: a profile whose port nobody listens on.

$TUNSEAL_SCREENSHOTS (a directory) keeps the picture: docs/screenshots/diagnose.png.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import WAIT
from officelab import PORT, OfficeLab
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from gui.app import App
from gui.diagnose import DiagnoseDialog


def open_diagnose(qtbot: QtBot, gui: App, name: str) -> DiagnoseDialog:
    gui.window.select(name)
    qtbot.waitUntil(lambda: gui.window.selected == name, timeout=WAIT)
    menu = next(a for a in gui.window.menuBar().actions() if a.text() == "&Help").menu()
    action = next(a for a in menu.actions() if a.text() == "Diagnose…")
    action.trigger()
    dialog = gui.window.diagnose
    assert isinstance(dialog, DiagnoseDialog)
    qtbot.addWidget(dialog)
    assert dialog.summary.text().startswith("Checking…")
    with qtbot.waitSignal(dialog.finished_checks, timeout=60_000):
        pass
    return dialog


def test_diagnose_shows_the_checks_and_copies_them(qtbot: QtBot, gui: App, office: str,
                                                   tmp_path: Path) -> None:
    dialog = open_diagnose(qtbot, gui, office)
    assert dialog.windowTitle() == "Diagnose: office"
    endpoint = dialog.row("endpoint")
    assert endpoint is not None
    assert endpoint.badge.text() == "OK"
    assert "198.18.9.1:51900 completed a handshake in" in endpoint.found.text()
    assert endpoint.todo.isHidden()
    titles = [r.title.text() for r in dialog.rows]
    for title in ("<b>Helper</b>", "<b>Keyring</b>", "<b>Endpoint</b> (office)", "<b>DNS</b>",
                  "<b>Routes</b> (office)", "<b>Default route</b>", "<b>IPv6</b>",
                  "<b>Path MTU</b> (office)", "<b>Clock</b>"):
        assert title in titles, titles
    qtbot.mouseClick(dialog.copy_button, Qt.MouseButton.LeftButton)
    copied = QGuiApplication.clipboard().text()
    assert copied == dialog.report_text()
    assert "[ok  ] Endpoint (office): 198.18.9.1:51900 completed a handshake" in copied
    dialog.close()


def test_a_failing_check_says_its_cause_and_what_to_do(qtbot: QtBot, gui: App, world: OfficeLab,
                                                       office: str, tmp_path: Path) -> None:
    # A second profile for the office, on a port where nothing listens.
    text = world.profile_text("closed").replace(f":{PORT}", f":{PORT + 7}")
    world.laptop.call("import_profile", text=text, replace=True)
    qtbot.waitUntil(lambda: "closed" in gui.state.model.names(), timeout=WAIT)
    dialog = open_diagnose(qtbot, gui, "closed")
    endpoint = dialog.row("endpoint")
    assert endpoint is not None
    assert endpoint.badge.text() == "Failed"
    assert endpoint.found.text() == (f"198.18.9.1:{PORT + 7}: the host answered 'port "
                                     "unreachable': nothing listens on that port (reported by "
                                     "198.18.9.1)")
    assert not endpoint.todo.isHidden()
    assert "check the port in the profile" in endpoint.todo.text()
    # (DNS fails too in this lab: the laptop namespace cannot reach this machine's nameserver.)
    assert "check(s) failed</b>: Endpoint" in dialog.summary.text(), dialog.summary.text()
    dialog.resize(760, 700)
    dialog.show()
    QApplication.processEvents()
    shots = Path(os.environ.get("TUNSEAL_SCREENSHOTS") or tmp_path)
    assert dialog.grab().save(str(shots / "diagnose.png"))
    # Check again: the same result, from a new run.
    qtbot.mouseClick(dialog.again_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(dialog.finished_checks, timeout=60_000):
        pass
    assert dialog.row("endpoint").badge.text() == "Failed"  # type: ignore[union-attr]
    dialog.close()
    world.laptop.call("remove_profile", name="closed")
