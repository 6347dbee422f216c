"""ECN through a real tunnel on a congested path (RFC 6040, docs/DATAPATH.md "ECN").

client ns -- router ns -- server ns, two real helpers (tests/net/tunnellab.py). The router
plays a congested AQM with nftables in its forward chain (``ip ecn set ce``, one rule per line),
on the outer flow from the client to the server:

- no marking: inner datagrams sent ECT(0), ECT(1) and Not-ECT leave the client in outer
  datagrams with the same ECN field (tcpdump on the router's client side) and arrive unchanged;
- marking every outer packet CE: the ECN-capable inner datagrams arrive CE, the Not-ECT ones are
  dropped and counted (``ecn_not_ect_ce``), and ``tunseal status`` shows the marks;
- marking only ECT outer packets (a conforming AQM): a TCP transfer with ECN negotiated
  (net.ipv4.tcp_ecn=1 in the client) completes intact, and the server's TUN (tcpdump on it)
  sees CE-marked segments, nothing dropped.

Inner datagrams are sent by a raw sender (a UDP socket with IP_TOS / IPV6_TCLASS) and received
by a UDP socket with IP_RECVTOS / IPV6_RECVTCLASS, which reports the ECN field each arrived with
from the TUN device.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import netlab
import pytest
from tunnellab import (
    Spec,
    TunnelPair,
    assert_transfer,
    tcp_transfer,
    tunnel_pair,
)

from core import ecn
from core.constants import RAW_IP_PROTOCOL

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

N = 20
"""Inner datagrams of each ECN codepoint per phase."""
TABLE = "ecnlab"
KINDS = {"not-ect": ecn.NOT_ECT, "ect1": ecn.ECT1, "ect0": ecn.ECT0}

_RECEIVER = r"""
import json, socket, sys, time
host, port, expect, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
v6 = ":" in host
sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(41 if v6 else 0, 66 if v6 else 13, 1)  # IPV6_RECVTCLASS / IP_RECVTOS
sock.bind((host, port))
sock.settimeout(0.5)
print("ready", flush=True)
seen, end = {}, time.monotonic() + deadline
while time.monotonic() < end:
    try:
        data, anc, _f, _a = sock.recvmsg(2048, 64)
    except socket.timeout:
        continue
    if data == b"stop":
        break
    tos = [d[0] for _l, _k, d in anc]
    seen[data.decode()] = tos[0] & 3 if tos else -1
print(json.dumps(seen), flush=True)
"""

_SENDER = r"""
import json, socket, sys, time
host, port, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
v6 = ":" in host
sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
level, opt = (41, 67) if v6 else (0, 1)  # IPV6_TCLASS / IP_TOS
for label, cp in plan:
    sock.setsockopt(level, opt, cp)
    sock.sendto(label.encode(), (host, port))
    time.sleep(0.002)
time.sleep(0.3)
sock.setsockopt(level, opt, 2)  # ECT(0): a stop that survives a path marking everything CE
for _ in range(3):
    sock.sendto(b"stop", (host, port))
    time.sleep(0.05)
"""


def exchange(pair: TunnelPair, phase: str, *, v6: bool = False,
             port: int = 7100) -> dict[str, int]:
    """N datagrams of each of Not-ECT, ECT(1), ECT(0), interleaved, from the client's inner
    address to the server's; returns label -> the ECN field each arrived with."""
    host = pair.server.inner6 if v6 else pair.server.inner4
    receiver = pair.lab.python_popen(pair.topo.server, _RECEIVER, host, str(port), str(3 * N),
                                     "20", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    netlab.wait_for_line(receiver, "ready")
    plan = [(f"{phase}:{kind}:{i}", cp) for i in range(N) for kind, cp in KINDS.items()]
    pair.lab.python(pair.topo.client, _SENDER, host, str(port), json.dumps(plan), timeout=60)
    out, err = receiver.communicate(timeout=40)
    assert receiver.returncode == 0, err
    arrived: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return arrived


def by_kind(arrived: dict[str, int]) -> dict[str, Counter[int]]:
    kinds: dict[str, Counter[int]] = {k: Counter() for k in KINDS}
    for label, cp in arrived.items():
        kinds[label.split(":")[1]][cp] += 1
    return kinds


class Router:
    """The router's nftables table that marks the outer flow to the server CE."""

    def __init__(self, pair: TunnelPair):
        self.pair = pair
        spec = pair.spec
        family = "ip6" if spec.outer6 else "ip"
        if spec.transport == "raw":
            self.flow = f"meta l4proto {RAW_IP_PROTOCOL}"
        else:
            self.flow = f"meta l4proto udp udp dport {spec.port}"
        self.family = family

    def mark(self, which: str) -> None:
        """``all``: every outer packet to the server leaves CE (even Not-ECT ones, which a
        conforming router would drop instead: the decapsulator must drop them); ``ect``: only
        ECN-capable ones, like a real AQM; ``off``: none."""
        match = "" if which == "all" else f"{self.family} ecn {{ ect0, ect1 }} "
        rule = "" if which == "off" else \
            f"    {self.flow} {match}{self.family} ecn set ce\n"
        self.pair.lab.nft(self.pair.topo.router,
                          f"table inet {TABLE}\ndelete table inet {TABLE}\n"
                          f"table inet {TABLE} {{\n"
                          "  chain fw {\n"
                          "    type filter hook forward priority filter; policy accept;\n"
                          f"{rule}"
                          "  }\n}\n")


class Tcpdump:
    """tcpdump -w in a namespace; :meth:`stop` returns the captured packets (link layer
    stripped) as (ECN field, IP packet)."""

    def __init__(self, pair: TunnelPair, ns: str, ifname: str, what: str):
        self.pair = pair
        self.path = pair.workdir / f"ecn-{uuid.uuid4().hex[:6]}.pcap"
        self.proc = pair.lab.popen(ns, "tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root",
                                   "-s", "200", "-i", ifname, "-w", str(self.path), what,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        netlab.wait_for_line(self.proc, "tcpdump: listening on")

    def stop(self) -> list[tuple[int, bytes]]:
        time.sleep(0.5)  # what tcpdump still holds reaches the file (-U: per packet)
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
        return read_pcap(self.path)


def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    endian = "<" if struct.unpack_from("<I", data)[0] in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    skip = {1: 14, 101: 0, 12: 0, 228: 0, 229: 0}[linktype]  # Ethernet, raw IP (TUN)
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        ip = frame[skip:]
        if skip and struct.unpack_from("!H", frame, 12)[0] not in (0x0800, 0x86DD):
            continue
        out.append((ecn.of_packet(ip), ip))
    return out


def outer_payload(ip: bytes) -> bytes:
    """The Tunseal packet an outer IPv4/IPv6 packet carries (UDP or raw IP)."""
    if ip[0] >> 4 == 4:
        proto, body = ip[9], ip[(ip[0] & 0x0F) * 4:]
    else:
        proto, body = ip[6], ip[40:]
    return body[8:] if proto == 17 else body


def server_status(pair: TunnelPair) -> dict[str, object]:
    return pair.server.status()


@pytest.mark.parametrize("spec", [
    Spec(transport="udp", inner6=True, port=51931),
    Spec(transport="raw"),
    Spec(transport="udp", outer6=True, port=51932),
    Spec(transport="raw", outer6=True),
], ids=lambda s: s.id)
def test_ecn_across_a_congested_path(lab: netlab.Lab, spec: Spec) -> None:
    with tunnel_pair(lab, spec) as pair:
        router = Router(pair)
        inner_v6 = [False, True] if spec.inner6 else [False]

        # 1. No marking: the outer header carries the inner ECN field (normal mode), and
        #    everything arrives as sent.
        server = pair.topo.server_addr6 if spec.outer6 else pair.topo.server_addr
        outer_filter = f"dst host {server} and " + (
            (f"ip6 proto {RAW_IP_PROTOCOL}" if spec.outer6 else f"ip proto {RAW_IP_PROTOCOL}")
            if spec.transport == "raw" else f"udp dst port {spec.port}")
        dump = Tcpdump(pair, pair.topo.router, pair.topo.router_client_if, outer_filter)
        arrived = exchange(pair, "clean")
        outer = dump.stop()
        kinds = by_kind(arrived)
        assert kinds == {k: Counter({cp: N}) for k, cp in KINDS.items()}, arrived
        data_ecn = Counter(cp for cp, ip in outer if outer_payload(ip)[:1] == b"\x11")
        # Each inner datagram is one outer DATA packet (the stops: 3 more ECT(0) ones).
        assert data_ecn[ecn.ECT1] == N and data_ecn[ecn.ECT0] == N + 3, data_ecn
        assert data_ecn[ecn.NOT_ECT] >= N and data_ecn[ecn.CE] == 0, data_ecn

        # 2. Everything marked CE: ECN-capable traffic carries the mark, Not-ECT is dropped.
        before = server_status(pair)
        router.mark("all")
        for v6 in inner_v6:
            kinds = by_kind(exchange(pair, "marked6" if v6 else "marked", v6=v6))
            assert kinds == {"not-ect": Counter(), "ect1": Counter({ecn.CE: N}),
                             "ect0": Counter({ecn.CE: N})}, kinds
        router.mark("off")
        after = server_status(pair)
        drops = {k: v - before["drops"].get(k, 0)  # type: ignore[attr-defined]
                 for k, v in after["drops"].items()}  # type: ignore[attr-defined]
        runs = len(inner_v6)
        assert drops.get("ecn_not_ect_ce") == N * runs, drops
        # The ECT datagrams and the stops (ECT(0), 3 per run; the receiver reads the first).
        assert after["ecn_ce"] - before["ecn_ce"] >= 2 * N * runs  # type: ignore[operator]
        text = pair.server.cli("status", pair.server.name).stdout
        line = [x for x in text.splitlines() if x.startswith("  congestion ")]
        assert line and "congestion marks seen" in line[0], text
        assert f"{after['drops']['ecn_not_ect_ce']} packets dropped: not ECN-capable" \
            in line[0]  # type: ignore[index]

        if spec.transport != "udp" or spec.outer6:
            return
        # 3. A conforming AQM marks ECN-capable packets only: TCP with ECN keeps going, its
        #    segments arrive CE-marked on the server's TUN, nothing is dropped for it.
        lab.run(pair.topo.client, "sysctl", "-q", "-w", "net.ipv4.tcp_ecn=1")
        router.mark("ect")
        before = server_status(pair)
        tun = Tcpdump(pair, pair.topo.server, str(before["interface"]), "tcp port 5201")
        nbytes = 5_000_000
        transfer = tcp_transfer(pair, nbytes)
        seen = tun.stop()
        router.mark("off")
        assert_transfer(transfer, nbytes, pair)
        after = server_status(pair)
        server = ipaddress.ip_address(pair.server.inner4).packed
        to_server = [(cp, ip) for cp, ip in seen if ip[0] >> 4 == 4 and ip[16:20] == server]
        marked = [ip for cp, ip in to_server if cp == ecn.CE]
        assert len(marked) > 10, Counter(cp for cp, _ in to_server)
        assert all(ip[9] == 6 for ip in marked)
        assert after["ecn_ce"] > before["ecn_ce"]  # type: ignore[operator]
        assert after["drops"].get("ecn_not_ect_ce", 0) == \
            before["drops"].get("ecn_not_ect_ce", 0)  # type: ignore[attr-defined]
