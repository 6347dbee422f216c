"""Noticing that the machine's network changed, so tunnels recover without the user.

A laptop changes networks (Wi-Fi to Ethernet, a new DHCP lease, a link down and up) and
sleeps. Either way the outer path the sessions were using may be gone: the NAT mapping, the
source address. This watcher listens to the kernel's rtnetlink address/link/route events and
compares CLOCK_BOOTTIME with CLOCK_MONOTONIC (the first keeps counting during suspend, the
second does not) and calls ``on_change`` once per burst of changes; the engine then
re-handshakes every connecting peer, which re-learns the path from scratch.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

SETTLE = 0.5
"""Changes arrive in bursts (address removed, link down, route removed...): act once."""
SUSPEND_GAP = 2.0
"""A jump this large between the two clocks means the machine was asleep."""

# rtnetlink, read from a plain socket: every datagram the kernel sends is seen as it arrives.
# (pyroute2 0.9's IPRoute.get() returns one datagram per call while it reads every pending one
# into its own queue, which select() on its socket cannot see: events then waited, behind a
# backlog of ignored ones, for later kernel events to push them out, often for good.)
_GROUPS = 0x1 | 0x10 | 0x40 | 0x100 | 0x400
"""RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE."""
_EVENTS = {16: "RTM_NEWLINK", 17: "RTM_DELLINK", 20: "RTM_NEWADDR", 21: "RTM_DELADDR",
           24: "RTM_NEWROUTE", 25: "RTM_DELROUTE"}
_NLMSGHDR = struct.Struct("=IHHII")
"""length, type, flags, sequence, port id."""
_IFINFOMSG = struct.Struct("=BxHiII")
"""family, type, index, flags, change."""
_IFADDRMSG = struct.Struct("=BBBBI")
"""family, prefix length, flags, scope, index."""
_RTMSG = struct.Struct("=BBBBBBBBI")
"""family, dst_len, src_len, tos, table, protocol, scope, type, flags."""
_RTATTR = struct.Struct("=HH")
RTA_OIF = 4
_LINK_STATE = 0x1 | 0x40 | 0x10000
"""IFF_UP, IFF_RUNNING, IFF_LOWER_UP."""
IFLA_IFNAME = 3
RTA_TABLE = 15
MAIN_TABLE = 254


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each netlink message in one datagram."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, typ, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        yield typ, data[off + _NLMSGHDR.size:off + length]
        off += (length + 3) & ~3


def _route_attrs(body: bytes) -> dict[int, int]:
    """The u32 attributes of an rtmsg (RTA_OIF, RTA_TABLE...)."""
    out: dict[int, int] = {}
    off = _RTMSG.size
    while off + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, off)
        if length < _RTATTR.size:
            break
        if length == _RTATTR.size + 4:
            out[kind] = struct.unpack_from("=I", body, off + _RTATTR.size)[0]
        off += (length + 3) & ~3
    return out


def _link_name(body: bytes) -> str:
    """IFLA_IFNAME of an ifinfomsg, or ""."""
    off = _IFINFOMSG.size
    while off + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, off)
        if length < _RTATTR.size:
            break
        if kind == IFLA_IFNAME:
            raw = body[off + _RTATTR.size:off + length]
            return raw.split(b"\0", 1)[0].decode(errors="replace")
        off += (length + 3) & ~3
    return ""


class NetWatch:
    def __init__(self, on_change: Callable[[str], None], *, ignore_prefix: str = "ts-"):
        self._on_change = on_change
        self._ignore = ignore_prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunseal-netwatch", daemon=True)
        self._names: dict[int, str] = {}
        self._flags: dict[int, int] = {}
        """Up and carrier state of each link seen (the dump at start fills it)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _relevant(self, typ: int, body: bytes) -> bool:
        """Address and link changes on other interfaces, and default-route changes: what moves
        a laptop's outer path. Changes to our own TUN devices are the engine's doing."""
        if typ in (24, 25):
            if len(body) < _RTMSG.size:
                return False
            _fam, dst_len, _src, _tos, table, *_ = _RTMSG.unpack_from(body)
            attrs = _route_attrs(body)
            if dst_len != 0 or attrs.get(RTA_TABLE, table) != MAIN_TABLE:
                return False
            return not self._ours(attrs.get(RTA_OIF))
        if typ in (16, 17) and len(body) >= _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
            name = _link_name(body)
            if name:  # the message names the link: no lookup (a deleted one has no name left)
                self._names[index] = name
            if typ == 17:
                self._flags.pop(index, None)
                return not self._ours(index)
            # RTM_NEWLINK also comes for changes that do not touch the path (another link's
            # upper device, IPv6 settings, a tunnel coming up beside it): only a link going up
            # or down counts, and a link first seen (the dump at start, a new device) does not.
            state = flags & _LINK_STATE
            before = self._flags.get(index)
            self._flags[index] = state
            return before is not None and before != state and not self._ours(index)
        if typ in (20, 21) and len(body) >= _IFADDRMSG.size:
            return not self._ours(_IFADDRMSG.unpack_from(body)[4])
        return False

    def _about(self, typ: int, body: bytes) -> str:
        """' of IFNAME' for a log line, when the event names a link."""
        index: int | None = None
        if typ in (16, 17) and len(body) >= _IFINFOMSG.size:
            index = _IFINFOMSG.unpack_from(body)[2]
        elif typ in (20, 21) and len(body) >= _IFADDRMSG.size:
            index = _IFADDRMSG.unpack_from(body)[4]
        elif typ in (24, 25) and len(body) >= _RTMSG.size:
            index = _route_attrs(body).get(RTA_OIF)
        name = self._names.get(index, "") if index is not None else ""
        return f" of {name}" if name else (f" of link {index}" if index else "")

    def _ours(self, index: int | None) -> bool:
        if index is None:
            return False
        name = self._names.get(index)
        if name is None:
            try:
                name = socket.if_indextoname(index)
            except OSError:  # the link may already be gone
                name = ""
            self._names[index] = name
        return bool(name) and name.startswith(self._ignore)

    def _run(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, _GROUPS))
            # Every link's state now, so later RTM_NEWLINKs can be told apart by what changed
            # (the answers arrive as RTM_NEWLINK, read by the loop below).
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + _IFINFOMSG.size, 18, 0x301, 1, 0)
                      + _IFINFOMSG.pack(0, 0, 0, 0, 0))  # RTM_GETLINK, REQUEST|DUMP
            sock.setblocking(False)
        except OSError as e:
            log.warning("cannot watch network changes (%s); tunnels recover on their timers", e)
            return
        pending: str | None = None
        deadline = 0.0
        offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([sock], [], [], 0.25)
                now = time.monotonic()
                new_offset = time.clock_gettime(time.CLOCK_BOOTTIME) - now
                if new_offset - offset > SUSPEND_GAP:
                    pending, deadline = "resumed from suspend", now
                offset = new_offset
                for _ in range(256 if ready else 0):  # bounded: a storm must not starve us
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError as e:  # ENOBUFS: events were lost, so something changed
                        data, pending = b"", pending or f"network change (lost events: {e})"
                        deadline = now + SETTLE
                    for typ, body in messages(data):
                        if typ in _EVENTS and self._relevant(typ, body):
                            if pending is None:
                                pending = f"network change ({_EVENTS[typ]}{self._about(typ, body)})"
                            deadline = now + SETTLE
                if pending is not None and now >= deadline:
                    log.info("%s: re-handshaking", pending)
                    try:
                        self._on_change(pending)
                    except Exception:
                        log.exception("handling a network change failed")
                    pending = None
        finally:
            sock.close()


# --- beyond netlink: the files DHCP clients write, and NetworkManager ---------------------------

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_IGNORED = 0x400, 0x800, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_INOTIFY_EVENT = struct.Struct("=iIII")
"""wd, mask, cookie, length of the name that follows."""


class FileWatch:
    """Calls ``on_change(why)`` once per burst of writes to the files that say which network
    this is (resolv.conf, DHCP leases; helper/netident.py reads them): a DHCP client writes its
    lease and the domain after the address and route netlink reports, so a decision made at
    the netlink event alone could see the old domain. inotify, not polling. ``files`` are
    watched themselves (a bind-mounted file is written in place) and by name in their
    directories (replaced by rename); every file in ``dirs`` counts."""

    def __init__(self, on_change: Callable[[str], None], *, files: tuple[str, ...] = (),
                 dirs: tuple[str, ...] = ()):
        self._on_change = on_change
        self._files = files
        self._dirs = dirs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunseal-filewatch", daemon=True)
        self._fd = -1
        self._watches: dict[int, tuple[str, str]] = {}
        """wd -> (path watched, the file name that matters in it, "" for any)."""

    def start(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.warning("cannot watch %s (inotify: %s)", ", ".join(self._files),
                        os.strerror(ctypes.get_errno()))
            return
        self._fd = fd
        self._add_all()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _add(self, path: str, mask: int, name: str) -> None:
        wd = self._libc.inotify_add_watch(self._fd, path.encode(), mask)
        if wd >= 0:
            self._watches[wd] = (path, name)

    def _add_files(self) -> None:
        for f in self._files:
            self._add(f, _IN_CLOSE_WRITE | _IN_MODIFY | _IN_DELETE_SELF | _IN_MOVE_SELF, "")

    def _add_all(self) -> None:
        self._add_files()
        for f in self._files:
            for target in {f, os.path.realpath(f)}:
                self._add(os.path.dirname(target), _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE,
                          os.path.basename(target))
        for d in self._dirs:
            self._add(d, _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE, "")

    def _run(self) -> None:
        pending: str | None = None
        deadline = 0.0
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.25)
            now = time.monotonic()
            if ready:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    data = b""
                replaced = False
                off = 0
                while off + _INOTIFY_EVENT.size <= len(data):
                    wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, off)
                    raw = data[off + _INOTIFY_EVENT.size:off + _INOTIFY_EVENT.size + length]
                    off += _INOTIFY_EVENT.size + length
                    name = raw.rstrip(b"\0").decode(errors="replace")
                    path, wanted = self._watches.get(wd, ("", ""))
                    if mask & _IN_IGNORED:  # the watched file is gone (replaced)
                        self._watches.pop(wd, None)
                        replaced = True
                        continue
                    if not path or (wanted and name and name != wanted):
                        continue
                    if wanted and name == wanted:
                        replaced = True  # a new file by that name: watch it
                    pending = pending or f"{os.path.join(path, name) if name else path} changed"
                    deadline = now + SETTLE
                if replaced:  # watching an inode twice gives the same watch: no harm
                    self._add_files()
            if pending is not None and now >= deadline:
                try:
                    self._on_change(pending)
                except Exception:
                    log.exception("handling a change of %s failed", pending)
                pending = None


class NmWatch:
    """Calls ``on_change(why)`` when NetworkManager's primary connection or its state changes,
    or NetworkManager (re)starts: its ``PropertiesChanged`` and the bus's ``NameOwnerChanged``
    signals. Without a system bus, :meth:`start` returns False and nothing runs."""

    def __init__(self, on_change: Callable[[str], None]):
        self._on_change = on_change
        self._conn: object = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> bool:
        try:
            from jeepney import MatchRule
            from jeepney.bus_messages import message_bus
            from jeepney.io.blocking import open_dbus_connection
        except ImportError:
            return False
        try:
            conn = open_dbus_connection(bus="SYSTEM", auth_timeout=3.0)
        except (OSError, ConnectionError, TimeoutError, ValueError, KeyError):
            return False
        owner = MatchRule(type="signal", sender="org.freedesktop.DBus",
                          interface="org.freedesktop.DBus", member="NameOwnerChanged",
                          path="/org/freedesktop/DBus")
        owner.add_arg_condition(0, "org.freedesktop.NetworkManager")
        changed = {"type": "signal", "path": "/org/freedesktop/NetworkManager",
                   "interface": "org.freedesktop.DBus.Properties", "member": "PropertiesChanged"}
        queue: collections.deque[object] = collections.deque()
        try:
            for on_bus, local in ((owner, owner),
                                  (MatchRule(sender="org.freedesktop.NetworkManager", **changed),
                                   MatchRule(**changed))):
                conn.filter(local, queue=queue)
                conn.send_and_get_reply(message_bus.AddMatch(on_bus), timeout=3.0)
        except (OSError, ConnectionError, TimeoutError) as e:
            log.info("cannot watch NetworkManager's signals: %s", e)
            conn.close()
            return False
        self._conn = conn
        self._thread = threading.Thread(target=self._run, args=(conn, queue),
                                        name="tunseal-nmwatch", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(timeout=3.0)

    def _run(self, conn: Any, queue: Any) -> None:
        try:
            while not self._stopping.is_set():
                msg = conn.recv_until_filtered(queue)
                body = msg.body
                if msg.header.fields.get(3) == "NameOwnerChanged":  # HeaderFields.member
                    why = "NetworkManager started" if body[2] else "NetworkManager stopped"
                else:
                    props = body[1] if len(body) > 1 and isinstance(body[1], dict) else {}
                    if not ({"PrimaryConnection", "State", "Connectivity"} & set(props)):
                        continue
                    why = "NetworkManager: " + ", ".join(sorted(props)) + " changed"
                try:
                    self._on_change(why)
                except Exception:
                    log.exception("handling %s failed", why)
        except (OSError, ConnectionError, TimeoutError, EOFError) as e:
            if not self._stopping.is_set():
                log.warning("lost NetworkManager's signals (%s)", e)
        finally:
            conn.close()
