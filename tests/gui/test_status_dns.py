"""The Status tab's DNS line: what the helper reports as in effect, and a dash when down."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from core.status import DnsStatus, TunnelStatus
from gui.status_panel import StatusPanel


def test_status_panel_shows_the_dns_in_effect(qtbot: QtBot) -> None:
    panel = StatusPanel()
    qtbot.addWidget(panel)
    dns = DnsStatus("resolved", ("10.44.0.1",), ("~corp.example", "~."), True)
    panel.show_status(TunnelStatus("office", "up", interface="ts-office", dns=dns), [])
    assert panel.values["dns"].text() == \
        "10.44.0.1 for ~corp.example ~. (systemd-resolved, default route)"
    panel.show_status(TunnelStatus("office", "down"), [])
    assert panel.values["dns"].text() == "—"
