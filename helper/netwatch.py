"""Noticing that the machine's network changed, so tunnels recover without the user.

A laptop changes networks (Wi-Fi to Ethernet, a new DHCP lease, a link down and up) and
sleeps. Either way the outer path the sessions were using may be gone: the NAT mapping, the
source address. This watcher listens to the kernel's rtnetlink address/link/route events and
compares CLOCK_BOOTTIME with CLOCK_MONOTONIC (the first keeps counting during suspend, the
second does not) and calls ``on_change`` once per burst of changes; the engine then
re-handshakes every connecting peer, which re-learns the path from scratch.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

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


class NetWatch:
    def __init__(self, on_change: Callable[[str], None], *, ignore_prefix: str = "ts-"):
        self._on_change = on_change
        self._ignore = ignore_prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunseal-netwatch", daemon=True)
        self._names: dict[int, str] = {}

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
            return not self._ours(_IFINFOMSG.unpack_from(body)[2])
        if typ in (20, 21) and len(body) >= _IFADDRMSG.size:
            return not self._ours(_IFADDRMSG.unpack_from(body)[4])
        return False

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
                                pending = f"network change ({_EVENTS[typ]})"
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
