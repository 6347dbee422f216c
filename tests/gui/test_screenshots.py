"""``make screenshots`` (gui.screenshots) against the office lab: every picture is written and
the main window's graph is not empty."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from officelab import OfficeLab
from PySide6.QtGui import QColor, QImage
from pytestqt.qtbot import QtBot

from gui.screenshots import render

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def test_screenshots(qtbot: QtBot, world: OfficeLab, office: str, tmp_path: Path) -> None:
    # TUNSEAL_SCREENSHOTS_OUT=docs/screenshots keeps the pictures (how they are refreshed).
    tmp_path = Path(os.environ.get("TUNSEAL_SCREENSHOTS_OUT") or tmp_path)
    written = render(tmp_path, socket=str(world.laptop.socket), netns=world.laptop_ns,
                     seconds=6, log=lambda _line: None)
    names = sorted(p.name for p in written)
    assert names == ["editor-error.png", "first-connection-key.png",
                     "first-connection-no-answer.png", "keys.png", "logs.png",
                     "main-connected.png", "main-dark.png", "no-helper.png", "tray-menu.png"]
    dark = QImage(str(tmp_path / "main-dark.png"))
    assert dark.pixelColor(dark.width() // 2, 5).lightness() < 80  # a dark window
    main = QImage(str(tmp_path / "main-connected.png"))
    assert main.width() >= 900
    # The received-traffic area is filled in a light tint of RX_COLOR: find it in the plot.
    tint = sum(1 for x in range(300, main.width(), 3) for y in range(300, main.height() - 40, 3)
               if _tinted(main.pixelColor(x, y)))
    assert tint > 100, "the graph shows no received traffic"
    assert world.laptop.call("status", name=office)["tunnels"][0]["state"] == "down"
    names = [p["tunnel"]["name"] for p in world.laptop.call("list_profiles")["profiles"]]
    assert names == [office]  # the first-connection copy is gone


def _tinted(c: QColor) -> bool:
    """A pixel of the received area: bluer than grey, like RX_COLOR over the background."""
    return c.blue() - c.red() > 25
