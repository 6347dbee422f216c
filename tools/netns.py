"""Network namespaces and links, the primitives every lab is built on: the test suite's
(tests/netlab.py), the benchmarks' (bench/_netns.py) and the demo's (tools/demo.py).

Each lab names and tracks what it creates; this module only lists, checks and removes, with
every command bounded in time, and reports what it could not do instead of raising, so a
cleanup always runs to the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

COMMAND_TIMEOUT = 10.0
"""Seconds any one ``ip`` command may take."""
KILL_WAIT = 3.0
"""Seconds to wait for the processes of a namespace to go after each signal."""


def ip(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``ip ARGS``, output captured, never raising for its exit status."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def netns_names() -> list[str]:
    """Every named network namespace, sorted."""
    try:
        return sorted(p.name for p in Path("/run/netns").iterdir())
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def link_exists(name: str) -> bool:
    """Whether this (the host's) namespace has a link called ``name``."""
    return ip("link", "show", "dev", name).returncode == 0


def pids_in(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns).stdout.split() if p.isdigit()]


def delete_namespace(ns: str, problems: list[str], *, term_first: bool = False) -> None:
    """Kill every process still inside ``ns`` (SIGTERM first with ``term_first``, then
    SIGKILL; each followed by at most KILL_WAIT seconds of waiting), then delete it, which
    deletes its links (and the far ends of its veth pairs). What fails goes to ``problems``."""
    if not netns_exists(ns):
        return
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL) if term_first else (signal.SIGKILL,):
            pids = pids_in(ns)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + KILL_WAIT
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = pids_in(ns)
        if pids:
            problems.append(f"processes {pids} still in namespace {ns}")
        done = ip("netns", "del", ns)
        if done.returncode != 0 and netns_exists(ns):
            problems.append(f"cannot delete namespace {ns}: {done.stderr.strip()}")
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"cannot delete namespace {ns}: {exc}")


def delete_host_links(prefix: str, problems: list[str]) -> list[str]:
    """Delete this namespace's links whose names start with ``prefix``; returns their names."""
    removed: list[str] = []
    try:
        links = json.loads(ip("-j", "link", "show").stdout or "[]")
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        problems.append(f"cannot list host links: {exc}")
        return removed
    for link in links:
        name = link.get("ifname", "")
        if name.startswith(prefix):
            done = ip("link", "del", name)
            if done.returncode == 0:
                removed.append(name)
            else:
                problems.append(f"cannot delete host link {name}: {done.stderr.strip()}")
    return removed
