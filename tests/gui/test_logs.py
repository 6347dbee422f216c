"""The Logs tab has history: a window opened after the tunnel connected still shows how it
connected (the helper's recent_log), in words for people, and "connected" only once a
handshake completed."""

from __future__ import annotations

import pytest
from conftest import WAIT
from officelab import PORT, OfficeLab
from pytestqt.exceptions import TimeoutError
from pytestqt.qtbot import QtBot

from gui.app import build

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def test_logs_opened_after_connecting_have_the_connect_messages(qtbot: QtBot,
                                                                world: OfficeLab,
                                                                office: str) -> None:
    world.laptop.call("connect", name=office)  # as the CLI would, before any window
    qtbot.waitUntil(lambda: world.laptop.call("status", name=office)["tunnels"][0]["state"]
                    == "up", timeout=WAIT)

    app = build(str(world.laptop.socket), native_dialogs=False)
    qtbot.addWidget(app.window)
    app.start()
    try:
        qtbot.waitUntil(lambda: office in app.state.model.profiles, timeout=WAIT)
        app.window.select(office)
        logs = app.window.logs_panel
        assert "connected" not in logs.visible_text()  # nothing live yet
        app.window.tabs.setCurrentWidget(logs)
        try:
            qtbot.waitUntil(lambda: "office: connected to office" in logs.visible_text(),
                            timeout=WAIT)
        except TimeoutError:  # say what was shown and what the helper has
            raise AssertionError(f"shown: {logs.visible_text()!r}\nthe helper's: "
                                 f"{world.laptop.call('recent_log', name=office)}") from None
        lines = logs.visible_text().splitlines()
        connecting = next(i for i, line in enumerate(lines)
                          if f"office: connecting to 198.18.9.1:{PORT}" in line)
        connected = next(i for i, line in enumerate(lines) if "connected to office" in line)
        assert connecting < connected
        # People's words at INFO; the set-up's details are DEBUG, and nothing says "up"
        # before the handshake.
        assert not any("offloads" in line or "->" in line for line in lines)
        assert not any(" up" in line for line in lines[:connected])
        n = len(lines)
        app.window.tabs.setCurrentIndex(0)
        app.window.tabs.setCurrentWidget(logs)  # fetched again: no duplicates
        answered: list[bool] = []  # requests run in order: the ping's answer comes after
        app.helper.call("ping", on_result=lambda _r: answered.append(True))
        qtbot.waitUntil(lambda: bool(answered), timeout=WAIT)
        assert len(logs.visible_text().splitlines()) == n
    finally:
        app.close()
