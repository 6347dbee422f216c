"""Looking up a peer's host name (an endpoint, a join's gateway), also under a lockdown.

Without a lockdown the system's resolver does it (``getaddrinfo``: /etc/hosts, then whatever
nsswitch says). Under a lockdown that resolver is cut off: systemd-resolved's own queries to
the network carry no mark, and the table drops DNS that does not go to the tunnel's servers
(docs/LOCKDOWN.md), which is right for everything else but leaves a kill-switched laptop
unable to find its own VPN server after a reboot or a network change, and a full tunnel that
stopped answering unable to follow its server's name to a new address. So when the lockdown
table is in the kernel, the helper asks the network's resolvers itself: /etc/hosts first, then
an A or AAAA query from a socket carrying the helper's mark, which the table lets through on
port 53 (and nothing else's). The only names asked that way are the ones the helper must
reach: its peers' endpoints and a join's gateway.

The resolvers are the system's upstream ones: those /etc/resolv.conf names, or where it
names only a local stub (systemd-resolved's 127.0.0.53), resolved's list of every link's
servers (/run/systemd/resolve/resolv.conf), then any the caller knows (``known``: the ones a
tunnel's DNS settings replaced in the file). Loopback addresses in the files are skipped, and
so are the tunnel's own servers (``avoid``), which only a working tunnel reaches. A link-local
IPv6 server keeps its zone (``fe80::1%wlan0``, or resolved's ``%3``), which names the link the
query leaves by (many home routers announce themselves as the DNS server that way).

A tunnel that has put its DNS servers in place looks its endpoint up again this way too
(``direct``), lockdown or not: by then the system's resolver asks the tunnel's servers,
through the tunnel that has stopped answering.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from core.errors import TunsealError
from helper import dns as dnsconfig
from helper import lockdown
from helper.transport import mark_socket

log = logging.getLogger(__name__)

Address = tuple[str, int]

QUERY_TIMEOUT = 2.0
"""Per query and server: a resolver on the local network answers in milliseconds."""
RESOLVED_CONF = Path("/run/systemd/resolve/resolv.conf")
RESOLV_CONF = Path("/etc/resolv.conf")
HOSTS = Path("/etc/hosts")


class HostLookupError(TunsealError):
    """A host name could not be turned into an address; ``reason`` says why (the message is
    "cannot resolve HOST: reason")."""

    def __init__(self, host: str, reason: str):
        super().__init__(f"cannot resolve {host!r}: {reason}")
        self.reason = reason


def resolve(host: str, port: int, family: int = 0, *, avoid: Iterable[str] = (),
            known: Iterable[str] = (), direct: bool = False) -> Address:
    """The first address of ``host`` (``family``: 0 for either, or AF_INET / AF_INET6), with
    ``port``. Under a lockdown, or ``direct``, through marked queries (see the module's text),
    else through the system's resolver. An address literal is its own answer: it needs no
    resolver, and under a lockdown asking one for it would only fail."""
    literal = address_literal(host)
    if literal is not None:
        if not _family_ok(literal, family):
            have, want = ("IPv6", "IPv4") if literal.version == 6 else ("IPv4", "IPv6")
            raise HostLookupError(host, f"it is an {have} address and this tunnel's socket "
                                  f"reaches {want} only")
        return (str(literal), port)
    if not direct and not lockdown.present():
        return _system(host, port, family)
    addrs = hosts_file(host, family) or _marked(host, family, avoid, known)
    return (addrs[0], port)


def address_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address if it is one (brackets allowed), else None: a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _system(host: str, port: int, family: int) -> Address:
    try:
        infos = socket.getaddrinfo(host, port, family, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise HostLookupError(host, str(e.strerror)) from None
    _fam, _, _, _, sa = infos[0]
    return (str(sa[0]), int(sa[1]))


def hosts_file(host: str, family: int = 0, path: Path | None = None) -> list[str]:
    """``host``'s addresses in /etc/hosts (``family`` as in :func:`resolve`), in file order."""
    path = HOSTS if path is None else path
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    wanted = host.rstrip(".").lower()
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or wanted not in (f.lower() for f in fields[1:]):
            continue
        try:
            addr = ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        if _family_ok(addr, family):
            out.append(str(addr))
    return out


def upstream_servers(avoid: Iterable[str] = (),
                     paths: tuple[Path, ...] | None = None) -> list[str]:
    """The network's DNS servers, from the first of ``paths`` that names any, loopback (a local
    stub such as resolved's 127.0.0.53) and ``avoid`` left out."""
    avoided = set(avoid)
    for path in (RESOLV_CONF, RESOLVED_CONF) if paths is None else paths:
        found: list[str] = []
        for named in dnsconfig.resolv_conf_state(path)[0]:
            try:
                addr = ipaddress.ip_address(named)
            except ValueError:
                continue
            if addr.is_loopback or str(addr) in avoided or str(addr) in found:
                continue
            found.append(str(addr))
        if found:
            return found
    return []


def _marked(host: str, family: int, avoid: Iterable[str], known: Iterable[str]) -> list[str]:
    avoided = set(avoid)
    servers = upstream_servers(avoided)
    servers += [k for k in known if k not in avoided and k not in servers]
    if not servers:
        raise HostLookupError(
            host, "the system's resolver is cut off (a lockdown, or DNS only through the "
            "tunnel) and no other DNS "
            "server of this network is known (none in /etc/resolv.conf or "
            "/run/systemd/resolve/resolv.conf); give the endpoint as an address, or add it "
            "to /etc/hosts")
    types = {0: (dns.rdatatype.A, dns.rdatatype.AAAA), socket.AF_INET: (dns.rdatatype.A,),
             socket.AF_INET6: (dns.rdatatype.AAAA,)}[family]
    problems: list[str] = []
    for server in servers:
        for rdtype in types:
            try:
                addrs = query(host, rdtype, server)
            except HostLookupError as e:
                problems.append(e.reason)
                break  # this server is no use: the next one
            if addrs:
                log.info("looked up %s directly through %s (past any lockdown and the "
                         "tunnel's DNS): %s", host, server, ", ".join(addrs))
                return addrs
        else:
            problems.append(f"{server} knows no address for {host!r}")
    raise HostLookupError(host, "the system's resolver is cut off (a lockdown, or DNS only "
                          "through the tunnel), and asking the network's DNS servers directly "
                          "failed: " + "; ".join(problems))


def query(host: str, rdtype: dns.rdatatype.RdataType, server: str,
          timeout: float = QUERY_TIMEOUT, port: int = 53) -> list[str]:
    """``host``'s records of ``rdtype`` (A or AAAA) from ``server``, asked from marked sockets
    (UDP, TCP when the answer is truncated). [] when the name has none of that type."""
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    q = dns.message.make_query(host, rdtype)
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as sock:
            mark_socket(sock)
            sock.setblocking(False)
            r = dns.query.udp(q, server, timeout=timeout, port=port, sock=sock)
        if r.flags & dns.flags.TC:
            with socket.socket(fam, socket.SOCK_STREAM) as sock:
                mark_socket(sock)
                sock.settimeout(timeout)
                # getaddrinfo's address keeps a link-local server's zone (a (host, port) pair
                # would connect with scope 0: EINVAL).
                sock.connect(socket.getaddrinfo(server, port, fam, socket.SOCK_STREAM)[0][4])
                sock.setblocking(False)
                r = dns.query.tcp(q, server, timeout=timeout, port=port, sock=sock)
    except dns.exception.Timeout:
        raise HostLookupError(host, f"{server} did not answer in {timeout:.0f} s") from None
    except (OSError, dns.exception.DNSException) as e:
        raise HostLookupError(host, f"{server}: {e}") from None
    rcode = r.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        raise HostLookupError(host, f"{server}: no such name")
    if rcode != dns.rcode.NOERROR:
        raise HostLookupError(host, f"{server} answered {dns.rcode.to_text(rcode)}")
    # The answer section follows any CNAME chain; only the records of the type asked count.
    found = [rd.to_text() for rrset in r.answer if rrset.rdtype == rdtype for rd in rrset]
    # The LAN's resolver is not trusted: under a lockdown the address becomes an accept rule,
    # and no peer lives at an unspecified or multicast address (nor, from DNS, at loopback).
    usable = [a for a in found if _peer_address(a)]
    if len(usable) < len(found):
        log.warning("%s answered %s for %s; addresses no peer can have are ignored", server,
                    ", ".join(sorted(set(found) - set(usable))), host)
    return usable


def _peer_address(text: str) -> bool:
    addr = ipaddress.ip_address(text)
    return not (addr.is_unspecified or addr.is_multicast or addr.is_loopback
                or (addr.version == 4 and text == "255.255.255.255"))


def _family_ok(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, family: int) -> bool:
    return family == 0 or (addr.version == 4) == (family == socket.AF_INET)
