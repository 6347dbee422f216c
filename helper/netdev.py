"""Addresses, MTU and routes of a TUN link, in the current network namespace.

The engine creates the TUN link (``helper/tun.py``: it exists while the engine holds its fd); this
module only configures it, through pyroute2's :class:`~pyroute2.IPRoute`. Every route Tunseal adds
carries the routing protocol number :data:`RTPROT_TUNSEAL` (``ip route`` shows ``proto 77``), so
removal never touches a route that someone else added, even one with the same destination.

A default route (``0.0.0.0/0``, ``::/0``) is added as two halves (``0.0.0.0/1`` + ``128.0.0.0/1``,
``::/1`` + ``8000::/1``, OpenVPN's *def1*): they win over the system's default route without
replacing it, so it is back by itself once the tunnel is gone. The halves would also capture the
tunnel's own encrypted packets to the endpoint, so a caller that routes everything into the tunnel
first pins the endpoint to the path it has now. Record the pin before adding it (crash safety)::

    pin = netdev.endpoint_pin("203.0.113.5")          # a lookup, changes nothing
    if pin is not None:
        records.note_host_route(ifname, pin)
        netdev.add_host_route(pin)
    netdev.configure(ifname, addresses=[...], mtu=1380, routes=["0.0.0.0/0"])
    ...
    netdev.remove_host_route(pin)                     # on down; the link's own routes go with it
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import logging
import re
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from core.errors import TunsealError

__all__ = [
    "IFNAMSIZ_MAX",
    "RTPROT_TUNSEAL",
    "HostRoute",
    "NetConfigError",
    "add_host_route",
    "configure",
    "delete_link",
    "endpoint_pin",
    "expand_routes",
    "ifname_for",
    "link_exists",
    "list_links",
    "local_networks",
    "remove_host_route",
    "remove_routes",
    "set_mtu",
    "unique_ifname",
]

log = logging.getLogger(__name__)

IFNAMSIZ_MAX = 15
"""IFNAMSIZ is 16 bytes including the terminating NUL."""
IFNAME_PREFIX = "ts-"
UNIQUE_TRIES = 1000
RTPROT_TUNSEAL = 77
"""Routing protocol number marking Tunseal's routes (unassigned in /etc/iproute2/rt_protos)."""
RT_TABLE_MAIN = 254
"""Kernel routes of the link's addresses live in table 255 (local): filter, never touch those."""
MTU_MIN_IPV6 = 1280
"""Below 1280 the kernel disables IPv6 on a link (RFC 8200 section 5)."""
_DEFAULT_HALVES = {
    ipaddress.ip_network("0.0.0.0/0"): ("0.0.0.0/1", "128.0.0.0/1"),
    ipaddress.ip_network("::/0"): ("::/1", "8000::/1"),
}
_IFNAME_BAD = re.compile(r"[^A-Za-z0-9._-]")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class NetConfigError(TunsealError):
    """A link, address or route could not be configured; the message says what to do."""


class HostRoute(TypedDict):
    """A host route outside the tunnel (see :func:`endpoint_pin`); JSON-safe for records."""

    dst: str
    """The endpoint address, without prefix length."""
    gateway: str | None
    oif: str
    """Name of the outgoing link (names survive in records better than indexes)."""


def ifname_for(profile_name: str) -> str:
    """``ts-<profile>``, or, when that is longer than 15 bytes or holds characters a link name
    cannot, ``ts-<first 6>-<5 hex digits of a hash of the whole name>``: deterministic, and two
    profiles sharing a long prefix still get different links."""
    plain = IFNAME_PREFIX + profile_name
    if len(plain.encode()) <= IFNAMSIZ_MAX and not _IFNAME_BAD.search(profile_name):
        return plain
    digest = hashlib.sha256(profile_name.encode()).hexdigest()[:5]
    stem = _IFNAME_BAD.sub("_", profile_name)[:6]
    return f"{IFNAME_PREFIX}{stem}-{digest}"


def unique_ifname(profile_name: str, taken: Collection[str]) -> str:
    """:func:`ifname_for`, or, when another tunnel or link already has that name (a short
    profile name can equal another's hashed one: ``engine-73166`` and ``engineering-vpn``), the
    first ``ts-<first 6>-<5 hex digits of a hash of the name and a counter>`` not in ``taken``."""
    name = ifname_for(profile_name)
    if name not in taken:
        return name
    stem = _IFNAME_BAD.sub("_", profile_name)[:6]
    for salt in range(1, UNIQUE_TRIES + 1):
        digest = hashlib.sha256(f"{profile_name}\0{salt}".encode()).hexdigest()[:5]
        candidate = f"{IFNAME_PREFIX}{stem}-{digest}"
        if candidate not in taken:
            return candidate
    raise NetConfigError(
        f"no free interface name for {profile_name!r} after {UNIQUE_TRIES} tries: list the "
        f"links with 'ip link show' and delete stale {IFNAME_PREFIX}* ones"
    )


def expand_routes(routes: Sequence[str]) -> list[_Network]:
    """Parse ``routes``, turning each default route into its two halves; duplicates dropped."""
    out: list[_Network] = []
    for text in routes:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            msg = f"route {text!r} is not a network like 10.0.0.0/8: {exc}"
            raise NetConfigError(msg) from None
        for part in _DEFAULT_HALVES.get(net, (str(net),)):
            half = ipaddress.ip_network(part)
            if half not in out:
                out.append(half)
    return out


def configure(
    ifname: str,
    *,
    addresses: Sequence[str],
    mtu: int,
    routes: Sequence[str],
    up: bool = True,
) -> None:
    """Give the existing link ``ifname`` its MTU, addresses (``"10.77.0.2/24"``, ``"fd77::2/64"``)
    and routes, then bring it up. Idempotent: what is already there is left as it is. A route the
    link's addresses already cover (``10.77.0.0/24`` next to ``10.77.0.2/24``) is not added."""
    ifaces = _parse_interfaces(ifname, addresses)
    nets = expand_routes(routes)
    needs_v6 = any(i.version == 6 for i in ifaces) or any(n.version == 6 for n in nets)
    if needs_v6 and mtu < MTU_MIN_IPV6:
        raise NetConfigError(
            f"{ifname}: IPv6 needs an MTU of at least {MTU_MIN_IPV6}, not {mtu}; "
            "raise the profile's mtu or remove its IPv6 addresses and routes"
        )
    with netlink(ifname) as ipr:
        idx = _index(ipr, ifname)
        _set_mtu(ipr, idx, ifname, mtu)
        if needs_v6:
            _enable_ipv6(ifname)
        for iface in ifaces:
            _add_address(ipr, idx, ifname, iface)
        if up:
            ipr.link("set", index=idx, state="up")
        for net in nets:
            if _covered(net, ifaces):
                log.debug("%s: route %s is implied by an address, not added", ifname, net)
                continue
            _add_route(ipr, idx, ifname, net)
    log.info("%s: configured mtu %d, addresses %s, routes %s", ifname, mtu,
             [str(i) for i in ifaces], [str(n) for n in nets])


def set_mtu(ifname: str, mtu: int, *, addresses: Sequence[str] = (),
            routes: Sequence[str] = ()) -> None:
    """Change the MTU of a configured link, then put back ``addresses`` and ``routes``: an MTU
    change can take them away (below 1280 the kernel deletes every IPv6 address and route of
    the link, and does not restore them when the MTU rises again). Idempotent like
    :func:`configure`; refuses an MTU below 1280 when any of them is IPv6."""
    if not addresses and not routes:
        with netlink(ifname) as ipr:
            _set_mtu(ipr, _index(ipr, ifname), ifname, mtu)
        return
    configure(ifname, addresses=addresses, mtu=mtu, routes=routes)


def local_networks(*, exclude: str = "") -> list[_Interface]:
    """Every address of every link in this namespace (with its prefix), except ``exclude``'s:
    what the host itself is on, which no route into a tunnel may take over."""
    with netlink("addresses") as ipr:
        skip = ipr.link_lookup(ifname=exclude) if exclude else []
        out: list[_Interface] = []
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if msg["index"] in skip or not isinstance(addr, str):
                continue
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out


def remove_routes(ifname: str, routes: Sequence[str]) -> None:
    """Remove the routes :func:`configure` added for ``routes``; absent ones (or an absent link)
    are fine, and a route Tunseal did not add (another protocol) is never removed."""
    nets = expand_routes(routes)
    with netlink(ifname) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return  # the link is gone, and its routes went with it
        idx = int(found[0])
        for net in nets:
            family = 2 if net.version == 4 else 10
            with _absent_ok():
                ipr.route(
                    "del", family=family, dst=str(net), oif=idx,
                    table=RT_TABLE_MAIN, proto=RTPROT_TUNSEAL,
                )


def link_exists(ifname: str) -> bool:
    with netlink(ifname) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def delete_link(ifname: str) -> bool:
    """Delete the link (a stale one after a crash); False when there was none."""
    with netlink(ifname) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        with _absent_ok():
            ipr.link("del", index=found[0])
    log.info("deleted link %s", ifname)
    return True


def list_links(prefix: str) -> list[str]:
    with netlink(prefix + "*") as ipr:
        names = (link.get("ifname") for link in ipr.get_links())
        return sorted(n for n in names if isinstance(n, str) and n.startswith(prefix))


def endpoint_pin(endpoint: str) -> HostRoute | None:
    """The host route that keeps ``endpoint`` on the path the kernel uses for it now; None when
    no pin is needed (a local address). Looks only; :func:`add_host_route` adds it."""
    try:
        addr = ipaddress.ip_address(endpoint)
    except ValueError:
        msg = f"endpoint {endpoint!r} is not an IP address; resolve it first"
        raise NetConfigError(msg) from None
    with netlink(endpoint) as ipr:
        try:
            found = ipr.route("get", dst=str(addr))
        except NetlinkError as exc:
            raise NetConfigError(
                f"no route to the endpoint {addr} ({exc.args[-1]}): check the network connection"
            ) from None
        route = found[0]
        if route.get("type") == 2:  # RTN_LOCAL
            return None
        gateway = route.get("gateway") or route.get("via")
        oif = _name_of(ipr, route.get("oif"))
    return HostRoute(dst=str(addr), gateway=str(gateway) if gateway else None, oif=oif)


def add_host_route(route: HostRoute) -> None:
    """Add the pin; an identical route that already exists is left alone (and, not being ours,
    is never removed by :func:`remove_host_route`)."""
    with netlink(route["oif"]) as ipr:
        idx = _index(ipr, route["oif"])
        try:
            ipr.route("add", **_host_route_spec(route, idx))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise netlink_error(route["oif"], f"add host route to {route['dst']}",
                                    exc) from None


def remove_host_route(route: HostRoute) -> bool:
    """Remove a pin if it is still there; False when it was already gone."""
    with netlink(route["oif"]) as ipr:
        found = ipr.link_lookup(ifname=route["oif"])
        if not found:
            return False  # the link went, and its routes with it
        try:
            ipr.route("del", **_host_route_spec(route, found[0]))
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise netlink_error(route["oif"], f"remove host route to {route['dst']}", exc) from None
    return True


# --- internals ---------------------------------------------------------------------------------


@contextlib.contextmanager
def netlink(what: str, error: type[TunsealError] = NetConfigError) -> Iterator[IPRoute]:
    """An rtnetlink socket for one job (netdev's and policyroute's); a failure raises
    ``error`` saying what was being done and, where it can, why."""
    try:
        ipr = IPRoute()
    except OSError as exc:
        raise error(f"{what}: cannot open a netlink socket: {exc}") from None
    try:
        yield ipr
    except NetlinkError as exc:
        raise netlink_error(what, "configure", exc, error) from None
    finally:
        ipr.close()


@contextlib.contextmanager
def _absent_ok() -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
            raise


def netlink_error(what: str, action: str, exc: NetlinkError,
                  error: type[TunsealError] = NetConfigError) -> TunsealError:
    if exc.code == errno.EPERM:
        hint = "the helper needs root (CAP_NET_ADMIN)"
    elif exc.code == errno.ENODEV:
        hint = "the link disappeared: is the engine still running?"
    else:
        hint = str(exc.args[-1]) if exc.args else str(exc)
    return error(f"{what}: cannot {action}: {hint}")


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetConfigError(
            f"no link {ifname!r} in this network namespace: the engine creates it and must hold "
            "it open while the helper configures it"
        )
    return int(found[0])


def _name_of(ipr: IPRoute, index: Any) -> str:
    links = ipr.get_links(int(index))
    name = links[0].get("ifname") if links else None
    if not isinstance(name, str):
        raise NetConfigError(f"the route to the endpoint uses link #{index}, which has no name")
    return name


def _parse_interfaces(ifname: str, addresses: Sequence[str]) -> list[_Interface]:
    out: list[_Interface] = []
    for text in addresses:
        try:
            out.append(ipaddress.ip_interface(text))
        except ValueError:
            raise NetConfigError(
                f"{ifname}: address {text!r} is not like 10.77.0.2/24 or fd77::2/64"
            ) from None
    return out


def _set_mtu(ipr: IPRoute, idx: int, ifname: str, mtu: int) -> None:
    try:
        ipr.link("set", index=idx, mtu=mtu)
    except NetlinkError as exc:
        if exc.code == errno.EINVAL:
            raise NetConfigError(f"{ifname}: the kernel refuses MTU {mtu} for this link") from None
        raise


def _enable_ipv6(ifname: str) -> None:
    knob = Path("/proc/sys/net/ipv6/conf") / ifname / "disable_ipv6"
    try:
        if knob.read_text().strip() != "0":
            knob.write_text("0\n")
            log.debug("%s: enabled IPv6", ifname)
    except FileNotFoundError:
        raise NetConfigError(
            f"{ifname}: IPv6 is disabled on this system (no {knob.parent}); "
            "remove the profile's IPv6 addresses and routes or enable IPv6"
        ) from None
    except OSError as exc:
        raise NetConfigError(f"{ifname}: cannot enable IPv6 ({exc})") from None


def _add_address(ipr: IPRoute, idx: int, ifname: str, iface: _Interface) -> None:
    try:
        ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise netlink_error(ifname, f"add address {iface}", exc) from None


def _add_route(ipr: IPRoute, idx: int, ifname: str, net: _Network) -> None:
    family = 2 if net.version == 4 else 10
    spec = dict(family=family, dst=str(net), oif=idx, table=RT_TABLE_MAIN, proto=RTPROT_TUNSEAL)
    try:
        ipr.route("add", **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise netlink_error(ifname, f"add route {net}", exc) from None
        if not _route_on_link(ipr, idx, net):
            raise NetConfigError(
                f"{ifname}: a route to {net} already exists through another link or from "
                "another program; remove it, or drop it from the profile's routes"
            ) from None


def _covered(net: _Network, ifaces: Sequence[_Interface]) -> bool:
    """True when an address's own network (the kernel's connected route) already holds ``net``."""
    return any(
        net.version == i.version
        and net.prefixlen >= i.network.prefixlen
        and net.network_address in i.network
        for i in ifaces
    )


def _route_on_link(ipr: IPRoute, idx: int, net: _Network) -> bool:
    family = 2 if net.version == 4 else 10
    routes = ipr.get_routes(family=family, table=RT_TABLE_MAIN, oif=idx)
    return any(
        r.get("dst") and r.get("dst_len") == net.prefixlen
        and ipaddress.ip_address(r.get("dst")) == net.network_address
        for r in routes
    )


def _host_route_spec(route: HostRoute, idx: int) -> dict[str, Any]:
    addr = ipaddress.ip_address(route["dst"])
    spec: dict[str, Any] = dict(
        family=2 if addr.version == 4 else 10,
        dst=f"{addr}/{addr.max_prefixlen}",
        oif=idx,
        table=RT_TABLE_MAIN,
        proto=RTPROT_TUNSEAL,
    )
    if route["gateway"]:
        spec["gateway"] = route["gateway"]
    return spec
