"""Screenshots of the real windows, for review and for the README:

    python -m gui.screenshots OUTDIR [--socket PATH] [--profile NAME] [--ping ADDRESS]
                                     [--netns NS] [--seconds N]

It needs a running helper with a profile that can connect (``make demo`` leaves one; the GUI
tests run this against their own pair of helpers). It builds the same window a user gets
(:func:`gui.app.build`), connects the profile, sends pings through the tunnel so the graph has
something to show, and grabs offscreen:

- ``main-connected.png``: the window, connected, with the live graph;
- ``keys.png`` and ``logs.png``: the other two tabs;
- ``editor-error.png``: the profile editor showing a field's error;
- ``tray-menu.png``: the tray menu;
- ``first-connection-key.png`` and ``first-connection-no-answer.png``: a new profile's next
  step (the new public key to hand over) and what the window says while the server does not
  know the key yet (a temporary copy of the profile, removed afterwards);
- ``main-dark.png``: the connected window in a dark theme;
- ``no-helper.png``: the window when no helper answers (a socket path where none runs).

A tunnel that was down is disconnected again at the end; one that was up is reconnected at the
start (so the Logs tab has this session's messages) and left up.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtWidgets import QApplication, QWidget

from core.errors import IPCError
from core.ipcclient import Client, socket_path
from gui.app import App

__all__ = ["main", "render", "wait_until"]

TRAFFIC = ((400, 0.05), (1200, 0.02), (1000, 0.01), (600, 0.03))
"""(ping payload bytes, interval seconds) phases, so the graph has shape."""


class ScreenshotError(Exception):
    pass


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt event loop until ``predicate()``; ScreenshotError after ``timeout`` s."""
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ScreenshotError(f"gave up after {timeout:.0f} s waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.02)


def pump(seconds: float) -> None:
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end, seconds + 1, "time to pass")


def ping_target(allowed_ips: Sequence[str]) -> str | None:
    """An address to ping through a tunnel: the first host of its first IPv4 allowed network
    (for a single-host route, that host)."""
    for text in allowed_ips:
        net = ipaddress.ip_network(text, strict=False)
        if net.version != 4 or net.prefixlen == 0:
            continue
        return str(net.network_address if net.num_addresses == 1 else net.network_address + 1)
    return None


def traffic(target: str, seconds: float, netns: str | None) -> list[subprocess.Popen[bytes]]:
    """Pings in phases of different sizes and rates; each ping stops by itself."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    phase = max(2, round(seconds / len(TRAFFIC)))
    script = "; ".join(f"ping -q -s {size} -i {interval} -w {phase} {target} >/dev/null 2>&1"
                       for size, interval in TRAFFIC)
    return [subprocess.Popen([*prefix, "sh", "-c", script])]


def render(out: Path, *, socket: str | None = None, profile: str | None = None,
           ping: str | None = None, netns: str | None = None, seconds: float = 40.0,
           log: Callable[[str], None] = print) -> list[Path]:
    """Take every screenshot into ``out``; returns the files written."""
    from PySide6.QtCore import QPoint

    from gui.app import build

    qapp = QApplication.instance() or QApplication(["tunseal-screenshots"])
    assert isinstance(qapp, QApplication)
    out.mkdir(parents=True, exist_ok=True)
    path = socket_path(socket)
    try:
        with Client(path, timeout=10) as client:
            client.call("ping")
    except IPCError as e:
        raise ScreenshotError(f"{e}\nStart a helper with a demo tunnel first ('make demo'), or "
                              "pass --socket PATH.") from None

    written: list[Path] = []

    def save(widget: QWidget, name: str) -> None:
        target = out / name
        if not widget.grab().save(str(target)):
            raise ScreenshotError(f"could not write {target}")
        written.append(target)
        log(f"wrote {target}")

    app: App = build(path, native_dialogs=False)
    app.window.resize(1000, 720)
    app.window.show()
    app.helper.start()
    connected_here = ""
    pings: list[subprocess.Popen[bytes]] = []
    try:
        model = app.state.model
        wait_until(lambda: model.availability.ok and bool(model.profiles), 15,
                   "the helper's profiles")
        name = profile or next((n for n in model.names() if model.state(n) == "up"),
                               model.names()[0])
        if name not in model.profiles:
            raise ScreenshotError(f"the helper has no profile {name!r}")
        app.window.select(name)
        if model.state(name) == "down":
            connected_here = name
        else:  # reconnect, so the Logs tab has the tunnel's messages of this session
            app.actions.disconnect_tunnel(name)
            wait_until(lambda: model.state(name) == "down", 15, f"{name} to disconnect")
        _first_connection(app, name, save)
        app.window.select(name)
        app.actions.connect_tunnel(name)
        wait_until(lambda: model.state(name) == "up", 30, f"{name} to connect")
        target = ping or ping_target(model.profiles[name].allowed_ips)
        if target is None:
            raise ScreenshotError(f"{name} routes no IPv4 network to ping: pass --ping ADDRESS")
        log(f"{name} is up; pinging {target} for {seconds:.0f} s")
        pings = traffic(target, seconds, netns)
        wait_until(lambda: all(p.poll() is not None for p in pings), seconds + 30,
                   "the traffic to end")
        pump(2.5)  # the rates fall back: the graph shows the end of the burst

        window = app.window
        window.tabs.setCurrentIndex(0)
        pump(0.3)
        save(window, "main-connected.png")
        window.tabs.setCurrentIndex(1)
        wait_until(lambda: bool(window.keys_panel.public_key.text()), 10, "the public key")
        pump(0.3)
        save(window, "keys.png")
        window.tabs.setCurrentIndex(2)
        window.logs_panel.helper_too.setChecked(True)
        pump(0.3)
        save(window, "logs.png")
        window.tabs.setCurrentIndex(0)

        window.edit_selected()
        editor = window.editor
        assert editor is not None
        editor.resize(620, 470)
        endpoint = editor.inputs["peer.endpoint"]
        endpoint.setText("vpn.example.com:99999")  # type: ignore[union-attr]
        editor.submit()
        wait_until(lambda: bool(editor.error_text("peer.endpoint")), 5, "the editor's error")
        pump(0.3)
        save(editor, "editor-error.png")
        editor.reject()

        menu = app.tray.menu
        menu.popup(QPoint(40, 40))
        pump(0.5)
        save(menu, "tray-menu.png")
        menu.hide()

        _dark(qapp, window, save)

        written.append(_no_helper(out, log))
    finally:
        for p in pings:
            if p.poll() is None:
                p.terminate()
                p.wait(5)
        if connected_here:
            try:
                with Client(path, timeout=10) as client:
                    client.call("disconnect", name=connected_here)
            except IPCError as e:
                log(f"could not disconnect {connected_here}: {e}")
        app.close()
    return written


def _first_connection(app: App, name: str, save: Callable[[QWidget, str], None]) -> None:
    """A new user's first steps, for real: a copy of ``name`` with a new key pair (the server
    does not know it) shows the next step, then connects and gets no answer."""
    from core.profile import profile_to_dict
    from gui.model import duplicate_name

    model, window = app.state.model, app.window
    source = model.profiles[name]
    new = "new-" + name[:28]
    if new in model.profiles:
        new = duplicate_name(new, model.profiles)
    copy = source.replace(name=new, private_key_ref=f"{new}.private", psk_ref="")
    with Client(app.helper.path, timeout=10) as client:
        client.call("add_profile", profile=profile_to_dict(copy))
    try:
        wait_until(lambda: new in model.profiles, 10, f"the profile {new}")
        window.select(new)
        app.actions.ensure_key(new, lambda key: window.show_next_step(new, key))
        wait_until(lambda: window.next_step is not None and window.next_step.isVisible(), 10,
                   "the next step after a new key")
        dialog = window.next_step
        assert dialog is not None
        pump(0.3)
        save(dialog, "first-connection-key.png")
        dialog.reject()
        app.actions.connect_tunnel(new)
        wait_until(lambda: model.state(new) == "unreachable", 40, f"{new} to get no answer")
        window.tabs.setCurrentIndex(0)
        pump(1.2)
        save(window, "first-connection-no-answer.png")
    finally:
        with Client(app.helper.path, timeout=10) as client:
            client.call("remove_profile", name=new)  # disconnects it, deletes its key


def _dark(qapp: QApplication, window: QWidget, save: Callable[[QWidget, str], None]) -> None:
    """The connected window in a dark theme (Fusion with a dark palette, as a desktop's dark
    mode gives Qt)."""
    from PySide6.QtGui import QColor, QPalette

    light, style = qapp.palette(), qapp.style().name()
    dark = QPalette()
    for role, color in ((QPalette.ColorRole.Window, "#202124"),
                        (QPalette.ColorRole.WindowText, "#e8eaed"),
                        (QPalette.ColorRole.Base, "#17181a"),
                        (QPalette.ColorRole.AlternateBase, "#2a2b2e"),
                        (QPalette.ColorRole.Text, "#e8eaed"),
                        (QPalette.ColorRole.Button, "#303134"),
                        (QPalette.ColorRole.ButtonText, "#e8eaed"),
                        (QPalette.ColorRole.Highlight, "#8ab4f8"),
                        (QPalette.ColorRole.HighlightedText, "#202124"),
                        (QPalette.ColorRole.Mid, "#5f6368"),
                        (QPalette.ColorRole.PlaceholderText, "#9aa0a6")):
        dark.setColor(role, QColor(color))
    qapp.setStyle("Fusion")
    qapp.setPalette(dark)
    try:
        pump(0.5)
        save(window, "main-dark.png")
    finally:
        qapp.setStyle(style)
        qapp.setPalette(light)
        pump(0.2)


def _no_helper(out: Path, log: Callable[[str], None]) -> Path:
    """The window pointed at a socket where no helper runs: the real 'not running' path."""
    from gui.app import build

    with tempfile.TemporaryDirectory() as empty:
        app = build(os.path.join(empty, "helper.sock"))
        app.window.resize(1000, 720)
        app.window.show()
        app.helper.start()
        try:
            wait_until(lambda: app.window.right.currentWidget() is app.window.unavailable
                       and app.state.model.availability.code == "unavailable"
                       and "not running" in app.state.model.availability.message, 10,
                       "the no-helper page")
            pump(0.3)
            target = out / "no-helper.png"
            if not app.window.grab().save(str(target)):
                raise ScreenshotError(f"could not write {target}")
            log(f"wrote {target}")
            return target
        finally:
            app.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gui.screenshots",
                                     description="Screenshots of the Tunseal window.")
    parser.add_argument("out", type=Path, help="directory for the PNG files")
    parser.add_argument("--socket", help="the helper's socket (default $TUNSEAL_SOCKET or "
                        "/run/tunseal/helper.sock)")
    parser.add_argument("--profile", help="the profile to show (default: one that is up, "
                        "else the first)")
    parser.add_argument("--ping", metavar="ADDRESS", help="what to ping through the tunnel "
                        "(default: the first host of its first allowed network)")
    parser.add_argument("--netns", help="run the pings in this network namespace (where the "
                        "helper's tunnel device is)")
    parser.add_argument("--seconds", type=float, default=40.0, help="traffic time (default 40)")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        render(args.out, socket=args.socket, profile=args.profile, ping=args.ping,
               netns=args.netns, seconds=args.seconds)
    except ScreenshotError as e:
        print(f"gui.screenshots: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
