"""``make screenshots`` (gui.screenshots) against the office lab: every picture is written and
the main window's graph is not empty."""

from __future__ import annotations

from pathlib import Path

import pytest
from officelab import OfficeLab
from PySide6.QtGui import QColor, QImage
from pytestqt.qtbot import QtBot

from gui.screenshots import render

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


def test_screenshots(qtbot: QtBot, world: OfficeLab, office: str, tmp_path: Path) -> None:
    written = render(tmp_path, socket=str(world.laptop.socket), netns=world.laptop_ns,
                     seconds=6, log=lambda _line: None)
    names = sorted(p.name for p in written)
    assert names == ["editor-error.png", "keys.png", "logs.png", "main-connected.png",
                     "no-helper.png", "tray-menu.png"]
    main = QImage(str(tmp_path / "main-connected.png"))
    assert main.width() >= 900
    # The received-traffic area is filled in a light tint of RX_COLOR: find it in the plot.
    tint = sum(1 for x in range(300, main.width(), 3) for y in range(300, main.height() - 40, 3)
               if _tinted(main.pixelColor(x, y)))
    assert tint > 100, "the graph shows no received traffic"
    assert world.laptop.call("status", name=office)["tunnels"][0]["state"] == "down"


def _tinted(c: QColor) -> bool:
    """A pixel of the received area: bluer than grey, like RX_COLOR over the background."""
    return c.blue() - c.red() > 25
