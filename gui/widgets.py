"""Small widgets several views share."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QWidget

__all__ = ["UNSAFE_TEXT", "ErrorLabel", "UnsafeLabel"]

UNSAFE_TEXT = ("Unsafe: 'plain' mode has no encryption and no authentication. Anyone on the "
               "path can read and change this traffic.")


class UnsafeLabel(QLabel):
    """The red warning shown wherever plain mode is chosen or active."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(UNSAFE_TEXT, parent)
        self.setObjectName("unsafeWarning")
        self.setWordWrap(True)
        self.setStyleSheet("QLabel { color: white; background: #c62828; border-radius: 4px;"
                           " padding: 4px 8px; font-weight: bold; }")
        self.hide()


class ErrorLabel(QLabel):
    """A problem shown next to the field it is about; hidden while there is none."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setStyleSheet("QLabel { color: #c62828; }")
        self.hide()

    def show_message(self, text: str) -> None:
        self.setText(text)
        self.setVisible(bool(text))
