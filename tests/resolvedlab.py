"""A real systemd-resolved for tests, on a throwaway system bus inside a lab namespace.

This machine runs no systemd, but systemd-resolved runs on its own: installers/dev-deps.sh
unpacks Debian's package (never installs it: that would take over /etc/resolv.conf) into
:data:`RESOLVED_ROOT`. :class:`Resolved` gives it what a systemd machine would:

* a private mount namespace (held by a sleeping process) with a tmpfs on /run/systemd, a
  drop-in there that turns off LLMNR, mDNS, DNSSEC and the fallback servers, and a copy of /etc
  with a ``systemd-resolve`` user and /etc/resolv.conf pointing at the stub 127.0.0.53, as on a
  machine where resolved manages DNS;
* a ``dbus-daemon`` as the system bus, with the system bus's default-deny policy and the
  package's own org.freedesktop.resolve1 policy, listening on a socket in a fresh directory;
* ``systemd-resolved`` itself, in the lab namespace (so it sees that namespace's links).

Processes that should live on that machine (a helper, resolvectl, getent) run through
:attr:`Resolved.wrap` and :attr:`Resolved.env`. Everything is tracked by the Lab, so it is gone
after the test; :meth:`Resolved.close` also removes the socket directory.

Importable as ``resolvedlab`` (tests/ is on sys.path, like ``netlab``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import netlab
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

RESOLVED_ROOT = Path(os.environ.get("TUNSEAL_RESOLVED_ROOT", "/opt/tunseal-dev/systemd-resolved"))
DAEMON = RESOLVED_ROOT / "lib/systemd/systemd-resolved"
RESOLVECTL = RESOLVED_ROOT / "usr/bin/resolvectl"
POLICY = RESOLVED_ROOT / "usr/share/dbus-1/system.d/org.freedesktop.resolve1.conf"
START_TIMEOUT = 20.0

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
    {extra_root_policy}
  </policy>
  <include>{policy}</include>
</busconfig>
"""

_RESOLVED_CONF = "[Resolve]\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n"

_HOLDER = r"""
set -e
work=$1
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/resolved.conf.d
cp "$work/resolved.conf" /run/systemd/resolved.conf.d/tunseal-test.conf
# A copy of all of /etc, not bind mounts on single files: a file mounted over goes away in
# every other namespace when the host replaces it by rename (useradd does, in other tests).
cp -a /etc "$work/etc"
for f in passwd group resolv.conf; do rm -f "$work/etc/$f"; cp -p "$work/$f" "$work/etc/$f"; done
mount --bind "$work/etc" /etc
echo ready
exec sleep 3600
"""


def missing() -> str | None:
    """Why :class:`Resolved` cannot run here (the test should fail with it), or None."""
    for path in (DAEMON, RESOLVECTL, POLICY):
        if not path.exists():
            return f"{path} is missing: run installers/dev-deps.sh (it unpacks systemd-resolved)"
    for tool in ("dbus-daemon", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (installers/dev-deps.sh)"
    if not Path("/run/systemd").is_dir():
        return "/run/systemd does not exist to mount a private tmpfs on"
    return None


class Resolved:
    """systemd-resolved and its system bus in lab namespace ``ns`` (see the module docstring).
    ``extra_root_policy``: more ``<allow .../>`` for root on that bus (owning a name a test
    plays, say)."""

    def __init__(self, lab: netlab.Lab, ns: str, *, extra_root_policy: str = "") -> None:
        """``ns``: the real name of a namespace of ``lab`` (what :meth:`netlab.Lab.ns` returns)."""
        problem = missing()
        assert problem is None, problem
        self.lab = lab
        self.ns = ns
        # Its own directory, world-traversable: resolved drops to the systemd-resolve user and
        # must still reach the bus socket (pytest's tmp_path is root-only).
        self.dir = Path(tempfile.mkdtemp(prefix="tunseal-resolved-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        self.log_path = self.dir / "resolved.log"
        self._extra = extra_root_policy
        self._holder: subprocess.Popen[str] | None = None
        self._bus: subprocess.Popen[str] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> Resolved:
        self._write_files()
        self._holder = self.lab.popen(self.ns, "unshare", "--mount", "--propagation", "private",
                                      "sh", "-c", _HOLDER, "holder", str(self.dir),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        netlab.wait_for_line(self._holder, "ready", timeout=START_TIMEOUT)
        self._bus = self.lab.popen(self.ns, *self._enter(), "dbus-daemon", "--nofork",
                                   f"--config-file={self.dir / 'bus.conf'}",
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            assert self._bus.poll() is None, "dbus-daemon exited at start"
            assert time.monotonic() < deadline, "the test system bus did not come up"
            time.sleep(0.05)
        self.start_daemon()
        return self

    def start_daemon(self) -> None:
        """Start systemd-resolved and wait until it owns its bus name."""
        with open(self.log_path, "ab") as log:
            self.daemon = self.lab.popen(self.ns, *self._enter(), str(DAEMON), stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.owns_name():
            assert self.daemon.poll() is None, f"systemd-resolved exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"systemd-resolved not on the bus:\n{self.log()}"
            time.sleep(0.05)

    def stop_daemon(self, *, forget: bool = False) -> None:
        """SIGTERM resolved and wait. ``forget``: also delete the link settings it saved in
        /run/systemd/resolve/netif/, as a fresh /run (a reboot, a new container) would."""
        assert self.daemon is not None
        self.daemon.terminate()
        self.daemon.wait(timeout=START_TIMEOUT)
        self.daemon = None
        if forget:
            self.run("sh", "-c", "rm -f /run/systemd/resolve/netif/*")

    def close(self) -> None:
        """Stop everything this started (the Lab would too) and remove the socket directory."""
        for proc in (self.daemon, self._bus, self._holder):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Resolved:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- using it ----------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return netlab.python_env(DBUS_SYSTEM_BUS_ADDRESS=self.address)

    @property
    def wrap(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this 'machine' (namespace, mounts)."""
        return ("ip", "netns", "exec", self.ns, *self._enter())

    def run(self, *cmd: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.ns, *self._enter(), *cmd, check=check, timeout=timeout,
                            env=self.env)

    def resolvectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(RESOLVECTL), *args, check=check)

    def owns_name(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            conn = open_dbus_connection(bus=self.address)
        except (OSError, ConnectionError):
            return False
        with contextlib.closing(conn):
            reply = conn.send_and_get_reply(message_bus.NameHasOwner("org.freedesktop.resolve1"),
                                            timeout=5)
        return bool(reply.body[0])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def link_status(self, ifname: str) -> str:
        return self.resolvectl("status", ifname).stdout

    # --- internals ---------------------------------------------------------------------------

    def _enter(self) -> tuple[str, ...]:
        assert self._holder is not None
        return ("nsenter", "-t", str(self._holder.pid), "-m", "--")

    def _write_files(self) -> None:
        d = self.dir
        (d / "bus.conf").write_text(_BUS_CONFIG.format(socket=self.socket, policy=POLICY,
                                                       extra_root_policy=self._extra))
        (d / "resolved.conf").write_text(_RESOLVED_CONF)
        (d / "resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        used = {int(line.split(":")[2]) for line in passwd.splitlines() + group.splitlines()
                if line.count(":") >= 3}
        uid = next(i for i in range(990, 100, -1) if i not in used)
        (d / "passwd").write_text(passwd + f"systemd-resolve:x:{uid}:{uid}:resolved:/:"
                                           "/usr/sbin/nologin\n")
        (d / "group").write_text(group + f"systemd-resolve:x:{uid}:\n")
        for name in ("passwd", "group", "resolv.conf", "resolved.conf"):
            (d / name).chmod(0o644)
