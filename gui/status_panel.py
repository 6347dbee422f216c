"""The Status tab: am I connected, and to what (addresses, networks, server, for how long),
what the tunnel is doing now, and its throughput graph. Everything shown can be copied."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.constants import Mode
from core.profile import Profile
from core.status import TunnelStatus
from gui import format as fmt
from gui.graph import ThroughputGraph

__all__ = ["StatusPanel"]

_ROWS = (
    ("state", "State"), ("connected", "Connected for"), ("endpoint", "Server"),
    ("addresses", "Your address"), ("networks", "Networks"), ("interface", "Interface"),
    ("mode", "Security"), ("cipher", "Cipher"),
    ("handshake", "Last handshake"), ("received", "Received"), ("sent", "Sent"),
    ("rates", "Now"), ("rtt", "Round trip"), ("loss", "Loss"),
    ("congestion", "Congestion marks"), ("mtu", "Tunnel MTU"),
    ("dns", "DNS"), ("lockdown", "Lockdown"), ("ipv6", "IPv6"),
)
_LEFT = 8
"""Rows in the left column: what the tunnel is and where it goes; the right one: how it does."""
COUNTERS_NOTE = ("Received also counts the tunnel's own probe replies, which keep measuring the "
                 "round trip; Sent counts only your traffic.")
CONGESTION_NOTE = ("Routers on the way to the server that were congested marked packets "
                   "instead of dropping them (ECN); the applications slow down as if a packet "
                   "had been lost. Packets of applications that cannot take a mark are "
                   "dropped.")
_LOCKDOWN = {"connected": "on while connected", "always": "always on", "off": "off"}
_IPV6 = {"blocked": "blocked (this tunnel carries only IPv4)", "tunnel": "through the tunnel"}


class StatusPanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.values: dict[str, QLabel] = {}
        self.titles: dict[str, str] = {}
        grid = QGridLayout()
        grid.setHorizontalSpacing(18)
        forms = (QFormLayout(), QFormLayout())
        for form in forms:
            form.setHorizontalSpacing(14)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for i, (key, title) in enumerate(_ROWS):
            value = QLabel("—")
            value.setObjectName(f"status_{key}")
            value.setWordWrap(True)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setAccessibleName(title)
            label = QLabel(f"{title}:")
            label.setBuddy(value)
            self.values[key] = value
            self.titles[key] = title
            forms[0 if i < _LEFT else 1].addRow(label, value)
        for key in ("received", "sent"):
            self.values[key].setToolTip(COUNTERS_NOTE)
        self.values["congestion"].setToolTip(CONGESTION_NOTE)
        grid.addLayout(forms[0], 0, 0)
        grid.addLayout(forms[1], 0, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        self.copy_button = QPushButton("Copy details")
        self.copy_button.setObjectName("statusCopy")
        self.copy_button.setToolTip("Copy what this tab shows, for a message to your "
                                    "administrator")
        self.copy_button.clicked.connect(self.copy)
        copy_row = QHBoxLayout()
        copy_row.addStretch(1)
        copy_row.addWidget(self.copy_button)
        self.problem = QLabel()
        self.problem.setObjectName("status_problem")
        self.problem.setAccessibleName("Problem")
        self.problem.setWordWrap(True)
        self.problem.setTextFormat(Qt.TextFormat.PlainText)
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.problem.setFrameShape(QLabel.Shape.StyledPanel)
        self.problem.setMargin(8)
        self.problem.hide()
        self.graph = ThroughputGraph()
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addLayout(copy_row)
        layout.addWidget(self.problem)
        layout.addWidget(self.graph, 1)

    def show_status(self, st: TunnelStatus, points: list[tuple[float, float, float]],
                    *, now: float | None = None, profile: Profile | None = None,
                    recovered: float | None = None, interface: str = "") -> None:
        """``profile`` fills in what a tunnel that is down would use; ``recovered`` is when
        it last came back after an outage; ``interface`` the link it last had."""
        now = time.time() if now is None else now
        running = st.state != "down"
        v = self.values
        v["state"].setText(fmt.state_text(st.state) + (f" ({st.error})" if st.error else ""))
        v["connected"].setText(fmt.connected_for(st, now))
        v["endpoint"].setText(self._server(st, profile))
        v["addresses"].setText(", ".join(profile.addresses) if profile else "—")
        v["networks"].setText(", ".join(profile.allowed_ips) if profile and
                              profile.allowed_ips else "—")
        v["handshake"].setText(fmt.handshake_text(st, now))
        v["received"].setText(fmt.human_bytes(st.rx_bytes) if running else "—")
        sent = fmt.human_bytes(st.tx_bytes) if running else "—"
        if running and st.tx_bytes == 0 and st.rx_bytes > 0:
            sent += " (none of your traffic yet; the tunnel's probes are not counted)"
        v["sent"].setText(sent)
        v["rates"].setText(f"↓ {fmt.human_rate(st.rx_rate)}   ↑ {fmt.human_rate(st.tx_rate)}"
                           if running else "—")
        v["rtt"].setText(fmt.rtt_text(st))
        v["loss"].setText(fmt.loss_text(st, recovered=recovered, now=now))
        v["congestion"].setText((st.congestion_summary() or "none seen") if running else "—")
        v["mtu"].setText(str(st.mtu) if running and st.mtu else
                         (f"{profile.mtu} (configured)" if profile else "—"))
        mode = st.mode if running and st.mode else (profile.mode if profile else "")
        cipher = st.cipher if running and st.cipher else (profile.cipher if profile else "")
        v["mode"].setText(mode or "—")
        v["cipher"].setText("none" if mode == Mode.PLAIN else (cipher or "—"))
        v["interface"].setText(st.interface if running and st.interface else
                               (f"{interface} (when connected)" if interface
                                else "created when connected"))
        self._show_problem(st)
        v["dns"].setText(st.dns.summary() if running and st.dns is not None else "—")
        v["lockdown"].setText(_LOCKDOWN.get(st.lockdown, "—") if running else "—")
        v["ipv6"].setText(_IPV6.get(st.ipv6, "—") if running else "—")
        self.graph.set_points(points, now)

    @staticmethod
    def _server(st: TunnelStatus, profile: Profile | None) -> str:
        if st.state != "down" and st.endpoint:
            return st.endpoint
        if profile is not None:
            return profile.endpoint or "none (this end waits for the other to call)"
        return "—"

    def _show_problem(self, st: TunnelStatus) -> None:
        if st.state != "unreachable":
            self.problem.hide()
            return
        causes = fmt.no_answer_causes(st.endpoint, st.transport or "udp",
                                      was_up=st.last_handshake is not None)
        self.problem.setText(f"No answer from the server {st.endpoint}. Likely causes:\n"
                             + "\n".join(f"• {c}" for c in causes))
        self.problem.show()

    def details_text(self) -> str:
        """What the tab shows, as 'label: value' lines."""
        lines = [f"{self.titles[k]}: {label.text()}" for k, label in self.values.items()]
        if self.problem.isVisibleTo(self):
            lines += ["", self.problem.text()]
        return "\n".join(lines)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.details_text())
