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
    QLineEdit,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from core.constants import CIPHERS, DEFAULT_CIPHER, MODES, TRANSPORTS
from core.errors import ProfileInvalid
from core.profile import Profile
from gui.profile_form import FIELDS, Field, field_of, form_from_profile, parse_form
from gui.widgets import ErrorLabel, UnsafeLabel

__all__ = ["ProfileEditor"]

_CHOICES = {"tunnel.mode": MODES, "tunnel.cipher": CIPHERS, "peer.transport": TRANSPORTS}
MODE_HELP = {
    "ephemeral": "ephemeral (key pairs; recommended)",
    "rotating": "rotating (shared key, rotated sessions)",
    "psk": "psk (shared key)",
    "plain": "plain (NO encryption)",
}

Problems = list[tuple[str, str]]


class ProfileEditor(QDialog):
    """Create (``profile`` None) or edit a profile. ``submitted(profile)`` carries a profile
    that core.profile accepted; the caller saves it and calls :meth:`accept`, or shows what the
    helper refused with :meth:`show_problems`."""

    submitted = Signal(object)

    def __init__(self, profile: Profile | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.original = profile.name if profile is not None else None
        self.setWindowTitle(f"Edit {profile.name}" if profile else "New profile")
        self.inputs: dict[str, QLineEdit | QComboBox | QCheckBox] = {}
        self.errors: dict[str, ErrorLabel] = {}
        self.general_error = ErrorLabel()
        self.general_error.setObjectName("generalError")
        self.unsafe = UnsafeLabel()

        basic = QFormLayout()
        self.advanced = QCheckBox("Show advanced settings")
        self.advanced.setObjectName("showAdvanced")
        advanced_form = QFormLayout()
        inner = QGroupBox("Advanced")
        inner.setLayout(advanced_form)
        self.advanced.toggled.connect(inner.setVisible)
        inner.setVisible(False)
        for f in FIELDS:
            (advanced_form if f.advanced else basic).addRow(f.label + ":", self._row(f))

        body = QWidget()
        layout = QVBoxLayout(body)
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

    def _row(self, f: Field) -> QWidget:
        widget: QLineEdit | QComboBox | QCheckBox
        if f.kind == "choice":
            widget = QComboBox()
            widget.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            widget.setMinimumContentsLength(20)
            for choice in _CHOICES[f.key]:
                widget.addItem(MODE_HELP.get(choice, choice) if f.key == "tunnel.mode"
                               else choice, choice)
        elif f.kind == "bool":
            widget = QCheckBox()
        else:
            widget = QLineEdit()
            widget.setPlaceholderText(f.hint)
        widget.setObjectName(f.key)
        self.inputs[f.key] = widget
        error = ErrorLabel()
        error.setObjectName(f"error:{f.key}")
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
        self.unsafe.setVisible(mode.currentData() == "plain")

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
        """Each problem under its field (several for one field: one per line); problems about
        no field above the form."""
        self.buttons.setEnabled(True)
        by_field: dict[str, list[str]] = {}
        general: list[str] = []
        for field, message in problems:
            key = field_of(field)
            if key is None:
                general.append(f"{field}: {message}" if field else message)
            else:
                by_field.setdefault(key, []).append(_sentence(message))
        for key, label in self.errors.items():
            label.show_message("\n".join(by_field.get(key, [])))
        self.general_error.show_message("\n".join(general))
        if any(f.advanced and f.key in by_field for f in FIELDS):
            self.advanced.setChecked(True)
        first = next((f.key for f in FIELDS if f.key in by_field), None)
        if first is not None:
            self.inputs[first].setFocus()

    def show_error(self, message: str) -> None:
        self.buttons.setEnabled(True)
        self.general_error.show_message(message)

    def error_text(self, key: str) -> str:
        """The problem shown under a field ('' when none)."""
        label = self.errors[key]
        return "" if label.isHidden() else label.text()


def _sentence(message: str) -> str:
    text = message.strip()
    return text[:1].upper() + text[1:] if text else text
