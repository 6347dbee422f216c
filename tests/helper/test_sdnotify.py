"""The helper tells systemd it is ready (Type=notify) once its control socket listens: a real
``tunseal-helper`` with $NOTIFY_SOCKET naming a real Unix datagram socket this test reads, the
way systemd's own socket works; and sd_notify itself on path and abstract addresses."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import netlab
import pytest
from helpers_proc import HelperProcess

from core.ipcclient import Client
from helper.main import sd_notify

pytestmark = [pytest.mark.keyring, pytest.mark.netns]


def receiver(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    return sock


def test_sd_notify_sends_one_datagram_to_a_path(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1\nSTATUS=x")
        assert sock.recv(4096) == b"READY=1\nSTATUS=x"


def test_sd_notify_to_an_abstract_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tunseal-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_sd_notify_without_systemd_does_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/not-a-socket")
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd_notify("READY=1") is False  # logged, never raised


def test_the_helper_is_ready_when_its_socket_listens(lab: netlab.Lab) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-sdnotify-"))
    notify = str(workdir / "notify.sock")
    ns = lab.ns("sdn")
    with receiver(notify) as sock:
        helper = HelperProcess(workdir, "no-such-group-tunseal",
                               env={**os.environ, "NOTIFY_SOCKET": notify},
                               wrap=("ip", "netns", "exec", ns))
        helper.launch()
        try:
            ready = sock.recv(4096).decode()
            # At the moment READY=1 arrives, a client gets in at once: no retry, no wait.
            with Client(str(helper.socket), timeout=10) as client:
                pid = client.call("ping")["pid"]
            lines = ready.split("\n")
            assert lines[0] == "READY=1"
            assert f"STATUS=listening on {helper.socket}" in lines
            assert f"MAINPID={pid}" in lines
            helper.terminate()
            assert sock.recv(4096).decode().split("\n")[0] == "STOPPING=1"
        finally:
            helper.stop()
            shutil.rmtree(workdir, ignore_errors=True)
