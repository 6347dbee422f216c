"""The "Blocked: no tunnel" state: lockdown on with no tunnel up, shown in the window and the
tray with the action to unblock, and notifications when lockdown starts and ends. Against the
real laptop helper of the office lab (its namespace is the one blocked, never this machine)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from core.errors import IPCError
from gui.app import App
from gui.model import TrayState
from gui.notify import Kind

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


@pytest.fixture
def unlocked(world: OfficeLab) -> Iterator[None]:
    """Whatever happens, the laptop namespace's lockdown is off afterwards."""
    yield
    with contextlib.suppress(IPCError):
        world.laptop.call("lockdown", action="off")


def test_blocked_state_unblock_and_notices(qtbot: QtBot, gui: App, world: OfficeLab,
                                           office: str, unlocked: None,
                                           tmp_path: Path) -> None:
    window, tray = gui.window, gui.tray
    assert not window.blocked_banner.isVisible()
    world.laptop.call("lockdown", action="on")
    qtbot.waitUntil(lambda: gui.state.model.tray_state() is TrayState.BLOCKED, timeout=WAIT)
    qtbot.waitUntil(window.blocked_banner.isVisible, timeout=WAIT)
    assert "Blocked: no tunnel" in window.blocked_text.text()
    assert tray.title_action.text() == "Tunseal: Blocked: no tunnel"
    assert tray.unblock_action is not None
    qtbot.waitUntil(lambda: any(s.notice.kind is Kind.LOCKDOWN_ON
                                for s in gui.notifier.shown), timeout=WAIT)
    # $TUNSEAL_SCREENSHOTS (a directory) keeps the pictures: docs/screenshots/blocked*.png.
    shots = Path(os.environ.get("TUNSEAL_SCREENSHOTS") or tmp_path)
    assert window.grab().save(str(shots / "blocked.png"))
    tray.menu.adjustSize()
    assert tray.menu.grab().save(str(shots / "blocked-tray-menu.png"))

    # A tunnel up: still locked down, but no longer blocked.
    world.laptop.call("connect", name=office)
    qtbot.waitUntil(lambda: gui.state.model.tray_state() is TrayState.CONNECTED,
                    timeout=WAIT)
    assert not window.blocked_banner.isVisible()
    window.select(office)
    qtbot.waitUntil(lambda: window.status_panel.values["lockdown"].text() == "off",
                    timeout=WAIT)  # a split tunnel: no kill switch of its own
    world.laptop.call("disconnect", name=office)
    qtbot.waitUntil(window.blocked_banner.isVisible, timeout=WAIT)

    # The banner's button unblocks; the tray's action would do the same.
    qtbot.mouseClick(window.unblock_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.blocked_banner.isVisible(), timeout=WAIT)
    assert world.laptop.call("lockdown", action="status")["active"] is False
    assert gui.state.model.tray_state() is TrayState.DISCONNECTED
    qtbot.waitUntil(lambda: any(s.notice.kind is Kind.LOCKDOWN_OFF
                                for s in gui.notifier.shown), timeout=WAIT)
    assert tray.unblock_action is None

    world.laptop.call("lockdown", action="on")
    qtbot.waitUntil(lambda: tray.unblock_action is not None, timeout=WAIT)
    tray.unblock_action.trigger()
    qtbot.waitUntil(lambda: gui.state.model.tray_state() is TrayState.DISCONNECTED,
                    timeout=WAIT)


def test_lockdown_notices_say_when_it_starts_and_ends() -> None:
    from gui.notify import LockdownTracker
    tracker = LockdownTracker()
    assert tracker.observe({"active": True}) is None  # the snapshot is not news
    off = tracker.observe({"active": False})
    assert off is not None and off.kind is Kind.LOCKDOWN_OFF
    assert tracker.observe({"active": False}) is None
    on = tracker.observe({"active": True, "blocked": True})
    assert on is not None and on.kind is Kind.LOCKDOWN_ON and "through the tunnel" in on.body


def test_blocked_is_a_tray_state_of_its_own() -> None:
    from gui.model import Availability, Model
    model = Model()
    model.availability = Availability(ok=True)
    model.apply_status({"name": "office", "state": "connecting"}, 0.0)
    assert model.tray_state() is TrayState.CONNECTING
    model.lockdown = {"active": True, "blocked": True}
    assert model.blocked and model.tray_state() is TrayState.BLOCKED
    model.availability = Availability(ok=False, code="unavailable")
    assert not model.blocked and model.tray_state() is TrayState.PROBLEM
