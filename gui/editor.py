"""The profile editor. It shows and collects text; :func:`gui.profile_form.parse_form` (and so
core.profile) decides what is valid, and each problem appears under the field it is about."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from core.constants import CIPHERS, DEFAULT_CIPHER, MODES, TRANSPORTS, Mode
from core.errors import ProfileInvalid
from core.profile import AUTOCONNECTS, LOCKDOWNS, Profile
from gui.profile_form import FIELDS, KEY_FIELDS, Field, for_form, form_from_profile, parse_form
from gui.widgets import ErrorLabel, UnsafeLabel

__all__ = ["ProfileEditor"]

_CHOICES = {"tunnel.mode": MODES, "tunnel.cipher": CIPHERS, "peer.transport": TRANSPORTS,
            "tunnel.autoconnect": AUTOCONNECTS, "tunnel.lockdown": ("", *LOCKDOWNS)}
MODE_HELP = {
    "ephemeral": "ephemeral (key pairs; recommended)",
    "rotating": "rotating (shared key, rotated sessions)",
    "psk": "psk (shared key)",
    "plain": "plain (NO encryption)",
}

AUTOCONNECT_HELP = {
    "never": "never (only when I connect it)",
    "login": "when I log in",
    "untrusted": "on every network I do not trust",
}
LOCKDOWN_HELP = {
    "": "automatic (while connected, for tunnels that carry everything)",
    "off": "never",
    "connected": "while connected",
    "always": "always, even when not connected",
}
_CHOICE_HELP = {"tunnel.mode": MODE_HELP, "tunnel.autoconnect": AUTOCONNECT_HELP,
                "tunnel.lockdown": LOCKDOWN_HELP}

Problems = list[tuple[str, str]]


class ProfileEditor(QDialog):
    """Create (``profile`` None) or edit a profile. ``submitted(profile)`` carries a profile
    that core.profile accepted; the caller saves it and calls :meth:`accept`, or shows what the
    helper refused with :meth:`show_problems`."""

    submitted = Signal(object)

    def __init__(self, profile: Profile | None = None, parent: QWidget | None = None, *,
                 connected: bool = False):
        super().__init__(parent)
        self.original = profile.name if profile is not None else None
        self.connected = connected
        """Editing a profile whose tunnel runs: changes apply when it reconnects."""
        self.setWindowTitle(f"Edit {profile.name}" if profile else "New profile")
        self.inputs: dict[str, QLineEdit | QComboBox | QCheckBox] = {}
        self.errors: dict[str, ErrorLabel] = {}
        self.general_error = ErrorLabel()
        self.general_error.setObjectName("generalError")
        self.unsafe = UnsafeLabel()
        self.rows: dict[str, tuple[QFormLayout, QWidget]] = {}
        self.reconnect_note = QLabel(
            f"{self.original} is connected. Changes apply when it reconnects: Save offers to "
            "reconnect it.")
        self.reconnect_note.setObjectName("reconnectNote")
        self.reconnect_note.setWordWrap(True)
        self.reconnect_note.setVisible(connected)

        basic = QFormLayout()
        self.advanced = QCheckBox("Show advanced settings")
        self.advanced.setObjectName("showAdvanced")
        advanced_form = QFormLayout()
        inner = QGroupBox("Advanced")
        inner.setLayout(advanced_form)
        self.advanced.toggled.connect(inner.setVisible)
        inner.setVisible(False)
        for f in FIELDS:
            form = advanced_form if f.advanced else basic
            cell = self._row(f)
            label = QLabel(f.label + ":")
            label.setBuddy(self.inputs[f.key])
            form.addRow(label, cell)
            self.rows[f.key] = (form, cell)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.reconnect_note)
        layout.addWidget(self.general_error)
        layout.addLayout(basic)
        layout.addWidget(self.advanced)
        layout.addWidget(inner)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        outer = QVBoxLayout(self)
        outer.addWidget(scroll, 1)
        outer.addWidget(self.buttons)
        self.resize(620, 560)

        if profile is not None:
            self.set_values(form_from_profile(profile))
        else:
            # The cipher a profile file without one gets: a new profile must match servers
            # set up from such files (a mismatched cipher looks like a server that is down).
            self.set_values({"tunnel.mode": "ephemeral", "tunnel.cipher": DEFAULT_CIPHER,
                             "peer.transport": TRANSPORTS[0], "tunnel.mtu": "1408"})
        mode = self.inputs["tunnel.mode"]
        assert isinstance(mode, QComboBox)
        mode.currentTextChanged.connect(self._mode_changed)
        self._mode_changed(mode.currentText())
        for widget in self.inputs.values():
            if isinstance(widget, QLineEdit):
                widget.textChanged.connect(self._recheck)
            elif isinstance(widget, QComboBox):
                widget.currentIndexChanged.connect(self._recheck)
            else:
                widget.toggled.connect(self._recheck)
        self.inputs["tunnel.name"].setFocus()

    def _row(self, f: Field) -> QWidget:
        widget: QLineEdit | QComboBox | QCheckBox
        if f.kind == "choice":
            widget = QComboBox()
            widget.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            widget.setMinimumContentsLength(20)
            for choice in _CHOICES[f.key]:
                widget.addItem(_CHOICE_HELP.get(f.key, {}).get(choice, choice), choice)
        elif f.kind == "bool":
            widget = QCheckBox()
        else:
            widget = QLineEdit()
            widget.setPlaceholderText(f.hint)
        widget.setObjectName(f.key)
        widget.setAccessibleName(f.label)
        if f.hint:
            widget.setAccessibleDescription(f.hint)
        self.inputs[f.key] = widget
        error = ErrorLabel()
        error.setObjectName(f"error:{f.key}")
        error.setAccessibleName(f"Problem with {f.label}")
        self.errors[f.key] = error
        cell = QWidget()
        column = QVBoxLayout(cell)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(widget)
        if f.key == "tunnel.mode":
            column.addWidget(self.unsafe)
        column.addWidget(error)
        return cell

    # --- values ----------------------------------------------------------------------------

    def set_values(self, values: dict[str, object]) -> None:
        for key, value in values.items():
            widget = self.inputs.get(key)
            if isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            elif isinstance(widget, QComboBox):
                index = widget.findData(str(value))
                if index >= 0:
                    widget.setCurrentIndex(index)
            elif isinstance(widget, QLineEdit):
                widget.setText(str(value))

    def values(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, widget in self.inputs.items():
            if isinstance(widget, QCheckBox):
                out[key] = widget.isChecked()
            elif isinstance(widget, QComboBox):
                out[key] = widget.currentData()
            else:
                out[key] = widget.text()
        return out

    def _mode_changed(self, _text: str) -> None:
        mode = self.inputs["tunnel.mode"]
        assert isinstance(mode, QComboBox)
        plain = mode.currentData() == Mode.PLAIN
        self.unsafe.setVisible(plain)
        # Plain mode has no keys and no cipher: fields it ignores would only mislead.
        for key in (*KEY_FIELDS, "tunnel.cipher"):
            form, cell = self.rows[key]
            form.setRowVisible(cell, not plain)

    # --- validation ------------------------------------------------------------------------

    def submit(self) -> None:
        try:
            profile = parse_form(self.values())
        except ProfileInvalid as e:
            self.show_problems([(p.field or "", p.reason) for p in e.problems])
            return
        self.show_problems([])
        self.buttons.setEnabled(False)  # until the helper answers
        self.submitted.emit(profile)

    def show_problems(self, problems: Problems) -> None:
        """Each problem under its field (several for one field: one per line), in the user's
        words; problems about no field above the form."""
        self.buttons.setEnabled(True)
        by_field, general = self._sorted(problems)
        for key in self.errors:
            self._show_error(key, "\n".join(by_field.get(key, [])))
        self.general_error.show_message("\n".join(general))
        if any(f.advanced and f.key in by_field for f in FIELDS):
            self.advanced.setChecked(True)
        first = next((f.key for f in FIELDS if f.key in by_field), None)
        if first is not None:
            self.inputs[first].setFocus()

    @staticmethod
    def _sorted(problems: Problems) -> tuple[dict[str, list[str]], list[str]]:
        by_field: dict[str, list[str]] = {}
        general: list[str] = []
        for key, message in for_form(problems):
            if key is None:
                general.append(message)
            else:
                by_field.setdefault(key, []).append(message)
        return by_field, general

    def _recheck(self) -> None:
        """As the user corrects a field, its error goes (or changes); fields without an error
        shown get none while the user is still typing."""
        shown = [k for k, label in self.errors.items() if not label.isHidden()]
        if not shown:
            return
        try:
            parse_form(self.values())
            problems: Problems = []
        except ProfileInvalid as e:
            problems = [(p.field or "", p.reason) for p in e.problems]
        by_field, _general = self._sorted(problems)
        for key in shown:
            self._show_error(key, "\n".join(by_field.get(key, [])))

    def _show_error(self, key: str, text: str) -> None:
        """The problem under the field, and as the field's accessible description, so a
        screen reader reads it with the field."""
        self.errors[key].show_message(text)
        field = next(f for f in FIELDS if f.key == key)
        self.inputs[key].setAccessibleDescription(text or field.hint)

    def show_error(self, message: str) -> None:
        self.buttons.setEnabled(True)
        self.general_error.show_message(message)

    def error_text(self, key: str) -> str:
        """The problem shown under a field ('' when none)."""
        label = self.errors[key]
        return "" if label.isHidden() else label.text()
