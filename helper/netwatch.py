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
import threading
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

log = logging.getLogger(__name__)

SETTLE = 0.5
"""Changes arrive in bursts (address removed, link down, route removed...): act once."""
SUSPEND_GAP = 2.0
"""A jump this large between the two clocks means the machine was asleep."""
_RTM_EVENTS = {"RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWROUTE",
               "RTM_DELROUTE"}


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

    def _relevant(self, msg: Any, ipr: IPRoute) -> bool:
        """Address and link changes on other interfaces, and default-route changes: what moves
        a laptop's outer path. Changes to our own TUN devices are the engine's doing."""
        event = msg.get("event")
        if event not in _RTM_EVENTS:
            return False
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            if msg.get("dst_len") != 0 or msg.get_attr("RTA_TABLE", msg.get("table")) != 254:
                return False
            return not self._ours(msg.get_attr("RTA_OIF"), ipr)
        return not self._ours(msg.get("index"), ipr)

    def _ours(self, index: object, ipr: IPRoute) -> bool:
        if not isinstance(index, int):
            return False
        name = self._names.get(index)
        if name is None:
            try:
                links = ipr.get_links(index)
                name = links[0].get_attr("IFLA_IFNAME") if links else ""
            except Exception:  # the link may already be gone
                name = ""
            self._names[index] = str(name or "")
        return bool(name) and str(name).startswith(self._ignore)

    def _run(self) -> None:
        try:
            ipr = IPRoute()
            ipr.bind()
        except Exception as e:
            log.warning("cannot watch network changes (%s); tunnels recover on their timers", e)
            return
        pending: str | None = None
        deadline = 0.0
        offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([ipr.fileno()], [], [], 0.25)
                now = time.monotonic()
                new_offset = time.clock_gettime(time.CLOCK_BOOTTIME) - now
                if new_offset - offset > SUSPEND_GAP:
                    pending, deadline = "resumed from suspend", now
                offset = new_offset
                if ready:
                    for msg in ipr.get():
                        if self._relevant(msg, ipr):
                            if pending is None:
                                pending = f"network change ({msg.get('event')})"
                            deadline = now + SETTLE
                if pending is not None and now >= deadline:
                    log.info("%s: re-handshaking", pending)
                    try:
                        self._on_change(pending)
                    except Exception:
                        log.exception("handling a network change failed")
                    pending = None
        finally:
            ipr.close()
