"""``tunseal doctor``: what is wrong, and what to do about it (docs/DOCTOR.md).

The checks that need no privilege run here, in the client: whether the helper's socket is there
and whether this user may use it (the group, and a session that predates being added to it).
Everything that needs the helper's view of the machine (its keyring, a real handshake with the
endpoint, routes, DNS, MTU, the clock) it runs itself and returns over the ``diagnose``
operation (helper/diagnose.py). Both sides speak :class:`Check`.

Pure except :func:`helper_check` and :func:`run`; stdlib-only like the rest of the client.
"""

from __future__ import annotations

import argparse
import errno
import grp
import json
import os
import pwd
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from core import completion
from core.errors import HelperUnavailable, IPCError
from core.ipc import RequestError
from core.ipcclient import Client, socket_path

__all__ = [
    "FAIL",
    "OK",
    "SKIP",
    "STATUSES",
    "WARN",
    "Check",
    "Report",
    "format_report",
    "helper_check",
    "run",
]

OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"
"""Not run, because something it needs failed first (said in ``found``)."""
STATUSES: Final = (OK, WARN, FAIL, SKIP)

HELPER_CHECKS: Final = (
    ("keyring", "Keyring"),
    ("endpoint", "Endpoint"),
    ("dns", "DNS"),
    ("routes", "Routes"),
    ("default_route", "Default route"),
    ("ipv6", "IPv6"),
    ("mtu", "Path MTU"),
    ("clock", "Clock"),
    ("datapath", "Data path"),
)
"""The checks the helper runs, in the order they are shown."""


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: ``status`` is one of :data:`STATUSES`; ``found`` says what was seen,
    ``todo`` what to do (empty when nothing is to be done). ``profile`` names the profile the
    check is about ("" for the machine as a whole)."""

    id: str
    title: str
    status: str
    found: str
    todo: str = ""
    profile: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        status = str(d.get("status", FAIL))
        return cls(id=str(d.get("id", "")), title=str(d.get("title", "")),
                   status=status if status in STATUSES else FAIL,
                   found=str(d.get("found", "")), todo=str(d.get("todo", "")),
                   profile=str(d.get("profile", "")))


@dataclass(frozen=True, slots=True)
class Report:
    checks: tuple[Check, ...]
    unknown_profile: bool = False
    """The helper has no profile of the name asked about (the CLI exits 4, as for any name)."""

    @property
    def worst(self) -> str:
        statuses = {c.status for c in self.checks}
        for s in (FAIL, WARN):
            if s in statuses:
                return s
        return OK

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.worst, "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --- the client's own check ---------------------------------------------------------------------


def helper_check(path: str | None = None) -> tuple[Check, Client | None]:
    """Is the helper there, and may this user use it? Returns the check and, when it passed,
    a connected client (the caller closes it)."""
    where = socket_path(path)
    title = "Helper"
    try:
        st = os.stat(where)
    except FileNotFoundError:
        return Check("helper", title, FAIL, f"no socket at {where}: the helper is not running",
                     "start it: 'sudo systemctl start tunseal-helper' (or 'sudo tunseal-helper'); "
                     "'journalctl -u tunseal-helper' says why it stopped"), None
    except PermissionError:
        return Check("helper", title, FAIL, f"cannot look at {where}: its directory is closed "
                     "to this user", f"ask an administrator to check the permissions of "
                     f"{os.path.dirname(where)}"), None
    if not stat.S_ISSOCK(st.st_mode):
        return Check("helper", title, FAIL, f"{where} is not a socket",
                     "remove it and restart the helper: 'sudo systemctl restart "
                     "tunseal-helper'"), None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5.0)
        probe.connect(where)
    except OSError as e:
        return _refused(where, st, e), None
    finally:
        probe.close()
    client = Client(where, timeout=15.0)
    try:
        pong = client.call("ping")
    except HelperUnavailable as e:
        client.close()
        if e.code == "forbidden":  # the helper's own check (the group database) said no
            return membership_check(st.st_gid), None
        return Check("helper", title, FAIL, str(e),
                     "check that the helper runs: 'systemctl status tunseal-helper'"), None
    except IPCError as e:
        client.close()
        return Check("helper", title, FAIL, f"the helper at {where} did not answer: {e}",
                     "restart it: 'sudo systemctl restart tunseal-helper'"), None
    who = "root" if os.geteuid() == 0 else _user_name(os.geteuid())
    return Check("helper", title, OK, f"the helper (pid {pong.get('pid', '?')}) answers on "
                 f"{where}; {who} may use it"), client


def _refused(where: str, st: os.stat_result, e: OSError) -> Check:
    """The socket is there but connect() failed: the kernel's answer says why."""
    title = "Helper"
    if e.errno == errno.ECONNREFUSED:
        return Check("helper", title, FAIL,
                     f"{where} exists but nobody listens on it: the helper stopped or crashed",
                     "start it: 'sudo systemctl start tunseal-helper'; 'journalctl -u "
                     "tunseal-helper' says why it stopped")
    if e.errno not in (errno.EACCES, errno.EPERM):
        return Check("helper", title, FAIL, f"cannot connect to {where}: {e.strerror or e}",
                     "check that the helper runs: 'systemctl status tunseal-helper'")
    if not st.st_mode & 0o060:
        return Check("helper", title, FAIL, f"{where} is open to root only (mode "
                     f"{stat.S_IMODE(st.st_mode):04o}): the helper found no group to let in",
                     "ask an administrator to create the 'tunseal' group "
                     "('sudo groupadd --system tunseal') and restart the helper")
    return membership_check(st.st_gid)


def membership_check(gid: int, *, uid: int | None = None,
                     session_groups: Iterable[int] | None = None) -> Check:
    """Why a user the socket refused is refused: not in the group at all, or added to it after
    this session began (the group database says yes, the session's groups say no)."""
    uid = os.geteuid() if uid is None else uid
    groups = set(os.getgroups() if session_groups is None else session_groups)
    group = _group_name(gid)
    user = _user_name(uid)
    try:
        pw = pwd.getpwuid(uid)
        in_database = gid in os.getgrouplist(pw.pw_name, pw.pw_gid)
    except KeyError:
        in_database = False
    if gid in groups:
        return Check("helper", "Helper", FAIL, f"{user} is in group {group!r} but the helper "
                     "still refuses the connection", "ask an administrator to look at the "
                     "helper's log: 'journalctl -u tunseal-helper'")
    if in_database:
        return Check("helper", "Helper", FAIL,
                     f"{user} was added to group {group!r}, but this session started before "
                     "that: its processes do not have the group yet",
                     "log out and in again (or run 'newgrp " + group + "' in this terminal)")
    return Check("helper", "Helper", FAIL, f"{user} is not in group {group!r}, which the "
                 "helper lets in", f"ask an administrator: 'sudo usermod -aG {group} "
                 f"{user.split(' ')[0]}', then log out and in again")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# --- the whole run ------------------------------------------------------------------------------


def run(path: str | None = None, name: str | None = None) -> Report:
    """Every check: the helper first, then (when it can be reached) the helper's own."""
    first, client = helper_check(path)
    if client is None:
        skipped = tuple(Check(cid, title, SKIP, "not checked: the helper cannot be reached",
                              profile=name or "") for cid, title in HELPER_CHECKS)
        return Report((first, *skipped))
    try:
        args = {"name": name} if name else {}
        result = client.call("diagnose", **args)
    except RequestError as e:
        if e.code == "unknown_op":
            e.message += " (the helper is older than this client: restart it)"
        unknown = e.code == "not_found"
        return Report((first, Check("diagnose", "Diagnosis", FAIL, e.message,
                                    "check the profile name with 'tunseal list'"
                                    if unknown else "")), unknown_profile=unknown)
    except IPCError as e:
        return Report((first, Check("diagnose", "Diagnosis", FAIL, str(e),
                                    "run 'tunseal doctor' again; if it keeps failing, "
                                    "'journalctl -u tunseal-helper'")))
    finally:
        client.close()
    return Report((first, *(Check.from_dict(c) for c in result.get("checks", []))))


# --- formatting ---------------------------------------------------------------------------------

_MARK = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


def format_report(report: Report) -> str:
    """The report as a person reads it: one block per check, what to do indented under it."""
    lines = []
    for c in report.checks:
        about = f" ({c.profile})" if c.profile else ""
        lines.append(f"[{_MARK[c.status]}] {c.title}{about}: {c.found}")
        if c.todo and c.status in (WARN, FAIL):
            lines.append(f"         what to do: {c.todo}")
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in STATUSES}
    summary = ", ".join(f"{counts[s]} {word}" for s, word in
                        ((FAIL, "failed"), (WARN, "warnings"), (OK, "ok"), (SKIP, "skipped"))
                        if counts[s])
    lines.append("")
    lines.append(f"doctor: {summary}")
    return "\n".join(lines)



# --- the command --------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``tunseal doctor [NAME]`` to the CLI's subcommands."""
    p = sub.add_parser("doctor", help="check what stands between this machine and a working "
                       "tunnel, and say what to do", description="Check the helper, keyring, "
                       "endpoint (a real handshake), DNS, routes, another VPN, IPv6, path MTU "
                       "and clock; each failed check says what to do (docs/DOCTOR.md). Exit "
                       "status 1 if any check failed, 4 if there is no profile NAME.")
    completion.profile_arg(p.add_argument("name", nargs="?", help="the profile to check "
                                          "(default: every profile with an endpoint)"))
    # Also after the command ('tunseal doctor --json'); absent, it leaves the global one alone.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the report as JSON")
    p.set_defaults(command=cmd_doctor)


def cmd_doctor(client: Client, args: Any) -> int:
    report = run(client.path, args.name)
    print(report.to_json() if args.json else format_report(report))
    if report.unknown_profile:
        # Imported here: core.cli pulls in the profile format (tomli_w), which the helper
        # check must not need (it runs on the system Python of any local user).
        from core.cli import EXIT_NOT_FOUND

        return EXIT_NOT_FOUND
    return 1 if report.worst == FAIL else 0
