"""What a new profile still needs before it can connect: the server must learn this computer's
public key. Shown right after a key pair was generated for a profile (on save, on import, or
from a "no key" error), with the key to copy or scan and a Connect button for afterwards."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gui.qr import QrView

__all__ = ["NextStepDialog"]


class NextStepDialog(QDialog):
    connectRequested = Signal(str)

    def __init__(self, name: str, public_key: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.setObjectName("nextStep")
        self.setWindowTitle(f"{name}: one more step")
        headline = QLabel("Give this key to your administrator")
        headline.setObjectName("nextStepHeadline")
        font = QFont(headline.font())
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        headline.setFont(font)
        self.explanation = QLabel(
            f"A new key pair was made for {name}; its private half stays in this computer's "
            "keyring. The server lets in only the computers it knows: send your administrator "
            "the public key below (it is not secret, e-mail or chat is fine), or let them scan "
            "the code. Once they have added it, press Connect.\n\nThe key is also on the Keys "
            "tab.")
        self.explanation.setWordWrap(True)
        self.key = QLineEdit(public_key)
        self.key.setObjectName("nextStepKey")
        self.key.setReadOnly(True)
        self.key.setAccessibleName("This computer's public key")
        self.key.setFont(QFont("monospace"))
        self.key.setMinimumWidth(self.key.fontMetrics().horizontalAdvance(public_key) + 16)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("nextStepCopy")
        self.copy_button.setAccessibleName("Copy the public key")
        self.copy_button.clicked.connect(self.copy)
        self.copied = QLabel("")
        self.qr = QrView()
        self.qr.set_text(public_key)
        self.buttons = QDialogButtonBox()
        self.connect_button = self.buttons.addButton("Connect",
                                                     QDialogButtonBox.ButtonRole.AcceptRole)
        self.connect_button.setObjectName("nextStepConnect")
        self.buttons.addButton("Later", QDialogButtonBox.ButtonRole.RejectRole)
        self.buttons.accepted.connect(self._connect)
        self.buttons.rejected.connect(self.reject)

        row = QHBoxLayout()
        row.addWidget(self.key, 1)
        row.addWidget(self.copy_button)
        text = QVBoxLayout()
        text.addWidget(self.explanation)
        text.addLayout(row)
        text.addWidget(self.copied)
        text.addStretch(1)
        body = QHBoxLayout()
        body.addLayout(text, 1)
        body.addWidget(self.qr)
        layout = QVBoxLayout(self)
        layout.addWidget(headline)
        layout.addLayout(body)
        layout.addWidget(self.buttons)
        self.copy_button.setFocus()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.key.text())
        self.copied.setText("Copied.")

    def _connect(self) -> None:
        self.connectRequested.emit(self.name)
        self.accept()
