"""Small widgets several views share."""

from __future__ import annotations

from PySide6.QtCore import QEvent
from PySide6.QtGui import QAccessible, QAccessibleEvent, QPalette
from PySide6.QtWidgets import QLabel, QWidget

from gui.colors import error_color

__all__ = ["UNSAFE_TEXT", "ErrorLabel", "UnsafeLabel"]

UNSAFE_TEXT = ("Unsafe: 'plain' mode has no encryption and no authentication. Anyone on the "
               "path can read and change this traffic.")


class UnsafeLabel(QLabel):
    """The red warning shown wherever plain mode is chosen or active."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(UNSAFE_TEXT, parent)
        self.setObjectName("unsafeWarning")
        self.setAccessibleName("Warning")
        self.setWordWrap(True)
        self.setStyleSheet("QLabel { color: white; background: #c62828; border-radius: 4px;"
                           " padding: 4px 8px; font-weight: bold; }")
        self.hide()


class ErrorLabel(QLabel):
    """A problem shown next to the field it is about; hidden while there is none. Its red is
    chosen for the palette in use (a fixed red is unreadable on a dark theme)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWordWrap(True)
        self._recolour()
        self.hide()

    def _recolour(self) -> None:
        palette = self.palette()
        red = error_color(palette)
        if palette.color(QPalette.ColorRole.WindowText) != red:
            palette.setColor(QPalette.ColorRole.WindowText, red)
            self.setPalette(palette)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self._recolour()

    def show_message(self, text: str) -> None:
        changed = text != self.text() or bool(text) == self.isHidden()
        self.setText(text)
        self.setVisible(bool(text))
        if text and changed:
            # Screen readers announce an alert: a problem appearing under a field is news.
            QAccessible.updateAccessibility(QAccessibleEvent(self, QAccessible.Event.Alert))
