"""Colours that keep their meaning and stay readable in light and dark themes: picked against
the palette in use, never fixed, so text keeps WCAG's 4.5:1 contrast (AA for normal text)."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette

__all__ = ["MIN_CONTRAST", "contrast", "error_color"]

MIN_CONTRAST = 4.5
_ERROR_REDS = ("#c62828", "#b71c1c", "#8e0000", "#ff8a80", "#ffab91", "#ffcdd2")
"""Reds from dark to light; the first readable one on the background wins (dark reds on light
themes, light reds on dark ones)."""


def _luminance(c: QColor) -> float:
    def channel(v: float) -> float:
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    return (0.2126 * channel(c.redF()) + 0.7152 * channel(c.greenF())
            + 0.0722 * channel(c.blueF()))


def contrast(a: QColor, b: QColor) -> float:
    """WCAG 2 contrast ratio, 1 to 21."""
    la, lb = _luminance(a), _luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def error_color(palette: QPalette,
                role: QPalette.ColorRole = QPalette.ColorRole.Window) -> QColor:
    """A red readable on ``palette``'s ``role`` background (Window for labels, Base for
    lists and fields)."""
    background = palette.color(role)
    for name in _ERROR_REDS:
        color = QColor(name)
        if contrast(color, background) >= MIN_CONTRAST:
            return color
    # A background no red suits (a mid grey): the text colour itself is readable.
    return palette.color(QPalette.ColorRole.WindowText if role == QPalette.ColorRole.Window
                         else QPalette.ColorRole.Text)
