"""A laptop and an office, each a network namespace with its own real ``tunseal-helper``, joined
by a veth link: the world the GUI tests (and ``make screenshots`` runs) drive.

    laptop 198.18.9.2 ---- 198.18.9.1 office
    tunnel 10.77.0.2/24    10.77.0.1/24 (profile "gw", listening on UDP 51900)

The office side is configured over its socket, like an administrator would; the laptop's helper
is the one the GUI talks to. The laptop's profile for the office (:meth:`OfficeLab.profile_text`,
ephemeral mode, with its private key in ``[secrets]``) is what a user would be handed.

Usable outside pytest (tests/run.sh's keyring session is needed for the helpers)::

    with OfficeLab() as world: ...
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import netlab

from core import noise
from core.errors import HelperUnavailable
from core.ipcclient import Client

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
NO_GROUP = "no-such-group-tunseal-gui"
"""The helpers' --group: one that does not exist, so their sockets are root-only (0600)."""

LAPTOP_ADDR, OFFICE_ADDR = "198.18.9.2", "198.18.9.1"
OFFICE_TUNNEL_IP = "10.77.0.1"
PORT = 51900


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class Helper:
    """``python -m helper.main`` inside a namespace, with its own socket and state."""

    def __init__(self, lab: netlab.Lab, ns: str, workdir: Path, *, log_level: str = "info"):
        self.lab, self.ns, self.workdir = lab, ns, workdir
        self.socket = workdir / "run" / "helper.sock"
        self.log_path = workdir / "helper.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.popen(
                self.ns, sys.executable, "-m", "helper.main", "--socket", str(self.socket),
                "--state-dir", str(self.workdir / "state"), "--group", NO_GROUP,
                "--log-level", self.log_level,
                # Parallel workers' helpers share one Secret Service and name their key items
                # after the profile ("office"): each helper keeps its items apart.
                "--keyring-service", f"tunseal-{self.workdir.parent.name}-{self.workdir.name}",
                stdout=log, stderr=subprocess.STDOUT, cwd=netlab.REPO_ROOT,
                env=netlab.python_env())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"helper exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(HelperUnavailable), self.client(5) as c:
                c.call("ping")
                return
            time.sleep(0.1)
        raise AssertionError(f"helper not ready after {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"helper ignored SIGTERM for {STOP_TIMEOUT} s") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 15.0) -> Client:
        return Client(str(self.socket), timeout=timeout)

    def call(self, op: str, **args: Any) -> Any:
        with self.client() as c:
            return c.call(op, **args)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class OfficeLab:
    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.tag = os.urandom(3).hex()
        """In every keyring item name: labs in parallel test workers share one Secret Service."""
        self.laptop_key = noise.generate_private_key()
        self.office_key = noise.generate_private_key()

    def __enter__(self) -> OfficeLab:
        try:
            self._build()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def _build(self) -> None:
        self.lab = self._stack.enter_context(netlab.Lab())
        self.laptop_ns, self.office_ns = self.lab.ns("laptop"), self.lab.ns("office")
        self.lab.link(self.laptop_ns, self.office_ns, a_addr=f"{LAPTOP_ADDR}/24",
                      b_addr=f"{OFFICE_ADDR}/24")
        self.workdir = Path(tempfile.mkdtemp(prefix="tunseal-gui-"))
        self._stack.callback(subprocess.run, ["rm", "-rf", "--one-file-system",
                                              str(self.workdir)], check=False)
        self.office = Helper(self.lab, self.office_ns, self.workdir / "office")
        self.laptop = Helper(self.lab, self.laptop_ns, self.workdir / "laptop")
        for helper in (self.office, self.laptop):
            self._stack.callback(helper.stop)
            helper.start()
        self.office.call("import_profile", text=self.office_profile_text(), replace=True)
        self.office.call("connect", name="gw")

    def ensure_laptop_running(self) -> None:
        """Start the laptop's helper again if a test stopped it."""
        if not self.laptop.running:
            self.laptop.start()

    # --- profiles ------------------------------------------------------------------------------

    def profile_text(self, name: str = "office", *, with_secret: bool = True) -> str:
        """The laptop's profile for the office, as a .tunseal file."""
        text = f"""format = 1

[tunnel]
name = "{name}"
mode = "ephemeral"

[interface]
addresses = ["10.77.0.2/24"]

[peer]
endpoint = "{OFFICE_ADDR}:{PORT}"
public_key = "{_b64(noise.public_key(self.office_key))}"
allowed_ips = ["10.77.0.0/24"]
keepalive = 5

[keys]
private_key = "{name}.{self.tag}.private"
"""
        if with_secret:
            text += f'\n[secrets]\nprivate_key = "{_b64(self.laptop_key)}"\n'
        return text

    def office_profile_text(self) -> str:
        return f"""format = 1

[tunnel]
name = "gw"
mode = "ephemeral"

[interface]
addresses = ["{OFFICE_TUNNEL_IP}/24"]
listen_port = {PORT}

[peer]
public_key = "{_b64(noise.public_key(self.laptop_key))}"
allowed_ips = ["10.77.0.2/32"]

[keys]
private_key = "gw.{self.tag}.private"

[secrets]
private_key = "{_b64(self.office_key)}"
"""

    def write_profile(self, directory: Path, name: str = "office") -> Path:
        path = directory / f"{name}.tunseal"
        path.write_text(self.profile_text(name))
        return path

    # --- traffic -------------------------------------------------------------------------------

    def traffic(self, seconds: float, *, size: int = 1200, interval: float = 0.02
                ) -> subprocess.Popen[bytes]:
        """Pings through the tunnel from the laptop, in the background, for ``seconds``
        (bounded: ping stops by itself)."""
        return self.lab.popen(self.laptop_ns, "ping", "-q", "-i", str(interval), "-s",
                              str(size), "-w", str(max(1, round(seconds))), OFFICE_TUNNEL_IP,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
