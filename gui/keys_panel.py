"""The Keys tab: this end's public key (copyable, and as a QR code), new keys, and the peer's
public key. Secrets are never shown here: they leave the keyring only through an explicit export
with secret keys."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.constants import Mode
from core.profile import Profile
from gui.actions import Actions
from gui.qr import QrView
from gui.widgets import ErrorLabel

__all__ = ["KeysPanel"]

KEY_SAMPLE = "K71SvANxksBJtmD3AuY3rWefLYthgHD7vAbWL9Oc6nQ="
"""A typical public key, to size the field that shows one (with a tenth to spare)."""


class KeysPanel(QWidget):
    def __init__(self, actions: Actions, parent: QWidget | None = None):
        super().__init__(parent)
        self.ops = actions
        self.profile: Profile | None = None

        self.public_key = QLineEdit()
        self.public_key.setObjectName("publicKey")
        self.public_key.setReadOnly(True)
        self.public_key.setPlaceholderText("no key pair yet")
        self.public_key.setAccessibleName("This computer's public key")
        # A public key is 44 characters: the whole of it shows, at any window size.
        self.public_key.setMinimumWidth(self.public_key.fontMetrics().horizontalAdvance(
            KEY_SAMPLE) * 11 // 10 + 16)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy_public_key)
        self.copy_button.setAccessibleName("Copy this computer's public key")
        self.generate_button = QPushButton("Generate new key pair")
        self.generate_button.clicked.connect(self._ask_generate)
        self.qr = QrView()
        self.key_note = QLabel()
        self.key_note.setAccessibleName("About this computer's key")
        self.key_note.setWordWrap(True)
        mine = QGroupBox("This computer's public key (give it to the server's administrator)")
        row = QHBoxLayout()
        row.addWidget(self.public_key, 1)
        row.addWidget(self.copy_button)
        column = QVBoxLayout()
        column.addLayout(row)
        column.addWidget(self.key_note)
        column.addWidget(self.generate_button)
        column.addStretch(1)
        box = QHBoxLayout(mine)
        box.addLayout(column, 1)
        box.addWidget(self.qr)

        self.psk_note = QLabel()
        self.psk_note.setAccessibleName("About the pre-shared key")
        self.psk_note.setWordWrap(True)
        self.psk_button = QPushButton("Generate new pre-shared key")
        self.psk_button.clicked.connect(self._generate_psk)
        self.psk_box = QGroupBox("Pre-shared key")
        psk_layout = QVBoxLayout(self.psk_box)
        psk_layout.addWidget(self.psk_note)
        psk_layout.addWidget(self.psk_button)

        self.peer_key = QLineEdit()
        self.peer_key.setObjectName("peerKey")
        self.peer_key.setPlaceholderText("paste the server's public key (44 characters)")
        self.peer_key.setAccessibleName("The server's public key")
        self.set_peer_button = QPushButton("Use this key")
        self.set_peer_button.clicked.connect(self._set_peer_key)
        self.peer_error = ErrorLabel()
        self.peer_error.setAccessibleName("Problem with the server's public key")
        theirs = QGroupBox("The server's public key")
        peer_row = QHBoxLayout()
        peer_row.addWidget(self.peer_key, 1)
        peer_row.addWidget(self.set_peer_button)
        peer_layout = QVBoxLayout(theirs)
        peer_layout.addLayout(peer_row)
        peer_layout.addWidget(self.peer_error)

        self.mine_box, self.theirs_box = mine, theirs
        self.plain_note = QLabel("This profile uses plain mode: no keys and no encryption, so "
                                 "there is nothing to set here.")
        self.plain_note.setObjectName("plainNote")
        self.plain_note.setWordWrap(True)
        self.plain_note.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.plain_note)
        layout.addWidget(mine)
        layout.addWidget(self.psk_box)
        layout.addWidget(theirs)
        layout.addStretch(1)
        self.show_profile(None)

    # --- showing ---------------------------------------------------------------------------

    def show_profile(self, profile: Profile | None, *, reload: bool = False) -> None:
        """Show ``profile``; its public key is read again when another profile is shown or
        with ``reload`` (the helper's profiles changed: a key may have been made elsewhere)."""
        changed = profile is None or self.profile is None or profile.name != self.profile.name
        self.profile = profile
        self.setEnabled(profile is not None)
        if profile is None:
            self._show_key(None)
            self.peer_key.clear()
            self.psk_box.hide()
            return
        if changed:
            self._show_key(None, note="Reading the key…")
        if changed or reload:
            self.ops.public_key(profile.name, self._key_for(profile.name))
        if changed:
            self.peer_error.show_message("")
            self.peer_key.setText(profile.public_key)
        elif not self.peer_key.hasFocus():
            self.peer_key.setText(profile.public_key)
        plain = profile.mode == Mode.PLAIN
        self.plain_note.setVisible(plain)
        self.mine_box.setVisible(not plain)
        self.theirs_box.setVisible(not plain)
        uses_psk = profile.mode in (Mode.PSK, Mode.ROTATING) or bool(profile.psk_ref)
        self.psk_box.setVisible(uses_psk and not plain)
        ref = profile.psk_ref or f"{profile.name}.psk"
        self.psk_note.setText(
            f"Stored in the keyring as '{ref}'. It is never shown; to give it to the other "
            "end, use Export with secret keys and hand the file over a trusted channel.")

    def _key_for(self, name: str) -> Callable[[str | None], None]:
        def show(key: str | None) -> None:
            if self.profile is not None and self.profile.name == name:
                self._show_key(key)

        return show

    def _show_key(self, key: str | None, *, note: str = "") -> None:
        self.public_key.setText(key or "")
        self.copy_button.setEnabled(bool(key))
        self.qr.set_text(key or "")
        if not note:
            note = ("Generate a key pair to use this profile in 'ephemeral' mode; the private "
                    "key stays in your keyring." if key is None else "")
        self.key_note.setText(note)
        self.key_note.setVisible(bool(note))

    # --- doing -----------------------------------------------------------------------------

    def copy_public_key(self) -> None:
        QGuiApplication.clipboard().setText(self.public_key.text())

    def _ask_generate(self) -> None:
        if self.profile is None:
            return
        if not self.public_key.text():
            self.generate()
            return
        box = QMessageBox(QMessageBox.Icon.Question, "Replace the key pair?",
                          f"Replace the key pair of {self.profile.name}? The server will "
                          "need the new public key before this profile can connect again.",
                          QMessageBox.StandardButton.Cancel, self)
        replace = box.addButton("Replace", QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.buttonClicked.connect(lambda b: self.generate() if b is replace else None)
        box.open()

    def generate(self) -> None:
        if self.profile is not None:
            self.ops.generate_key(self.profile.name, self._key_for(self.profile.name))

    def _generate_psk(self) -> None:
        if self.profile is not None:
            self.ops.generate_psk(self.profile.name)

    def _set_peer_key(self) -> None:
        if self.profile is None:
            return
        self.peer_error.show_message("")
        self.ops.set_peer_key(self.profile.name, self.peer_key.text().strip(),
                                  on_done=lambda: self.peer_error.show_message(""),
                                  on_error=self.peer_error.show_message)
