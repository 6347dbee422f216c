"""The Logs tab: the helper's log events about the selected tunnel, filterable and copyable."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QFont, QGuiApplication, QShowEvent, QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gui.model import LogBook, LogEntry

__all__ = ["LogsPanel"]

LEVEL_CHOICES = (("Debug and up", "DEBUG"), ("Info and up", "INFO"),
                 ("Warnings and errors", "WARNING"), ("Errors only", "ERROR"))


class LogsPanel(QWidget):
    historyWanted = Signal(str)
    """The panel shows a tunnel (it was opened, or another tunnel was selected while open):
    fetch the helper's recent log about it."""

    def __init__(self, book: LogBook, parent: QWidget | None = None):
        super().__init__(parent)
        self.book = book
        self.tunnel: str | None = None
        self.filter = QLineEdit()
        self.filter.setObjectName("logFilter")
        self.filter.setPlaceholderText("Filter: type a word")
        self.filter.setClearButtonEnabled(True)
        self.filter.setAccessibleName("Filter the log messages")
        self.level = QComboBox()
        self.level.setObjectName("logLevel")
        self.level.setAccessibleName("Lowest level shown")
        for label, level in LEVEL_CHOICES:
            self.level.addItem(label, level)
        self.level.setCurrentIndex(1)
        self.helper_too = QCheckBox("Helper messages too")
        self.helper_too.setToolTip("Also show the helper's messages that are about no "
                                   "single tunnel")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the lines shown to the clipboard")
        self.copy_button.setAccessibleName("Copy the log lines shown")
        self.copy_button.clicked.connect(self.copy)
        self.view = QPlainTextEdit()
        self.view.setObjectName("logView")
        self.view.setAccessibleName("Log messages")
        self.view.setReadOnly(True)
        self.view.setMaximumBlockCount(5000)
        self.view.setFont(QFont("monospace"))
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.empty = QLabel("No messages yet.")

        bar = QHBoxLayout()
        bar.addWidget(self.filter, 1)
        bar.addWidget(self.level)
        bar.addWidget(self.helper_too)
        bar.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.empty)
        self.filter.textChanged.connect(self.rebuild)
        self.level.currentIndexChanged.connect(self.rebuild)
        self.helper_too.toggled.connect(self.rebuild)

    def show_tunnel(self, tunnel: str | None) -> None:
        if tunnel != self.tunnel:
            self.tunnel = tunnel
            self.rebuild()
            if self.isVisible() and tunnel:
                self.historyWanted.emit(tunnel)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.tunnel:
            self.historyWanted.emit(self.tunnel)

    def _criteria(self) -> dict[str, object]:
        return {"tunnel": self.tunnel if self.tunnel is not None else "",
                "min_level": self.level.currentData(), "text": self.filter.text().strip(),
                "helper_too": self.helper_too.isChecked()}

    def rebuild(self) -> None:
        lines = [e.line() for e in self.book.filtered(**self._criteria())]
        self.view.setPlainText("\n".join(lines))
        self.view.moveCursor(QTextCursor.MoveOperation.End)
        self.view.moveCursor(QTextCursor.MoveOperation.StartOfLine)
        self.empty.setVisible(not lines)

    def add(self, entry: LogEntry) -> None:
        if LogBook.matches(entry, **self._criteria()):  # type: ignore[arg-type]
            self.view.appendPlainText(entry.line())
            self.empty.hide()

    def visible_text(self) -> str:
        return self.view.toPlainText()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.visible_text())
