"""File > Join an office...: paste an invitation (or open a file holding one), see what it will
create, and join. The invitation is read here with core/invitation.py, for the preview only; the
helper does the joining (the ``join`` request: it makes the key pair, enrols, stores the
profile), so this dialog never sees a private key."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QFont, QTextOption
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core import invitation as invitation_format
from core.errors import IPCError
from core.invitation import Invitation, InvitationError
from gui.helper_client import HelperClient

__all__ = ["JoinDialog", "preview_rows"]

MAX_FILE = 8192


def preview_rows(inv: Invitation, now: float) -> list[tuple[str, str]]:
    """What joining will create, as (label, value) rows a person reads."""
    left = inv.expires - now
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(inv.expires))
    if left <= 0:
        expiry = f"{when}: expired (the gateway will refuse it; ask for a new one)"
    elif left < 3600:
        expiry = f"{when} (in {int(left // 60)} min)"
    else:
        expiry = f"{when} (in {int(left // 3600)} h {int(left % 3600 // 60)} min)"
    return [("Gateway", inv.gateway), ("Connects to", inv.endpoint),
            ("Your address", inv.address), ("Good until", expiry)]


class JoinDialog(QDialog):
    joined = Signal(str)
    """The name of the profile the helper stored."""

    def __init__(self, helper: HelperClient, *, native_dialogs: bool = True,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.helper = helper
        self.native_dialogs = native_dialogs
        self.invitation: Invitation | None = None
        self.file_dialog: QFileDialog | None = None
        self.setObjectName("joinDialog")
        self.setWindowTitle("Join an office")
        intro = QLabel("Paste the invitation your administrator sent you (it starts with "
                       "tunseal1:), or open the file it came in. This computer makes its own "
                       "key pair; its private key never leaves it.")
        intro.setWordWrap(True)
        self.text = QPlainTextEdit()
        self.text.setObjectName("invitationText")
        self.text.setAccessibleName("Invitation")
        self.text.setPlaceholderText("tunseal1:…")
        self.text.setFont(QFont("monospace"))
        self.text.setWordWrapMode(QTextOption.WrapMode.WrapAnywhere)  # it has no words
        self.text.setFixedHeight(self.text.fontMetrics().lineSpacing() * 4 + 12)
        self.text.textChanged.connect(self._read)
        self.open_button = QPushButton("Open file…")
        self.open_button.setObjectName("joinOpenFile")
        self.open_button.clicked.connect(self.open_file)
        self.preview = QLabel("")
        self.preview.setObjectName("joinPreview")
        self.preview.setWordWrap(True)
        self.rows = QFormLayout()
        self.row_labels: dict[str, QLabel] = {}
        for label in ("Gateway", "Connects to", "Your address", "Good until"):
            value = QLabel("")
            value.setObjectName(f"join{label.replace(' ', '')}")
            value.setWordWrap(True)
            self.row_labels[label] = value
            self.rows.addRow(f"{label}:", value)
        self.name = QLineEdit()
        self.name.setObjectName("joinProfileName")
        self.name.setAccessibleName("Profile name")
        self.rows.addRow("Profile name:", self.name)
        self.error = QLabel("")
        self.error.setObjectName("joinError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b3261e;")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.join_button = self.buttons.addButton("Join", QDialogButtonBox.ButtonRole.AcceptRole)
        self.join_button.setObjectName("joinButton")
        self.join_button.setEnabled(False)
        self.join_button.clicked.connect(self.join)
        self.buttons.rejected.connect(self.reject)
        top = QHBoxLayout()
        top.addWidget(self.text, 1)
        top.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(top)
        layout.addWidget(self.preview)
        layout.addLayout(self.rows)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(560)
        self._show(None, "")

    # --- reading the invitation ---------------------------------------------------------------

    def _read(self) -> None:
        text = self.text.toPlainText().strip()
        self.error.setText("")
        if not text:
            self._show(None, "")
            return
        try:
            inv = invitation_format.decode(text)
        except InvitationError as e:
            self._show(None, str(e)[:1].upper() + str(e)[1:] + ".")
            return
        self._show(inv, "Joining will create this profile:")

    def _show(self, inv: Invitation | None, message: str) -> None:
        self.invitation = inv
        self.preview.setText(message)
        rows = preview_rows(inv, time.time()) if inv is not None else []
        for label, value in self.row_labels.items():
            value.setText(dict(rows).get(label, "—"))
        if inv is not None and not self.name.isModified():
            self.name.setText(inv.gateway)
        self.join_button.setEnabled(inv is not None)

    def open_file(self) -> None:
        dialog = QFileDialog(self, "Open an invitation", str(Path.home()),
                             "Invitations (*.txt *.tunseal-invite);;All files (*)")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        if not self.native_dialogs:
            dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)
        dialog.fileSelected.connect(self.load_file)
        dialog.finished.connect(dialog.deleteLater)
        self.file_dialog = dialog
        dialog.open()

    def load_file(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE + 1)
        except OSError as e:
            self.error.setText(f"Could not read {Path(path).name}: {e.strerror or e}.")
            return
        if len(raw) > MAX_FILE:
            self.error.setText(f"{Path(path).name} is too large to be an invitation.")
            return
        self.text.setPlainText(raw.decode("utf-8", errors="replace"))

    # --- joining -----------------------------------------------------------------------------

    def join(self) -> None:
        if self.invitation is None:
            return
        self.join_button.setEnabled(False)
        self.error.setText("")
        self.preview.setText(f"Joining {self.invitation.gateway}…")
        args = {"invitation": self.text.toPlainText().strip()}
        if self.name.text().strip():
            args["name"] = self.name.text().strip()
        self.helper.call("join", on_result=self._joined, on_error=self._failed, **args)

    def _joined(self, result: dict[str, object]) -> None:
        profile = result.get("profile")
        name = str(profile["tunnel"]["name"]) if isinstance(profile, dict) else ""
        self.joined.emit(name)
        self.accept()

    def _failed(self, error: IPCError) -> None:
        self.preview.setText("Joining did not work:")
        message = str(error)
        self.error.setText(message[:1].upper() + message[1:] + ("" if message.endswith(".")
                                                                 else "."))
        self.join_button.setEnabled(self.invitation is not None)
