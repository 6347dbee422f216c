"""systemd-resolved over D-Bus: a link's DNS servers, domains and default route, read back, and
kept in place while the tunnel is up.

The calls are the ones ``resolvectl`` makes (``org.freedesktop.resolve1.Manager``: SetLinkDNS,
SetLinkDomains, SetLinkDefaultRoute, RevertLink; the ``Link`` object's properties), made
directly so the helper needs no ``resolvectl`` and gets typed answers and error names.

:class:`Keeper` holds a link's settings against the things that undo them, without polling: a
thread blocks on its own bus connection, woken by

* any call to resolved's Manager or Link interface that changes our link (``SetLink*``,
  ``RevertLink``) made by someone else: NetworkManager or networkd resetting it, an admin's
  ``resolvectl``. The connection is a bus monitor (``BecomeMonitor``, which the system bus
  allows root), because resolved 252 signals no change of a link's domains or default route;
* ``NameOwnerChanged`` of ``org.freedesktop.resolve1``: resolved restarted (it reloads saved
  link settings from /run/systemd/resolve/netif/ when it can; a fresh /run does not have them);
* ``NameOwnerChanged`` of ``org.freedesktop.NetworkManager``: NetworkManager (re)started.

Where the bus refuses a monitor, ``PropertiesChanged`` on resolved's Manager stands in for the
calls: its DNS server list changed, which is what a ``RevertLink`` or another client's
``SetLinkDNS`` looks like from outside (a change of domains alone is then missed).

On each, it reads the link back and re-applies what differs.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, HeaderFields, MatchRule, Message, MessageType, new_method_call
from jeepney.bus_messages import Monitoring, message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from helper.netdev import NetConfigError

__all__ = ["BUS_NAME", "Keeper", "LinkDns", "ResolvedError", "apply", "revert", "running",
           "settings_for"]

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.resolve1"
NM_BUS_NAME = "org.freedesktop.NetworkManager"
_MANAGER = DBusAddress("/org/freedesktop/resolve1", bus_name=BUS_NAME,
                       interface="org.freedesktop.resolve1.Manager")
_LINK_IFACE = "org.freedesktop.resolve1.Link"
CALL_TIMEOUT = 10.0
"""Seconds a call to resolved may take (it answers in milliseconds; a hung one must not hang us)."""
_NO_SUCH_LINK = "org.freedesktop.resolve1.NoSuchLink"
LINK_WAIT = 5.0
"""A resolved that just started may not have enumerated the link yet: retry this long."""


class ResolvedError(NetConfigError):
    """systemd-resolved could not be reached or refused a change; the message says which."""


@dataclass(frozen=True, slots=True)
class LinkDns:
    """One link's DNS settings as resolved holds them. ``domains`` are written as in a profile:
    ``corp.example`` (search and route), ``~corp.example`` (route only), ``~.`` (every name).
    ``default_route`` None leaves resolved's own choice (yes unless the link has route-only
    domains); read back it is always the value in effect."""

    servers: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    default_route: bool | None = None

    def satisfied_by(self, got: LinkDns) -> bool:
        return (self.servers == got.servers and self.domains == got.domains
                and self.default_route in (None, got.default_route))


# --- one-shot calls ------------------------------------------------------------------------------


def running() -> bool:
    """Whether resolved owns its name on the system bus (False when there is no bus at all)."""
    try:
        with _connection() as conn:
            reply = _call(conn, message_bus.NameHasOwner(BUS_NAME), "ask the system bus")
    except ResolvedError as exc:
        log.debug("systemd-resolved is not usable: %s", exc)
        return False
    return bool(reply[0])


def apply(ifname: str, want: LinkDns) -> LinkDns:
    """Put ``want`` on link ``ifname``; returns what resolved then reports for it."""
    with _connection() as conn:
        ifindex = _ifindex(ifname)
        _set(conn, ifindex, ifname, want)
        return _read(conn, ifindex, ifname)


def revert(ifname: str) -> None:
    """Drop every setting made on ``ifname`` (resolved also does when the link goes away)."""
    with _connection() as conn:
        ifindex = _ifindex(ifname)
        _call(conn, new_method_call(_MANAGER, "RevertLink", "i", (ifindex,)),
              f"revert the DNS settings of {ifname}", allow_missing_link=True)


# --- the keeper ----------------------------------------------------------------------------------


class Keeper:
    """Keeps ``want`` on ``ifname`` until :meth:`stop` (see the module docstring). ``current``
    is what resolved last reported for the link (None while resolved is away)."""

    def __init__(self, ifname: str, want: LinkDns) -> None:
        self.ifname = ifname
        self.want = want
        self.current: LinkDns | None = None
        self.reapplied = 0
        """How often the settings were found changed and put back."""
        self.monitoring = False
        """Whether every call to resolved is seen (a monitor), or only its signals."""
        self._ifindex = _ifindex(ifname)
        self._watch: DBusConnection | None = None
        self._calls: DBusConnection | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._queue: collections.deque[Message] = collections.deque(maxlen=256)

    def start(self) -> None:
        self._calls = _open()
        try:
            self._watch = self._open_watch()
            # Puts the settings on, or finds them there: a change between an earlier apply()
            # and the watch taking effect would otherwise go unseen.
            self._check("started")
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name=f"dns-{self.ifname}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        watch = self._watch
        if watch is not None and self._thread is not None:
            # Wakes the thread's blocking read with EOF; the thread closes the connections.
            with contextlib.suppress(OSError):
                watch.sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(timeout=CALL_TIMEOUT + 2)
        self._thread = None
        self._close()

    def _open_watch(self) -> DBusConnection:
        """A monitor connection sees every call to resolved (root may become one on the system
        bus); where the bus refuses, resolved's signals are the next best thing."""
        conn = _open()
        try:
            rules = _owner_rules()
            monitor = [*rules, *(MatchRule(type="method_call", destination=BUS_NAME,
                                           interface=iface)
                                 for iface in (_MANAGER.interface, _LINK_IFACE))]
            for rule in monitor:
                conn.filter(rule, queue=self._queue)
            try:
                reply = conn.send_and_get_reply(
                    _monitoring.BecomeMonitor([r.serialise() for r in monitor]),
                    timeout=CALL_TIMEOUT)
            except (OSError, ConnectionError, TimeoutError) as exc:
                raise ResolvedError(f"cannot watch systemd-resolved: {exc}") from None
            if reply.header.message_type != MessageType.error:
                self.monitoring = True
                return conn
            log.info("%s: the system bus refused a monitor (%s); watching resolved's signals, "
                     "which miss a change of domains alone", self.ifname,
                     reply.header.fields.get(HeaderFields.error_name))
            conn.close()
            conn = _open()
            changed = {"type": "signal", "path": "/org/freedesktop/resolve1",
                       "interface": "org.freedesktop.DBus.Properties",
                       "member": "PropertiesChanged"}
            # The bus resolves a well-known sender name; the messages carry the unique one, so
            # the local filter does without it.
            for on_bus, local in [*((r, r) for r in rules),
                                  (MatchRule(sender=BUS_NAME, **changed), MatchRule(**changed))]:
                conn.filter(local, queue=self._queue)
                _call(conn, message_bus.AddMatch(on_bus), "watch systemd-resolved")
            return conn
        except BaseException:
            conn.close()
            raise

    def _run(self) -> None:
        watch = self._watch
        assert watch is not None
        try:
            while not self._stopping.is_set():
                whys = {self._why(watch.recv_until_filtered(self._queue))}
                while self._queue:  # a burst needs one look
                    whys.add(self._why(self._queue.popleft()))
                whys.discard("")
                if whys == {"resolved stopped"}:
                    self.current = None
                elif whys:
                    self._check(", ".join(sorted(whys)))
        except (OSError, ConnectionError, TimeoutError) as exc:
            if not self._stopping.is_set():
                log.warning("%s: lost the system bus (%s); DNS settings are no longer kept",
                            self.ifname, exc)
        finally:
            self._close()

    def _why(self, msg: Message) -> str:
        """Why ``msg`` may have changed our link's settings; "" when it cannot have."""
        fields = msg.header.fields
        member = fields.get(HeaderFields.member, "")
        if member == "NameOwnerChanged":
            name, _old, new = msg.body
            if name == BUS_NAME:
                return "resolved restarted" if new else "resolved stopped"
            return "NetworkManager started" if new else ""
        if msg.header.message_type == MessageType.signal:
            return "resolved's DNS configuration changed"
        calls = self._calls
        if calls is not None and fields.get(HeaderFields.sender) == calls.unique_name:
            return ""  # our own
        if fields.get(HeaderFields.interface) == _LINK_IFACE:
            ours = fields.get(HeaderFields.path, "") == _link_path(self._ifindex)
            return f"{member} by {fields.get(HeaderFields.sender)}" if ours else ""
        if (member.startswith("SetLink") or member == "RevertLink") and msg.body \
                and msg.body[0] == self._ifindex:
            return f"{member} by {fields.get(HeaderFields.sender)}"
        return ""

    def _check(self, why: str) -> None:
        conn = self._calls
        assert conn is not None
        try:
            got = _read(conn, self._ifindex, self.ifname, wait=True)
            if not self.want.satisfied_by(got):
                log.info("%s: DNS settings changed (%s: now %s); putting them back", self.ifname,
                         why, _show(got))
                self.reapplied += 1  # first: whoever sees the link restored sees it counted
                _set(conn, self._ifindex, self.ifname, self.want, wait=True)
                got = _read(conn, self._ifindex, self.ifname)
            self.current = got
        except ResolvedError as exc:
            if not self._stopping.is_set():
                log.warning("%s: cannot check the DNS settings (%s): %s", self.ifname, why, exc)

    def _close(self) -> None:
        for conn in (self._watch, self._calls):
            if conn is not None:
                conn.close()
        self._watch = self._calls = None


_monitoring = Monitoring()


def _owner_rules() -> list[MatchRule]:
    rules = []
    for name in (BUS_NAME, NM_BUS_NAME):
        rule = MatchRule(type="signal", sender="org.freedesktop.DBus",
                         interface="org.freedesktop.DBus", member="NameOwnerChanged",
                         path="/org/freedesktop/DBus")
        rule.add_arg_condition(0, name)
        rules.append(rule)
    return rules


def _link_path(ifindex: int) -> str:
    """resolved's object path of a link: sd-bus escapes the leading digit of the ifindex as
    ``_`` and its hex code (2 is ``_32``, 12 is ``_312``)."""
    digits = str(ifindex)
    return f"/org/freedesktop/resolve1/link/_{ord(digits[0]):02x}{digits[1:]}"


# --- the calls -----------------------------------------------------------------------------------


def _set(conn: DBusConnection, ifindex: int, ifname: str, want: LinkDns, *,
         wait: bool = False) -> None:
    servers = [_server_arg(s) for s in want.servers]
    domains = [_domain_arg(d) for d in want.domains]
    calls = [(new_method_call(_MANAGER, "SetLinkDNS", "ia(iay)", (ifindex, servers)),
              f"set the DNS servers of {ifname}"),
             (new_method_call(_MANAGER, "SetLinkDomains", "ia(sb)", (ifindex, domains)),
              f"set the DNS domains of {ifname}")]
    if want.default_route is not None:
        calls.append((new_method_call(_MANAGER, "SetLinkDefaultRoute", "ib",
                                      (ifindex, want.default_route)),
                      f"set the DNS default route of {ifname}"))
    for msg, what in calls:
        _call(conn, msg, what, wait=wait)


def _read(conn: DBusConnection, ifindex: int, ifname: str, *, wait: bool = False) -> LinkDns:
    (path,) = _call(conn, new_method_call(_MANAGER, "GetLink", "i", (ifindex,)),
                    f"find {ifname} in systemd-resolved", wait=wait)
    link = DBusAddress(path, bus_name=BUS_NAME, interface="org.freedesktop.DBus.Properties")
    (props,) = _call(conn, new_method_call(link, "GetAll", "s", (_LINK_IFACE,)),
                     f"read the DNS settings of {ifname}")
    servers = tuple(str(ipaddress.ip_address(bytes(addr))) for _fam, addr in props["DNS"][1])
    domains = tuple(("~" if route_only else "") + (name or ".")
                    for name, route_only in props["Domains"][1])
    return LinkDns(servers, domains, bool(props["DefaultRoute"][1]))


def _call(conn: DBusConnection, msg: Message, what: str, *, wait: bool = False,
          allow_missing_link: bool = False) -> Any:
    """Send ``msg``, return the reply's body. ``wait``: a link resolved does not know yet (it
    just started) is retried for up to LINK_WAIT seconds; ``allow_missing_link``: it is no
    error (there is nothing to undo)."""
    deadline = time.monotonic() + (LINK_WAIT if wait else 0.0)
    delay = 0.05
    while True:
        try:
            reply = conn.send_and_get_reply(msg, timeout=CALL_TIMEOUT)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise ResolvedError(f"cannot {what}: the system bus did not answer ({exc})") from None
        if reply.header.message_type != MessageType.error:
            return reply.body
        name = reply.header.fields.get(HeaderFields.error_name, "")
        if name == _NO_SUCH_LINK and allow_missing_link:
            return ()
        if name == _NO_SUCH_LINK and time.monotonic() < deadline:
            time.sleep(delay)  # bounded: resolved learns of links from netlink right after start
            delay = min(delay * 2, 0.5)
            continue
        detail = reply.body[0] if reply.body else name
        raise ResolvedError(f"cannot {what}: systemd-resolved said {detail} ({name})")


@contextlib.contextmanager
def _connection() -> Iterator[DBusConnection]:
    conn = _open()
    try:
        yield conn
    finally:
        conn.close()


def _open() -> DBusConnection:
    try:
        return open_dbus_connection(bus="SYSTEM", auth_timeout=CALL_TIMEOUT)
    except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
        raise ResolvedError(
            f"cannot reach the system D-Bus to talk to systemd-resolved ({exc}); is dbus running?"
        ) from None


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise ResolvedError(f"{ifname}: no such network interface") from None


def _server_arg(server: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(server)
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6, ip.packed)


def _domain_arg(domain: str) -> tuple[str, bool]:
    route_only = domain.startswith("~")
    name = domain.removeprefix("~")
    return ("." if name == "." else name, route_only)


def _show(got: LinkDns) -> str:
    return (f"servers {' '.join(got.servers) or 'none'}, domains {' '.join(got.domains) or 'none'}"
            f", default route {'yes' if got.default_route else 'no'}")


def settings_for(servers: Sequence[str], domains: Sequence[str], *,
                         full_tunnel: bool) -> LinkDns:
    """What a tunnel asks of resolved: a full tunnel takes every name (``~.``) and is the
    default route, so no query goes to another link's servers; a split tunnel gets its servers
    and domains and resolved's own default-route choice."""
    wanted = list(domains)
    if full_tunnel and "~." not in wanted:
        wanted.append("~.")
    return LinkDns(tuple(servers), tuple(wanted), True if full_tunnel else None)
