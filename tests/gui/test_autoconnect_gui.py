"""Autoconnect in the desktop client, against the real helper: a profile set to connect on
untrusted networks comes up by itself, the tray's "Trust this network" adds the network the
laptop is on (and the tunnel goes down), and the editor shows and edits the trusted list and the
autoconnect setting, with core.profile's problems under the field."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WAIT
from officelab import OFFICE_ADDR, OfficeLab
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QComboBox, QDialogButtonBox, QLineEdit
from pytestqt.qtbot import QtBot

from gui.app import App
from gui.editor import ProfileEditor

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]


@pytest.fixture
def on_a_network(world: OfficeLab, office: str) -> Iterator[str]:
    """The laptop gets a default route through the office's end of its link (a network with a
    gateway, which autoconnect can name); removed afterwards, so the other GUI tests keep a
    laptop without one."""
    world.lab.run(world.laptop_ns, "ip", "route", "add", "default", "via", OFFICE_ADDR)
    try:
        yield office
    finally:
        profile = world.laptop.call("get_profile", name=office)["profile"]
        profile["tunnel"].pop("autoconnect", None)
        world.laptop.call("update_profile", profile=profile)
        world.lab.run(world.laptop_ns, "ip", "route", "del", "default", check=False)


def test_trust_this_network_from_the_tray_and_the_list_in_the_editor(
    qtbot: QtBot, gui: App, world: OfficeLab, on_a_network: str, tmp_path: Path
) -> None:
    office = on_a_network
    # $TUNSEAL_SCREENSHOTS (a directory) keeps the pictures: docs/screenshots/tray-trust.png,
    # editor-autoconnect.png.
    shots = Path(os.environ.get("TUNSEAL_SCREENSHOTS") or tmp_path)
    qtbot.waitUntil(lambda: office in gui.state.model.profiles, timeout=WAIT)
    assert gui.tray.trust_actions == {}  # autoconnect is off: nothing to trust for
    profile = world.laptop.call("get_profile", name=office)["profile"]
    profile["tunnel"]["autoconnect"] = "untrusted"
    world.laptop.call("update_profile", profile=profile)
    # Nobody connects it: the helper does, on this untrusted network.
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "up", timeout=WAIT)
    qtbot.waitUntil(lambda: office in gui.tray.trust_actions, timeout=WAIT)
    action = gui.tray.trust_actions[office]
    assert action.text() == "Trust this network"
    gui.tray.menu.popup(QPoint(40, 40))
    qtbot.wait(300)
    assert gui.tray.menu.grab().save(str(shots / "tray-trust.png"))
    gui.tray.menu.hide()

    action.trigger()
    qtbot.waitUntil(lambda: gui.state.model.profiles[office].trusted_networks != (),
                    timeout=WAIT)
    (entry,) = gui.state.model.profiles[office].trusted_networks
    network = world.laptop.call("network")
    assert entry == network["network"]["entry"] and entry.startswith("gateway:")
    assert network["profiles"][0]["trusted"] is True
    qtbot.waitUntil(lambda: gui.state.model.state(office) == "down", timeout=WAIT)

    gui.window.select(office)
    gui.window.edit_action.trigger()
    editor = gui.window.editor
    assert isinstance(editor, ProfileEditor) and editor.isVisible()
    choice = editor.inputs["tunnel.autoconnect"]
    trusted = editor.inputs["tunnel.trusted_networks"]
    assert isinstance(choice, QComboBox) and isinstance(trusted, QLineEdit)
    assert choice.currentData() == "untrusted"
    assert choice.currentText() == "on every network I do not trust"
    assert trusted.text() == entry
    assert editor.grab().save(str(shots / "editor-autoconnect.png"))

    trusted.setText(f"{entry}, Office Wi-Fi")
    save = editor.buttons.button(QDialogButtonBox.StandardButton.Save)
    qtbot.mouseClick(save, Qt.MouseButton.LeftButton)
    assert "is not a network" in editor.error_text("tunnel.trusted_networks")
    trusted.setText(entry)
    assert editor.error_text("tunnel.trusted_networks") == ""
    choice.setCurrentIndex(choice.findData("never"))
    qtbot.mouseClick(save, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: gui.state.model.profiles[office].autoconnect == "never",
                    timeout=WAIT)
    stored = world.laptop.call("get_profile", name=office)["profile"]["tunnel"]
    assert "autoconnect" not in stored and stored["trusted_networks"] == [entry]
    qtbot.waitUntil(lambda: office not in gui.tray.trust_actions, timeout=WAIT)
