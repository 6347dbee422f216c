"""The Status tab: what the selected tunnel is doing now, and its throughput graph."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QGridLayout, QLabel, QVBoxLayout, QWidget

from core.status import TunnelStatus
from gui import format as fmt
from gui.graph import ThroughputGraph

__all__ = ["StatusPanel"]

_ROWS = (
    ("state", "State"), ("endpoint", "Server"), ("handshake", "Last handshake"),
    ("received", "Received"), ("sent", "Sent"), ("rates", "Now"),
    ("rtt", "Round trip"), ("loss", "Loss"), ("mtu", "Tunnel MTU"),
    ("mode", "Security"), ("cipher", "Cipher"), ("interface", "Interface"),
)


class StatusPanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.values: dict[str, QLabel] = {}
        grid = QGridLayout()
        grid.setHorizontalSpacing(18)
        half = (len(_ROWS) + 1) // 2
        forms = (QFormLayout(), QFormLayout())
        for form in forms:
            form.setHorizontalSpacing(14)
        for i, (key, title) in enumerate(_ROWS):
            value = QLabel("—")
            value.setObjectName(f"status_{key}")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.values[key] = value
            forms[0 if i < half else 1].addRow(f"{title}:", value)
        grid.addLayout(forms[0], 0, 0)
        grid.addLayout(forms[1], 0, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        self.problem = QLabel()
        self.problem.setObjectName("status_problem")
        self.problem.setWordWrap(True)
        self.problem.setTextFormat(Qt.TextFormat.PlainText)
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.problem.setFrameShape(QLabel.Shape.StyledPanel)
        self.problem.setMargin(8)
        self.problem.hide()
        self.graph = ThroughputGraph()
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.problem)
        layout.addWidget(self.graph, 1)

    def show_status(self, st: TunnelStatus, points: list[tuple[float, float, float]],
                    *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        running = st.state != "down"
        v = self.values
        v["state"].setText(fmt.state_text(st.state) + (f" ({st.error})" if st.error else ""))
        v["endpoint"].setText(st.endpoint or ("—" if not running else "none (listening)"))
        v["handshake"].setText(fmt.handshake_text(st, now))
        v["received"].setText(fmt.human_bytes(st.rx_bytes) if running else "—")
        v["sent"].setText(fmt.human_bytes(st.tx_bytes) if running else "—")
        v["rates"].setText(f"↓ {fmt.human_rate(st.rx_rate)}   ↑ {fmt.human_rate(st.tx_rate)}"
                           if running else "—")
        v["rtt"].setText(fmt.rtt_text(st))
        v["loss"].setText(fmt.loss_text(st))
        v["mtu"].setText(str(st.mtu) if running and st.mtu else "—")
        v["mode"].setText(st.mode or "—")
        v["cipher"].setText("none" if st.mode == "plain" else (st.cipher or "—"))
        v["interface"].setText(st.interface or "—")
        self._show_problem(st)
        self.graph.set_points(points, now)

    def _show_problem(self, st: TunnelStatus) -> None:
        if st.state != "unreachable":
            self.problem.hide()
            return
        causes = fmt.no_answer_causes(st.endpoint, st.transport or "udp",
                                      was_up=st.last_handshake is not None)
        self.problem.setText(f"No answer from the server {st.endpoint}. Likely causes:\n"
                             + "\n".join(f"• {c}" for c in causes))
        self.problem.show()

    def show_mode(self, mode: str, cipher: str) -> None:
        """A tunnel that is down shows its profile's security settings."""
        self.values["mode"].setText(mode or "—")
        self.values["cipher"].setText("none" if mode == "plain" else (cipher or "—"))
