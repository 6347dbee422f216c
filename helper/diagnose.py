"""The helper's half of ``tunseal doctor``: the checks that need root or the helper's own view of
the machine, served over the ``diagnose`` operation (docs/DOCTOR.md).

Each check returns a :class:`core.doctor.Check`. The endpoint check is a real handshake: a
one-shot initiation built from the profile's keys, sent from a fresh socket (marked like the
tunnel's own, so a full tunnel or lockdown lets it out), answered or not within a few seconds;
an ICMP error queued on the socket (IP_RECVERR) names the cause when there is one. Nothing here
changes the system; the only state written is ``<state_dir>/doctor.json``, the newest handshake
time the doctor saw answered, which the clock check compares the wall clock against.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import logging
import os
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from core import format, wire
from core.constants import RAW_IP_PROTOCOL, PacketType
from core.doctor import FAIL, OK, SKIP, WARN, Check
from core.errors import HandshakeError, TunsealError, WireError
from core.handshake import Identity, Initiator, Suite, open_cookie_reply
from core.profile import Profile, ProfileSecrets
from core.status import TunnelStatus
from helper import dns
from helper.pathfeedback import outer_overhead
from helper.transport import mark_socket
from helper.tunnelspec import identity_for, resolve

log = logging.getLogger(__name__)

ATTEMPTS: Final = 3
"""Initiations the endpoint check sends (each a fresh one, as a retrying tunnel would)."""
ATTEMPT_WAIT: Final = 1.0
"""Seconds to wait for an answer to each."""
RECENT_HANDSHAKE: Final = 180.0
"""A running tunnel whose last handshake is younger than this is not probed: it is answering,
and a probe would only make the gateway replace the session it is about to confirm."""
DNS_WAIT: Final = 1.5
MAX_PROFILES: Final = 8
"""Profiles diagnosed when none is named (each may take ATTEMPTS * ATTEMPT_WAIT)."""
VPN_KINDS: Final = frozenset({"tun", "wireguard", "tap", "ppp", "ipip", "gre", "vti", "xfrm"})
STATE_FILE: Final = "doctor.json"

_IP_RECVERR = 11
_IPV6_RECVERR = 25
_IP_MTU_DISCOVER, _IP_PMTUDISC_DO, _IP_MTU = 10, 2, 14
_IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO, _IPV6_MTU = 23, 2, 24
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err

_state_dir: Path | None = None


def configure(state_dir: Path) -> None:
    """Where the clock check keeps what it saw (helper/main.py calls this once)."""
    global _state_dir
    _state_dir = state_dir


class Keys(Protocol):
    def get(self, ref: str) -> bytes | None: ...


class EngineView(Protocol):
    def running(self) -> list[str]: ...
    def status(self, name: str) -> TunnelStatus: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A profile to diagnose and what the keyring holds for it (None: the keyring failed)."""

    profile: Profile
    secrets: ProfileSecrets | None
    keyring_error: str = ""


def for_service(profiles: Any, keys: Keys, engine: EngineView,
                name: str | None) -> list[dict[str, str]]:
    """:func:`diagnose` for the profile ``name`` (or every profile with an endpoint), reading
    their keys from ``keys``; raises RequestError ``not_found`` for an unknown name."""
    from core.ipc import RequestError
    from helper.profilestore import ProfileNotFound

    if name is not None:
        try:
            chosen = [profiles.get(name)]
        except ProfileNotFound:
            raise RequestError(f"there is no profile {name!r}", code="not_found") from None
    else:
        chosen = sorted((p for p in profiles.list() if p.endpoint), key=lambda p: p.name)
    targets, error = [], ""
    for p in chosen:
        try:
            secrets = ProfileSecrets(keys.get(p.private_key_ref) if p.private_key_ref else None,
                                     keys.get(p.psk_ref) if p.psk_ref else None)
            targets.append(Target(p, secrets))
        except TunsealError as e:
            error = str(e)
            targets.append(Target(p, None, str(e)))
    if not chosen:
        try:
            keys.get("profile:doctor:private")
        except TunsealError as e:
            error = str(e)
    return diagnose(targets, engine, keyring_error=error, keyring_backend=_backend(keys))


def _backend(keys: Keys) -> str:
    text = repr(keys)
    return text.split("backend=", 1)[1].rstrip(")").strip("'") if "backend=" in text else ""


def diagnose(targets: list[Target], engine: EngineView, *, keyring_error: str = "",
             keyring_backend: str = "") -> list[dict[str, str]]:
    """Every helper-side check, as :meth:`Check.to_dict` dicts in display order."""
    running = _running(engine)
    statuses = {name: _status(engine, name) for name in running}
    ours = {st.interface for st in statuses.values() if st.interface}
    checks = [keyring_check(targets, keyring_error, keyring_backend)]
    for t in targets[:MAX_PROFILES]:
        st = statuses.get(t.profile.name)
        checks.append(_guarded("endpoint", "Endpoint", t.profile.name,
                               lambda t=t, st=st: endpoint_check(t, st)))  # type: ignore[misc]
        checks.append(_guarded("routes", "Routes", t.profile.name,
                               lambda t=t, st=st: routes_check(t.profile, st)))  # type: ignore[misc]
        checks.append(_guarded("mtu", "Path MTU", t.profile.name,
                               lambda t=t, st=st: mtu_check(t.profile, st)))  # type: ignore[misc]
    if not targets:
        checks.append(Check("endpoint", "Endpoint", SKIP, "no profile with an endpoint to "
                            "check", "import one: 'tunseal import FILE'"))
    checks.append(_guarded("dns", "DNS", "", lambda: dns_check(list(statuses.values()))))
    checks.append(_guarded("default_route", "Default route", "",
                           lambda: default_route_check(ours, [t.profile for t in targets])))
    full4 = {t.profile.name: t.profile.full_families == (4,) for t in targets}
    checks.append(_guarded("ipv6", "IPv6", "",
                           lambda: ipv6_check(list(statuses.values()), full4)))
    checks.append(_guarded("clock", "Clock", "", clock_check))
    checks.append(datapath_check())
    return [c.to_dict() for c in checks]


def _guarded(cid: str, title: str, profile: str, fn: Callable[[], Check]) -> Check:
    """A check that raised is a failed check saying so, never a failed diagnosis."""
    try:
        return fn()
    except (OSError, TunsealError) as e:
        log.warning("doctor: check %s failed to run: %s", cid, e)
        return Check(cid, title, FAIL, f"the check itself failed: {e}",
                     "run 'tunseal doctor' again; the helper's log has details", profile)


def _running(engine: EngineView) -> list[str]:
    try:
        return engine.running()
    except TunsealError:
        return []


def _status(engine: EngineView, name: str) -> TunnelStatus:
    try:
        return engine.status(name)
    except TunsealError as e:
        return TunnelStatus(name=name, state="error", error=str(e))


# --- keyring ------------------------------------------------------------------------------------


def keyring_check(targets: list[Target], error: str, backend: str) -> Check:
    title = "Keyring"
    if error:
        return Check("keyring", title, FAIL, f"the helper cannot use its Secret Service: {error}",
                     "restart the helper ('sudo systemctl restart tunseal-helper'); its log says "
                     "which Secret Service it looked for (docs/KEYRING.md)")
    missing = []
    for t in targets:
        p, s = t.profile, t.secrets
        if s is None:
            continue
        if p.mode == "ephemeral" and s.private_key is None:
            missing.append((p.name, "private key", f"tunseal genkey {p.name}"))
        if (p.mode in ("psk", "rotating") or p.psk_ref) and s.psk is None:
            missing.append((p.name, "pre-shared key", "import the profile file your "
                            "administrator sent ('tunseal import --replace FILE')"))
    where = f" ({backend})" if backend else ""
    if missing:
        found = "; ".join(f"profile {n!r} has no {what} in the keyring" for n, what, _ in missing)
        todo = "; ".join(f"{n}: {how}" for n, _, how in missing)
        return Check("keyring", title, FAIL, f"the Secret Service{where} answers, but {found}",
                     todo)
    return Check("keyring", title, OK, f"the Secret Service{where} answers and holds every key "
                 "the profiles need")


# --- endpoint: one real handshake ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    answered: bool
    rtt_ms: float = 0.0
    cookie: bool = False
    """The gateway is under load and asked for a cookie first (and then answered)."""
    icmp: str = ""
    """An ICMP error the path sent back, in words ("" if none)."""
    sent: int = 0
    error: str = ""
    """The handshake failed locally (the answer did not verify, a send failed)."""


def endpoint_check(t: Target, st: TunnelStatus | None) -> Check:
    p = t.profile
    title = "Endpoint"
    if not p.endpoint:
        return Check("endpoint", title, SKIP, "this profile listens (it has no endpoint to "
                     "reach)", profile=p.name)
    if p.mode == "plain":
        return Check("endpoint", title, WARN, f"mode plain has no handshake, so whether "
                     f"{p.endpoint} answers cannot be tested", "use an encrypted mode",
                     profile=p.name)
    if st is not None and st.state == "up" and st.last_handshake is not None \
            and time.time() - st.last_handshake < RECENT_HANDSHAKE:
        _remember_handshake(st.last_handshake)
        return Check("endpoint", title, OK, f"{p.endpoint} answers: the tunnel is up, last "
                     f"handshake {time.time() - st.last_handshake:.0f} s ago", profile=p.name)
    if t.secrets is None:
        return Check("endpoint", title, SKIP, "not tried: the keyring cannot be read",
                     profile=p.name)
    try:
        ident = identity_for(p, t.secrets)
    except TunsealError as e:
        return Check("endpoint", title, FAIL, f"no handshake can be made: {e}",
                     str(e).split("run ", 1)[-1] if "run " in str(e) else "", p.name)
    try:
        addr = resolve(p.name, p.endpoint_host, p.endpoint_port)
    except TunsealError as e:
        return Check("endpoint", title, FAIL, str(e), "check the name in the profile and this "
                     "machine's DNS (the DNS check below)", p.name)
    suite = Suite(p.mode, p.cipher, ident.psk is not None or p.mode in ("psk", "rotating"))
    result = probe(suite, ident, p.device_id, (addr[0], int(addr[1])), p.transport)
    where = f"{addr[0]}:{addr[1]}" if p.transport == "udp" else f"{addr[0]} (raw IP)"
    named = f"{p.endpoint} ({where})" if p.endpoint_host != addr[0] else where
    if result.answered:
        _remember_handshake(time.time())
        load = "; it asked for a cookie first (under load)" if result.cookie else ""
        return Check("endpoint", title, OK, f"{named} completed a handshake in "
                     f"{result.rtt_ms:.0f} ms{load}", profile=p.name)
    if result.error:
        return Check("endpoint", title, FAIL, f"{named} answered, but {result.error}",
                     "check the profile's keys, mode and cipher against the gateway's "
                     "('tunseal show " + p.name + "')", p.name)
    if result.icmp:
        return Check("endpoint", title, FAIL, f"{named}: {result.icmp}", _icmp_todo(result.icmp),
                     p.name)
    return Check(
        "endpoint", title, FAIL,
        f"no answer from {named} to {result.sent} handshake initiations in "
        f"{result.sent * ATTEMPT_WAIT:.0f} s: the packets are dropped on the way (a firewall), "
        "or the gateway is down, or it does not know this end's key",
        "check that the gateway runs and that a firewall on the way lets "
        f"{p.transport.upper() if p.transport == 'udp' else 'IP protocol 253'} to {where} "
        "through; give the gateway's administrator this end's public key ('tunseal pubkey "
        f"{p.name}'); see the clock check below", p.name)


def _icmp_todo(icmp: str) -> str:
    if "port" in icmp:
        return "the host is there but no gateway listens on that port: check the port in the " \
               "profile, and that the gateway runs"
    if "prohibited" in icmp:
        return "a firewall on the way rejects the packets: ask its administrator"
    return "check this machine's network connection and routes ('ip route get ADDRESS')"


def probe(suite: Suite, ident: Identity, device_id: int, addr: tuple[str, int],
          transport: str, *, attempts: int = ATTEMPTS, wait: float = ATTEMPT_WAIT) -> ProbeResult:
    """Send up to ``attempts`` initiations to ``addr`` and wait for a response to one."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    raw = transport == "raw"
    sock = socket.socket(family, socket.SOCK_RAW if raw else socket.SOCK_DGRAM,
                         RAW_IP_PROTOCOL if raw else 0)
    try:
        mark_socket(sock)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        sock.connect((addr[0], 0 if raw else addr[1]))
        cookie: bytes | None = None
        got_cookie = False
        sent = 0
        while sent < attempts:
            init = Initiator(suite, ident, device_id=device_id,
                             local_index=random.getrandbits(32), now=time.time(), cookie=cookie)
            t0 = time.monotonic()
            try:
                sock.send(init.packet)
            except OSError as e:
                icmp = _error_queue(sock) or _errno_words(e)
                return ProbeResult(False, icmp=icmp, sent=sent)
            sent += 1
            outcome = _await_answer(sock, init, ident, family, raw, t0 + wait)
            if isinstance(outcome, bytes):  # a cookie: send again at once with it
                cookie, got_cookie = outcome, True
                continue
            if outcome is not None:
                return outcome if outcome.icmp or outcome.error else ProbeResult(
                    True, rtt_ms=(time.monotonic() - t0) * 1000, cookie=got_cookie, sent=sent)
        return ProbeResult(False, sent=sent)
    finally:
        sock.close()


def _await_answer(sock: socket.socket, init: Initiator, ident: Identity, family: int, raw: bool,
                  deadline: float) -> ProbeResult | bytes | None:
    """ProbeResult(answered) / an ICMP or verification failure; a cookie (bytes); or None when
    nothing arrived by ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, errored = select.select([sock], [], [sock], left)
        if not readable and not errored:
            return None
        try:
            data = sock.recv(65535)
        except OSError as e:
            return ProbeResult(False, icmp=_error_queue(sock) or _errno_words(e))
        if raw and family == socket.AF_INET and data and data[0] >> 4 == 4:
            data = data[(data[0] & 0x0F) * 4:]
        try:
            kind = wire.parse(data).type
        except WireError:
            continue  # not ours (a raw socket sees every protocol-253 packet)
        try:
            if kind == PacketType.COOKIE:
                return open_cookie_reply(data, ident.cookie_key_for(ident.peer_public), init)
            if kind == PacketType.HANDSHAKE_RESP:
                init.consume_response(data)
                return ProbeResult(True)
        except (HandshakeError, WireError, TunsealError) as e:
            return ProbeResult(False, error=f"its answer did not verify: {e}")


def _errno_words(e: OSError) -> str:
    return {
        errno.ECONNREFUSED: "the host answered 'port unreachable': nothing listens on that port",
        errno.EHOSTUNREACH: "host unreachable: no route to it, or it does not answer ARP",
        errno.ENETUNREACH: "network unreachable: this machine has no route to it",
        errno.EACCES: "the packets are refused by a firewall (administratively prohibited)",
        errno.EPERM: "a local firewall refuses the packets",
        errno.EMSGSIZE: "the initiation is larger than the path MTU",
    }.get(e.errno or 0, f"sending failed: {e.strerror or e}")


def _error_queue(sock: socket.socket) -> str:
    """The ICMP error the kernel queued for this socket, in words ("" if none)."""
    try:
        _data, ancdata, _flags, _addr = sock.recvmsg(1024, 1024, socket.MSG_ERRQUEUE)
    except OSError:
        return ""
    for level, _ctype, cdata in ancdata:
        if level not in (socket.IPPROTO_IP, socket.IPPROTO_IPV6):
            continue
        if len(cdata) < _EXTENDED_ERR.size:
            continue
        err, origin, icmp_type, code, _pad, info, _data2 = _EXTENDED_ERR.unpack_from(cdata)
        offender = _offender(cdata[_EXTENDED_ERR.size:])
        by = f" (reported by {offender})" if offender else ""
        if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
            return _errno_words(OSError(err, os.strerror(err)))
        if origin == _SO_EE_ORIGIN_ICMP and icmp_type == 3 and code == 4:
            return f"the path carries at most {info} bytes (fragmentation needed){by}"
        if (origin == _SO_EE_ORIGIN_ICMP and icmp_type == 3 and code in (9, 10, 13)) or \
                (origin == _SO_EE_ORIGIN_ICMP6 and icmp_type == 1 and code == 1):
            return f"the packets are rejected by a firewall (administratively prohibited){by}"
        return _errno_words(OSError(err, os.strerror(err))) + by
    return ""


def _offender(sa: bytes) -> str:
    if len(sa) >= 8 and struct.unpack_from("=H", sa)[0] == socket.AF_INET:
        addr = socket.inet_ntop(socket.AF_INET, sa[4:8])
        return "" if addr == "0.0.0.0" else addr
    if len(sa) >= 24 and struct.unpack_from("=H", sa)[0] == socket.AF_INET6:
        addr = socket.inet_ntop(socket.AF_INET6, sa[8:24])
        return "" if addr == "::" else addr
    return ""


# --- routes -------------------------------------------------------------------------------------


def _ipr() -> Any:
    from pyroute2 import IPRoute  # imported late: a diagnosis without netlink still reports

    return IPRoute()


def _links(ipr: Any) -> dict[int, tuple[str, str]]:
    """ifindex -> (name, kind) of every link."""
    out = {}
    for link in ipr.get_links():
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
        out[link["index"]] = (link.get_attr("IFLA_IFNAME") or str(link["index"]), kind or "")
    return out


def _main_routes(ipr: Any, family: int) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                       int]]:
    """(prefix, oif) of every unicast route in the main table."""
    out = []
    for r in ipr.get_routes(family=family, table=254):
        if r["type"] != 1:  # RTN_UNICAST
            continue
        oif = r.get_attr("RTA_OIF")
        if oif is None:
            mp = r.get_attr("RTA_MULTIPATH")
            oif = mp[0]["oif"] if mp else None
        dst = r.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
        with contextlib.suppress(ValueError):
            out.append((ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False), oif or 0))
    return out


def routes_check(p: Profile, st: TunnelStatus | None) -> Check:
    """Another interface holding a route for one of the profile's networks (the same prefix,
    or a more specific one inside it) takes that traffic away from the tunnel."""
    title = "Routes"
    ours = st.interface if st is not None else ""
    nets = []
    for a in p.allowed_ips:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(a, strict=False))
    if not nets:
        return Check("routes", title, OK, "the profile routes nothing into the tunnel",
                     profile=p.name)
    conflicts, shadowed = [], []
    with _ipr() as ipr:
        links = _links(ipr)
        for family in (socket.AF_INET, socket.AF_INET6):
            for prefix, oif in _main_routes(ipr, family):
                name = links.get(oif, (str(oif), ""))[0]
                if name == ours:
                    continue
                for net in nets:
                    if net.version != prefix.version or net.prefixlen == 0:
                        continue  # a full tunnel overrides the default route by policy
                    if prefix == net:
                        conflicts.append(f"{prefix} via {name}")
                    elif prefix.prefixlen > net.prefixlen and prefix.subnet_of(net):  # type: ignore[arg-type]
                        shadowed.append(f"{prefix} via {name} (inside {net})")
    if conflicts or shadowed:
        found = "another interface routes " + ", ".join(conflicts + shadowed)
        return Check("routes", title, FAIL if conflicts else WARN, found,
                     "traffic for those networks does not (all) go through the tunnel: remove "
                     "the other route ('ip route del PREFIX dev IFACE'), or take that network "
                     "out of the profile's allowed_ips", p.name)
    where = f" (the tunnel is {ours})" if ours else ""
    return Check("routes", title, OK, f"no other interface routes {', '.join(map(str, nets))}"
                 f"{where}", profile=p.name)


def default_route_check(ours: set[str], profiles: Iterable[Profile]) -> Check:
    """A default route through a tun/wg/ppp interface that is not one of ours: another VPN."""
    title = "Default route"
    others = []
    with _ipr() as ipr:
        links = _links(ipr)
        for family in (socket.AF_INET, socket.AF_INET6):
            for prefix, oif in _main_routes(ipr, family):
                name, kind = links.get(oif, ("", ""))
                if prefix.prefixlen == 0 and name not in ours and (
                        kind in VPN_KINDS or name.startswith(("tun", "wg", "ppp", "tap"))):
                    others.append(f"{name} ({kind or 'tunnel'}, IPv{prefix.version})")
    if others:
        full = [p.name for p in profiles if p.full_families]
        how = ("disconnect the other VPN before connecting " + ", ".join(full)) if full else \
            "your traffic beyond the tunnel's networks goes through the other VPN; disconnect " \
            "it if that is not what you want"
        return Check("default_route", title, FAIL if full else WARN,
                     f"another VPN holds the default route: {', '.join(sorted(set(others)))}", how)
    return Check("default_route", title, OK, "no other VPN holds the default route")


def mtu_check(p: Profile, st: TunnelStatus | None) -> Check:
    """What the path to the endpoint carries (the kernel's path MTU, learnt from ICMP), against
    the tunnel MTU the profile asks for."""
    title = "Path MTU"
    if not p.endpoint:
        return Check("mtu", title, SKIP, "no endpoint", profile=p.name)
    try:
        addr = resolve(p.name, p.endpoint_host, p.endpoint_port)
    except TunsealError:
        return Check("mtu", title, SKIP, "the endpoint's name does not resolve", profile=p.name)
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        mark_socket(s)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
        try:
            s.connect((addr[0], addr[1] or 9))
            path = s.getsockopt(socket.IPPROTO_IP if family == socket.AF_INET
                                else socket.IPPROTO_IPV6,
                                _IP_MTU if family == socket.AF_INET else _IPV6_MTU)
        except OSError as e:
            return Check("mtu", title, FAIL, f"no route to {addr[0]}: {e.strerror or e}",
                         "check this machine's network connection", p.name)
    overhead = outer_overhead(family == socket.AF_INET, p.transport, p.mode)
    fits = path - overhead
    current = f"; the running tunnel uses {st.mtu}" if st is not None and st.mtu else ""
    if p.mtu > fits:
        return Check("mtu", title, WARN, f"the path to {addr[0]} carries {path} bytes, so the "
                     f"tunnel can carry {fits}, but the profile asks for MTU {p.mtu}{current}",
                     f"set interface.mtu = {fits} in the profile (the tunnel lowers it by itself "
                     "when the path says so, but only after the first lost packets)", p.name)
    return Check("mtu", title, OK, f"the path to {addr[0]} carries {path} bytes; the tunnel MTU "
                 f"{p.mtu} fits ({overhead} bytes of overhead){current}", profile=p.name)


# --- DNS ----------------------------------------------------------------------------------------


def dns_check(statuses: list[TunnelStatus]) -> Check:
    """The backend, the servers in effect, and whether they answer a query."""
    title = "DNS"
    backend = dns.detect_backend().value
    servers, _search = dns.resolv_conf_state(dns.RESOLV_CONF)
    tunnel = [f"{st.name}: {st.dns.summary()}" for st in statuses if st.dns is not None]
    in_effect = f"; tunnels: {'; '.join(tunnel)}" if tunnel else ""
    if not servers:
        return Check("dns", title, FAIL, f"backend {backend}: {dns.RESOLV_CONF} names no "
                     f"nameserver{in_effect}", "names cannot be looked up: check the network "
                     "connection's DNS settings (or /etc/resolv.conf)")
    dead = [s for s in servers[:3] if not _dns_answers(s)]
    shown = ", ".join(servers)
    if dead and len(dead) == len(servers[:3]):
        return Check("dns", title, FAIL, f"backend {backend}, nameservers {shown}: none answers "
                     f"a query within {DNS_WAIT} s{in_effect}",
                     "names cannot be looked up: check the network connection, or set a working "
                     "DNS server (a tunnel's dns servers answer only while it is up)")
    if dead:
        return Check("dns", title, WARN, f"backend {backend}, nameservers {shown}: "
                     f"{', '.join(dead)} does not answer{in_effect}",
                     "look-ups are slow while the resolver waits for it: remove it")
    return Check("dns", title, OK, f"backend {backend}, nameservers {shown} answer{in_effect}")


def _dns_answers(server: str) -> bool:
    """Whether ``server`` answers a query for the root's NS records (any answer counts, even
    a refusal: the server is there)."""
    try:
        ip = ipaddress.ip_address(server.split("%")[0])
    except ValueError:
        return False
    qid = random.getrandbits(16)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(DNS_WAIT)
        try:
            s.connect((str(ip), 53))
            s.send(query)
            deadline = time.monotonic() + DNS_WAIT
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                data = s.recv(4096)
                if len(data) >= 2 and struct.unpack_from("!H", data)[0] == qid:
                    return True
        except OSError:
            return False
    return False


# --- IPv6 ---------------------------------------------------------------------------------------


def ipv6_check(statuses: list[TunnelStatus],
               full_ipv4: dict[str, bool] | None = None) -> Check:
    """IPv6 on or off; blocked beside, or carried by, a tunnel; or leaking beside a tunnel that
    carries all IPv4 (``full_ipv4``: profile name -> it routes 0.0.0.0/0 but not ::/0)."""
    full_ipv4 = full_ipv4 or {}
    title = "IPv6"
    disabled = _read("/proc/sys/net/ipv6/conf/all/disable_ipv6").strip() == "1"
    if not os.path.exists("/proc/net/if_inet6") or disabled:
        return Check("ipv6", title, OK, "IPv6 is off on this machine: nothing can leak over it")
    with _ipr() as ipr:
        default6 = [r for r in ipr.get_routes(family=socket.AF_INET6, table=254)
                    if r["dst_len"] == 0 and r["type"] == 1]
        globals6 = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET6)
                    if a["scope"] == 0]
    blocked = [st.name for st in statuses if st.ipv6 == "blocked"]
    carried = [st.name for st in statuses if st.ipv6 == "tunnel"]
    if blocked:
        return Check("ipv6", title, OK, f"IPv6 is blocked beside {', '.join(blocked)} (a full "
                     "IPv4 tunnel without IPv6): none leaves outside the tunnel")
    if carried:
        return Check("ipv6", title, OK, f"IPv6 goes through {', '.join(carried)}")
    leaking = [st.name for st in statuses
               if st.state == "up" and full_ipv4.get(st.name) and st.ipv6 != "blocked"]
    if leaking and default6:
        return Check("ipv6", title, WARN, f"{', '.join(leaking)} carries all IPv4 but IPv6 has "
                     "its own default route beside it: IPv6 traffic does not go through the "
                     "tunnel", "add ::/0 to the profile's allowed_ips, or turn on lockdown "
                     "('tunseal lockdown on')")
    state = (f"{len(globals6)} global address(es)" if globals6 else "no global address") + \
        (", a default route" if default6 else ", no default route")
    return Check("ipv6", title, OK, f"IPv6 is on: {state}")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# --- clock --------------------------------------------------------------------------------------


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("constant", ctypes.c_long),
                ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long), ("pad", ctypes.c_long * 20)]


TIME_ERROR: Final = 5
"""adjtimex's answer when the clock is not synchronised to any time source."""


def clock_synchronised() -> bool | None:
    """The kernel's view (adjtimex): True, False, or None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


def clock_check(now: float | None = None) -> Check:
    """Handshake initiations carry the sender's wall-clock time (TAI64N), and a gateway accepts
    one only if it is newer than the last it accepted from this peer. A clock that went back (or
    was ahead at the last connection) makes the gateway ignore every initiation until the clock
    passes that time again. The answer carries no time, so the doctor compares the clock with
    the newest handshake it saw answered, and asks the kernel whether the clock is synced."""
    title = "Clock"
    now = time.time() if now is None else now
    newest = _newest_handshake()
    if newest is not None and now < newest - 1.0:
        behind = format.duration(newest - now)
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(newest))
        return Check("clock", title, FAIL,
                     f"the clock is {behind} behind the newest handshake this helper saw "
                     f"answered ({seen} UTC): "
                     "the gateway ignores initiations older than the last it accepted",
                     "set the clock right ('timedatectl set-ntp true', or 'sudo date -s ...'); "
                     "until it passes that time again the tunnel cannot connect")
    synced = clock_synchronised()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    if synced is False:
        return Check("clock", title, WARN, f"the clock ({when} UTC) is not synchronised to any "
                     "time source: if it jumps back, the gateway ignores handshakes until it "
                     "catches up", "turn on time synchronisation ('timedatectl set-ntp true')")
    how = "synchronised" if synced else "of unknown synchronisation"
    seen = "" if newest is None else " and not behind the last answered handshake"
    return Check("clock", title, OK, f"the clock ({when} UTC) is {how}{seen}")


DEB_LIBDIR: Final = Path("/usr/lib/tunseal")
INSTALL_SH_LIBDIR: Final = Path("/opt/tunseal/lib")
"""Where the .deb and install.sh put the program (installers/README.md): a pure-Python data path
there is fixed by installing differently; in a source tree, by ``make native``."""


def datapath_check(native_file: str | None = None, why_not: str | None = None,
                   libdir: Path | None = None) -> Check:
    """Which data-path core this helper's tunnels run on (core/native.py): the native one, or
    the pure-Python path, which carries every mode but moves fewer packets per second. The
    arguments default to this process's choice and the directory its ``core`` came from."""
    from core import native

    if native_file is None and why_not is None:
        native_file = native.module.__file__ if native.module is not None else None
        why_not = native.why_not
    title = "Data path"
    if native_file is not None:
        return Check("datapath", title, OK, f"native core ({native_file})")
    libdir = Path(native.__file__).resolve().parents[1] if libdir is None else libdir
    if why_not == "TUNSEAL_NATIVE=0":
        todo = "unset TUNSEAL_NATIVE in the helper's environment for the native core"
    elif libdir == DEB_LIBDIR:
        todo = ("install the tunseal package built for this machine's architecture (it "
                "carries the native core; the 'all' package does not)")
    elif libdir == INSTALL_SH_LIBDIR:
        todo = ("install Rust (cargo, https://rustup.rs) and run 'sudo bash "
                "installers/install.sh' again: it builds the native core")
    else:
        todo = "build it: 'make native' (needs Rust's cargo)"
    return Check("datapath", title, WARN, f"pure Python (slower: {why_not})", todo)


def _state_path() -> Path | None:
    return None if _state_dir is None else _state_dir / STATE_FILE


def _newest_handshake() -> float | None:
    path = _state_path()
    if path is None:
        return None
    try:
        value = json.loads(path.read_text()).get("newest_handshake")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _remember_handshake(when: float) -> None:
    path = _state_path()
    if path is None:
        return
    newest = _newest_handshake()
    if newest is not None and newest >= when:
        return
    from core.atomicfile import write_atomic

    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps({"newest_handshake": when}).encode(), mode=0o600)
