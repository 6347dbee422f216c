"""Crash-safe records of what the helper changed, so a restart undoes what a crash left behind.

One JSON file per link, ``<state_dir>/run/<ifname>.json``, written atomically (temp file, fsync,
rename, fsync of the directory). A record is written *before* the change it describes, so a
SIGKILL at any point leaves either no change or a record of it::

    records.note_link(ifname, profile.name)       # then the engine creates the link
    records.note_host_route(ifname, pin)          # then netdev.add_host_route(pin)
    records.note_rule(ifname, rule)               # then policyroute.add_rule(rule)
    records.note_nft_table(ifname, table)         # then the lockdown table is written
    dns.apply(ifname, servers, search, records=records)   # notes the backup itself, first
    ...
    records.forget(ifname)                        # after a clean teardown

Each record names the process that wrote it (pid and start time, so a reused pid is not mistaken
for the owner). :meth:`Records.stale` lists the records whose owner is gone, and
:meth:`Records.cleanup_stale` undoes them: DNS first (resolved forgets a link's settings once the
link is gone, so it is reverted while the link still exists), then host routes, then the link.
Cleanup is idempotent, and touches nothing it holds no record of.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from core import fields
from core.atomicfile import sync_dir, write_atomic
from core.errors import TunsealError

__all__ = ["Record", "Records", "RecordsError"]

log = logging.getLogger(__name__)

_FORMAT = 1


class RecordsError(TunsealError):
    """The records directory cannot be written or read."""


class NetDevLike(Protocol):
    """What cleanup needs from :mod:`helper.netdev` (the module itself satisfies this)."""

    def link_exists(self, ifname: str) -> bool: ...
    def delete_link(self, ifname: str) -> bool: ...
    def remove_host_route(self, route: Any) -> bool: ...


class PolicyLike(Protocol):
    """What cleanup needs from :mod:`helper.policyroute` (the module satisfies this)."""

    def remove_rule(self, rule: Any) -> bool: ...


class FirewallLike(Protocol):
    """What cleanup needs from the lockdown (:class:`helper.lockdown.Lockdown`): it is told
    of the crashed helper's table, and decides at its reconcile what stays (a lockdown must
    not lapse while the helper starts)."""

    def note_stale(self, table: str) -> bool: ...


class DnsLike(Protocol):
    """What cleanup needs from :mod:`helper.dns` (the module itself satisfies this)."""

    def restore(self, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Record:
    ifname: str
    profile: str | None
    pid: int
    start_time: int
    """The owner's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    owns_link: bool = False
    """Set by :meth:`Records.note_link`: cleanup deletes the link only then."""
    dns: dict[str, Any] | None = None
    host_routes: tuple[dict[str, Any], ...] = field(default=())
    rules: tuple[dict[str, Any], ...] = field(default=())
    """Policy rules of a full tunnel (helper/policyroute.py)."""
    nft_table: str | None = None
    """The lockdown table this link's tunnel held (helper/lockdown.py)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "ifname": self.ifname,
            "profile": self.profile,
            "pid": self.pid,
            "start_time": self.start_time,
            "owns_link": self.owns_link,
            "dns": self.dns,
            "host_routes": list(self.host_routes),
            "rules": list(self.rules),
            "nft_table": self.nft_table,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        if d.get("format") != _FORMAT:
            raise ValueError(f"unknown record format {d.get('format')!r}")
        return cls(
            ifname=_checked_ifname(d["ifname"]),
            profile=d.get("profile"),
            pid=int(d["pid"]),
            start_time=int(d["start_time"]),
            owns_link=bool(d.get("owns_link")),
            dns=d.get("dns"),
            host_routes=tuple(d.get("host_routes") or ()),
            rules=tuple(d.get("rules") or ()),
            nft_table=d.get("nft_table"),
        )

    def owner_alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


class Records:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "run"
        self._lock = threading.Lock()

    def note_link(self, ifname: str, profile: str | None) -> None:
        """Record (before creating it) that this process owns link ``ifname``."""
        self._update(ifname, lambda r: replace(r, profile=profile, owns_link=True))

    def note_dns(self, ifname: str, backup: dict[str, Any]) -> None:
        """Record (before applying it) how to undo a DNS change (what :func:`dns.apply` returns)."""
        self._update(ifname, lambda r: replace(r, dns=dict(backup)))

    def note_host_route(self, ifname: str, route: Mapping[str, Any]) -> None:
        """Record (before adding it) a route outside the link, such as the endpoint pin."""
        def add(r: Record) -> Record:
            if dict(route) in r.host_routes:
                return r
            return replace(r, host_routes=(*r.host_routes, dict(route)))
        self._update(ifname, add)

    def note_rule(self, ifname: str, rule: Mapping[str, Any]) -> None:
        """Record (before adding it) a policy rule of a full tunnel."""
        def add(r: Record) -> Record:
            if dict(rule) in r.rules:
                return r
            return replace(r, rules=(*r.rules, dict(rule)))
        self._update(ifname, add)

    def note_nft_table(self, ifname: str, table: str) -> None:
        """Record (before writing it) that this link's tunnel holds the lockdown table."""
        self._update(ifname, lambda r: replace(r, nft_table=table))

    def forget(self, ifname: str) -> None:
        """Drop the record (after a clean teardown). Missing records are fine."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                self._path(ifname).unlink()
            sync_dir(self.dir)

    def get(self, ifname: str) -> Record | None:
        try:
            return self._read(self._path(ifname))
        except FileNotFoundError:
            return None

    def all(self) -> list[Record]:
        out = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                out.append(self._read(path))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable record %s (%s); remove it by hand", path, exc)
        return out

    def stale(self) -> list[Record]:
        """Records whose owner process is gone."""
        return [r for r in self.all() if not r.owner_alive()]

    def cleanup_stale(self, netdev: NetDevLike, dns: DnsLike, *,
                      policy: PolicyLike | None = None,
                      firewall: FirewallLike | None = None) -> list[str]:
        """Undo every stale record; returns one line per thing undone, for the log. A record is
        dropped only when everything in it was undone, so a failure is retried next time."""
        done: list[str] = []
        for rec in self.stale():
            failed = False
            for what, step in _undo_steps(rec, netdev, dns, policy, firewall):
                try:
                    if step():
                        done.append(what)
                except TunsealError as exc:
                    failed = True
                    log.warning("stale %s: could not %s: %s", rec.ifname, what, exc)
            if not failed:
                self.forget(rec.ifname)
        for line in done:
            log.info("cleanup after a crash: %s", line)
        return done

    # --- internals -----------------------------------------------------------------------------

    def _path(self, ifname: str) -> Path:
        return self.dir / f"{_checked_ifname(ifname)}.json"

    @staticmethod
    def _read(path: Path) -> Record:
        return Record.from_json(json.loads(path.read_text()))

    def _update(self, ifname: str, change: Any) -> None:
        with self._lock:
            old = self.get(ifname)
            me = Record(ifname=ifname, profile=None, pid=os.getpid(), start_time=_own_start_time())
            base = me if old is None else replace(old, pid=me.pid, start_time=me.start_time)
            self._write(change(base))

    def _write(self, rec: Record) -> None:
        data = json.dumps(rec.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self._path(rec.ifname), data, mode=0o600, sync_directory=True)
        except OSError as exc:
            msg = f"cannot write the record of {rec.ifname} in {self.dir}: {exc}"
            raise RecordsError(msg) from None


def _undo_steps(
    rec: Record, netdev: NetDevLike, dns: DnsLike, policy: PolicyLike | None = None,
    firewall: FirewallLike | None = None,
) -> list[tuple[str, Callable[[], bool]]]:
    """How to undo ``rec``, in order: (description, action saying whether it changed anything)."""
    steps: list[tuple[str, Callable[[], bool]]] = []
    backup = rec.dns
    if backup is not None:
        def restore() -> bool:
            dns.restore(backup)
            return True
        steps.append((f"restored DNS of {rec.ifname} ({backup.get('backend')})", restore))
    for route in rec.host_routes:
        gw = f" via {route.get('gateway')}" if route.get("gateway") else ""
        what = f"removed route {route.get('dst')}{gw} dev {route.get('oif')}"
        steps.append((what, functools.partial(netdev.remove_host_route, route)))
    if policy is not None:
        for rule in rec.rules:
            what = f"removed the IPv{rule.get('family')} {rule.get('kind')} policy rule"
            steps.append((what, functools.partial(policy.remove_rule, rule)))
    table = rec.nft_table
    if table is not None and firewall is not None:
        what = f"handed lockdown table {table} of {rec.ifname} to the reconcile"
        steps.append((what, functools.partial(firewall.note_stale, table)))
    if rec.owns_link:
        def delete() -> bool:
            return netdev.link_exists(rec.ifname) and netdev.delete_link(rec.ifname)
        steps.append((f"deleted link {rec.ifname} (profile {rec.profile!r})", delete))
    return steps


def main(argv: list[str] | None = None) -> int:
    """``python -m helper.records cleanup STATE_DIR``: undo the stale records a helper that is
    gone left in STATE_DIR (what its next start would do), in the current namespace; one line
    per thing undone on stdout. Exit 1 when a record could not be undone: it is kept, so the
    backup it holds (the original /etc/resolv.conf, say) is not lost. The demo runs this
    before it deletes a helper's state directory."""
    import argparse
    import sys

    from helper import dns, netdev

    parser = argparse.ArgumentParser(prog="python -m helper.records")
    parser.add_argument("command", choices=["cleanup"])
    parser.add_argument("state_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    records = Records(args.state_dir)
    for line in records.cleanup_stale(netdev, dns):
        print(line)
    left = [r.ifname for r in records.stale()]
    if left:
        print(f"not undone, kept in {records.dir}: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


def _checked_ifname(name: Any) -> str:
    if not fields.is_ifname(name):
        raise ValueError(f"{name!r} is not a link name")
    return name


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def _own_start_time() -> int:
    t = _start_time(os.getpid())
    assert t is not None
    return t


if __name__ == "__main__":
    raise SystemExit(main())
