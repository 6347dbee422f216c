"""What the window shows while the helper cannot be used: what is wrong, what to do, Retry."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from gui.icons import state_icon
from gui.model import Availability, TrayState, guidance, socket_group

__all__ = ["UnavailablePage"]

TEXT_WIDTH = 560
DETAIL_LINES = 3
"""Lines kept for the details whatever their length: the retries' messages differ, and the
Retry button below them must not jump each time."""


class UnavailablePage(QWidget):
    retry = Signal()

    def __init__(self, socket: str = "/run/tunseal/helper.sock",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.socket = socket
        self.icon = QLabel()
        self.icon.setPixmap(state_icon(TrayState.PROBLEM).pixmap(72, 72))
        self.icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.headline = QLabel()
        self.headline.setObjectName("unavailableHeadline")
        font = QFont(self.headline.font())
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        self.headline.setFont(font)
        self.headline.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.headline.setWordWrap(True)
        self.advice = QLabel()
        self.advice.setObjectName("unavailableAdvice")
        self.advice.setWordWrap(True)
        self.advice.setAlignment(Qt.AlignmentFlag.AlignCenter)

        self.advice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.command = QLabel()
        self.command.setObjectName("unavailableCommand")
        self.command.setTextFormat(Qt.TextFormat.PlainText)
        self.command.setFont(QFont("monospace"))
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.command.setStyleSheet("QLabel { background: palette(base); border: 1px solid "
                                   "palette(mid); border-radius: 4px; padding: 6px 10px; }")
        self.command.setAccessibleName("Command to run")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("copyCommand")
        self.copy_button.setAccessibleName("Copy the command")
        self.copy_button.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(self.command.text()))
        self.detail = QLabel()
        self.detail.setObjectName("unavailableDetail")
        self.detail.setWordWrap(True)
        self.detail.setAlignment(Qt.AlignmentFlag.AlignCenter)

        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        small = QFont(self.detail.font())
        small.setPointSizeF(small.pointSizeF() * 0.9)
        self.detail.setFont(small)
        self.detail.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.detail.setFixedHeight(self.detail.fontMetrics().lineSpacing() * DETAIL_LINES + 4)
        self.retry_button = QPushButton("Retry")
        self.retry_button.setObjectName("retryButton")
        self.retry_button.setDefault(True)
        self.retry_button.clicked.connect(self.retry)
        self.waiting = QLabel("Tunseal also retries by itself every few seconds.")
        self.waiting.setAlignment(Qt.AlignmentFlag.AlignCenter)

        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(self.icon)
        layout.addWidget(self.headline)
        layout.addSpacing(8)
        # Word-wrapped labels given an alignment in a layout keep their one-line size hint and
        # clip; in a fixed-width column without alignments they get their full height.
        column = self._column = QWidget()
        column.setFixedWidth(TEXT_WIDTH)
        column_layout = QVBoxLayout(column)
        column_layout.setContentsMargins(0, 0, 0, 0)
        column_layout.addWidget(self.advice)
        command_row = QHBoxLayout()
        command_row.addStretch(1)
        command_row.addWidget(self.command)
        command_row.addWidget(self.copy_button)
        command_row.addStretch(1)
        column_layout.addLayout(command_row)
        column_layout.addWidget(self.detail)
        layout.addWidget(column, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addSpacing(8)
        layout.addWidget(self.retry_button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.waiting)
        layout.addStretch(2)
        layout.setContentsMargins(48, 24, 48, 24)

    def show_availability(self, availability: Availability) -> None:
        headline, advice, command = guidance(availability, self.socket,
                                             socket_group(self.socket))
        self.headline.setText(headline)
        self.advice.setText(advice)
        self.command.setText(command)
        detail = f"Details: {availability.message}" if availability.message else ""
        self.detail.setText(self.detail.fontMetrics().elidedText(
            detail, Qt.TextElideMode.ElideRight, TEXT_WIDTH * DETAIL_LINES - 40))
        self.detail.setToolTip(detail)
        # The column's height follows the wrapped text (its layout knows height-for-width,
        # the centring parent layout does not ask).
        column_layout = self._column.layout()
        if column_layout is not None:
            self._column.setFixedHeight(column_layout.heightForWidth(TEXT_WIDTH))
