"""The real receive path in-process, no root: ``DataPath.run_rx`` over a real UDP socket on
loopback, writing to a socketpair that stands in for the TUN device's file descriptor.

Sessions are made with real handshakes between real Endpoints (in memory: the handshake is not
what is under test). The far ends then seal datagrams with their real keypairs and send them to
the data path from real UDP sockets; several datagrams of one size leave in one UDP GSO send,
which loopback delivers to the data path's UDP_GRO socket as one batch, exactly the way the
kernel hands a GRO run over from a NIC. After each batch a sentinel datagram (a genuine packet
from peer 0 with a marked payload, on its own) tells when the batch has been handled: the loop
is one thread, so everything written to the TUN before the sentinel came from the batch, and
every drop was counted.

Importable as ``rxrig`` from the test files next to it.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from protocol_helpers import FakeClock, Keys, make_keys

from core import noise
from core.constants import FIXED_HEADER_LEN, PacketType
from core.endpoint import AnyPeer, Endpoint
from core.handshake import Identity
from core.peer import Peer
from core.session import seal_plain_into
from helper import offload
from helper.allowedips import AllowedIPs
from helper.datapath import DataPath
from helper.transport import SOL_UDP, UDP_SEGMENT, UdpTransport
from helper.tun import Tun

LOOPBACK = "127.0.0.1"
WAIT = 20.0
"""Seconds a batch may take to be handled on a loaded machine (it takes about a millisecond)."""
SENTINEL = b"tunseal-rxrig-sentinel"
NETS = (("10.1.0.0/16", "fd01::/64"), ("10.2.0.0/16", "fd02::/64"))
"""The allowed IPs of peer 0 and peer 1."""
NOT_DROPS = frozenset({"cookie_sent", "icmp_relayed"})
"""Counters in Endpoint.drops that count something other than a dropped packet."""


def addr_of(peer: int, v6: bool = False, host: int = 1) -> bytes:
    """An inner address inside peer ``peer``'s allowed IPs."""
    net = ipaddress.ip_network(NETS[peer][1 if v6 else 0])
    return (net.network_address + host).packed


def udp4(src: bytes, dst: bytes, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0x4000, 64, 17, 0,
                     src, dst)
    return ip + struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload


def tcp(src: bytes, dst: bytes, payload: bytes, *, seq: int = 1000, doff: int = 5,
        flags: int = 0x10, ports: tuple[int, int] = (40000, 5201),
        total: int | None = None) -> bytes:
    """A TCP segment over IPv4 (4-byte addresses) or IPv6 (16-byte ones), ``doff`` words of TCP
    header whatever they hold, IP length ``total`` (default: the true one)."""
    tcp_hdr = struct.pack("!HHIIBBHHH", *ports, seq, 7, (doff & 0xF) << 4, flags, 502, 0, 0)
    opts = bytes(max(0, doff * 4 - 20))
    body = tcp_hdr + opts + payload
    if len(src) == 4:
        n = 20 + len(body) if total is None else total
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, n & 0xFFFF, 1, 0x4000, 64, 6, 0,
                           src, dst) + body
    n = len(body) if total is None else total - 40
    return struct.pack("!IHBB16s16s", 0x60000000, n & 0xFFFF, 6, 64, src, dst) + body


@dataclass
class Far:
    """One far end: its Endpoint, its peer object for us, and its UDP socket."""

    endpoint: Endpoint
    peer: AnyPeer
    sock: socket.socket
    source: bytes

    def seal(self, inner: bytes, flags: int = 0, ptype: int = PacketType.DATA) -> bytes:
        p = self.peer
        if isinstance(p, Peer):
            kp = p.sending_keypair()
            assert kp is not None
            return bytes(kp.seal(inner, ptype, flags))
        out = bytearray(FIXED_HEADER_LEN + len(inner))
        seal_plain_into(out, 0, inner, device_id=p.device_id, encap_id=p.encap, ptype=ptype,
                        flags=flags)
        p.encap = (p.encap + 1) & 0xFFFF
        return bytes(out)


@dataclass
class Frame:
    """What the data path wrote to the TUN: its virtio header (vnet devices) and packet."""

    vnet: tuple[int, int, int, int, int, int] | None
    packet: bytes

    @property
    def segments(self) -> int:
        """How many inner packets this frame carries (a coalesced one carries several)."""
        if self.vnet is None or self.vnet[1] & ~offload.GSO_ECN == offload.GSO_NONE:
            return 1
        hdr_len, gso = self.vnet[2], self.vnet[3]
        return -(-(len(self.packet) - hdr_len) // gso)


@dataclass
class Outcome:
    frames: list[Frame]
    drops: dict[str, int]
    """How each drop counter grew."""

    @property
    def delivered(self) -> int:
        return sum(f.segments for f in self.frames)

    @property
    def dropped(self) -> int:
        return sum(v for k, v in self.drops.items() if k not in NOT_DROPS)


@dataclass
class RxRig:
    mode: str
    vnet: bool
    endpoint: Endpoint
    far: list[Far]
    datapath: DataPath
    transport: UdpTransport
    tun_ours: socket.socket
    tun_theirs: socket.socket
    thread: threading.Thread
    port: int
    extra: list[socket.socket] = field(default_factory=list)

    @property
    def peers(self) -> list[AnyPeer]:
        return list(self.endpoint.peers)

    def drops(self) -> dict[str, int]:
        return dict(self.endpoint.drops)

    def send(self, sock: socket.socket, datagrams: list[bytes]) -> None:
        """Send ``datagrams`` so they arrive as one GRO batch when they can (equal sizes, the
        last no longer; at most 64, all within one UDP payload), else one by one."""
        dest = (LOOPBACK, self.port)
        size = len(datagrams[0]) if datagrams else 0
        batchable = (1 < len(datagrams) <= 64 and size > 0
                     and all(len(d) == size for d in datagrams[:-1])
                     and 0 < len(datagrams[-1]) <= size
                     and sum(map(len, datagrams)) <= 65507)
        if batchable:
            sock.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", size))],
                         0, dest)
        else:
            for d in datagrams:
                sock.sendto(d, dest)

    def sentinel(self) -> bytes:
        return self.far[0].seal(udp4(addr_of(0), addr_of(0, host=2), SENTINEL))

    def run(self, datagrams: list[bytes], *, sock: socket.socket | None = None) -> Outcome:
        """Send one batch from ``sock`` (peer 0's by default), wait until it was handled."""
        before = self.drops()
        s = sock or self.far[0].sock
        if datagrams:
            self.send(s, datagrams)
        s.sendto(self.sentinel(), (LOOPBACK, self.port))
        frames = self.read_until_sentinel()
        after = self.drops()
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return Outcome(frames, {k: v for k, v in grown.items() if v})

    def read_until_sentinel(self) -> list[Frame]:
        frames: list[Frame] = []
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the data path never handled the sentinel: is the loop dead?"
            assert self.thread.is_alive(), "the receive loop ended"
            r, _, _ = select.select([self.tun_theirs], [], [], min(left, 0.5))
            if not r:
                continue
            raw = self.tun_theirs.recv(1 << 17)
            if self.vnet:
                frame = Frame(offload.VNET.unpack_from(raw), raw[offload.VNET_LEN:])
            else:
                frame = Frame(None, raw)
            if frame.packet.endswith(SENTINEL):
                return frames
            frames.append(frame)

    def close(self) -> None:
        self.datapath.stop.set()
        self.thread.join(timeout=5.0)
        assert not self.thread.is_alive()
        self.transport.close()
        for s in (self.tun_ours, self.tun_theirs, *self.extra, *(f.sock for f in self.far)):
            s.close()


def _identity(keys: Keys, *, far: bool) -> Identity:
    if far:
        return keys.identity_for_a()
    return keys.identity_for_b()


def _exchange(far: Endpoint, near: Endpoint, packets: list[bytes], source: bytes) -> None:
    """Run packets between two Endpoints in memory until quiet (the handshake)."""
    queue = [(far, p) for p in packets]
    while queue:
        src, pkt = queue.pop(0)
        dst = near if src is far else far
        r = dst.receive(pkt, source)
        queue.extend((dst, x) for x in r.replies)


def build(mode: str, *, vnet: bool = True, peers: int = 1,
          cipher: str = "chacha20-poly1305") -> RxRig:
    """A data path in ``mode`` with ``peers`` established far ends (2: a gateway)."""
    clock = FakeClock()
    base = make_keys(mode)
    near_static = base.static_b
    near = Endpoint(mode, cipher, device_id=2, static_private=near_static,
                    has_psk=base.psk is not None, clock=clock)
    routes: AllowedIPs[AnyPeer] = AllowedIPs()
    fars: list[Far] = []
    for i in range(peers):
        keys = base if i == 0 else Keys(
            static_a=noise.generate_private_key() if mode == "ephemeral" else None,
            static_b=near_static, psk=os.urandom(32) if base.psk is not None else None)
        far_dev = 1 + 2 * i
        ours = near.add_peer(f"peer{i}", _identity(keys, far=False), remote_device_id=far_dev,
                             initiates=False)
        for net in NETS[i]:
            routes.insert(net, ours)
        far_ep = Endpoint(mode, cipher, device_id=far_dev,
                          static_private=keys.static_a, has_psk=keys.psk is not None,
                          clock=clock)
        theirs = far_ep.add_peer("near", _identity(keys, far=True), remote_device_id=2,
                                 initiates=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        source = f"{LOOPBACK}|{sock.getsockname()[1]}".encode()
        if isinstance(theirs, Peer):
            first = far_ep.seal(theirs, b"", PacketType.KEEPALIVE)
            _exchange(far_ep, near, first, source)
            assert theirs.sending_keypair() is not None, f"{mode}: no session for peer {i}"
        ours.endpoint = (LOOPBACK, sock.getsockname()[1])
        fars.append(Far(far_ep, theirs, sock, source))
    tun_ours, tun_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (tun_ours, tun_theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    tun = Tun(tun_ours.fileno(), "rxrig", vnet)
    transport = UdpTransport(bind=LOOPBACK)
    assert transport.gro, "this kernel has no UDP_GRO: the rig cannot build batches"
    dp = DataPath(near, tun, transport, routes, threading.RLock(), one_peer=peers == 1)
    thread = threading.Thread(target=dp.run_rx, name=f"rxrig-{mode}", daemon=True)
    rig = RxRig(mode, vnet, near, fars, dp, transport, tun_ours, tun_theirs, thread,
                transport.local_port)
    thread.start()
    rig.run([])  # the loop is up and handles genuine packets
    return rig


def rigs(configs: list[tuple[str, bool, int]]) -> Iterator[RxRig]:
    for mode, vnet, peers in configs:
        rig = build(mode, vnet=vnet, peers=peers)
        try:
            yield rig
        finally:
            rig.close()
