"""A real ``tunseal-helper`` process and the real ``tunseal`` CLI, for tests that need them.

:class:`HelperProcess` runs ``python -m helper.main`` with its own socket, state directory and log
file, optionally inside a network namespace (``wrap=("ip", "netns", "exec", NS)``); it inherits
the test session's D-Bus address, so it uses the throwaway Secret Service that tests/run.sh
starts. :func:`cli` / :func:`cli_json` drive the CLI against one socket and keep a transcript of
everything it printed, for the key-leak checks (:func:`spellings`).

Importable as ``helpers_proc`` (tests/ is on sys.path, like ``netlab``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.errors import HelperUnavailable
from core.ipcclient import Client

__all__ = [
    "ROOT",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "HelperProcess",
    "cli",
    "cli_json",
    "spellings",
]

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0


class HelperProcess:
    """``python -m helper.main`` with its own socket, state dir and log file (appended to across
    restarts, so one file holds every line the helper ever wrote)."""

    def __init__(self, workdir: Path, group: str, *, env: dict[str, str] | None = None,
                 wrap: tuple[str, ...] = ()):
        self.wrap = wrap
        self.socket = workdir / "run" / "helper.sock"
        self.state_dir = workdir / "state"
        self.log_path = workdir / "helper.log"
        self.group = group
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [*self.wrap, sys.executable, "-m", "helper.main", "--socket", str(self.socket),
                "--state-dir", str(self.state_dir), "--group", self.group,
                "--log-level", "debug"]

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env)

    def wait_ready(self) -> None:
        """Wait until the helper answers a ping on its socket."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"helper exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(HelperUnavailable), Client(str(self.socket), timeout=5) as c:
                c.call("ping")
                return
            time.sleep(0.1)
        raise AssertionError(f"helper not ready after {START_TIMEOUT} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        """The helper's own pid (``ip netns exec`` execs it, so the pids are the same)."""
        assert self.proc is not None
        with Client(str(self.socket), timeout=5) as c:
            pid: int = c.call("ping")["pid"]
        return pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was never started)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"helper ignored SIGTERM for {STOP_TIMEOUT} s") from None

    def terminate(self) -> None:
        """SIGTERM without waiting (several helpers stop in parallel; :meth:`stop` then waits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the helper can tell."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            time.sleep(0.1)
        tail = "\n".join(self.log().splitlines()[-40:])
        raise AssertionError(f"{text!r} not logged within {timeout} s; the log ends:\n{tail}")

    def client(self, timeout: float = 15.0) -> Client:
        return Client(str(self.socket), timeout=timeout)


def cli(socket: str | Path, *args: str, expect: int = 0,
        transcript: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m core.cli --socket SOCKET ARGS...``; its exit code must be ``expect``.
    stdout and stderr are appended to ``transcript`` when one is given."""
    done = subprocess.run([sys.executable, "-m", "core.cli", "--socket", str(socket), *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=ROOT,
                          check=False)
    if transcript is not None:
        transcript += [done.stdout, done.stderr]
    assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
    return done


def cli_json(socket: str | Path, *args: str, expect: int = 0,
             transcript: list[str] | None = None) -> Any:
    return json.loads(cli(socket, "--json", *args, expect=expect, transcript=transcript).stdout)


def spellings(key: bytes) -> list[str]:
    """Every way a key could show up in text."""
    std = base64.b64encode(key).decode()
    url = base64.urlsafe_b64encode(key).decode()
    return [key.hex(), key.hex().upper(), std, std.rstrip("="), url, url.rstrip("="),
            repr(key)[2:-1]]
