"""The tray and quitting, against the real helper: a click on the icon never changes a tunnel,
connecting and disconnecting are named menu items, Quit says tunnels stay up."""

from __future__ import annotations

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtWidgets import QMessageBox, QSystemTrayIcon
from pytestqt.qtbot import QtBot

from gui.app import App
from gui.model import TrayState
from gui.notify import Kind

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def helper_state(world: OfficeLab, name: str) -> str:
    return str(world.laptop.call("status", name=name)["tunnels"][0]["state"])


def settle(qtbot: QtBot, app: App) -> None:
    """Wait until every request the client queued before now has been answered: requests run
    one at a time, in order, so a ping's answer comes after theirs."""
    answered: list[bool] = []
    app.helper.call("ping", on_result=lambda _r: answered.append(True))
    qtbot.waitUntil(lambda: bool(answered), timeout=WAIT)


def test_named_menu_items_connect_and_a_click_changes_nothing(qtbot: QtBot, gui: App,
                                                             world: OfficeLab,
                                                             office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.tray.tunnel_actions, timeout=WAIT)
    action = gui.tray.tunnel_actions[office]
    assert action.text().startswith("Connect office") and not action.isCheckable()
    assert gui.tray.quit_action.text() == "Quit Tunseal"
    action.trigger()
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up", timeout=WAIT)
    assert gui.state.model.tray_state() is TrayState.CONNECTED
    assert gui.tray.title_action.text() == "Tunseal: connected"
    assert gui.tray.tunnel_actions[office].text().startswith("Disconnect office")
    assert "stay connected" in gui.tray.quit_action.text()

    # Stray clicks on the icon (single and double) open the window and touch no tunnel.
    gui.window.hide()
    for reason in (QSystemTrayIcon.ActivationReason.Trigger,
                   QSystemTrayIcon.ActivationReason.DoubleClick,
                   QSystemTrayIcon.ActivationReason.MiddleClick):
        gui.tray.icon.activated.emit(reason)
    assert gui.window.isVisible()
    settle(qtbot, gui)
    assert helper_state(world, office) == "up" and gui.state.model.state(office) == "up"

    gui.tray.tunnel_actions[office].trigger()
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "down", timeout=WAIT)
    assert gui.tray.title_action.text() == "Tunseal: not connected"


def quit_box(gui: App) -> QMessageBox:
    box = gui.window.question
    assert box is not None and box.isVisible() and box.objectName() == "quitQuestion"
    return box


def test_quit_says_tunnels_stay_up_and_can_disconnect_them(qtbot: QtBot, gui: App,
                                                           world: OfficeLab,
                                                           office: str) -> None:
    quits: list[bool] = []
    gui.quit_now = lambda: quits.append(True)
    qtbot.waitUntil(lambda: office in gui.tray.tunnel_actions, timeout=WAIT)
    gui.tray.quit_action.trigger()  # nothing connected: quits at once
    assert quits == [True] and gui.window.question is None

    gui.actions.connect_tunnel(office)
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up", timeout=WAIT)
    gui.tray.quit_action.trigger()
    box = quit_box(gui)
    assert "stay connected" in box.text() and office in box.text()
    box.button(QMessageBox.StandardButton.Cancel).click()
    assert quits == [True]
    gui.tray.quit_action.trigger()
    next(b for b in quit_box(gui).buttons() if b.text() == "Quit, stay connected").click()
    assert quits == [True, True]
    settle(qtbot, gui)
    assert helper_state(world, office) == "up"

    gui.tray.quit_action.trigger()
    next(b for b in quit_box(gui).buttons() if b.text() == "Disconnect all and quit").click()
    assert quits == [True, True]  # not before the helper disconnected
    qtbot.waitUntil(lambda: len(quits) == 3, timeout=WAIT)
    assert helper_state(world, office) == "down"


def test_closing_the_window_says_once_that_tunseal_stays_in_the_tray(qtbot: QtBot, gui: App,
                                                                    office: str) -> None:
    gui.window.hide_on_close = True  # as where a tray exists
    for _ in range(3):
        gui.window.show()
        gui.window.close()
        assert gui.window.isHidden()
    hints = [s for s in gui.notifier.shown if s.notice.kind is Kind.HINT]
    assert len(hints) == 1 and "still running" in hints[0].notice.title
