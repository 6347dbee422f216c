"""Which network the machine is on now (core/trusted.py says what an identity is).

Where NetworkManager owns its name on the system bus, its primary connection is the network:
the connection's UUID and name, read over D-Bus (with the gateway's identity beside it, so
entries of both kinds match). Elsewhere (systemd-networkd, ifupdown, a
hand-made setup) the network is its default gateway's MAC address plus its DHCP domain, read
from what the kernel and the DHCP clients leave readable to root without asking any daemon:

* the gateway: the main table's IPv4 default route with the lowest metric (/proc/net/route,
  which lists the main table only, so a tunnel's policy-routing table never shows);
* its MAC: the neighbour table (/proc/net/arp); when it has no complete entry (nothing has
  talked to the gateway yet) one ARP request is sent on that link and the reply read from a
  packet socket, which no firewall in the IP layer (a lockdown) holds back;
* the domain: the systemd-networkd lease of that link (``DOMAINNAME=``), else dhclient's last
  lease for the link (``option domain-name``), else the ``domain`` line or first ``search``
  domain of /etc/resolv.conf. A resolv.conf Tunseal wrote (the ``file`` DNS backend, header
  "# Written by Tunseal") and the search domains of running tunnels are not the network's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import select
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.trusted import NetworkIdentity

__all__ = ["Sources", "current", "default_gateway", "dhcp_domain", "neighbour_mac",
           "nm_primary"]

log = logging.getLogger(__name__)

NM_BUS_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_TIMEOUT = 3.0
"""Seconds NetworkManager may take to answer (milliseconds, normally)."""
ARP_TIMEOUT = 1.0
"""How long to wait for the gateway's ARP reply."""
_RTF_UP, _RTF_GATEWAY = 0x1, 0x2
_ATF_COM = 0x2
_ETH_P_ARP = 0x0806
_TUNSEAL_HEADER = "# Written by Tunseal"


@dataclass(frozen=True, slots=True)
class Sources:
    """Where to read; the defaults are the system's (tests point them elsewhere)."""

    proc_route: Path = Path("/proc/net/route")
    proc_arp: Path = Path("/proc/net/arp")
    resolv_conf: Path = Path("/etc/resolv.conf")
    networkd_leases: Path = Path("/run/systemd/netif/leases")
    dhclient_dirs: tuple[Path, ...] = (Path("/var/lib/dhcp"), Path("/var/lib/dhclient"))
    use_nm: bool = True
    arp_probe: bool = True
    ignore_prefix: str = "ts-"
    """Our own TUN devices never carry the network's default route."""


SYSTEM = Sources()


def current(sources: Sources = SYSTEM, *, exclude_domains: Iterable[str] = ()) -> NetworkIdentity:
    """The network now; offline (``online`` False) when there is no default route."""
    nm = nm_primary() if sources.use_nm else None
    if nm is not None and not nm.online:
        return nm  # NetworkManager says: no network
    by_gateway = _by_gateway(sources, exclude_domains)
    if nm is None:
        return by_gateway
    # NetworkManager names the network; the gateway's identity too, so entries written on a
    # machine without NetworkManager (gateway:MAC@DOMAIN) still match here.
    return dataclasses.replace(by_gateway, nm_uuid=nm.nm_uuid, nm_name=nm.nm_name,
                               source=by_gateway.source or nm.source)


def _by_gateway(sources: Sources, exclude_domains: Iterable[str]) -> NetworkIdentity:
    gateway = default_gateway(sources)
    if gateway is None:
        return NetworkIdentity()
    ifname, gateway_ip = gateway
    mac = neighbour_mac(gateway_ip, ifname, sources)
    if not mac and sources.arp_probe:
        mac = arp_request(ifname, gateway_ip)
    if not mac:
        log.info("the default gateway %s on %s does not answer ARP: its network is unknown",
                 gateway_ip, ifname)
        return NetworkIdentity()
    domain, source = dhcp_domain(ifname, sources, exclude=exclude_domains)
    return NetworkIdentity(gateway_ip=gateway_ip, gateway_mac=mac, domain=domain,
                           interface=ifname, source=source)


# --- the gateway ---------------------------------------------------------------------------------


def default_gateway(sources: Sources = SYSTEM) -> tuple[str, str] | None:
    """(interface, gateway address) of the main table's IPv4 default route with the lowest
    metric, or None."""
    best: tuple[int, str, str] | None = None
    try:
        lines = sources.proc_route.read_text().splitlines()[1:]
    except OSError as e:
        log.warning("cannot read %s: %s", sources.proc_route, e)
        return None
    for line in lines:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest, gateway, flags, metric, mask = (int(f[1], 16), int(f[2], 16), int(f[3], 16),
                                                  int(f[6]), int(f[7], 16))
        except ValueError:
            continue
        if dest or mask or flags & (_RTF_UP | _RTF_GATEWAY) != _RTF_UP | _RTF_GATEWAY:
            continue
        if sources.ignore_prefix and f[0].startswith(sources.ignore_prefix):
            continue
        gw = str(ipaddress.IPv4Address(struct.pack("<I", gateway)))
        if best is None or metric < best[0]:
            best = (metric, f[0], gw)
    return None if best is None else (best[1], best[2])


def neighbour_mac(ip: str, ifname: str, sources: Sources = SYSTEM) -> str:
    """The complete neighbour entry's MAC of ``ip`` on ``ifname``, lower case; "" if none."""
    try:
        lines = sources.proc_arp.read_text().splitlines()[1:]
    except OSError:
        return ""
    for line in lines:
        f = line.split()
        if len(f) >= 6 and f[0] == ip and f[5] == ifname:
            try:
                complete = int(f[2], 16) & _ATF_COM
            except ValueError:
                continue
            if complete and f[3] != "00:00:00:00:00:00":
                return f[3].lower()
    return ""


def arp_request(ifname: str, ip: str, timeout: float = ARP_TIMEOUT) -> str:
    """Ask ``ip`` for its MAC with one ARP request on ``ifname``; its answer, or ""."""
    try:
        own_mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text()
                                .strip().replace(":", ""))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # connect() of UDP sends nothing: it only asks the kernel for the source address.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            probe.connect((ip, 9))
            own_ip = socket.inet_aton(probe.getsockname()[0])
        target = socket.inet_aton(ip)
        frame = (b"\xff" * 6 + own_mac + struct.pack("!H", _ETH_P_ARP)
                 + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + own_mac + own_ip
                 + b"\0" * 6 + target)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP)) as s:
            s.bind((ifname, _ETH_P_ARP))
            s.send(frame)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([s], [], [], left)
                if not ready:
                    break
                reply = s.recv(128)
                mac = _arp_reply_mac(reply, target)
                if mac:
                    return mac
    except (OSError, ValueError) as e:
        log.info("could not ask %s on %s for its MAC address: %s", ip, ifname, e)
    return ""


def _arp_reply_mac(frame: bytes, target: bytes) -> str:
    """The sender MAC of an Ethernet ARP reply from ``target``, else ""."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return ""
    _htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if ptype != 0x0800 or hlen != 6 or plen != 4 or op != 2 or frame[28:32] != target:
        return ""
    return ":".join(f"{b:02x}" for b in frame[22:28])


# --- the domain ---------------------------------------------------------------------------------


def dhcp_domain(ifname: str, sources: Sources = SYSTEM, *,
                exclude: Iterable[str] = ()) -> tuple[str, str]:
    """(domain, where it was read) of the network on ``ifname``; ("", "") if none is known."""
    skip = {d.removeprefix("~").lower().rstrip(".") for d in exclude}
    with contextlib.suppress(OSError):
        index = socket.if_nametoindex(ifname)
        lease = sources.networkd_leases / str(index)
        if lease.is_file():
            for line in lease.read_text(errors="replace").splitlines():
                if line.startswith("DOMAINNAME="):
                    return _clean(line.partition("=")[2]), str(lease)
            return "", str(lease)  # networkd has the lease: the network has no domain
    dhclient = _dhclient_domain(ifname, sources)
    if dhclient is not None:
        return dhclient
    return _resolv_conf_domain(sources.resolv_conf, skip)


def _dhclient_domain(ifname: str, sources: Sources) -> tuple[str, str] | None:
    """The domain of dhclient's newest lease on ``ifname`` (leases are appended in order)."""
    found: tuple[str, str] | None = None
    newest = -1.0
    for d in sources.dhclient_dirs:
        with contextlib.suppress(OSError):
            for path in d.iterdir():
                if not path.name.endswith(".leases") or path.stat().st_mtime < newest:
                    continue
                text = path.read_text(errors="replace")
                domain = None
                for block in text.split("lease {")[1:]:
                    if f'interface "{ifname}";' not in block:
                        continue
                    m = re.search(r'option domain-name "([^"]*)";', block)
                    domain = _clean(m[1]) if m else ""
                if domain is not None:
                    found, newest = (domain, str(path)), path.stat().st_mtime
    return found


def _resolv_conf_domain(path: Path, skip: set[str]) -> tuple[str, str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "", ""
    if text.startswith(_TUNSEAL_HEADER):
        return "", ""
    domain = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("domain", "search"):
            candidates = [_clean(w) for w in words[1:]]
            candidates = [c for c in candidates if c and c not in skip]
            if candidates:
                domain = candidates[0]  # the last domain/search line wins, as in the resolver
    return domain, str(path) if domain else ""


def _clean(domain: str) -> str:
    return domain.strip().split()[0].lower().rstrip(".") if domain.strip() else ""


# --- NetworkManager ---------------------------------------------------------------------------


def nm_primary() -> NetworkIdentity | None:
    """NetworkManager's primary connection (offline if it has none); None when NetworkManager
    is not on the system bus (or there is no system bus)."""
    try:
        from jeepney import DBusAddress, HeaderFields, MessageType, Properties
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection
    except ImportError:
        return None
    try:
        conn = open_dbus_connection(bus="SYSTEM", auth_timeout=NM_TIMEOUT)
    except (OSError, ConnectionError, TimeoutError, ValueError, KeyError):
        return None
    try:
        def get(path: str, interface: str, name: str, signature: str) -> str:
            """The property, which must be a variant of that type (a string or a path)."""
            addr = DBusAddress(path, bus_name=NM_BUS_NAME, interface=interface)
            reply = conn.send_and_get_reply(Properties(addr).get(name), timeout=NM_TIMEOUT)
            if reply.header.message_type == MessageType.error:
                raise LookupError(f"{name}: {reply.header.fields.get(HeaderFields.error_name)}")
            body = reply.body
            if (reply.header.fields.get(HeaderFields.signature) != "v" or len(body) != 1
                    or body[0][0] != signature or not isinstance(body[0][1], str)):
                raise LookupError(f"{name} is not a variant of type {signature!r}")
            return body[0][1]

        reply = conn.send_and_get_reply(message_bus.NameHasOwner(NM_BUS_NAME),
                                        timeout=NM_TIMEOUT)
        if not reply.body or not reply.body[0]:
            return None
        primary = get(NM_PATH, "org.freedesktop.NetworkManager", "PrimaryConnection", "o")
        if primary == "/":
            return NetworkIdentity()
        active = "org.freedesktop.NetworkManager.Connection.Active"
        uuid = get(primary, active, "Uuid", "s")
        name = get(primary, active, "Id", "s")
        if not uuid:
            raise LookupError(f"{primary} has an empty Uuid")
        return NetworkIdentity(nm_uuid=uuid.lower(), nm_name=name, source="NetworkManager")
    except (OSError, ConnectionError, TimeoutError, LookupError) as e:
        log.info("NetworkManager did not say which network this is (%s); using the gateway", e)
        return None
    finally:
        conn.close()


def describe(identity: NetworkIdentity) -> str:
    """One line for a log: the label, and where the domain came from."""
    if not identity.online or identity.nm_uuid:
        return identity.label
    return identity.label + (f" (from {identity.source})" if identity.source else "")


def env_sources() -> Sources:
    """The system's sources; TUNSEAL_NO_NM=1 leaves NetworkManager out (a lab namespace on a
    machine whose NetworkManager manages other links)."""
    return Sources(use_nm=os.environ.get("TUNSEAL_NO_NM", "") != "1")
