"""QR codes of public keys, so a phone or another laptop can read the key off the screen.

Uses the optional ``segno`` package (``pip install 'tunseal[gui]'``); without it the Keys tab
shows the key as text only.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

__all__ = ["QrView", "qr_matrix"]

Matrix = tuple[tuple[bool, ...], ...]


def qr_matrix(text: str) -> Matrix | None:
    """The QR code's modules (True = dark), with the standard 4-module quiet zone, or None if
    segno is not installed."""
    try:
        import segno
    except ImportError:
        return None
    code = segno.make_qr(text, error="m")
    return tuple(tuple(bool(m) for m in row) for row in code.matrix_iter(scale=1, border=4))


class QrView(QWidget):
    """Paints a QR code of :attr:`text`, black on white whatever the theme (scanners need it)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.text = ""
        self.matrix: Matrix | None = None
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.setFixedSize(QSize(168, 168))
        self.setAccessibleName("QR code of the public key")

    def set_text(self, text: str) -> None:
        self.text = text
        self.matrix = qr_matrix(text) if text else None
        self.setVisible(self.matrix is not None)
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        if self.matrix is None:
            return
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("white"))
        n = len(self.matrix)
        cell = min(self.width(), self.height()) / n
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("black"))
        for y, row in enumerate(self.matrix):
            for x, dark in enumerate(row):
                if dark:
                    painter.drawRect(QRectF(x * cell, y * cell, cell + 0.3, cell + 0.3))
        painter.end()
