"""The throughput graph: receive and send rates over the last few minutes, painted with QPainter
(no QtCharts). Axis labels in human units come from :mod:`gui.format`."""

from __future__ import annotations

import time

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from gui.format import axis_ticks, short_rate, time_axis_label
from gui.model import HISTORY_SECONDS

__all__ = ["RX_COLOR", "TX_COLOR", "ThroughputGraph", "time_span", "time_step"]

RX_COLOR = QColor("#2f7fd8")
TX_COLOR = QColor("#e07b24")
MIN_SPAN = 60.0
"""The graph shows at least the last minute; it widens to :data:`HISTORY_SECONDS` as history
accumulates, so a tunnel that just came up does not draw in a sliver at the right edge."""
_TIME_STEPS = (10.0, 15.0, 30.0, 60.0, 120.0)
TICK_MS = 1000
"""Milliseconds between moves of the time axis while no new status arrives."""


def time_span(points: list[tuple[float, float, float]], now: float, longest: float) -> float:
    """Seconds the x axis covers: the history's age rounded up to a minute, within
    [MIN_SPAN, longest]."""
    if not points:
        return MIN_SPAN
    age = now - points[0][0]
    return min(longest, max(MIN_SPAN, 60.0 * -(-age // 60.0)))


def time_step(span: float, width: float = 0.0, label_width: float = 0.0) -> float:
    """Seconds between vertical grid lines: about four to six of them, fewer when the plot is
    too narrow for their labels (``width`` and ``label_width`` in pixels; 0: no limit)."""
    for s in _TIME_STEPS:
        if span / s > 6:
            continue
        if label_width and width and width * s / span < label_width * 1.5:
            continue  # the labels would touch
        return s
    return _TIME_STEPS[-1] if not width else max(_TIME_STEPS[-1], span)


class ThroughputGraph(QWidget):
    def __init__(self, parent: QWidget | None = None, *, seconds: float = HISTORY_SECONDS):
        super().__init__(parent)
        self.seconds = seconds
        self._points: list[tuple[float, float, float]] = []
        self._now = time.time()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAccessibleName("Throughput graph")
        # Time goes on when no status arrives (a tunnel that is down sends none): the axis
        # keeps moving, so the last traffic slides away instead of the graph freezing.
        self._clock = QTimer(self)
        self._clock.setInterval(TICK_MS)
        self._clock.timeout.connect(self._tick)
        self._clock.start()

    def _tick(self) -> None:
        if self.isVisible():
            self._now = max(self._now, time.time())
            self.update()

    def now(self) -> float:
        """The time at the graph's right edge."""
        return self._now

    def sizeHint(self) -> QSize:
        return QSize(480, 200)

    def minimumSizeHint(self) -> QSize:
        return QSize(260, 140)

    def set_points(self, points: list[tuple[float, float, float]], now: float | None = None
                   ) -> None:
        """(unix time, rx bytes/s, tx bytes/s), oldest first."""
        self._points = list(points)
        self._now = time.time() if now is None else now
        self.update()

    def point_count(self) -> int:
        return len(self._points)

    # --- painting --------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.Text)
        grid = QColor(text)
        grid.setAlpha(40)
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))

        metrics = QFontMetrics(self.font())
        peak = max((max(rx, tx) for _, rx, tx in self._points), default=0.0)
        ticks = axis_ticks(peak)
        labels = [short_rate(t) for t in ticks]
        left = max(metrics.horizontalAdvance(s) for s in labels) + 10
        legend_h = metrics.height() + 6
        plot = QRectF(left, legend_h + 4, self.width() - left - 12,
                      self.height() - legend_h - metrics.height() - 14)
        if plot.width() < 20 or plot.height() < 20:
            painter.end()
            return
        top = ticks[-1]

        def y_of(value: float) -> float:
            return plot.bottom() - plot.height() * (value / top)

        span = time_span(self._points, self._now, self.seconds)
        step = time_step(span, plot.width(), metrics.horizontalAdvance("-4.5 min"))

        def x_of(t: float) -> float:
            return plot.right() - plot.width() * (self._now - t) / span

        painter.setPen(QPen(grid, 1))
        for tick, label in zip(ticks, labels, strict=True):
            y = y_of(tick)
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(text)
            painter.drawText(QRectF(0, y - metrics.height() / 2, left - 6, metrics.height()),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
            painter.setPen(QPen(grid, 1))
        for i in range(int(span // step) + 1):
            ago = i * step
            x = x_of(self._now - ago)
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            painter.setPen(text)
            label = time_axis_label(ago)
            w = metrics.horizontalAdvance(label)
            lx = min(max(x - w / 2, plot.left()), plot.right() - w)
            painter.drawText(QPointF(lx, plot.bottom() + metrics.ascent() + 4), label)
            painter.setPen(QPen(grid, 1))

        painter.save()
        painter.setClipRect(plot.adjusted(-1, -2, 1, 1))
        for column, color in ((1, RX_COLOR), (2, TX_COLOR)):
            path = QPainterPath()
            for i, point in enumerate(self._points):
                p = QPointF(x_of(point[0]), y_of(point[column]))
                if i == 0:
                    path.moveTo(p)
                else:
                    path.lineTo(p)
            if column == 1 and self._points:  # received: a filled area, so sent stays visible
                area = QPainterPath(path)
                area.lineTo(QPointF(x_of(self._points[-1][0]), plot.bottom()))
                area.lineTo(QPointF(x_of(self._points[0][0]), plot.bottom()))
                area.closeSubpath()
                fill = QColor(color)
                fill.setAlpha(60)
                painter.fillPath(area, fill)
            pen = QPen(color, 2)
            if column == 2:
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawPath(path)
        painter.restore()

        self._legend(painter, metrics, left, text)
        if not self._points:
            painter.setPen(text)
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "No traffic yet")
        painter.end()

    def _legend(self, painter: QPainter, metrics: QFontMetrics, x: float, text: QColor) -> None:
        y = metrics.ascent() + 2
        for label, color in (("Received", RX_COLOR), ("Sent", TX_COLOR)):
            pen = QPen(color, 3)
            if color == TX_COLOR:
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawLine(QPointF(x, y - metrics.ascent() / 3), QPointF(x + 18, y -
                             metrics.ascent() / 3))
            painter.setPen(text)
            painter.drawText(QPointF(x + 24, y), label)
            x += 24 + metrics.horizontalAdvance(label) + 18
