"""File > Join an office... against a real laptop helper and a real gateway helper
(``--gateway CONFIG``), each in its own namespace: the dialog shows what an invitation will
create before anything is done, says in words why a damaged one cannot be used, joins (the
laptop's helper makes the key pair and enrols over the tunnel protocol), and a second try with
the same invitation shows the gateway's refusal.

``TUNSEAL_SCREENSHOTS=DIR`` also saves the dialog, filled in, as ``DIR/join-office.png``."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import netlab
import pytest
from conftest import WAIT
from helpers_proc import HelperProcess
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from gui.app import build
from gui.join_dialog import JoinDialog

pytestmark = [pytest.mark.gui, pytest.mark.netns, pytest.mark.keyring,
              pytest.mark.xdist_group("gui")]

LAPTOP, GATEWAY, PORT = "198.18.19.2", "198.18.19.1", 51900


class LabHelper(HelperProcess):
    """A helper in a namespace with a keyring service of its own (the GUI tests' helpers
    share one Secret Service); ``config``: also run that gateway."""

    def __init__(self, workdir: Path, ns: str, *, config: Path | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, "no-such-group-tunseal-gui",
                         wrap=("ip", "netns", "exec", ns), env=netlab.python_env())
        self.service = f"tunseal-join-{uuid.uuid4().hex[:8]}"
        self.config = config

    def command(self) -> list[str]:
        extra = ["--gateway", str(self.config)] if self.config is not None else []
        return [*super().command(), "--keyring-service", self.service, *extra]

    def call(self, op: str, **args: object) -> dict[str, object]:
        with self.client() as c:
            result: dict[str, object] = c.call(op, **args)
            return result


class Office:
    def __init__(self, lab: netlab.Lab, workdir: Path):
        self.name = f"hq{uuid.uuid4().hex[:4]}"
        laptop_ns, gw_ns = lab.ns("joinlap"), lab.ns("joingw")
        lab.link(laptop_ns, gw_ns, a_addr=f"{LAPTOP}/24", b_addr=f"{GATEWAY}/24")
        config = workdir / "gateway.toml"
        config.write_text(f"""format = 1

[gateway]
name = "{self.name}"
addresses = ["10.78.0.1/24"]
listen_port = {PORT}
public_endpoint = "{GATEWAY}:{PORT}"
lan = ["192.168.78.0/24"]
""")
        self.gateway = LabHelper(workdir / "gw", gw_ns, config=config)
        self.laptop = LabHelper(workdir / "laptop", laptop_ns)
        for h in (self.gateway, self.laptop):
            h.start()

    def invite(self, name: str) -> str:
        text = self.gateway.call("peer_invite", name=name, expires="2h")["invitation"]
        assert isinstance(text, str)
        return text

    def stop(self) -> None:
        for h in (self.laptop, self.gateway):
            h.stop()


@pytest.fixture
def hq() -> Iterator[Office]:
    reason = netlab.unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-join-gui-"))
    try:
        with netlab.Lab() as lab:
            office = Office(lab, workdir)
            try:
                yield office
            finally:
                office.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def open_dialog(qtbot: QtBot, window: object) -> JoinDialog:
    window.open_join_dialog()  # type: ignore[attr-defined]
    dialog = window.join_dialog  # type: ignore[attr-defined]
    assert isinstance(dialog, JoinDialog)
    qtbot.waitUntil(dialog.isVisible, timeout=WAIT)
    return dialog


def test_join_an_office(qtbot: QtBot, hq: Office, tmp_path: Path) -> None:
    app = build(str(hq.laptop.socket), native_dialogs=False)
    qtbot.addWidget(app.window)
    app.start()
    try:
        qtbot.waitUntil(lambda: app.state.model.availability.ok, timeout=WAIT)
        menu_texts = [a.text() for a in app.window.menuBar().actions()[0].menu().actions()]
        assert "Join an office…" in menu_texts
        text = hq.invite("laptop-1")
        dialog = open_dialog(qtbot, app.window)
        assert not dialog.join_button.isEnabled()

        # A damaged invitation: said in words, and nothing can be joined.
        dialog.text.setPlainText(text[:30] + ("x" if text[30] != "x" else "y") + text[31:])
        assert "damaged" in dialog.preview.text()
        assert not dialog.join_button.isEnabled()

        # The real one, opened from a file as it might arrive by mail.
        path = tmp_path / "invitation.txt"
        path.write_text("Here is your invitation:\n" + text + "\n")
        dialog.load_file(str(path))
        assert "not a Tunseal invitation" in dialog.preview.text()  # the mail's words too
        path.write_text(text + "\n")
        dialog.load_file(str(path))
        assert dialog.preview.text() == "Joining will create this profile:"
        assert dialog.row_labels["Gateway"].text() == hq.name
        assert dialog.row_labels["Your address"].text() == "10.78.0.2/32"
        assert dialog.row_labels["Connects to"].text() == f"{GATEWAY}:{PORT}"
        assert "(in 1 h " in dialog.row_labels["Good until"].text()
        assert dialog.name.text() == hq.name and dialog.join_button.isEnabled()
        _screenshot(dialog)

        finished: list[int] = []
        dialog.finished.connect(finished.append)
        qtbot.mouseClick(dialog.join_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: finished == [1], timeout=WAIT)  # accepted, then deleted
        qtbot.waitUntil(lambda: hq.name in app.state.model.profiles, timeout=WAIT)
        assert "Joined" in app.window.statusBar().currentMessage()
        peers = hq.gateway.call("peer_list")["peers"]
        assert isinstance(peers, list)
        assert [p["name"] for p in peers] == ["laptop-1"]
        assert peers[0]["public_key"] == hq.laptop.call("public_key", name=hq.name)["public_key"]

        # The same invitation again: the gateway's refusal, in words, in the dialog.
        again = open_dialog(qtbot, app.window)
        again.text.setPlainText(text)
        again.name.setText("second")
        qtbot.mouseClick(again.join_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "already used" in again.error.text(), timeout=WAIT)
        assert again.isVisible() and again.join_button.isEnabled()
        assert "second" not in app.state.model.profiles
        again.reject()

        # The profile joined connects.
        hq.laptop.call("connect", name=hq.name)
        deadline = time.monotonic() + 20
        while hq.laptop.call("status", name=hq.name)["tunnels"][0]["state"] != "up":  # type: ignore[index]
            assert time.monotonic() < deadline, "the joined profile did not come up"
            time.sleep(0.2)
        hq.laptop.call("disconnect", name=hq.name)
    finally:
        app.close()


def _screenshot(dialog: JoinDialog) -> None:
    out = os.environ.get("TUNSEAL_SCREENSHOTS")
    if out:
        dialog.adjustSize()
        assert dialog.grab().save(str(Path(out) / "join-office.png"))
