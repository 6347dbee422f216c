"""A laptop with Wi-Fi and Ethernet, an office behind a router, and an outside host: the world of
the lockdown tests (tests/net/test_lockdown.py)::

    laptop ns  --"wifi"  192.168.50.2 / 2001:db8:50::2 -- 192.168.50.1 --+
    (helper L) --"eth"   192.168.60.2 (down at first)  -- 192.168.60.1 --+-- router ns
                                                                          |
                   office ns (helper O) 198.18.2.2 ------ 198.18.2.1 ---+
                   outside ns 198.18.3.2 / 2001:db8:3::2 - 198.18.3.1 --+

The laptop has no route to anything but these namespaces. Its profile routes 0.0.0.0/0 into the
tunnel (endpoint 198.18.2.2:51900, inner 10.44.0.2, the office is 10.44.0.1). The LAN addresses
are RFC 1918, so ``allow_lan`` concerns them; the office and the outside host are not.

:class:`LinkCapture` runs tcpdump on the laptop's physical interfaces and sorts every captured
frame: the encrypted outer flow, link-level control (ARP, IPv6 neighbour discovery, router
solicitation, MLD, DHCP), and everything else: a leak.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netlab
from tunnellab import End, Spec, TunnelPair

from core.profile import Profile

PORT = 51900
WIFI = ("192.168.50.2", "192.168.50.1")
WIFI6 = ("2001:db8:50::2", "2001:db8:50::1")
ETH = ("192.168.60.2", "192.168.60.1")
OFFICE = ("198.18.2.2", "198.18.2.1")
OFFICE2 = ("198.18.4.2", "198.18.4.1")
"""A second address for the office (a test moves it there)."""
OUTSIDE = ("198.18.3.2", "198.18.3.1")
OUTSIDE6 = ("2001:db8:3::2", "2001:db8:3::1")


@dataclass
class World:
    lab: netlab.Lab
    laptop: str
    router: str
    office: str
    outside: str
    wifi: str
    """The laptop's end of the Wi-Fi link."""
    eth: str
    """The laptop's end of the Ethernet link (no address until :meth:`move_to_ethernet`)."""

    @property
    def physical(self) -> tuple[str, str]:
        return self.wifi, self.eth

    def move_to_ethernet(self) -> None:
        """Wi-Fi goes away; Ethernet comes up with another address and default route."""
        run = self.lab.run
        run(self.laptop, "ip", "link", "set", self.wifi, "down")
        run(self.laptop, "ip", "addr", "add", f"{ETH[0]}/24", "dev", self.eth)
        run(self.laptop, "ip", "link", "set", self.eth, "up")
        run(self.laptop, "ip", "route", "replace", "default", "via", ETH[1])

    def nft_ruleset(self) -> str:
        return self.lab.run(self.laptop, "nft", "list", "ruleset").stdout

    def rules(self) -> str:
        return (self.lab.run(self.laptop, "ip", "-4", "rule").stdout
                + self.lab.run(self.laptop, "ip", "-6", "rule").stdout)


def build_world(lab: netlab.Lab) -> World:
    laptop, router = lab.ns("laptop"), lab.ns("router")
    office, outside = lab.ns("office"), lab.ns("outside")
    wifi, _ = lab.link(laptop, router, a_addr=[f"{WIFI[0]}/24", f"{WIFI6[0]}/64"],
                       b_addr=[f"{WIFI[1]}/24", f"{WIFI6[1]}/64"])
    # Ethernet is plugged in (up, so tcpdump can watch it from the start) but has no address.
    eth, _ = lab.link(laptop, router, a_addr=None, b_addr=f"{ETH[1]}/24")
    lab.link(router, office, a_addr=f"{OFFICE[1]}/24", b_addr=f"{OFFICE[0]}/24")
    lab.link(router, outside, a_addr=[f"{OUTSIDE[1]}/24", f"{OUTSIDE6[1]}/64"],
             b_addr=[f"{OUTSIDE[0]}/24", f"{OUTSIDE6[0]}/64"])
    lab.router(router)
    lab.route(laptop, "default", WIFI[1])
    lab.route(laptop, "default", WIFI6[1])
    lab.route(office, "default", OFFICE[1])
    lab.route(outside, "default", OUTSIDE[1])
    lab.route(outside, "default", OUTSIDE6[1])
    return World(lab, laptop, router, office, outside, wifi, eth)


class LaptopPair(TunnelPair):
    """The office helper (server) and the laptop helper (client), on a :class:`World`. The
    laptop's profile routes ``client_routes`` with the given lockdown settings."""

    def __init__(self, world: World, spec: Spec, workdir: Path, *,
                 client_routes: tuple[str, ...] = ("0.0.0.0/0",), lockdown: str = "",
                 allow_lan: bool = False, endpoint_name: str = "",
                 dns: tuple[str, ...] = ()):
        topo = netlab.Topology(
            client=world.laptop, router=world.router, server=world.office,
            client_if=world.wifi, router_client_if="", router_server_if="", server_if="",
            client_addr=WIFI[0], router_client_addr=WIFI[1], router_server_addr=OFFICE[1],
            server_addr=OFFICE[0])
        self.world = world
        self.client_routes = client_routes
        self.lockdown = lockdown
        self.allow_lan = allow_lan
        self.endpoint_name = endpoint_name
        self.dns = dns
        """The laptop profile's DNS servers (in the office, through the tunnel)."""
        self.hosts: Hosts | None = None
        super().__init__(world.lab, topo, spec, workdir)

    @property
    def endpoint(self) -> str:
        if self.endpoint_name:
            return f"{self.endpoint_name}:{self.spec.port}"
        return super().endpoint

    def profile(self, end: End, *, public_key: str = "") -> Profile:
        p = super().profile(end, public_key=public_key)
        if end is self.client:
            p = p.replace(allowed_ips=self.client_routes, lockdown=self.lockdown,
                          allow_lan=self.allow_lan, dns=self.dns)
        return p

    def reconfigure(self, **changes: Any) -> None:
        """Take the laptop's tunnel down, change its profile (``tunseal import --replace`` of
        the edited export), bring it up again."""
        client = self.client
        client.cli("down", client.name)
        current = client.cli_json("show", client.name)["profile"]
        from core.profile import profile_from_dict
        edited = profile_from_dict(current).replace(**changes)
        self.import_profile(client, edited)
        client.cli_json("up", client.name)
        self.wait_state("up", ends=(client,))

    def lockdown_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.cli_json("lockdown", "status")
        return result


class Hosts:
    """The laptop's /etc/hosts (and /etc/resolv.conf): ``ip netns exec`` bind-mounts
    /etc/netns/<ns>/hosts over it for what it starts (the helper), and the file is rewritten in
    place, so the helper sees every change. Removed on :meth:`close`."""

    def __init__(self, ns: str):
        self.dir = Path("/etc/netns") / ns
        self.path = self.dir / "hosts"

    def resolv_conf(self, nameservers: list[str]) -> None:
        """The laptop's /etc/resolv.conf (bind-mounted like hosts: write it before the helper
        starts)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "resolv.conf").write_text(
            "".join(f"nameserver {a}\n" for a in nameservers) + "options timeout:1 attempts:1\n")

    def write(self, entries: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{addr} {name}" for name, addr in entries.items()]
        with open(self.path, "w") as f:  # in place: the bind mount keeps the inode
            f.write("\n".join(lines) + "\n")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def laptop_pair(lab: netlab.Lab, spec: Spec | None = None, *, up: bool = True,
                hosts: dict[str, str] | None = None, nameservers: list[str] | None = None,
                **kw: Any) -> Iterator[LaptopPair]:
    """``hosts``: names the laptop's helper resolves through its own /etc/hosts
    (:attr:`LaptopPair.hosts`); ``nameservers``: its /etc/resolv.conf."""
    world = build_world(lab)
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-laptop-"))
    pair = LaptopPair(world, spec or Spec(), workdir, **kw)
    pair.hosts = Hosts(world.laptop)
    try:
        if hosts:
            pair.hosts.write(hosts)
        if nameservers:
            pair.hosts.resolv_conf(nameservers)
        pair.start_helpers()
        pair.build()
        if up:
            pair.up()
        yield pair
        pair.teardown()
        pair.watch.check()
    finally:
        pair.cleanup()
        pair.hosts.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- capture -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    iface: str
    kind: str
    """outer, outer_error (an ICMP error quoting an outer packet), arp, nd, dhcp, or leak"""
    what: str


@dataclass
class LinkCapture:
    """tcpdump (both directions) on each of the laptop's physical interfaces."""

    world: World
    workdir: Path
    office: tuple[str, ...] = (OFFICE[0],)
    """The endpoint addresses whose port-51900 traffic is the outer flow."""
    procs: list[tuple[str, subprocess.Popen[str], Path]] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)

    def __enter__(self) -> LinkCapture:
        for iface in self.world.physical:
            path = self.workdir / f"laptop-{iface}-{uuid.uuid4().hex[:6]}.pcap"
            proc = self.world.lab.popen(
                self.world.laptop, "tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root",
                "-s", "256", "-i", iface, "-w", str(path),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            netlab.wait_for_line(proc, "tcpdump: listening on", timeout=15)
            self.procs.append((iface, proc, path))
        return self

    def __exit__(self, *exc: object) -> None:
        for iface, proc, path in self.procs:
            _settle(path)
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
            data = path.read_bytes() if path.exists() else b""
            self.frames += [Frame(iface, kind, what)
                            for kind, what in classify_pcap(data, self.office)]

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.frames))

    def leaks(self) -> list[Frame]:
        return [f for f in self.frames if f.kind == "leak"]


def _settle(path: Path) -> None:
    """Wait (3 s at most) until tcpdump's file stops growing: what it has not written when it
    gets SIGTERM is lost."""
    size, still, deadline = -1, 0, time.monotonic() + 3
    while still < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = path.stat().st_size if path.exists() else 0
        still, size = (still + 1, size) if now == size else (0, now)


_ND_TYPES = {133: "RS", 134: "RA", 135: "NS", 136: "NA", 130: "MLD query", 131: "MLD report",
             132: "MLD done", 143: "MLDv2 report"}


def classify_pcap(data: bytes,
                  office: tuple[str, ...] = (OFFICE[0],)) -> list[tuple[str, str]]:
    """(kind, description) of every Ethernet frame of a classic pcap file."""
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        out.append(classify_frame(frame, office))
    return out


def classify_frame(frame: bytes,
                   office: tuple[str, ...] = (OFFICE[0],)) -> tuple[str, str]:
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0806:
        return "arp", "ARP"
    if ethertype == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        l4 = ip[ihl:]
    elif ethertype == 0x86DD:
        proto = ip[6]
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        l4 = ip[40:]
        if proto == 0:  # hop-by-hop options (MLD reports carry Router Alert)
            proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
    else:
        return "leak", f"ethertype {ethertype:#06x}"
    sport = dport = 0
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
    what = f"{src}:{sport} > {dst}:{dport} proto {proto}"
    ends = {ipaddress.ip_address(a) for a in office}
    if proto == 17 and ((dst in ends and dport == PORT) or (src in ends and sport == PORT)):
        return "outer", what
    if proto == 58 and l4 and l4[0] in _ND_TYPES:
        return "nd", f"ICMPv6 {_ND_TYPES[l4[0]]} {src} > {dst}"
    if proto == 17 and (sport, dport) in ((68, 67), (546, 547)):
        return "dhcp", what
    if _error_about_outer(proto, l4, ends):
        return "outer_error", what + " (an ICMP error about the outer flow)"
    if proto == 1 and l4:
        what += f" ICMP type {l4[0]}"
    elif proto == 58 and l4:
        what += f" ICMPv6 type {l4[0]}"
    return "leak", what


def _error_about_outer(proto: int, l4: bytes, ends: set[ipaddress.IPv4Address |
                                                    ipaddress.IPv6Address]) -> bool:
    """Whether an ICMP error (destination unreachable, time exceeded; for IPv6 also packet
    too big) quotes a packet of the outer flow: the path answering the tunnel's own packets
    (when the office's old address went away), not something leaving around the tunnel."""
    if proto == 1 and len(l4) >= 8 + 20 + 4 and l4[0] in (3, 11):
        inner = l4[8:]
        ihl = (inner[0] & 0x0F) * 4
        if inner[9] != 17 or len(inner) < ihl + 4:
            return False
        dst = ipaddress.IPv4Address(inner[16:20])
        dport = struct.unpack_from("!H", inner, ihl + 2)[0]
        return dst in ends and dport == PORT
    if proto == 58 and len(l4) >= 8 + 40 + 4 and l4[0] in (1, 2, 3):
        inner = l4[8:]
        dst6 = ipaddress.IPv6Address(inner[24:40])
        dport = struct.unpack_from("!H", inner, 40 + 2)[0]
        return inner[6] == 17 and dst6 in ends and dport == PORT
    return False


# --- traffic -----------------------------------------------------------------------------------

_STREAMER = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
srv.settimeout(120)
print("ready", flush=True)
conn, _ = srv.accept()
chunk = b"x" * 16384
conn.settimeout(120)
try:
    while True:
        conn.sendall(chunk)
        time.sleep(0.004)
except OSError:
    pass
"""

_DOWNLOADER = r"""
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.create_connection((host, port), timeout=10)
sock.settimeout(90)
total, marks, start = 0, [], time.monotonic()
print("connected", flush=True)
while time.monotonic() - start < seconds:
    data = sock.recv(65536)
    if not data:
        break
    total += len(data)
    marks.append(round(time.monotonic() - start, 2))
print(json.dumps({"bytes": total, "gaps": sorted(
    (round(b - a, 2) for a, b in zip(marks, marks[1:])), reverse=True)[:3]}), flush=True)
"""


@dataclass
class Download:
    """The office streams bytes from its inner address; the laptop reads for ``seconds``."""

    pair: LaptopPair
    seconds: float
    port: int = 8080
    server: subprocess.Popen[str] | None = None
    client: subprocess.Popen[str] | None = None

    def start(self) -> Download:
        pair = self.pair
        self.server = pair.lab.python_popen(pair.world.office, _STREAMER, pair.server.inner4,
                                            str(self.port), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(self.server, "ready")
        self.client = pair.lab.python_popen(pair.world.laptop, _DOWNLOADER, pair.server.inner4,
                                            str(self.port), str(self.seconds),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
        netlab.wait_for_line(self.client, "connected", timeout=20)
        return self

    def result(self) -> dict[str, Any]:
        assert self.client is not None and self.server is not None
        try:
            out, err = self.client.communicate(timeout=self.seconds + 120)
        finally:
            self.server.kill()
            self.server.communicate(timeout=10)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, (out, err)
        result: dict[str, Any] = json.loads(lines[-1])
        return result


_PROBER = r"""
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.1)
start, answered, n = time.monotonic(), [], 0
print("probing", flush=True)
while time.monotonic() - start < seconds:
    n += 1
    try:
        sock.sendto(n.to_bytes(4, "big"), (host, port))
    except OSError:
        pass
    t = time.monotonic()
    while time.monotonic() - t < 0.1:
        try:
            data = sock.recv(64)
        except OSError:
            break
        answered.append(round(time.monotonic() - start, 3))
print(json.dumps({"answered": answered}), flush=True)
"""

_ECHO = r"""
import socket, sys
host, port, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, port))
sock.settimeout(idle)
print("ready", flush=True)
try:
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)
except socket.timeout:
    pass
"""


def echo_server(lab: netlab.Lab, ns: str, host: str, port: int,
                idle: float = 60.0) -> subprocess.Popen[str]:
    proc = lab.python_popen(ns, _ECHO, host, str(port), str(idle), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(proc, "ready")
    return proc


def start_prober(lab: netlab.Lab, ns: str, host: str, port: int,
                 seconds: float) -> subprocess.Popen[str]:
    proc = lab.python_popen(ns, _PROBER, host, str(port), str(seconds),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(proc, "probing")
    return proc


def prober_result(proc: subprocess.Popen[str], seconds: float) -> list[float]:
    out, err = proc.communicate(timeout=seconds + 30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, (out, err)
    answered: list[float] = json.loads(lines[-1])["answered"]
    return answered


_LISTENER = r"""
import json, select, socket, sys
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
udp = socket.socket(fam, socket.SOCK_DGRAM)
udp.bind((host, port))
tcp = socket.socket(fam, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((host, port))
tcp.listen(8)
print("ready", flush=True)
got = []
import time
end = time.monotonic() + seconds
while (left := end - time.monotonic()) > 0:
    r, _, _ = select.select([udp, tcp], [], [], left)
    for s in r:
        if s is udp:
            data, peer = s.recvfrom(2048)
            if data == b"stop":
                end = 0
                break
            got.append(["udp", peer[0], data.decode(errors="replace")])
            s.sendto(data, peer)
        else:
            c, peer = s.accept()
            got.append(["tcp", peer[0], ""])
            c.sendall(b"hello")
            c.close()
print(json.dumps(got), flush=True)
"""


_NAMESERVER = r"""
import json, select, socket, sys, time
import dns.message, dns.rdatatype, dns.rrset
host, names, seconds = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
fam, _, _, _, where = socket.getaddrinfo(host, 53, type=socket.SOCK_DGRAM)[0]
udp = socket.socket(fam, socket.SOCK_DGRAM)
udp.bind(where)  # getaddrinfo's address keeps a link-local zone; a plain (host, 53) loses it
print("ready", flush=True)
asked = []
end = time.monotonic() + seconds
while (left := end - time.monotonic()) > 0:
    if not select.select([udp], [], [], left)[0]:
        continue
    data, peer = udp.recvfrom(4096)
    if data == b"stop":
        break
    try:
        q = dns.message.from_wire(data)
    except Exception:
        asked.append([peer[0], "garbage", ""])
        continue
    qname, rdtype = q.question[0].name, q.question[0].rdtype
    name = qname.to_text(omit_final_dot=True)
    asked.append([peer[0], name, dns.rdatatype.to_text(rdtype)])
    r = dns.message.make_response(q)
    if name in names and rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(qname, 60, "IN", "A", names[name]))
    udp.sendto(r.to_wire(), peer)
print(json.dumps(asked), flush=True)
"""


class NameServer:
    """A DNS server (UDP) at ``host:53`` in ``ns`` (IPv4, IPv6, or link-local with its zone)
    answering A queries for ``names`` (name -> IPv4 address), empty answers for anything else,
    recording every query."""

    def __init__(self, lab: netlab.Lab, ns: str, host: str, names: dict[str, str],
                 seconds: float = 120):
        self.lab, self.ns, self.host = lab, ns, host
        self.proc = lab.python_popen(ns, _NAMESERVER, host, json.dumps(names), str(seconds),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(self.proc, "ready")

    def asked(self) -> list[list[str]]:
        """Stop it; every query it had, as [source, name, type]."""
        if self.proc.poll() is None:
            code = ("import socket,sys; f,_,_,_,a=socket.getaddrinfo(sys.argv[1], 53, "
                    "type=socket.SOCK_DGRAM)[0]; socket.socket(f, socket.SOCK_DGRAM)"
                    ".sendto(b'stop', a)")
            self.lab.python(self.ns, code, self.host)
        out, err = self.proc.communicate(timeout=30)
        lines = [line for line in out.splitlines() if line.startswith("[")]
        assert lines, (out, err)
        asked: list[list[str]] = json.loads(lines[-1])
        return asked


class Listener:
    """A UDP and TCP listener at ``host:port`` in ``ns`` that records who reached it."""

    def __init__(self, lab: netlab.Lab, ns: str, host: str, port: int, seconds: float = 120):
        self.lab, self.ns, self.host, self.port = lab, ns, host, port
        self.proc = lab.python_popen(ns, _LISTENER, host, str(port), str(seconds),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(self.proc, "ready")

    def heard(self) -> list[list[str]]:
        """Stop it; every contact it had."""
        if self.proc.poll() is None:
            code = ("import socket,sys; h=sys.argv[1]; s=socket.socket(socket.AF_INET6 if ':' "
                    "in h else socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'stop', (h, "
                    "int(sys.argv[2])))")
            self.lab.python(self.ns, code, self.host, str(self.port))
        out, err = self.proc.communicate(timeout=30)
        lines = [line for line in out.splitlines() if line.startswith("[")]
        assert lines, (out, err)
        heard: list[list[str]] = json.loads(lines[-1])
        return heard


_TRY = r"""
import json, socket, sys
host, port, device, label = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out = {}
for kind in ("udp", "tcp"):
    s = socket.socket(fam, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    if device:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    s.settimeout(2.0)
    try:
        if kind == "udp":
            s.sendto(label.encode(), (host, port))
            out[kind] = s.recv(64).decode()
        else:
            s.connect((host, port))
            out[kind] = s.recv(64).decode()
    except OSError as e:
        out[kind] = f"error: {e.__class__.__name__}: {e}"
    s.close()
print(json.dumps(out), flush=True)
"""


def try_reach(lab: netlab.Lab, ns: str, host: str, port: int, *, device: str = "",
              label: str = "probe") -> dict[str, str]:
    """From ``ns``, one UDP datagram (waiting for its echo) and one TCP connection to
    ``host:port``, optionally bound to ``device`` (SO_BINDTODEVICE). Values are the answer or
    ``error: ...``."""
    done = lab.python(ns, _TRY, host, str(port), device, label, timeout=30)
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def reached(result: dict[str, str]) -> bool:
    return any(not v.startswith("error") for v in result.values())
