"""The Status tab's "Congestion marks" row (ECN, RFC 6040): what the helper counted, in words."""

from __future__ import annotations

import pytest
from pytestqt.qtbot import QtBot

from core.status import TunnelStatus
from gui.status_panel import CONGESTION_NOTE, StatusPanel

pytestmark = [pytest.mark.gui]


def test_congestion_marks_row(qtbot: QtBot) -> None:
    panel = StatusPanel()
    qtbot.addWidget(panel)
    row = panel.values["congestion"]
    panel.show_status(TunnelStatus(name="x", state="down"), [], now=1000.0)
    assert row.text() == "—"
    panel.show_status(TunnelStatus(name="x", state="up"), [], now=1000.0)
    assert row.text() == "none seen"
    marked = TunnelStatus(name="x", state="up", ecn_ce=40, drops={"ecn_not_ect_ce": 3})
    panel.show_status(marked, [], now=1000.0)
    assert row.text() == "43 congestion marks seen (3 packets dropped: not ECN-capable)"
    assert row.toolTip() == CONGESTION_NOTE and row.accessibleName() == "Congestion marks"
    assert "Congestion marks: 43 congestion marks seen" in panel.details_text()
