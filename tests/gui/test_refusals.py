"""What the window shows a group member who asks for something only a profile's owner may do
(issue 9, finding 7): the real GUI, a real helper, real throwaway users.

The GUI runs in this (root) process, so it connects through a relay that a throwaway member
runs: the helper sees that member's uid in SO_PEERCRED, exactly as if the member ran the GUI.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import random
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import WAIT
from helpers_proc import HelperProcess
from PySide6.QtWidgets import QMessageBox, QToolBar
from pytestqt.qtbot import QtBot
from shiboken6 import isValid

from gui.app import App, build

pytestmark = [pytest.mark.keyring, pytest.mark.xdist_group("gui-refusals")]

ROOT = Path(__file__).resolve().parents[2]
RUNUSER = "/usr/sbin/runuser"
SYSTEM_PYTHON = "/usr/bin/python3"

if os.geteuid() != 0:
    pytest.skip("creates users and groups: run as root", allow_module_level=True)

RELAY = r"""
import os, socket, sys, threading
listen, target = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX)
server.bind(listen)
server.listen(8)
def pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def serve():
    while True:
        client, _ = server.accept()
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(target)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # ends when the test closes our stdin
"""

IMPORT = r"""
import sys
from core.ipcclient import Client
with Client(sys.argv[1], timeout=20) as c:
    c.call("import_profile", text=sys.stdin.read())
"""


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def _unused(prefix: str, database: str) -> str:
    for _ in range(100):
        name = f"{prefix}{random.randint(1000, 99999)}"
        if _sh("getent", database, name).returncode != 0:
            return name
    raise RuntimeError(f"no free {prefix}NNNN name")


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass
class Members:
    alice: str
    mallory: str
    helper: HelperProcess
    relay: str
    """A socket that reaches the helper as mallory."""


@pytest.fixture(scope="module")
def members() -> Iterator[Members]:
    with contextlib.ExitStack() as cleanup:
        group = _unused("tsr", "group")
        assert _sh("groupadd", group).returncode == 0
        cleanup.callback(_sh, "groupdel", group)
        users = []
        for _ in range(2):
            user = _unused("tsr", "passwd")
            made = _sh("useradd", "-M", "-s", "/usr/sbin/nologin", "-G", group, user)
            assert made.returncode == 0, made.stderr
            cleanup.callback(_sh, "userdel", user)
            users.append(user)
        workdir = Path(tempfile.mkdtemp(prefix="tunseal-refusals-"))
        cleanup.callback(subprocess.run, ["rm", "-rf", "--one-file-system", str(workdir)],
                         check=False, timeout=30)
        workdir.chmod(0o755)
        helper = HelperProcess(workdir / "helper", group)
        (workdir / "helper").mkdir()
        cleanup.callback(helper.stop)
        helper.start()
        relay_dir = workdir / "relay"
        relay_dir.mkdir()
        os.chown(relay_dir, pwd.getpwnam(users[1]).pw_uid, -1)
        relay = relay_dir / "relay.sock"
        proc = subprocess.Popen(
            [RUNUSER, "-u", users[1], "--", SYSTEM_PYTHON, "-c", RELAY, str(relay),
             str(helper.socket)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/", env=_env())
        cleanup.callback(proc.wait, 15)
        assert proc.stdin is not None and proc.stdout is not None
        cleanup.callback(proc.stdin.close)
        assert proc.stdout.readline().strip() == "ready"
        yield Members(users[0], users[1], helper, str(relay))


def import_as(members: Members, user: str, text: str) -> None:
    done = subprocess.run([RUNUSER, "-u", user, "--", SYSTEM_PYTHON, "-c", IMPORT,
                           str(members.helper.socket)], input=text, capture_output=True,
                          text=True, timeout=60, cwd="/", env=_env(), check=False)
    assert done.returncode == 0, done.stderr


def psk_profile(name: str) -> str:
    psk = base64.b64encode(os.urandom(32)).decode()
    return f"""format = 1

[tunnel]
name = "{name}"
mode = "psk"

[interface]
addresses = ["10.234.0.1/24"]
listen_port = 52101

[peer]
allowed_ips = ["10.234.0.2/32"]

[keys]
psk = "x"

[secrets]
psk = "{psk}"
"""


@pytest.fixture
def gui_as_mallory(qtbot: QtBot, members: Members) -> Iterator[App]:
    app = build(members.relay, native_dialogs=False)
    qtbot.addWidget(app.window)
    app.start()
    qtbot.waitUntil(lambda: app.state.model.availability.ok, timeout=WAIT)
    yield app
    app.close()


def _error_box(qtbot: QtBot, app: App) -> QMessageBox:
    def shown() -> bool:
        box = app.window.question  # the confirmation before it, once closed, is deleted
        return box is not None and isValid(box) and box.isVisible() \
            and box.icon() == QMessageBox.Icon.Warning and "belongs to" in box.text()

    qtbot.waitUntil(shown, timeout=WAIT)
    assert app.window.question is not None
    return app.window.question


def test_finding7_the_window_says_who_may_export_or_delete(
        qtbot: QtBot, members: Members, gui_as_mallory: App, tmp_path: Path) -> None:
    app = gui_as_mallory
    name = f"rf{uuid.uuid4().hex[:8]}"
    import_as(members, members.alice, psk_profile(name))
    try:
        qtbot.waitUntil(lambda: name in app.state.model.profiles, timeout=WAIT)
        app.window.select(name)

        app.window.export_secrets_action.trigger()
        confirm = app.window.question
        assert confirm is not None
        yes = next(b for b in confirm.buttons() if b.text() == "Export secret keys")
        yes.click()
        dialog = app.window.export_dialog
        assert dialog is not None
        target = tmp_path / "stolen.tunseal"
        dialog.selectFile(str(target))
        dialog.accept()
        box = _error_box(qtbot, app)
        assert f"Could not export {name}" in box.windowTitle()
        assert f"belongs to {members.alice}" in box.text()
        assert f"only {members.alice} or root may export its secret keys" in box.text()
        assert not target.exists()
        box.grab().save(str(tmp_path / "refused.png"))
        box.done(0)

        app.window.question = None
        bar = app.window.findChild(QToolBar, "profileToolbar")
        assert bar is not None
        delete = next(a for a in bar.actions() if a.text() == "Delete…")
        delete.trigger()
        ask = app.window.question
        assert ask is not None
        next(b for b in ask.buttons() if b.text() == "Delete").click()
        box = _error_box(qtbot, app)
        assert f"only {members.alice} or root may remove it" in box.text()
        assert name in app.state.model.profiles
    finally:
        with members.helper.client() as c, contextlib.suppress(Exception):
            c.call("remove_profile", name=name)
    print(json.dumps({"screenshot": str(tmp_path / "refused.png")}))
