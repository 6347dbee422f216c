"""Keyboard and assistive technology, against the real helper: a menu bar and shortcuts that do
their actions, Tab through every control in order, accessible names on every field, list and
value, an error colour readable on light and dark palettes, and nothing clipped at the
window's minimum size."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import WAIT
from officelab import OfficeLab
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QCheckBox,
    QComboBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPlainTextEdit,
    QTabBar,
    QTabWidget,
    QWidget,
)
from pytestqt.qtbot import QtBot

from gui.app import App
from gui.colors import MIN_CONTRAST, contrast
from gui.editor import ProfileEditor
from gui.widgets import ErrorLabel

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]

CTRL = Qt.KeyboardModifier.ControlModifier


def activate(qtbot: QtBot, widget: QWidget) -> None:
    widget.show()
    widget.activateWindow()
    qtbot.waitUntil(widget.isActiveWindow, timeout=WAIT)


def test_shortcuts_do_their_actions(qtbot: QtBot, gui: App, world: OfficeLab, office: str,
                                    tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    window = gui.window
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&Profile", "&Help"]
    activate(qtbot, window)
    window.select(office)

    qtbot.keyClick(window, Qt.Key.Key_N, CTRL)
    assert isinstance(window.editor, ProfileEditor) and window.editor.original is None
    window.editor.reject()
    qtbot.waitUntil(lambda: window.editor is None, timeout=WAIT)
    activate(qtbot, window)

    qtbot.keyClick(window, Qt.Key.Key_O, CTRL)
    assert window.import_dialog is not None and window.import_dialog.isVisible()
    window.import_dialog.reject()
    activate(qtbot, window)
    qtbot.keyClick(window, Qt.Key.Key_E, CTRL)
    assert window.export_dialog is not None and window.export_dialog.isVisible()
    assert window.export_dialog.windowTitle() == f"Export {office}"
    window.export_dialog.reject()
    activate(qtbot, window)
    qtbot.keyClick(window, Qt.Key.Key_I, CTRL)
    assert window.editor is not None and window.editor.original == office
    window.editor.reject()
    qtbot.waitUntil(lambda: window.editor is None, timeout=WAIT)
    activate(qtbot, window)

    window.profile_list.setFocus()
    qtbot.keyClick(window.profile_list, Qt.Key.Key_Delete)
    box = window.question
    assert isinstance(box, QMessageBox) and box.windowTitle() == f"Delete {office}?"
    box.reject()
    activate(qtbot, window)

    window.profile_list.setFocus()
    qtbot.keyClick(window.profile_list, Qt.Key.Key_Return)  # Enter connects the selection
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up", timeout=WAIT)

    quits: list[bool] = []
    gui.quit_now = lambda: quits.append(True)
    activate(qtbot, window)
    qtbot.keyClick(window, Qt.Key.Key_Q, CTRL)
    box = window.question
    assert isinstance(box, QMessageBox) and box.objectName() == "quitQuestion"
    box.reject()
    assert quits == []


def focus_chain(window: QWidget) -> list[QWidget]:
    """The widgets Tab visits, in order, starting after the window itself: what
    QWidget::focusNextPrevChild walks (visible, enabled, accepting Tab focus)."""
    out: list[QWidget] = []
    w = window.nextInFocusChain()
    while w is not window and len(out) < 500:
        if (w.isVisibleTo(window) and w.isEnabled() and w.window() is window
                and w.focusPolicy() & Qt.FocusPolicy.TabFocus):
            out.append(w)
        w = w.nextInFocusChain()
    return out


def test_tab_reaches_every_control_in_order(qtbot: QtBot, gui: App, office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    window = gui.window
    window.select(office)
    chain = focus_chain(window)
    toolbar = [window.toolbar.widgetForAction(a) for a in
               (window.new_action, window.edit_action, window.duplicate_action,
                window.delete_action, window.import_action)] + [window.export_button]
    panel = window.status_panel
    wanted = [*toolbar, window.profile_list, window.connect_button,
              window.tabs.tabBar(), panel.copy_button]
    assert all(w in chain for w in wanted), [w.objectName() or w for w in wanted
                                             if w not in chain]
    assert [chain.index(w) for w in wanted] == sorted(chain.index(w) for w in wanted)

    # Every control of each tab is reached when the tab is shown.
    for page in (window.keys_panel, window.logs_panel):
        window.tabs.setCurrentWidget(page)
        chain = focus_chain(window)
        controls = [w for w in page.findChildren(QWidget) if w.isVisibleTo(window)
                    and w.isEnabled() and isinstance(w, (QAbstractButton, QLineEdit,
                                                         QComboBox, QPlainTextEdit))]
        assert controls and all(w in chain for w in controls), [
            w.objectName() or type(w).__name__ for w in controls if w not in chain]
    window.tabs.setCurrentIndex(0)

    # Actually pressing Tab moves along the same chain.
    activate(qtbot, window)
    window.profile_list.setFocus()
    qtbot.keyClick(window.profile_list, Qt.Key.Key_Tab)
    assert QApplication.focusWidget() is window.connect_button


def unnamed(root: QWidget) -> list[str]:
    """Fields, lists and values (read-only labels showing data) without an accessible name;
    buttons and check boxes are named by their text."""
    out = []
    for w in root.findChildren(QWidget):
        if w.objectName().startswith("qt_"):
            continue  # Qt's own parts (a toolbar's overflow button, a scroll area's viewport)
        if isinstance(w, (QLineEdit, QComboBox, QListWidget, QPlainTextEdit)):
            if not w.accessibleName():
                out.append(f"{type(w).__name__} {w.objectName()}")
        elif isinstance(w, QAbstractButton) and not (w.text() or w.accessibleName()):
            if not isinstance(w, QCheckBox) and w.parent() is not None and \
                    type(w.parent()).__name__ in ("QLineEdit",):
                continue  # a line edit's own clear button
            out.append(f"{type(w).__name__} {w.objectName()}")
        elif isinstance(w, (QLabel, ErrorLabel)) and w.objectName().startswith(
                ("status_", "error:", "header")) and not w.accessibleName():
            out.append(f"{type(w).__name__} {w.objectName()}")
    return out


def test_every_field_list_and_value_has_an_accessible_name(qtbot: QtBot, gui: App,
                                                           office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    gui.window.select(office)
    assert unnamed(gui.window) == [], unnamed(gui.window)
    values = gui.window.status_panel.values
    assert values["endpoint"].accessibleName() == "Server"
    gui.window.edit_action.trigger()
    editor = gui.window.editor
    assert editor is not None
    assert unnamed(editor) == []
    assert editor.inputs["peer.endpoint"].accessibleName() == "Server"
    # A field's problem is read with the field.
    endpoint = editor.inputs["peer.endpoint"]
    assert isinstance(endpoint, QLineEdit)
    endpoint.setText("vpn.example.com:99999")
    editor.submit()
    assert "out of range" in endpoint.accessibleDescription()
    editor.reject()


def dark_palette() -> QPalette:
    p = QPalette()
    for role, color in ((QPalette.ColorRole.Window, "#202124"),
                        (QPalette.ColorRole.WindowText, "#e8eaed"),
                        (QPalette.ColorRole.Base, "#17181a"),
                        (QPalette.ColorRole.Text, "#e8eaed"),
                        (QPalette.ColorRole.Button, "#303134"),
                        (QPalette.ColorRole.ButtonText, "#e8eaed")):
        p.setColor(role, QColor(color))
    return p


def test_error_colour_contrast_on_light_and_dark(qtbot: QtBot) -> None:
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    light = app.palette()
    try:
        for palette in (light, dark_palette()):
            app.setPalette(palette)
            holder = QWidget()
            qtbot.addWidget(holder)
            label = ErrorLabel(holder)
            label.show_message("Port 99999 is out of range")
            fg = label.palette().color(QPalette.ColorRole.WindowText)
            bg = label.palette().color(QPalette.ColorRole.Window)
            assert bg == palette.color(QPalette.ColorRole.Window)
            assert contrast(fg, bg) >= MIN_CONTRAST, (fg.name(), bg.name())
            assert fg.red() > fg.green() + 40  # still a red
        # A label made before the theme changed follows it.
        app.setPalette(light)
        label = ErrorLabel()
        qtbot.addWidget(label)
        app.setPalette(dark_palette())  # delivered to widgets from the event loop
        qtbot.waitUntil(lambda: contrast(label.palette().color(QPalette.ColorRole.WindowText),
                                         QColor("#202124")) >= MIN_CONTRAST, timeout=WAIT)
    finally:
        app.setPalette(light)


def clipped(root: QWidget) -> list[str]:
    """Visible one-line texts wider than their widget (what is cut at the edge)."""
    out = []
    for w in [root, *root.findChildren(QWidget)]:
        if not w.isVisibleTo(root) or w.width() <= 1:
            continue
        fm = w.fontMetrics()
        if isinstance(w, QLabel) and not w.wordWrap() and w.text() and \
                w.textFormat() != Qt.TextFormat.RichText and w.pixmap().isNull():
            need = max(fm.horizontalAdvance(t) for t in w.text().splitlines()) + 2 * w.margin()
            if need > w.contentsRect().width():
                out.append(f"label {w.objectName() or w.text()!r}: {need} > "
                           f"{w.contentsRect().width()}")
        elif isinstance(w, QLineEdit):
            text = w.text() or w.placeholderText()
            need = fm.horizontalAdvance(text) + 12
            if text and need > w.width():
                out.append(f"field {w.objectName() or w.accessibleName()!r}: {need} > "
                           f"{w.width()}")
        elif isinstance(w, QAbstractButton) and w.text() and not isinstance(w, QCheckBox):
            need = fm.horizontalAdvance(w.text().replace("&", "")) + 8
            if need > w.width():
                out.append(f"button {w.text()!r}: {need} > {w.width()}")
        elif isinstance(w, QCheckBox) and w.text():
            need = fm.horizontalAdvance(w.text()) + 16
            if need > w.width():
                out.append(f"check box {w.text()!r}: {need} > {w.width()}")
        elif isinstance(w, QTabBar):
            for i in range(w.count()):
                if fm.horizontalAdvance(w.tabText(i)) > w.tabRect(i).width():
                    out.append(f"tab {w.tabText(i)!r}")
        elif isinstance(w, QListWidget):
            for i in range(w.count()):
                item = w.item(i)
                need = max(fm.horizontalAdvance(t) for t in item.text().splitlines()) + \
                    w.iconSize().width() + 16
                if need > w.viewport().width():
                    out.append(f"list item {item.text()!r}: {need} > {w.viewport().width()}")
    return out


def assert_nothing_clipped(qtbot: QtBot, window: QWidget, tabs: QTabWidget | None) -> None:
    for size in (window.size(), window.minimumSizeHint()):
        window.resize(size)
        for i in range(tabs.count() if tabs else 1):
            if tabs is not None:
                tabs.setCurrentIndex(i)
            qtbot.wait(50)
            assert clipped(window) == [], (size, tabs.tabText(i) if tabs else "")


def test_nothing_is_clipped_at_the_minimum_size(qtbot: QtBot, gui: App, world: OfficeLab,
                                                office: str) -> None:
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    window = gui.window
    window.select(office)
    gui.actions.connect_tunnel(office)
    qtbot.waitUntil(lambda: window.header_state.text() == "Connected", timeout=WAIT)
    assert_nothing_clipped(qtbot, window, window.tabs)
    gui.actions.disconnect_tunnel(office)
    qtbot.waitUntil(lambda: window.header_state.text() == "Disconnected", timeout=WAIT)

    # The longest texts: a plain-mode profile's warnings in the list and the header.
    profile = world.laptop.call("get_profile", name=office)["profile"]
    profile["tunnel"]["mode"] = "plain"
    world.laptop.call("update_profile", profile=profile)
    qtbot.waitUntil(lambda: gui.state.model.is_unsafe(office), timeout=WAIT)
    window.resize(980, 680)
    assert_nothing_clipped(qtbot, window, window.tabs)
    window.resize(1, 1)  # the smallest the layout lets it be
    qtbot.wait(50)
    assert window.width() >= window.minimumSizeHint().width()

    window.edit_action.trigger()
    editor = window.editor
    assert editor is not None
    editor.advanced.setChecked(True)
    assert_nothing_clipped(qtbot, editor, None)
    editor.reject()
