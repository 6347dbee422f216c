"""The network-namespace lab: throwaway namespaces, veth links, routers and nft rules for tests.

Every network test builds its world here, so that traffic only ever flows between namespaces the
test created, and everything is gone afterwards, even when the test fails::

    def test_ping(lab):                       # the `lab` fixture (tests/conftest.py) is a Lab
        topo = two_hosts_with_router(lab, loss_percent=5)
        lab.run(topo.client, "ping", "-c", "1", "-W", "2", topo.server_addr)

or, outside pytest, ``with Lab() as lab: ...``.

Names. A Lab's prefix is ``RUN_PREFIX`` (``ts`` + this process's pid in 6 hex digits) plus two
base-36 digits counting Labs in this process, e.g. ``ts00a1f303``, so parallel pytest-xdist
workers (different pids) never collide. :meth:`Lab.ns` ``("client")`` makes namespace
``<prefix>-client``; every method taking a namespace accepts that real name or the short one, and
refuses any namespace the Lab did not create (so a typo cannot run a command in the host's
namespace). Veth ends are named ``<prefix><link number, 2 base-36 digits><a|b>`` (13 bytes) and
are created directly inside their namespaces, never in the host's.

Cleanup (``__exit__`` / :meth:`Lab.close`): tracked processes get SIGTERM, then SIGKILL, as a
process group, with bounded waits; any other process still inside a Lab namespace (a daemonised
iperf3, say) gets SIGKILL; then the namespaces are deleted, which deletes their veth and TUN links
and nft tables; then any link with the Lab's prefix left in the host namespace is deleted.
Cleanup never raises: problems are logged, kept in :attr:`Lab.cleanup_problems` and issued as a
:class:`NetlabCleanupWarning`. :func:`sweep` (conftest runs it at session end) removes whatever
this process's Labs may still have left.

This module is importable both as ``netlab`` (pytest puts tests/ on sys.path) and as
``tests.netlab``; either import gives the same module object, so Lab numbering stays unique.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tools import netns

# One module object whichever way it is imported (see the docstring).
for _alias in ("netlab", "tests.netlab"):
    sys.modules.setdefault(_alias, sys.modules[__name__])

__all__ = [
    "REPO_ROOT",
    "RUN_PREFIX",
    "Lab",
    "LabError",
    "NetlabCleanupWarning",
    "Topology",
    "hold_tun",
    "python_env",
    "sweep",
    "two_hosts_with_router",
    "unavailable",
    "wait_for_line",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_PREFIX = f"ts{os.getpid():06x}"
"""Prefix of every name this process's Labs create (pids are below 2**22: 6 hex digits)."""
TERM_GRACE = 3.0
"""Seconds tracked processes get between SIGTERM and SIGKILL."""
KILL_WAIT = 2.0

_lab_numbers = itertools.count()
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_labs_made = False


class LabError(subprocess.CalledProcessError):
    """A lab command failed; unlike its base class, the message includes the command's stderr."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else self.stderr
        return f"{super().__str__()}\nstderr: {err}"


class NetlabCleanupWarning(UserWarning):
    """Something a Lab created could not be removed (details in the message)."""


def unavailable() -> str | None:
    """Why a Lab cannot work here (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if not os.path.exists("/dev/net/tun"):
        return "network-namespace tests need /dev/net/tun, which this machine lacks"
    return None


def python_env(**extra: str) -> dict[str, str]:
    """os.environ with the repository root on PYTHONPATH, so ``python -c "import helper"`` works
    in a child process wherever it runs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class Lab:
    """A set of throwaway network namespaces and what lives in them; a context manager."""

    def __init__(self) -> None:
        global _labs_made
        _labs_made = True
        self.prefix = RUN_PREFIX + _b36(next(_lab_numbers) % 36**2, 2)
        self.cleanup_problems: list[str] = []
        self._namespaces: list[str] = []
        self._short: dict[str, str] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._links = itertools.count()
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- building ------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        """Create namespace ``<prefix>-<name>`` with ``lo`` up and IPv6 DAD off; returns its
        real name."""
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"namespace name {name!r}: use 1-32 of A-Z a-z 0-9 _ -")
        if name in self._short:
            raise ValueError(f"this lab already has a namespace {name!r}")
        real = f"{self.prefix}-{name}"
        self._namespaces.append(real)  # before creating it: cleanup copes with absent ones
        self._short[name] = real
        _cmd(["ip", "netns", "add", real])
        _cmd(["ip", "-n", real, "link", "set", "lo", "up"])
        # No duplicate address detection, link-local addresses included: usable at once.
        self.run(real, "sysctl", "-e", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                 "net.ipv6.conf.default.accept_dad=0")
        return real

    def link(
        self,
        a_ns: str,
        b_ns: str,
        *,
        a_addr: str | Sequence[str] | None,
        b_addr: str | Sequence[str] | None,
        mtu: int = 1500,
    ) -> tuple[str, str]:
        """A veth pair between two namespaces, both ends up; returns (end in a_ns, end in b_ns).
        Addresses are CIDR (``"198.18.1.2/24"``), one or a list of v4 and/or v6; v6 ones are
        added ``nodad`` so they are usable at once."""
        a, b = self._real(a_ns), self._real(b_ns)
        n = _b36(next(self._links), 2)
        a_if, b_if = f"{self.prefix}{n}a", f"{self.prefix}{n}b"
        _cmd(["ip", "-n", a, "link", "add", a_if, "mtu", str(mtu), "type", "veth",
              "peer", "name", b_if, "mtu", str(mtu), "netns", b])
        for ns, ifname, addrs in ((a, a_if, a_addr), (b, b_if, b_addr)):
            for addr in _addr_list(addrs):
                extra = ["nodad"] if ipaddress.ip_interface(addr).version == 6 else []
                _cmd(["ip", "-n", ns, "addr", "add", addr, "dev", ifname, *extra])
            _cmd(["ip", "-n", ns, "link", "set", ifname, "up"])
        return a_if, b_if

    def route(self, ns: str, dst: str, via: str) -> None:
        """A static route (``dst`` may be ``"default"``); the family follows ``via``."""
        family = "-6" if ipaddress.ip_address(via).version == 6 else "-4"
        _cmd(["ip", family, "-n", self._real(ns), "route", "add", dst, "via", via])

    def router(self, ns: str) -> None:
        """Make ``ns`` forward IPv4 and IPv6."""
        self.run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                 "net.ipv6.conf.all.forwarding=1")

    def nft(self, ns: str, ruleset: str) -> None:
        """Load an nft ruleset (``nft -f``) in ``ns``. One-line chains need ``;`` before ``}``."""
        self.run(ns, "nft", "-f", "-", input=ruleset)

    # --- running -------------------------------------------------------------------------------

    def run(
        self,
        ns: str,
        *cmd: str,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in ``ns`` and wait (text mode, output captured). On timeout the command's
        whole process group is killed and TimeoutExpired raised; with ``check``, a non-zero exit
        raises :class:`LabError`."""
        argv = ["ip", "netns", "exec", self._real(ns), *cmd]
        return _cmd(argv, check=check, timeout=timeout, input=input, env=env)

    def python(
        self, ns: str, code: str, *args: str, check: bool = True, timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` in ``ns`` with this interpreter, the repository importable."""
        return self.run(ns, sys.executable, "-c", code, *args, check=check, timeout=timeout,
                        input=input, env=python_env())

    def popen(self, ns: str, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` in ``ns`` in its own process group (subprocess.Popen keywords apply);
        the Lab kills the group at exit."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self._real(ns), *cmd], start_new_session=True, **kw
        )
        self._procs.append(proc)
        return proc

    def python_popen(self, ns: str, code: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("env", python_env())
        return self.popen(ns, sys.executable, "-c", code, *args, **kw)

    # --- cleanup -------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove everything (see the module docstring); returns the problems met, if any."""
        if self._closed:
            return self.cleanup_problems
        self._closed = True
        problems = self.cleanup_problems
        _stop_processes(self._procs, problems)
        for real in reversed(self._namespaces):
            netns.delete_namespace(real, problems)
        netns.delete_host_links(self.prefix, problems)
        for p in problems:
            log.warning("netlab cleanup: %s", p)
            warnings.warn(f"netlab cleanup: {p}", NetlabCleanupWarning, stacklevel=2)
        return problems

    def _real(self, ns: str) -> str:
        if ns in self._short:
            return self._short[ns]
        if ns in self._namespaces:
            return ns
        raise ValueError(f"{ns!r} is not a namespace of this lab (it has {sorted(self._short)})")


# --- the standard topology ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topology:
    """client -- router -- server. Addresses are bare (no prefix length); links are /24 (v4) and
    /64 (v6). ``*6`` fields are None unless built with ``v6=True``."""

    client: str
    router: str
    server: str
    client_if: str
    router_client_if: str
    router_server_if: str
    server_if: str
    client_addr: str
    router_client_addr: str
    router_server_addr: str
    server_addr: str
    client_addr6: str | None = None
    router_client_addr6: str | None = None
    router_server_addr6: str | None = None
    server_addr6: str | None = None


def two_hosts_with_router(
    lab: Lab, *, v6: bool = False, loss_percent: int = 0, masquerade: bool = False
) -> Topology:
    """Namespaces ``client``, ``router`` and ``server``; the client's default route goes via the
    router. Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking) and, with ``v6``, also
    from fd00:5eed::/48 (dual stack):

        client 198.18.1.2 -- 198.18.1.1 router 198.18.2.1 -- 198.18.2.2 server
               fd00:5eed:1::2   fd00:5eed:1::1  fd00:5eed:2::1   fd00:5eed:2::2

    ``loss_percent`` drops that share of forwarded packets at random, each direction (nft
    ``numgen random``). ``masquerade`` NATs everything leaving towards the server to the
    router's address, and the server then has no route back to the client's network, like a
    host on the internet; without it the server routes the client's network via the router."""
    if not 0 <= loss_percent <= 100:
        raise ValueError(f"loss_percent must be 0-100, not {loss_percent}")
    client, router, server = lab.ns("client"), lab.ns("router"), lab.ns("server")
    c4 = ("198.18.1.2", "198.18.1.1", "198.18.2.1", "198.18.2.2")
    c6 = ("fd00:5eed:1::2", "fd00:5eed:1::1", "fd00:5eed:2::1", "fd00:5eed:2::2")

    def addrs(i: int) -> list[str]:
        return [f"{c4[i]}/24"] + ([f"{c6[i]}/64"] if v6 else [])

    client_if, rc_if = lab.link(client, router, a_addr=addrs(0), b_addr=addrs(1))
    rs_if, server_if = lab.link(router, server, a_addr=addrs(2), b_addr=addrs(3))
    lab.router(router)
    lab.route(client, "default", c4[1])
    if v6:
        lab.route(client, "default", c6[1])
    if not masquerade:
        lab.route(server, "198.18.1.0/24", c4[2])
        if v6:
            lab.route(server, "fd00:5eed:1::/64", c6[2])
    chains = []
    if masquerade:
        chains.append("chain post { type nat hook postrouting priority srcnat; policy accept; "
                      f'oifname "{rs_if}" masquerade; }}')
    if loss_percent:
        chains.append("chain fw { type filter hook forward priority filter; policy accept; "
                      f"numgen random mod 100 < {loss_percent} counter drop; }}")
    if chains:
        lab.nft(router, "table inet netlab {\n  " + "\n  ".join(chains) + "\n}\n")
    return Topology(
        client=client, router=router, server=server,
        client_if=client_if, router_client_if=rc_if, router_server_if=rs_if, server_if=server_if,
        client_addr=c4[0], router_client_addr=c4[1], router_server_addr=c4[2], server_addr=c4[3],
        client_addr6=c6[0] if v6 else None, router_client_addr6=c6[1] if v6 else None,
        router_server_addr6=c6[2] if v6 else None, server_addr6=c6[3] if v6 else None,
    )


_HOLD_TUN = r"""
import fcntl, os, struct, sys
TUNSETIFF, TUNSETPERSIST, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x400454CB, 0x0001, 0x1000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", sys.argv[1].encode(), IFF_TUN | IFF_NO_PI))
if sys.argv[2] == "1":
    fcntl.ioctl(fd, TUNSETPERSIST, 1)
print("ready", flush=True)
sys.stdin.read()  # hold the fd until stdin closes or we are killed
"""


def hold_tun(lab: Lab, ns: str, ifname: str, *, persist: bool = False,
             timeout: float = 10) -> subprocess.Popen[str]:
    """A process in ``ns`` holding TUN link ``ifname`` open (like the engine does), started and
    ready. Close its stdin (or kill it) to let go; with ``persist`` (TUNSETPERSIST) the link
    outlives the process, as a crashed engine's would."""
    proc: subprocess.Popen[str] = lab.python_popen(
        ns, _HOLD_TUN, ifname, "1" if persist else "0",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_line(proc, "ready", timeout=timeout)
    return proc


def wait_for_line(proc: subprocess.Popen[Any], expected: str, *, timeout: float = 10) -> str:
    """Read ``proc``'s stdout (a pipe) until a line starting with ``expected``, at most
    ``timeout`` seconds; returns that line. It reads the pipe's fd a byte at a time, so nothing
    after the line is consumed: call it again for a later line, or ``communicate()`` at the end
    (do not mix with ``proc.stdout.readline()``, whose buffer it cannot see). On failure the
    process is killed and AssertionError carries its stderr."""
    assert proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        byte = os.read(fd, 1)
        if not byte:
            break  # EOF: the process ended
        if byte != b"\n":
            line += byte
            continue
        text = line.decode(errors="replace")
        if text.startswith(expected):
            return text
        line = b""
    proc.kill()
    try:
        _, err = proc.communicate(timeout=KILL_WAIT)
    except subprocess.TimeoutExpired:
        err = "(no stderr: the process did not end)"
    raise AssertionError(f"no {expected!r} line from {proc.args!r} within {timeout}s: {err}")


# --- the session safety net --------------------------------------------------------------------


def sweep(prefix: str = RUN_PREFIX) -> list[str]:
    """Remove every namespace (and its processes) and host link whose name starts with
    ``prefix``; returns what it removed. Does nothing unless this process made a Lab."""
    if not _labs_made:
        return []
    problems: list[str] = []
    removed = [ns for ns in netns.netns_names() if ns.startswith(prefix)]
    for ns in removed:
        netns.delete_namespace(ns, problems)
    removed += netns.delete_host_links(prefix, problems)
    for p in problems:
        log.warning("netlab sweep: %s", p)
    return removed


# --- internals ---------------------------------------------------------------------------------


def _cmd(
    argv: list[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.communicate(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass  # a grandchild that left the group keeps the pipes open; give up on them
        raise
    if check and proc.returncode != 0:
        raise LabError(proc.returncode, argv, out, err)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal ``proc``'s process group, but only while ``proc`` is unreaped: after that its pid
    (the group id) may belong to someone else."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _stop_processes(procs: list[subprocess.Popen[Any]], problems: list[str]) -> None:
    for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, KILL_WAIT)):
        running = [p for p in procs if p.poll() is None]
        for p in running:
            _signal_group(p, sig)
        deadline = time.monotonic() + grace
        for p in running:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs:
        if p.poll() is None:
            problems.append(f"process {p.pid} ({p.args!r}) survived SIGKILL")
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def _addr_list(addrs: str | Sequence[str] | None) -> list[str]:
    if addrs is None:
        return []
    return [addrs] if isinstance(addrs, str) else list(addrs)


def _b36(n: int, width: int) -> str:
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = _B36[r] + out
    return out
