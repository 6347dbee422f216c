"""The Status tab answers "am I connected, and to what", against the real helpers, and stays
honest: the graph's clock runs on after a disconnect, an RTT measured before the server
stopped answering is called old, loss after an outage says it counts the outage, and an idle
tunnel's Sent explains why it is 0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import WAIT
from officelab import PORT, OfficeLab
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from core.status import TunnelStatus
from gui import format as fmt
from gui.app import App
from gui.status_panel import StatusPanel

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]

OUTAGE_WAIT = 40_000
"""The helper calls a silent peer unreachable within 6-8 s; recovery needs a probe or two."""


def connect(qtbot: QtBot, app: App, name: str) -> None:
    app.window.select(name)
    app.window.connect_button.click()
    qtbot.waitUntil(lambda: app.window.header_state.text() == "Connected", timeout=WAIT)


def test_connected_to_what_and_down_keeps_the_profile(qtbot: QtBot, gui: App,
                                                      office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    connect(qtbot, gui, office)
    v = gui.window.status_panel.values
    assert v["addresses"].text() == "10.77.0.2/24"
    assert v["networks"].text() == "10.77.0.0/24"
    assert v["endpoint"].text() == f"198.18.9.1:{PORT}"
    qtbot.waitUntil(lambda: v["connected"].text().endswith(" s")
                    and v["connected"].text() != "0 s", timeout=WAIT)
    gui.window.status_panel.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert "Your address: 10.77.0.2/24" in copied and "Networks: 10.77.0.0/24" in copied
    assert "State: Connected" in copied

    # An idle tunnel: the office's probe replies arrive, nothing of the user's is sent.
    status = gui.state.model.status
    qtbot.waitUntil(lambda: status(office).rx_bytes > 0, timeout=WAIT)
    assert status(office).tx_bytes == 0, "something was sent: this check needs an idle tunnel"
    assert "probes are not counted" in v["sent"].text()
    assert "probe replies" in v["received"].toolTip()

    gui.window.connect_button.click()
    qtbot.waitUntil(lambda: gui.window.header_state.text() == "Disconnected", timeout=WAIT)
    assert v["endpoint"].text() == f"198.18.9.1:{PORT}"  # not a blank
    assert v["interface"].text() == "ts-office (when connected)"
    assert v["addresses"].text() == "10.77.0.2/24" and v["mode"].text() == "ephemeral"
    assert v["connected"].text() == "—"

    # No status arrives for a tunnel that is down; the graph's time axis moves on anyway.
    graph = gui.window.status_panel.graph
    then = graph.now()
    qtbot.waitUntil(lambda: graph.now() > then + 1.5, timeout=WAIT)


@pytest.fixture
def blockable(world: OfficeLab) -> Iterator[tuple[object, object]]:
    """block() drops the office's tunnel traffic (a dead network); unblock() restores it."""
    def block() -> None:
        world.lab.nft(world.office_ns, "table inet guiblock {\n"
                      " chain in { type filter hook input priority filter; "
                      f"udp dport {PORT} drop; }}\n}}\n")

    def unblock() -> None:
        world.lab.run(world.office_ns, "nft", "delete", "table", "inet", "guiblock",
                      check=False)

    yield block, unblock
    unblock()


def test_rtt_and_loss_through_an_outage(qtbot: QtBot, gui: App, office: str,
                                        blockable: tuple[object, object]) -> None:
    block, unblock = blockable
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    connect(qtbot, gui, office)
    v = gui.window.status_panel.values
    qtbot.waitUntil(lambda: v["rtt"].text().endswith(" ms")
                    and "no answer" not in v["rtt"].text(), timeout=WAIT)
    block()  # type: ignore[operator]
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "unreachable",
                    timeout=OUTAGE_WAIT)
    assert v["rtt"].text().startswith("no answer (last measured ")
    assert gui.window.status_panel.problem.isVisible()
    assert "network between here and the server" in gui.window.status_panel.problem.text()
    unblock()  # type: ignore[operator]
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up", timeout=OUTAGE_WAIT)
    qtbot.waitUntil(lambda: (gui.state.model.status(office).loss or 0) > 0, timeout=WAIT)
    assert office in gui.state.model.recovered
    assert "counts the outage" in v["loss"].text()
    assert not gui.window.status_panel.problem.isVisible()


def test_counters_and_stale_values_in_words(qtbot: QtBot) -> None:
    panel = StatusPanel()
    qtbot.addWidget(panel)
    idle = TunnelStatus(name="x", state="up", rx_bytes=900, tx_bytes=0, rtt_ms=1.5, loss=0.5)
    panel.show_status(idle, [], now=1000.0, recovered=990.0)
    assert "probes are not counted" in panel.values["sent"].text()
    assert panel.values["loss"].text().startswith("50 % (counts the outage 10 s ago")
    panel.show_status(idle, [], now=1000.0 + fmt.LOSS_SPAN, recovered=990.0)
    assert panel.values["loss"].text() == "50 %"
    silent = TunnelStatus(name="x", state="unreachable", rtt_ms=1.5, endpoint="h:1")
    panel.show_status(silent, [], now=1000.0)
    assert panel.values["rtt"].text() == "no answer (last measured 1.5 ms)"
