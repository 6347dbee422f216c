"""A profile's DNS servers and search domains while its tunnel is up, undone exactly on down.

Three backends, chosen by :func:`detect_backend` unless the caller names one:

* ``RESOLVED``: systemd-resolved is on the system bus and /etc/resolv.conf points at it; the
  settings go on the TUN link over D-Bus (:mod:`helper.resolved`): servers, domains (``~x``
  route-only ones included) and, for a full tunnel, ``~.`` plus DefaultRoute=yes so no query
  goes to another link. RevertLink undoes them (the daemon also forgets them by itself when
  the link goes away). While the tunnel is up a :class:`~helper.resolved.Keeper` puts them
  back whenever resolved restarts or someone resets the link.
* ``RESOLVCONF``: a ``resolvconf`` program (Debian's or openresolv) owns /etc/resolv.conf; we add
  an interface record ``tun.IF`` and delete it on down.
* ``FILE``: nothing manages /etc/resolv.conf; we rewrite it, keeping an exact backup (bytes, mode,
  owner, or the symlink it was) in the record :func:`apply` returns.

:func:`start` is what a tunnel calls: :func:`apply`, then the keeper, and an :class:`ActiveDns`
that reports the DNS in effect and undoes everything on :meth:`ActiveDns.close`.

Pass ``records=`` to :func:`apply` and the backup is noted through :class:`~helper.records.Records`
*before* anything changes, so a crash at any point is undone by ``Records.cleanup_stale``.
:func:`restore` takes the record :func:`apply` returned (JSON-safe; it survives a restart).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomicfile import symlink_atomic, write_atomic
from core.status import DnsStatus
from helper import resolved
from helper.netdev import NetConfigError

if TYPE_CHECKING:
    from helper.records import Records

__all__ = ["RESOLV_CONF", "ActiveDns", "Backend", "DnsConfigError", "apply", "detect_backend",
           "restore", "start"]

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_STUB = "127.0.0.53"
RESOLVED_RUN_DIR = "/run/systemd/resolve/"
RESOLVCONF_PREFIX = "tun."
"""Debian's resolvconf orders interface records by name; ``tun.*`` comes before the LAN's."""
TOOL_TIMEOUT = 10.0
"""Seconds ``resolvconf`` may take."""
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_DOMAIN_RE = re.compile(rf"~?(?:\.|{_LABEL}(?:\.{_LABEL})*\.?)")
"""A domain, or resolved's routing-only ``~domain``; ``~.`` routes every query to the link."""
_TEMP_INFIX = ".tunseal-"
_HEADER = "# Written by Tunseal while {} is up; the original returns on down."
_MOUNTINFO = Path("/proc/self/mountinfo")


class DnsConfigError(NetConfigError):
    """DNS settings could not be applied or undone; the message says what to do."""


class Backend(enum.Enum):
    RESOLVED = "resolved"
    RESOLVCONF = "resolvconf"
    FILE = "file"


def detect_backend(resolv_conf: Path = RESOLV_CONF) -> Backend:
    """RESOLVED when ``resolv_conf`` leads to resolved (a link into /run/systemd/resolve/ or its
    stub address) and resolved is on the system bus; else RESOLVCONF when the program is
    installed; else FILE."""
    if _resolved_manages(resolv_conf) and resolved.running():
        return Backend.RESOLVED
    if shutil.which("resolvconf"):
        return Backend.RESOLVCONF
    return Backend.FILE


def apply(
    ifname: str,
    servers: Sequence[str],
    search: Sequence[str],
    *,
    full_tunnel: bool = False,
    backend: Backend | None = None,
    records: Records | None = None,
    resolv_conf: Path = RESOLV_CONF,
) -> dict[str, Any]:
    """Use ``servers`` and ``search`` domains while link ``ifname`` is up; returns the record
    :func:`restore` needs. ``full_tunnel``: the link routes 0.0.0.0/0 or ::/0, so with
    resolved it takes every name (the other backends replace or precede the LAN's servers
    anyway). ``resolv_conf`` is for the FILE backend (and detection)."""
    servers = _checked_servers(ifname, servers)
    search = _checked_domains(ifname, search)
    if backend is None:
        backend = detect_backend(resolv_conf)
    if backend is not Backend.RESOLVED:
        search = [d for d in search if not d.startswith("~")]  # routing-only: resolved alone
        if not servers and not search:
            raise DnsConfigError(f"{ifname}: no DNS servers or search domains to apply")
    if backend is Backend.RESOLVED:
        record: dict[str, Any] = {"backend": backend.value, "ifname": ifname}
    elif backend is Backend.RESOLVCONF:
        record = {"backend": backend.value, "ifname": ifname, "name": RESOLVCONF_PREFIX + ifname}
    else:
        record = _file_backup(ifname, resolv_conf, servers, search)
    if records is not None:
        records.note_dns(ifname, record)
    if backend is Backend.RESOLVED:
        _apply_resolved(ifname, resolved.settings_for(servers, search, full_tunnel=full_tunnel))
    elif backend is Backend.RESOLVCONF:
        text = _resolv_text(servers, search, kept=[])
        _run(["resolvconf", "-a", record["name"]], what="add DNS settings", stdin=text.encode())
    else:
        _write_file(Path(record["path"]), _b64d(record["written"]), record["mode"],
                    record["uid"], record["gid"])
    log.info("%s: DNS %s, search %s (%s)", ifname, servers, search, backend.value)
    return record


def restore(record: dict[str, Any]) -> None:
    """Undo what :func:`apply` did. Idempotent; never clobbers a file someone else has rewritten
    since (it logs a warning instead)."""
    backend = record.get("backend")
    ifname = str(record.get("ifname"))
    if backend == Backend.RESOLVED.value:
        if not _link_present(ifname):
            log.debug("%s is gone, and systemd-resolved forgot its DNS with it", ifname)
            return
        if not resolved.running():
            log.debug("systemd-resolved is not running: it holds no DNS settings of %s", ifname)
            return
        resolved.revert(ifname)
    elif backend == Backend.RESOLVCONF.value:
        _run(["resolvconf", "-d", str(record["name"]), "-f"], what=f"remove DNS of {ifname}")
    elif backend == Backend.FILE.value:
        _restore_file(record)
    else:
        raise DnsConfigError(f"{ifname}: unknown DNS backup kind {backend!r}; nothing was restored")
    log.info("%s: DNS restored (%s)", ifname, backend)


# --- a running tunnel's DNS ---------------------------------------------------------------------


class ActiveDns:
    """What :func:`start` set up for one link: :meth:`status` says what is in effect (read back
    from resolved, or from /etc/resolv.conf), :meth:`close` stops the keeper and restores."""

    def __init__(self, record: dict[str, Any], *, keeper: resolved.Keeper | None = None,
                 resolv_conf: Path = RESOLV_CONF) -> None:
        self.record = record
        self.keeper = keeper
        self._resolv_conf = resolv_conf

    @property
    def backend(self) -> Backend:
        return Backend(self.record["backend"])

    def status(self) -> DnsStatus:
        if self.keeper is not None:
            got = self.keeper.current  # kept up to date by the keeper's signals: no bus call
            if got is None:
                return DnsStatus(self.backend.value)
            return DnsStatus(self.backend.value, got.servers, got.domains, got.default_route)
        servers, search = resolv_conf_state(self._resolv_conf)
        return DnsStatus(self.backend.value, servers, search)

    def network_servers(self) -> tuple[str, ...]:
        """The DNS servers the system had before this link's settings went in, where only
        this record still knows them: the FILE backend replaced them in /etc/resolv.conf.
        (resolved lists every link's servers in its own resolv.conf, and resolvconf's file
        keeps the other interfaces' records: () for both.)"""
        if self.backend is not Backend.FILE or self.record.get("original") is None:
            return ()
        return resolv_conf_text_state(_b64d(self.record["original"]).decode(errors="replace"))[0]

    def close(self) -> None:
        """Stop keeping the settings, then undo them (see :func:`restore`)."""
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None
        restore(self.record)


def start(
    ifname: str,
    servers: Sequence[str],
    search: Sequence[str],
    *,
    full_tunnel: bool = False,
    backend: Backend | None = None,
    records: Records | None = None,
    resolv_conf: Path = RESOLV_CONF,
) -> ActiveDns:
    """:func:`apply`, and with resolved a keeper that holds the settings until
    :meth:`ActiveDns.close`. On failure nothing stays applied."""
    record = apply(ifname, servers, search, full_tunnel=full_tunnel, backend=backend,
                   records=records, resolv_conf=resolv_conf)
    keeper = None
    try:
        if record["backend"] == Backend.RESOLVED.value:
            want = resolved.settings_for(_checked_servers(ifname, servers),
                                         _checked_domains(ifname, search),
                                         full_tunnel=full_tunnel)
            keeper = resolved.Keeper(ifname, want)
            keeper.start()
    except BaseException:
        with contextlib.suppress(NetConfigError):
            restore(record)
        raise
    return ActiveDns(record, keeper=keeper, resolv_conf=resolv_conf)


def resolv_conf_state(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(nameservers, search domains) of a resolv.conf: what the system resolver uses now
    (nothing when the file cannot be read)."""
    try:
        return resolv_conf_text_state(path.read_text(errors="replace"))
    except OSError:
        return (), ()


def resolv_conf_text_state(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(nameservers, search domains) of a resolv.conf's text."""
    servers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            servers.append(words[1])
        elif words[:1] in (["search"], ["domain"]):
            search = words[1:]  # the last one wins, as in the C library
    return tuple(servers), tuple(search)


# --- resolved ----------------------------------------------------------------------------------


def _resolved_manages(resolv_conf: Path) -> bool:
    with contextlib.suppress(OSError):
        if os.path.realpath(resolv_conf).startswith(RESOLVED_RUN_DIR):
            return True
        return any(
            line.split()[:2] == ["nameserver", RESOLVED_STUB]
            for line in resolv_conf.read_text(errors="replace").splitlines()
        )
    return False


def _apply_resolved(ifname: str, want: resolved.LinkDns) -> None:
    try:
        resolved.apply(ifname, want)
    except resolved.ResolvedError:
        with contextlib.suppress(resolved.ResolvedError):
            resolved.revert(ifname)  # undo a half-applied change
        raise


def _link_present(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


# --- the file ----------------------------------------------------------------------------------


def _file_backup(
    ifname: str, path: Path, servers: list[str], search: list[str]
) -> dict[str, Any]:
    original, link = _read_state(path)
    ours = _HEADER.split("{}")[0].encode()
    if original is not None and original.startswith(ours):
        who = original.split(b"\n", 1)[0].decode(errors="replace")
        raise DnsConfigError(
            f"{ifname}: {path} already holds Tunseal's DNS settings ({who!r}); bring that "
            "tunnel down first: backing this file up now would lose the original"
        )
    mode, uid, gid = 0o644, 0, 0
    if link is None and original is not None:
        st = path.stat()
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    old_lines = (original or b"").decode(errors="replace").splitlines()
    kept = [ln for ln in old_lines if ln.startswith("options")]
    if not servers:
        kept += [ln for ln in old_lines if ln.startswith("nameserver")]
    written = _resolv_text(servers, search, kept=kept, ifname=ifname).encode()
    return {
        "backend": Backend.FILE.value,
        "ifname": ifname,
        "path": str(path),
        "original": None if original is None else _b64e(original),
        "symlink": link,
        "mode": mode,
        "uid": uid,
        "gid": gid,
        "written": _b64e(written),
    }


def _restore_file(record: dict[str, Any]) -> None:
    path = Path(record["path"])
    original = None if record["original"] is None else _b64d(record["original"])
    link = record.get("symlink")
    written = _b64d(record["written"])
    current, current_link = _read_state(path)
    _remove_leftover_temps(path)
    if (current_link, current) == (link, original):
        return  # never applied (a crash came first), or already restored
    ours = current_link is None and current is not None and written.startswith(current)
    if not ours:
        log.warning(
            "%s was changed by another program after Tunseal wrote it; leaving it as it is "
            "(the version Tunseal replaced began with %r)", path, (original or b"")[:80])
        return
    if link is not None:
        symlink_atomic(path, link, temp_prefix=f".{path.name}{_TEMP_INFIX}")
    elif original is None:
        path.unlink()
    else:
        _write_file(path, original, record["mode"], record["uid"], record["gid"])


def _resolv_text(
    servers: list[str], search: list[str], *, kept: list[str], ifname: str | None = None
) -> str:
    lines = []
    if ifname is not None:
        lines.append(_HEADER.format(ifname))
    lines += [f"nameserver {s}" for s in servers]
    lines += [ln for ln in kept if ln.startswith("nameserver")]
    if search:
        lines.append("search " + " ".join(search))
    lines += [ln for ln in kept if not ln.startswith("nameserver")]
    return "\n".join(lines) + "\n"


def _read_state(path: Path) -> tuple[bytes | None, str | None]:
    """(content, symlink target): content through the link, None when absent or dangling."""
    link = os.readlink(path) if path.is_symlink() else None
    try:
        return path.read_bytes(), link
    except FileNotFoundError:
        return None, link
    except OSError as exc:
        raise DnsConfigError(f"cannot read {path}: {exc}") from None


def _write_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Replace ``path`` atomically (temp file + rename); a mount point (a container's, a bind
    mount) cannot be renamed over, so it is rewritten in place."""
    try:
        if _is_mount_point(path):
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return
        owner = (uid, gid) if os.geteuid() == 0 else None
        write_atomic(path, data, mode=mode, exact_mode=True, owner=owner,
                     temp_prefix=f".{path.name}{_TEMP_INFIX}")
    except OSError as exc:
        raise DnsConfigError(f"cannot write {path}: {exc}") from None


def _remove_leftover_temps(path: Path) -> None:
    """A crash between creating a temp file and renaming it leaves the temp file behind."""
    for tmp in path.parent.glob(f".{path.name}{_TEMP_INFIX}*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            log.debug("removed leftover %s", tmp)


def _is_mount_point(path: Path) -> bool:
    """Whether ``path`` itself (not a symlink's target) is a mount point."""
    target = os.path.join(os.path.realpath(path.parent), path.name)
    try:
        lines = _MOUNTINFO.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- shared ------------------------------------------------------------------------------------


def _checked_servers(ifname: str, servers: Sequence[str]) -> list[str]:
    out = []
    for s in servers:
        try:
            out.append(str(ipaddress.ip_address(s)))
        except ValueError:
            raise DnsConfigError(f"{ifname}: DNS server {s!r} is not an IP address") from None
    return out


def _checked_domains(ifname: str, domains: Sequence[str]) -> list[str]:
    for d in domains:
        if not isinstance(d, str) or len(d) > 254 or not _DOMAIN_RE.fullmatch(d):
            raise DnsConfigError(f"{ifname}: search domain {d!r} is not a domain name")
    return list(domains)


def _run(argv: list[str], *, what: str, stdin: bytes | None = None) -> None:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DnsConfigError(f"cannot {what}: {argv[0]} failed to run ({exc})") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise DnsConfigError(f"cannot {what}: {' '.join(argv)}: {err}")


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64d(text: str) -> bytes:
    return base64.b64decode(text.encode())
