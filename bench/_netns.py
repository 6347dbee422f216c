"""Throwaway network namespaces for the benchmarks, and the processes that live in them.

A :class:`Lab` names everything it creates ``tsb<pid, 6 hex digits>-<name>``, so concurrent runs
(and the test suite's ``tests/netlab.py`` labs, prefixed ``ts<pid>``) never collide. Every
long-lived process is started under ``timeout(1)`` with a lifetime, so it ends even if this
process is SIGKILLed before it can clean up. :meth:`Lab.close` (the context manager's exit)
stops tracked processes, kills anything else still inside a Lab namespace, deletes the
namespaces (which deletes their veth and TUN links) and never raises. :func:`sweep_stale`
removes namespaces left by an earlier run whose process is gone.

Traffic only flows between namespaces made here: the host's namespace gets no link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tools import netns

log = logging.getLogger(__name__)

PREFIX = "tsb"
TERM_GRACE = 5.0
"""Seconds a stopped process gets between SIGTERM and SIGKILL."""
KILL_GRACE = 3.0
COMMAND_TIMEOUT = 30.0
_STALE_RE = re.compile(rf"{PREFIX}([0-9a-f]{{6}})-[A-Za-z0-9_-]+")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True,
        env: dict[str, str] | None = None, cwd: str | Path | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (text, output captured), at most ``timeout`` seconds; with
    ``check``, a non-zero exit raises RuntimeError carrying its stderr."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd, input=input, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def _pids_in(ns: str) -> list[int]:
    return netns.pids_in(ns)


def _delete_namespace(ns: str) -> None:
    """Kill every process inside ``ns`` (bounded), then delete it; what fails is logged."""
    problems: list[str] = []
    netns.delete_namespace(ns, problems)
    for problem in problems:
        log.warning("%s", problem)


def sweep_stale() -> list[str]:
    """Delete ``tsb<pid>-*`` namespaces whose creating process no longer runs a benchmark."""
    removed = []
    for ns in netns.netns_names():
        m = _STALE_RE.fullmatch(ns)
        if m is None:
            continue
        pid = int(m.group(1), 16)
        if pid == os.getpid() or b"bench." in _read(f"/proc/{pid}/cmdline"):
            continue
        _delete_namespace(ns)
        removed.append(ns)
    return removed


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def cmdline(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in _read(f"/proc/{pid}/cmdline").split(b"\0") if a]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), or None once it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(b")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass(frozen=True, slots=True)
class Topology:
    """Two hosts, optionally with a router between them; addresses from 198.18.0.0/15
    (RFC 2544, for benchmarks)."""

    client: str
    server: str
    client_addr: str
    server_addr: str
    router: str | None
    mtu: int


class Lab:
    """Namespaces and processes for one benchmark run; a context manager."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{os.getpid():06x}"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- building ------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        real = f"{self.prefix}-{name}"
        self._namespaces.append(real)  # first: close() copes with one that was never made
        run(["ip", "netns", "add", real])
        run(["ip", "-n", real, "link", "set", "lo", "up"])
        return real

    def veth(self, a: str, b: str, a_addr: str, b_addr: str, mtu: int) -> None:
        """A veth pair made directly inside ``a`` and ``b`` (named ``v-<peer>`` there), up,
        with a CIDR address on each end."""
        a_if, b_if = f"v-{b.rsplit('-', 1)[1]}"[:15], f"v-{a.rsplit('-', 1)[1]}"[:15]
        run(["ip", "-n", a, "link", "add", a_if, "mtu", str(mtu), "type", "veth",
             "peer", "name", b_if, "mtu", str(mtu), "netns", b])
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def topology(self, *, router: bool, mtu: int) -> Topology:
        """client -- server, or client -- router -- server (the router forwards, no NAT)."""
        client, server = self.ns("client"), self.ns("server")
        if not router:
            self.veth(client, server, "198.18.1.2/24", "198.18.1.1/24", mtu)
            return Topology(client, server, "198.18.1.2", "198.18.1.1", None, mtu)
        middle = self.ns("router")
        self.veth(client, middle, "198.18.1.2/24", "198.18.1.1/24", mtu)
        self.veth(middle, server, "198.18.2.1/24", "198.18.2.2/24", mtu)
        self.run(middle, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        run(["ip", "-n", client, "route", "add", "198.18.2.0/24", "via", "198.18.1.1"])
        run(["ip", "-n", server, "route", "add", "198.18.1.0/24", "via", "198.18.2.1"])
        return Topology(client, server, "198.18.1.2", "198.18.2.2", middle, mtu)

    # --- running -------------------------------------------------------------------------------

    def run(self, ns: str, *cmd: str, timeout: float = COMMAND_TIMEOUT, check: bool = True,
            env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self._own(ns), *cmd], timeout=timeout, check=check,
                   env=env, input=input)

    def popen(self, ns: str, *cmd: str, lifetime: float, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` in ``ns`` under ``timeout(1)``: SIGTERM to its process group after
        ``lifetime`` seconds, SIGKILL 5 s later, whatever happens to this process."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        argv = ["ip", "netns", "exec", self._own(ns),
                "timeout", "-k", "5", f"{lifetime:.0f}", *cmd]
        proc: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def find_pid(self, ns: str, match: Callable[[list[str]], bool]) -> int | None:
        """The pid of the newest process in ``ns`` whose argv satisfies ``match``."""
        found = [pid for pid in _pids_in(self._own(ns)) if match(cmdline(pid))]
        return max(found) if found else None

    def wait_pid(self, ns: str, match: Callable[[list[str]], bool], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (pid := self.find_pid(ns, match)) is not None:
                return pid
            time.sleep(0.1)
        raise RuntimeError(f"no matching process appeared in {ns} within {timeout:.0f} s")

    def stop(self, proc: subprocess.Popen[Any], grace: float = TERM_GRACE) -> int | None:
        """SIGTERM ``proc``'s process group, SIGKILL it after ``grace`` seconds; its exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", proc.args, grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILL_GRACE)
        return proc.returncode

    def clear_namespaces(self, grace: float = KILL_GRACE) -> list[str]:
        """Between targets: give processes still in a Lab namespace ``grace`` seconds to exit
        by themselves, then SIGKILL them; returns the command lines of those that had to be
        killed."""
        deadline = time.monotonic() + grace
        while (pids := [p for ns in self._namespaces for p in _pids_in(ns)]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        killed = []
        for pid in pids:
            argv = " ".join(cmdline(pid)) or f"pid {pid}"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(argv)
        return killed

    # --- cleanup -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete every namespace; logs problems, never raises."""
        for proc in reversed(self._procs):
            try:
                self.stop(proc, grace=2.0)
            except Exception as e:  # keep going: the namespaces must still go
                log.warning("stopping %s: %s", proc.args, e)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            try:
                _delete_namespace(ns)
            except Exception as e:
                log.warning("deleting namespace %s: %s", ns, e)
        self._namespaces.clear()

    def _own(self, ns: str) -> str:
        if ns not in self._namespaces:
            raise ValueError(f"{ns!r} is not a namespace of this lab")
        return ns
