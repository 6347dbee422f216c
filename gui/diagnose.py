"""The Diagnose view (Help > Diagnose…): the checks of ``tunseal doctor``, each with what was
found and what to do, and a Copy button for the whole report.

The checks are :func:`core.doctor.run`, the same code the CLI runs: the window only shows them.
They take a few seconds (a real handshake with the endpoint), so they run on a worker thread
and the dialog says "Checking…" meanwhile.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QThread, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from core.doctor import FAIL, OK, SKIP, WARN, Check, Report, format_report, run

__all__ = ["DiagnoseDialog"]

_BADGE = {OK: ("OK", "#1e7b34"), WARN: ("Warning", "#9a6700"), FAIL: ("Failed", "#c62828"),
          SKIP: ("Skipped", "#6e7781")}


class _Runner(QThread):
    done = Signal(object)
    """The Report (never None)."""

    def __init__(self, socket: str | None, name: str | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.socket, self.name = socket, name

    def run(self) -> None:
        self.done.emit(run(self.socket, self.name))


class CheckRow(QFrame):
    """One check as a person reads it: a coloured status word, the title, what was found, and
    (for a warning or a failure) what to do."""

    def __init__(self, check: Check, parent: QWidget | None = None):
        super().__init__(parent)
        self.check = check
        self.setObjectName(f"check-{check.id}")
        word, color = _BADGE[check.status]
        self.badge = QLabel(word)
        self.badge.setObjectName("badge")
        self.badge.setStyleSheet(f"QLabel {{ color: white; background: {color}; "
                                 "border-radius: 3px; padding: 1px 6px; font-weight: bold; }")
        # One width for every badge, so the texts of all rows start in one column.
        bold = self.badge.font()
        bold.setBold(True)
        self.badge.setFont(bold)
        self.badge.setFixedWidth(max(self.badge.fontMetrics().horizontalAdvance(w)
                                     for w, _ in _BADGE.values()) + 16)
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        about = f" ({check.profile})" if check.profile else ""
        self.title = QLabel(f"<b>{_escape(check.title)}</b>{_escape(about)}")
        self.found = QLabel(check.found)
        self.found.setWordWrap(True)
        self.found.setObjectName("found")
        self.todo = QLabel(f"<b>What to do:</b> {_escape(check.todo)}")
        self.todo.setWordWrap(True)
        self.todo.setObjectName("todo")
        self.todo.setVisible(bool(check.todo) and check.status in (WARN, FAIL))
        grid = QGridLayout(self)
        grid.setContentsMargins(4, 6, 4, 6)
        grid.addWidget(self.badge, 0, 0)
        grid.addWidget(self.title, 0, 1)
        grid.addWidget(self.found, 1, 1)
        grid.addWidget(self.todo, 2, 1)
        grid.setColumnStretch(1, 1)
        for label in (self.found, self.todo):
            label.setTextInteractionFlags(label.textInteractionFlags()
                                          | label.textInteractionFlags().TextSelectableByMouse)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class DiagnoseDialog(QDialog):
    """Runs the checks for ``name`` (or every profile) against the helper at ``socket``."""

    finished_checks = Signal()

    def __init__(self, socket: str | None, name: str | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.socket, self.name = socket, name
        self.report: Report | None = None
        self.rows: list[CheckRow] = []
        self._runner: _Runner | None = None
        self.setWindowTitle("Diagnose" + (f": {name}" if name else ""))
        self.summary = QLabel()
        self.summary.setObjectName("summary")
        self.summary.setWordWrap(True)
        self.list = QWidget()
        self.list_layout = QVBoxLayout(self.list)
        self.list_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.list)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("copyButton")
        self.copy_button.setToolTip("Copy the whole report, to paste into a message or a bug")
        self.again_button = QPushButton("Check again")
        self.again_button.setObjectName("againButton")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.again_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        self.copy_button.clicked.connect(self.copy)
        self.again_button.clicked.connect(self.start)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(scroll, 1)
        layout.addWidget(buttons)
        self.resize(720, 620)

    def start(self) -> None:
        if self._runner is not None and self._runner.isRunning():
            return
        self.summary.setText("Checking… (a handshake with the server takes a few seconds)")
        self.copy_button.setEnabled(False)
        self.again_button.setEnabled(False)
        self._runner = _Runner(self.socket, self.name, self)
        self._runner.done.connect(self._show)
        self._runner.start()

    def _show(self, report: Report) -> None:
        self.report = report
        for row in self.rows:
            row.setParent(None)
            row.deleteLater()
        self.rows = [CheckRow(c) for c in report.checks]
        for i, row in enumerate(self.rows):
            self.list_layout.insertWidget(i, row)
        failed = [c.title for c in report.checks if c.status == FAIL]
        warned = [c.title for c in report.checks if c.status == WARN]
        if failed:
            text = f"<b>{len(failed)} check(s) failed</b>: {', '.join(failed)}. Each says what " \
                   "to do."
        elif warned:
            text = f"<b>No check failed</b>; {len(warned)} warning(s): {', '.join(warned)}."
        else:
            text = "<b>Every check passed.</b>"
        self.summary.setText(text)
        self.copy_button.setEnabled(True)
        self.again_button.setEnabled(True)
        self.finished_checks.emit()

    def row(self, check_id: str) -> CheckRow | None:
        """The (last) row of the check ``check_id``."""
        found = [r for r in self.rows if r.check.id == check_id]
        return found[-1] if found else None

    def report_text(self) -> str:
        return format_report(self.report) if self.report is not None else ""

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.report_text())

    def done(self, result: int) -> None:
        if self._runner is not None:
            self._runner.wait(30_000)  # a check in flight ends within its own time limits
        super().done(result)
