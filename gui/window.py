"""The main window: the profile list on the left, the selected tunnel on the right (Status, Keys
and Logs tabs), or, while the helper cannot be used, what to do about it.

The window shows the model and forwards what the user asks for to :class:`gui.actions.Actions`;
it decides nothing about profiles or tunnels itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QBrush,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QFont,
    QKeySequence,
    QPalette,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.constants import Mode
from core.profile import Profile
from gui import format as fmt
from gui.actions import Actions
from gui.colors import error_color
from gui.editor import ProfileEditor
from gui.icons import app_icon, state_icon
from gui.join_dialog import JoinDialog
from gui.keys_panel import KeysPanel
from gui.logs_panel import LogsPanel
from gui.model import LogEntry
from gui.next_step import NextStepDialog
from gui.state import LiveState
from gui.status_panel import StatusPanel
from gui.tray import TrayNotice
from gui.unavailable import UnavailablePage
from gui.widgets import UnsafeLabel

__all__ = ["MainWindow"]

PROFILE_FILTER = "Tunseal profiles (*.tunseal);;All files (*)"
PROFILE_SUFFIX = ".tunseal"
LIST_MIN_WIDTH = 200


class MainWindow(QMainWindow):
    quitRequested = Signal()
    """Quit Tunseal (File > Quit, Ctrl+Q): the app asks about connected tunnels first."""
    hiddenToTray = Signal()
    """The window was closed into the tray for the first time: tell the user where it went."""

    def __init__(self, state: LiveState, actions: Actions, *, native_dialogs: bool = True,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.ops = actions
        self.native_dialogs = native_dialogs
        self.hide_on_close = False
        """True while a tray icon can bring the window back: closing then only hides it."""
        self.tray_hint_given = False
        """Whether the user was told that a closed window keeps running in the tray."""
        self.selected: str | None = None
        self.editor: ProfileEditor | None = None
        self.import_dialog: QFileDialog | None = None
        self.export_dialog: QFileDialog | None = None
        self.question: QMessageBox | None = None
        """The confirmation or error box on screen, if any (tests drive it)."""
        self.join_dialog: JoinDialog | None = None
        """File > Join an office…, while it is open."""
        self.next_step: NextStepDialog | None = None
        """The 'give this key to your administrator' dialog, while it is open."""

        self.setWindowTitle("Tunseal")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._build_toolbar()
        self.profile_list = QListWidget()
        self.profile_list.setObjectName("profileList")
        self.profile_list.setIconSize(QSize(32, 32))
        self.profile_list.setMinimumWidth(LIST_MIN_WIDTH)
        self.profile_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.profile_list.currentItemChanged.connect(self._on_selection)
        self.profile_list.itemDoubleClicked.connect(lambda _item: self.toggle_selected())
        self.profile_list.setAccessibleName("Profiles")
        self.detail = self._build_detail()
        self.empty = self._build_empty()
        self.unavailable = UnavailablePage(self.state.helper.path)
        self.unavailable.retry.connect(self.state.helper.retry)
        # While the helper is away the list stays (greyed: its states are unknown) and the
        # right side says what to do.
        self.right = QStackedWidget()
        self.right.addWidget(self.detail)
        self.right.addWidget(self.empty)
        self.right.addWidget(self.unavailable)
        splitter = QSplitter()
        splitter.addWidget(self.profile_list)
        splitter.addWidget(self.right)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)  # a collapsed side is a clipped side
        splitter.setSizes([220, 680])
        self.splitter = splitter
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self._build_blocked_banner())
        self.tray_notice = TrayNotice()  # "no tray on this desktop" (gui/tray.py)
        column.addWidget(self.tray_notice)
        column.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self._build_menus()
        self.resize(980, 680)

        state.profilesChanged.connect(self.refresh_profiles)
        state.statusChanged.connect(self._on_status)
        state.logAdded.connect(self._on_log)
        state.logsMerged.connect(self.logs_panel.rebuild)
        self.logs_panel.historyWanted.connect(state.fetch_log)
        state.availabilityChanged.connect(self.refresh_availability)
        state.lockdownChanged.connect(self.refresh_blocked)
        actions.done.connect(lambda text: self.statusBar().showMessage(text, 8000))
        actions.failed.connect(self.show_error)
        actions.keyMissing.connect(self.offer_key)
        actions.imported.connect(self._on_imported)
        actions.importClash.connect(self._offer_replace)
        actions.secretsImported.connect(self._offer_delete_file)
        self.refresh_availability()
        self.refresh_profiles()
        self.refresh_blocked()

    # --- building --------------------------------------------------------------------------

    def _build_toolbar(self) -> None:
        bar = QToolBar("Profiles")
        bar.setObjectName("profileToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.new_action = bar.addAction("New…", self.new_profile)
        self.edit_action = bar.addAction("Edit…", self.edit_selected)
        self.duplicate_action = bar.addAction("Duplicate", self.duplicate_selected)
        self.delete_action = bar.addAction("Delete…", self.delete_selected)
        bar.addSeparator()
        self.import_action = bar.addAction("Import…", self.open_import_dialog)
        export_menu = QMenu(self)
        self.export_action = export_menu.addAction("Export…", lambda: self.start_export(False))
        self.export_secrets_action = export_menu.addAction(
            "Export with secret keys…", lambda: self.start_export(True))
        export_button = QToolButton()
        export_button.setText("Export")
        export_button.setMenu(export_menu)
        export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.export_button = export_button
        bar.addWidget(export_button)
        self.addToolBar(bar)
        self.toolbar = bar
        # Shortcuts on the toolbar's own actions, so the menu bar, the toolbar and the keys
        # all do the same thing.
        # Spelled out: the standard keys are empty on platforms without a theme (offscreen).
        self.new_action.setShortcut(QKeySequence("Ctrl+N"))
        self.import_action.setShortcut(QKeySequence("Ctrl+O"))
        self.export_action.setShortcut(QKeySequence("Ctrl+E"))
        self.edit_action.setShortcut(QKeySequence("Ctrl+I"))
        self.delete_action.setShortcut(QKeySequence(Qt.Key.Key_Delete))
        self.export_button.setAccessibleName("Export the selected profile")
        for action in bar.actions():
            button = bar.widgetForAction(action)
            if button is not None:  # reachable by Tab like every other control
                button.setFocusPolicy(Qt.FocusPolicy.TabFocus)

    def _build_menus(self) -> None:
        self.connect_action = QAction("Connect", self)
        self.connect_action.setShortcuts([QKeySequence(Qt.Key.Key_Return),
                                          QKeySequence(Qt.Key.Key_Enter)])
        # Enter connects the profile selected in the list (elsewhere Enter is the focused
        # widget's own: a button's click, a field's input).
        self.connect_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.connect_action.triggered.connect(self.toggle_selected)
        self.profile_list.addAction(self.connect_action)
        self.quit_action = QAction("Quit Tunseal", self)
        self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        self.quit_action.triggered.connect(self.quitRequested)
        self.addAction(self.quit_action)
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self.new_action)
        file_menu.addAction(self.import_action)
        self.join_action = file_menu.addAction("Join an office…", self.open_join_dialog)
        file_menu.addAction(self.export_action)
        file_menu.addAction(self.export_secrets_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        profile_menu = bar.addMenu("&Profile")
        profile_menu.addAction(self.connect_action)
        profile_menu.addSeparator()
        profile_menu.addAction(self.edit_action)
        profile_menu.addAction(self.duplicate_action)
        profile_menu.addAction(self.delete_action)
        help_menu = bar.addMenu("&Help")
        self.diagnose_action = help_menu.addAction("Diagnose…", self.open_diagnose)
        self.diagnose: QWidget | None = None
        """The Diagnose dialog (gui/diagnose.py) while it is open."""

    def open_diagnose(self) -> None:
        """Help > Diagnose…: tunseal doctor's checks for the selected profile."""
        from gui.diagnose import DiagnoseDialog

        dialog = DiagnoseDialog(self.state.helper.path, self.selected, self)
        dialog.finished.connect(lambda _r: setattr(self, "diagnose", None))
        self.diagnose = dialog
        dialog.show()
        dialog.start()

    def _build_detail(self) -> QWidget:
        self.header_icon = QLabel()
        self.header_name = QLabel()
        self.header_name.setObjectName("headerName")
        font = QFont(self.header_name.font())
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        self.header_name.setFont(font)
        self.header_name.setAccessibleName("Profile")
        self.header_state = QLabel()
        self.header_state.setObjectName("headerState")
        self.header_state.setAccessibleName("Connection")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("connectButton")
        self.connect_button.setMinimumWidth(120)
        self.connect_button.clicked.connect(self.toggle_selected)
        self.header_unsafe = UnsafeLabel()
        self.header_unsafe.setObjectName("headerUnsafe")
        names = QVBoxLayout()
        names.addWidget(self.header_name)
        names.addWidget(self.header_state)
        header = QHBoxLayout()
        header.addWidget(self.header_icon)
        header.addLayout(names, 1)
        header.addWidget(self.connect_button)

        self.status_panel = StatusPanel()
        self.keys_panel = KeysPanel(self.ops)
        self.logs_panel = LogsPanel(self.state.model.logs)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.status_panel, "Status")
        self.tabs.addTab(self.keys_panel, "Keys")
        self.tabs.addTab(self.logs_panel, "Logs")
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addLayout(header)
        layout.addWidget(self.header_unsafe)
        layout.addWidget(self.tabs, 1)
        return page

    def _build_blocked_banner(self) -> QWidget:
        """"Blocked: no tunnel": lockdown is on and nothing leaves; with the way out."""
        self.blocked_banner = QWidget()
        self.blocked_banner.setObjectName("blockedBanner")
        self.blocked_banner.setStyleSheet(
            "#blockedBanner { background: #6b4fa3; } #blockedBanner QLabel { color: white; }")
        self.blocked_text = QLabel(
            "<b>Blocked: no tunnel.</b> Lockdown is on: nothing leaves this computer until a "
            "tunnel is up. Connect a profile, or unblock to let traffic out without one.")
        self.blocked_text.setWordWrap(True)
        self.unblock_button = QPushButton("Unblock")
        self.unblock_button.setObjectName("unblockButton")
        self.unblock_button.clicked.connect(self.ops.unblock)
        row = QHBoxLayout(self.blocked_banner)
        row.addWidget(self.blocked_text, 1)
        row.addWidget(self.unblock_button)
        self.blocked_banner.hide()
        return self.blocked_banner

    def refresh_blocked(self) -> None:
        self.blocked_banner.setVisible(self.state.model.blocked)

    def _build_empty(self) -> QWidget:
        page = QWidget()
        text = QLabel("No profiles yet.\n\nImport the .tunseal file your administrator gave you "
                      "(or drop it on this window), or create a profile with New.")
        text.setWordWrap(True)
        text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        button = QPushButton("Import a profile…")
        button.clicked.connect(self.open_import_dialog)
        layout = QVBoxLayout(page)
        layout.addStretch(1)
        layout.addWidget(text)
        layout.addWidget(button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addStretch(2)
        return page

    # --- showing state ---------------------------------------------------------------------

    def refresh_availability(self) -> None:
        availability = self.state.model.availability
        self.unavailable.show_availability(availability)
        self.profile_list.setEnabled(availability.ok)
        self._show_right()
        for i in range(self.profile_list.count()):
            self._paint_item(self.profile_list.item(i))
        for action in (self.new_action, self.import_action, self.edit_action,
                       self.duplicate_action, self.delete_action):
            action.setEnabled(availability.ok)
        if availability.ok:
            self._update_actions()

    def refresh_profiles(self) -> None:
        names = self.state.model.names()
        keep = self.selected if self.selected in names else self._first_choice(names)
        self.profile_list.blockSignals(True)
        self.profile_list.clear()
        for name in names:
            item = QListWidgetItem()
            item.setData(Qt.ItemDataRole.UserRole, name)
            self.profile_list.addItem(item)
            self._paint_item(item)
            if name == keep:
                self.profile_list.setCurrentItem(item)
        self.profile_list.blockSignals(False)
        self._fit_list()
        self._select(keep, reload=True)
        self._show_right()

    def _first_choice(self, names: list[str]) -> str | None:
        """With nothing selected yet: a connected profile, else the last one used, else the
        first."""
        model = self.state.model
        active = [n for n in model.active() if n in names]
        if active:
            return active[0]
        return model.last_used if model.last_used in names else (names[0] if names else None)

    def _show_right(self) -> None:
        if not self.state.model.availability.ok:
            self.right.setCurrentWidget(self.unavailable)
        else:
            self.right.setCurrentWidget(self.detail if self.state.model.names() else self.empty)

    def _fit_list(self) -> None:
        """The list is as wide as its widest line (no sideways scrolling, nothing cut)."""
        lst = self.profile_list
        fm = lst.fontMetrics()
        widest = max((fm.horizontalAdvance(line) for i in range(lst.count())
                      for line in lst.item(i).text().splitlines()), default=0)
        frame = lst.frameWidth() * 2 + lst.verticalScrollBar().sizeHint().width()
        lst.setMinimumWidth(max(LIST_MIN_WIDTH, widest + lst.iconSize().width() + 24 + frame))

    def _item(self, name: str) -> QListWidgetItem | None:
        for i in range(self.profile_list.count()):
            item = self.profile_list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == name:
                return item
        return None

    def _paint_item(self, item: QListWidgetItem) -> None:
        name = item.data(Qt.ItemDataRole.UserRole)
        model = self.state.model
        state = model.state(name)
        text = f"{name}\n{fmt.state_text(state)}"
        if not model.availability.ok:
            text = f"{name}\nunknown (no helper)"
        if model.is_unsafe(name):
            text += "\nUNSAFE (plain)"  # a line of its own: the list stays narrow
            item.setForeground(QBrush(error_color(self.profile_list.palette(),
                                                  QPalette.ColorRole.Base)))
        item.setText(text)
        item.setIcon(state_icon(state))
        item.setToolTip(f"{name}: {fmt.state_text(state)}")

    def _on_status(self, name: str) -> None:
        item = self._item(name)
        if item is None:
            if name in self.state.model.names():
                self.refresh_profiles()
            return
        self._paint_item(item)
        if name == self.selected:
            self._show_selected()

    def _on_selection(self, current: QListWidgetItem | None,
                      _previous: QListWidgetItem | None) -> None:
        self._select(current.data(Qt.ItemDataRole.UserRole) if current is not None else None)

    def select(self, name: str) -> None:
        item = self._item(name)
        if item is not None:
            self.profile_list.setCurrentItem(item)

    def _select(self, name: str | None, *, reload: bool = False) -> None:
        self.selected = name
        self.logs_panel.show_tunnel(name)
        self._show_selected(reload=reload)

    def _show_selected(self, *, reload: bool = False) -> None:
        name = self.selected
        model = self.state.model
        profile = model.profiles.get(name) if name else None
        self.keys_panel.show_profile(profile, reload=reload)
        self._update_actions()
        if name is None:
            return
        st = model.status(name)
        history = model.histories.get(name)
        self.header_icon.setPixmap(state_icon(st.state).pixmap(48, 48))
        self.header_name.setText(name)
        self.header_state.setText(fmt.state_text(st.state))
        self.connect_button.setText("Connect" if st.state == "down" else "Disconnect")
        self.connect_button.setEnabled(model.availability.ok
                                       and (profile is not None or st.state != "down"))
        self.connect_action.setText(f"{self.connect_button.text()} {name}")
        self.connect_action.setEnabled(self.connect_button.isEnabled())
        unsafe = model.is_unsafe(name)
        self.header_unsafe.setVisible(unsafe)
        self.status_panel.show_status(st, history.points() if history else [], now=time.time(),
                                      profile=profile, recovered=model.recovered.get(name),
                                      interface=model.interfaces.get(name, ""))

    def _update_actions(self) -> None:
        has = self.selected is not None and self.selected in self.state.model.profiles
        ok = self.state.model.availability.ok
        for action in (self.edit_action, self.duplicate_action, self.delete_action,
                       self.export_action, self.export_secrets_action):
            action.setEnabled(ok and has)
        self.export_button.setEnabled(ok and has)  # nothing to export otherwise

    def _on_log(self, entry: LogEntry) -> None:
        self.logs_panel.add(entry)

    # --- tunnels ---------------------------------------------------------------------------

    def toggle_selected(self) -> None:
        if self.selected is not None:
            self.ops.toggle(self.selected)

    # --- profiles --------------------------------------------------------------------------

    def _selected_profile(self) -> Profile | None:
        return self.state.model.profiles.get(self.selected) if self.selected else None

    def new_profile(self) -> None:
        self._open_editor(None)

    def edit_selected(self) -> None:
        profile = self._selected_profile()
        if profile is not None:
            self._open_editor(profile)

    def _open_editor(self, profile: Profile | None) -> None:
        connected = profile is not None and self.state.model.state(profile.name) != "down"
        editor = ProfileEditor(profile, self, connected=connected)
        editor.submitted.connect(lambda p: self._save(editor, p))
        editor.finished.connect(lambda _result: self._editor_closed(editor))
        self.editor = editor
        editor.open()

    def _save(self, editor: ProfileEditor, profile: Profile) -> None:
        def saved() -> None:
            self.selected = profile.name
            editor.accept()
            if profile.mode == Mode.EPHEMERAL:
                self.ops.ensure_key(profile.name, lambda key: self.show_next_step(profile.name,
                                                                                  key))
            name = profile.name
            if editor.connected and editor.original == name:
                self._ask(f"Reconnect {name}?",
                          f"{name} is still connected with its old settings. Reconnect now to "
                          "apply the changes? (Its traffic stops for a moment.)",
                          "Reconnect now", lambda: self.ops.reconnect(name))

        self.ops.save(profile, original=editor.original, on_saved=saved,
                          on_invalid=editor.show_problems, on_error=editor.show_error)

    def _editor_closed(self, editor: ProfileEditor) -> None:
        if self.editor is editor:
            self.editor = None
        editor.deleteLater()

    def duplicate_selected(self) -> None:
        if self.selected is not None:
            self.ops.duplicate(self.selected, on_done=self._select_later)

    def _select_later(self, name: str) -> None:
        self.selected = name  # the list is rebuilt when the helper announces the new profile
        self.select(name)

    def delete_selected(self) -> None:
        name = self.selected
        if name is None:
            return
        connected = (f" {name} is connected: deleting it disconnects it first, and its "
                     "traffic stops going through the tunnel."
                     if self.state.model.state(name) != "down" else "")
        self._ask(f"Delete {name}?",
                  f"Delete the profile {name} and its keys from this computer? This cannot be "
                  f"undone (export it first to keep a copy).{connected}",
                  "Disconnect and delete" if connected else "Delete",
                  lambda: self.ops.remove(name),
                  icon=QMessageBox.Icon.Warning if connected else QMessageBox.Icon.Question)

    # --- import and export -----------------------------------------------------------------

    def _file_dialog(self, title: str, *, save: bool, default: str = "") -> QFileDialog:
        dialog = QFileDialog(self, title, default or str(Path.home()), PROFILE_FILTER)
        if save:
            dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
            dialog.setDefaultSuffix(PROFILE_SUFFIX.lstrip("."))
        else:
            dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        if not self.native_dialogs:
            dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)
        return dialog

    def open_join_dialog(self) -> None:
        """File > Join an office… (gui/join_dialog.py)."""
        dialog = JoinDialog(self.ops.helper, native_dialogs=self.native_dialogs, parent=self)
        dialog.joined.connect(self._on_joined)
        dialog.finished.connect(dialog.deleteLater)
        self.join_dialog = dialog
        dialog.open()

    def _on_joined(self, name: str) -> None:
        self.statusBar().showMessage(f"Joined: profile {name} is ready to connect; its private "
                                     "key was made here and stays in your keyring")
        self._select_later(name)

    def open_import_dialog(self) -> None:
        dialog = self._file_dialog("Import a Tunseal profile", save=False)
        dialog.fileSelected.connect(self.import_file)
        dialog.finished.connect(dialog.deleteLater)
        self.import_dialog = dialog
        dialog.open()

    def _on_imported(self, name: str, mode: str) -> None:
        self._select_later(name)
        if mode == Mode.EPHEMERAL:
            self.ops.ensure_key(name, lambda key: self.show_next_step(name, key))

    def _offer_replace(self, path: str, name: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Question, f"{name} already exists",
                          f"There already is a profile named {name}. Replace it with the one "
                          f"in {os.path.basename(path)}, or import that one as a copy beside it?",
                          QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("importClash")
        replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        copy = box.addButton("Import as a copy", QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(copy)

        def clicked(button: object) -> None:
            if button is replace:
                self.ops.import_file(path, replace=True)
            elif button is copy:
                self.ops.import_file(path, as_copy=True)

        box.buttonClicked.connect(clicked)
        box.finished.connect(lambda _r, b=box: self._forget_question(b))
        self.question = box
        box.open()

    def _offer_delete_file(self, name: str, path: str) -> None:
        """The file that brought a profile's secret keys is a copy of them anyone can use."""
        def delete() -> None:
            try:
                os.remove(path)
            except OSError as e:
                self.show_error("Could not delete the file", f"{path}: {e.strerror}")
                return
            self.statusBar().showMessage(f"Deleted {path}", 8000)

        self._ask("Delete the file with the secret keys?",
                  f"{os.path.basename(path)} holds the secret keys of {name}, which are now in "
                  "your keyring. Anyone who gets the file can use this network as you: delete "
                  "it unless you need it elsewhere.", "Delete the file", delete,
                  icon=QMessageBox.Icon.Warning)

    def import_file(self, path: str) -> None:
        """Import one .tunseal file (from the dialog or a drop)."""
        if path:
            self.ops.import_file(path)

    def start_export(self, with_secrets: bool) -> None:
        name = self.selected
        if name is None or name not in self.state.model.profiles:
            return
        if not with_secrets:
            self._open_export_dialog(name, with_secrets=False)
            return
        self._ask("Export the secret keys?",
                  f"The exported file will contain the secret keys of {name}. Anyone who gets "
                  "the file can join this network as you. Keep it private, hand it over only "
                  "through a trusted channel, and delete it once imported.",
                  "Export secret keys",
                  lambda: self._open_export_dialog(name, with_secrets=True),
                  icon=QMessageBox.Icon.Warning)

    def _open_export_dialog(self, name: str, *, with_secrets: bool) -> None:
        title = f"Export {name}" + (" with its secret keys" if with_secrets else "")
        default = os.path.join(str(Path.home()), f"{name}{PROFILE_SUFFIX}")
        dialog = self._file_dialog(title, save=True, default=default)
        dialog.fileSelected.connect(
            lambda path: self.ops.export(name, path, with_secrets=with_secrets))
        dialog.finished.connect(dialog.deleteLater)
        self.export_dialog = dialog
        dialog.open()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _profile_paths(event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = _profile_paths(event.mimeData().urls())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        for path in paths:
            self.import_file(path)

    # --- keys ------------------------------------------------------------------------------

    def show_next_step(self, name: str, public_key: str) -> None:
        """After a key pair was made: what the user does next, with the key to hand over."""
        if self.next_step is not None:
            self.next_step.close()
        dialog = NextStepDialog(name, public_key, self)
        dialog.connectRequested.connect(self.ops.connect_tunnel)
        dialog.finished.connect(lambda _r: self._next_step_closed(dialog))
        self.next_step = dialog
        self.keys_panel.show_profile(self._selected_profile(), reload=True)
        dialog.open()

    def _next_step_closed(self, dialog: NextStepDialog) -> None:
        if self.next_step is dialog:
            self.next_step = None
        dialog.deleteLater()

    def offer_key(self, name: str, key: str) -> None:
        """Connecting failed for want of a key: say so in words and offer to make it."""
        if key == "private_key":
            title = f"{name} has no key pair yet"
            text = (f"{name} needs a key pair on this computer before it can connect. Generate "
                    "one, then give its public key to your administrator.")
            verb = "Generate key pair"

            def make() -> None:
                self.ops.generate_key(name, lambda k: self.show_next_step(name, k))
        else:
            title = f"{name} has no pre-shared key"
            text = (f"{name} needs the pre-shared key its server uses, and this computer's "
                    "keyring has none. Import the profile file your administrator gave you (it "
                    "carries the key), or generate a new key and hand it to the server with "
                    "Export with secret keys.")
            verb = "Generate pre-shared key"

            def make() -> None:
                self.ops.generate_psk(name)
        self._ask(title, text, verb, make, icon=QMessageBox.Icon.Warning)

    # --- messages --------------------------------------------------------------------------

    def _ask(self, title: str, text: str, verb: str, then: Callable[[], None], *,
             icon: QMessageBox.Icon = QMessageBox.Icon.Question) -> None:
        box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Cancel, self)
        yes = box.addButton(verb, QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)

        def clicked(button: object) -> None:
            if button is yes:
                then()

        box.buttonClicked.connect(clicked)
        box.finished.connect(lambda _r, b=box: self._forget_question(b))
        self.question = box
        box.open()

    def show_error(self, title: str, message: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, title, message,
                          QMessageBox.StandardButton.Close, self)
        box.finished.connect(lambda _r, b=box: self._forget_question(b))
        self.question = box
        box.open()

    def confirm_quit(self, quit_now: Callable[[], None]) -> None:
        """Quit, after saying that running tunnels stay up (the helper owns them) and offering
        to disconnect them first."""
        active = self.state.model.active()
        if not active:
            quit_now()
            return
        names = ", ".join(active)
        box = QMessageBox(QMessageBox.Icon.Question, "Quit Tunseal?",
                          f"Connected: {names}.\n\nTunnels stay connected after Tunseal quits: "
                          "the Tunseal service keeps them running. Open Tunseal again to "
                          "disconnect them later, or disconnect them now.",
                          QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("quitQuestion")
        keep = box.addButton("Quit, stay connected", QMessageBox.ButtonRole.AcceptRole)
        drop = box.addButton("Disconnect all and quit", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)

        def clicked(button: object) -> None:
            if button is keep:
                quit_now()
            elif button is drop:
                self.ops.disconnect_all(quit_now)

        box.buttonClicked.connect(clicked)
        box.finished.connect(lambda _r, b=box: self._forget_question(b))
        self.question = box
        box.open()

    def _forget_question(self, box: QMessageBox) -> None:
        if self.question is box:
            self.question = None
        box.deleteLater()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.hide_on_close:
            event.ignore()
            self.hide()
            if not self.tray_hint_given:
                self.tray_hint_given = True
                self.hiddenToTray.emit()
        else:
            event.accept()


def _profile_paths(urls: list[QUrl]) -> list[str]:
    return [u.toLocalFile() for u in urls
            if u.isLocalFile() and u.toLocalFile().endswith(PROFILE_SUFFIX)]
