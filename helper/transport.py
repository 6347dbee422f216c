"""The outer transport: a UDP socket (default) or a raw IP socket (protocol 253).

UDP uses the kernel's segmentation offload both ways when it has them: one ``sendmsg`` carries
up to 64 equal-sized datagrams (UDP_SEGMENT) and one ``recvmsg`` returns a run of datagrams
from one source glued together (UDP_GRO). Support is probed when the socket opens; without it
every datagram is one system call, and everything still works.

Raw IP has neither offload. With the native core in use, its sends and receives are batched
instead (native/src/mmsg.rs): a GSO batch of sealed segments leaves in one ``sendmmsg``, and one
``recvmmsg`` takes up to 64 datagrams, which :meth:`RawTransport.receive` hands out as runs cut
the way the kernel's GRO cuts them (one source, one ECN field, equal sizes but the last), so
the data path treats them as GRO runs. Without it, every datagram is one system call.

Both transports carry the outer ECN field (RFC 6040, core/ecn.py): a send may ask for one (an
IP_TOS / IPV6_TCLASS control message, so one per GSO send; without it the datagrams leave
Not-ECT), and every receive records the one it saw in :attr:`Transport.rx_ecn` (the kernel's GRO
merges only datagrams with the same TOS, so one value holds for a whole run).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from core import native
from core.constants import RAW_IP_PROTOCOL
from core.errors import TunsealError
from helper.policyroute import FWMARK

log = logging.getLogger(__name__)

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_RECVERR = 11
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
IPV6_RECVERR = 25
IP_TOS = 1
IP_RECVTOS = 13
IPV6_RECVTCLASS = 66
IPV6_TCLASS = 67
MAX_GSO_SEGMENTS = 64
"""The kernel's UDP_MAX_SEGMENTS."""
MAX_DATAGRAM = 65507
RECV_BUFFER = 65536 + 4096
_GSO_CMSG_SPACE = socket.CMSG_SPACE(4)
_RX_CMSG_SPACE = _GSO_CMSG_SPACE + socket.CMSG_SPACE(4)
"""Room for the GRO segment size and the TOS / traffic class."""
_INT = struct.Struct("i")
_USHORT = struct.Struct("H")
_TIMEVAL = struct.Struct("@ll")

Address = tuple[str, int] | tuple[str, int, int, int]
SOL_IP = 0
SOL_IPV6 = 41
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_TOS_CMSG = tuple((SOL_IP, IP_TOS, _INT.pack(ecn)) for ecn in range(4))
"""Per outer ECN field: the control message that asks for it on an IPv4 (or v4-mapped) send."""
_TCLASS_CMSG = tuple((SOL_IPV6, IPV6_TCLASS, _INT.pack(ecn)) for ecn in range(4))
"""The same for an IPv6 send."""
_EXT_ERR = struct.Struct("=IBBBBII")
"""struct sock_extended_err: errno, origin, type, code, pad, info, data."""
_MMSG: Any = native.module if hasattr(native.module, "RawRx") else None
"""The raw-IP transport's sendmmsg/recvmmsg batching, when the native core is in use."""
_ADDRESS_CACHE = 4096
"""Outer addresses remembered in their packed form (anyone can send from many)."""


@dataclass(frozen=True, slots=True)
class PathError:
    """An error the kernel queued about one of our outer packets (IP_RECVERR)."""

    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int
    """For "fragmentation needed" / "packet too big" and local EMSGSIZE: the path MTU."""
    destination: Address | None
    """Where the offending packet was going: which peer it was for."""
    payload: bytes
    """The start of the offending outer packet's payload: our Tunseal header."""
    v4: bool

    @property
    def mtu(self) -> int | None:
        frag = (self.origin == SO_EE_ORIGIN_ICMP and self.icmp_type == 3 and self.icmp_code == 4)
        too_big = self.origin == SO_EE_ORIGIN_ICMP6 and self.icmp_type == 2
        local = self.origin == SO_EE_ORIGIN_LOCAL and self.errno == errno.EMSGSIZE
        return self.info if (frag or too_big or local) and self.info else None


class TransportError(TunsealError):
    pass


class NativeRx(NamedTuple):
    """The raw-IP socket that serves one peer, in the form the native receive loop takes."""

    part: RawTransport
    """The transport whose socket it is (its ``rx_ecn``, ``errors_pending``, ``source``)."""
    rx: Any
    """Its native receive batch (``tunseal_native.RawRx``)."""
    fd: int
    addr: bytes
    """The peer's address, packed (4 or 16 bytes), and its IPv6 scope."""
    scope: int
    others: list[int]
    """A listening end's other socket(s): the loop stops when one is readable."""
    poll: bool
    """Wait in poll(2) (non-blocking sockets) rather than in the blocking recvmmsg."""


class Transport:
    """Interface of both transports, as the data path uses it."""

    sock: socket.socket
    gso: bool = False
    gro: bool = False
    kind: str = ""
    rx_ecn: int = 0
    """The outer ECN field of what :meth:`receive` returned last (one datagram or a GRO run:
    the kernel merges only datagrams with equal TOS)."""
    send_flags: int = 0
    """MSG_DONTWAIT once :meth:`block_in_receive` made the socket blocking."""
    errors_pending: bool = False
    """A send failed with an error from the path (EMSGSIZE, ECONNREFUSED, EHOSTUNREACH...).
    Such a send consumes the socket's pending error (sk_err), which is what makes a receive
    fail and the data path read the error queue; so :meth:`receive` raises once on the send's
    behalf. Without this the tx thread, which sends far more often than the rx thread finds
    its queue empty, swallows the path-MTU error of an ICMP "fragmentation needed", every
    later GSO send fails locally with EMSGSIZE (never queued), and the tunnel black-holes
    large packets for good."""

    def send(self, data: bytes | bytearray | memoryview, addr: Address, ecn: int = 0) -> None:
        """Send one datagram with outer ECN field ``ecn`` (0: Not-ECT)."""
        raise NotImplementedError

    def send_segments(self, buf: memoryview, seg: int, addr: Address, ecn: int = 0) -> None:
        """Send ``buf`` as datagrams of ``seg`` bytes (the last may be shorter), all with outer
        ECN field ``ecn``."""
        for off in range(0, len(buf), seg):
            self.send(buf[off:off + seg], addr, ecn)

    def receive(self, buf: bytearray) -> tuple[int, int, Address]:
        """Block for the next datagram (or GRO run): (length, segment size or 0, source); its
        outer ECN field is then in :attr:`rx_ecn`. OSError when the socket has an error to
        report: then call :meth:`read_errors`."""
        raise NotImplementedError

    def _send_failed(self, e: OSError) -> None:
        _note_send_error(e)
        if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
            self.errors_pending = True

    def _raise_pending(self) -> None:
        if self.errors_pending:
            self.errors_pending = False
            raise OSError(errno.EMSGSIZE, "a send met a path error: read the error queue")

    def close(self) -> None:
        self.sock.close()

    def fds(self) -> list[int]:
        """File descriptors to wait on for incoming packets."""
        return [self.sock.fileno()]

    def set_blocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def block_in_receive(self, timeout_ms: int) -> bool:
        """Let :meth:`receive` sleep in the kernel until a datagram arrives (BlockingIOError
        after ``timeout_ms``), while sends still never block (MSG_DONTWAIT): a loop that waits
        in the receive itself has its packet in hand when it wakes, one system call and the
        Python between a ``poll`` and the read sooner. False: this transport cannot (it reads
        several sockets) and stays non-blocking."""
        if len(self.fds()) != 1:
            return False
        self.send_flags = socket.MSG_DONTWAIT
        self.sock.setblocking(True)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             _TIMEVAL.pack(timeout_ms // 1000, timeout_ms % 1000 * 1000))
        return True

    def native_rx(self, addr: Address) -> NativeRx | None:
        """What the native receive loop (`rx_loop_raw`) needs to receive from ``addr`` across
        batches without Python; None: this transport has no native receive (UDP, no module,
        an address it cannot pack)."""
        return None

    def enable_path_errors(self) -> None:
        """Never fragment our datagrams (so the path tells us its MTU) and queue ICMP errors
        for :meth:`read_errors` instead of losing them."""
        v6 = self.sock.family == socket.AF_INET6
        for level, opt, val in ((SOL_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO), (SOL_IP, IP_RECVERR, 1),
                                (SOL_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO),
                                (SOL_IPV6, IPV6_RECVERR, 1)):
            if level == SOL_IPV6 and not v6:
                continue
            try:
                self.sock.setsockopt(level, opt, val)
            except OSError as e:
                log.debug("setsockopt(%d, %d) refused: %s", level, opt, e)

    def read_errors(self, limit: int = 64) -> list[PathError]:
        """Drain the socket's error queue (bounded)."""
        out: list[PathError] = []
        for _ in range(limit):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, 512,
                                                            MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for level, kind, cdata in anc:
                if (level, kind) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
                    continue
                if len(cdata) < _EXT_ERR.size:
                    continue
                err, origin, typ, code, _pad, info, _d = _EXT_ERR.unpack_from(cdata)
                dest: Address | None = None
                if addr:
                    host = str(addr[0])
                    dest = (host[7:] if host.startswith("::ffff:") else host, int(addr[1]))
                out.append(PathError(err, origin, typ, code, info, dest,
                                     self._tunseal_payload(data), level == SOL_IP))
        return out

    def _tunseal_payload(self, data: bytes) -> bytes:
        return data

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])


def _family_for(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpTransport(Transport):
    kind = "udp"

    def __init__(self, *, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                 bind: str = ""):
        self.family = family
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        mark_socket(self.sock)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.sock.bind((bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        except OSError as e:
            self.sock.close()
            raise TransportError(f"cannot listen on UDP port {port}: {e.strerror} "
                                 "(is another tunnel using it?)") from None
        self.gso = self._try(SOL_UDP, UDP_SEGMENT, 0)
        self.gro = self._try(SOL_UDP, UDP_GRO, 1)
        # The outer TOS / traffic class of what arrives (for IPv4 and v4-mapped peers, and for
        # IPv6 ones): the ECN field a router on the path may have marked.
        self._try(SOL_IP, IP_RECVTOS, 1)
        if family == socket.AF_INET6:
            self._try(SOL_IPV6, IPV6_RECVTCLASS, 1)

    def _try(self, level: int, opt: int, value: int) -> bool:
        try:
            self.sock.setsockopt(level, opt, value)
            return True
        except OSError:
            return False

    def _addr(self, addr: Address) -> Address:
        if self.family == socket.AF_INET6 and ":" not in addr[0]:
            return ("::ffff:" + addr[0], addr[1], 0, 0)
        return addr

    def _ecn_cmsg(self, addr: Address, ecn: int) -> tuple[int, int, bytes]:
        # An IPv6 socket sends to a v4-mapped address as IPv4, where only IP_TOS counts.
        v6 = self.family == socket.AF_INET6 and ":" in addr[0]
        return (_TCLASS_CMSG if v6 else _TOS_CMSG)[ecn & 3]

    def send(self, data: bytes | bytearray | memoryview, addr: Address, ecn: int = 0) -> None:
        try:
            if ecn:
                self.sock.sendmsg([data], [self._ecn_cmsg(addr, ecn)], self.send_flags,
                                  self._addr(addr))
            else:
                self.sock.sendto(data, self.send_flags, self._addr(addr))
        except OSError as e:
            self._send_failed(e)

    def send_segments(self, buf: memoryview, seg: int, addr: Address, ecn: int = 0) -> None:
        if not self.gso or len(buf) <= seg:
            super().send_segments(buf, seg, addr, ecn)
            return
        cmsgs = [(SOL_UDP, UDP_SEGMENT, _USHORT.pack(seg))]
        if ecn:
            cmsgs.append(self._ecn_cmsg(addr, ecn))
        try:
            self.sock.sendmsg([buf], cmsgs, self.send_flags, self._addr(addr))
        except OSError as e:
            if e.errno == errno.EIO:
                # Some paths (e.g. a device without checksum offload) refuse GSO: stop using it.
                log.info("UDP GSO refused by the kernel; sending datagrams one by one")
                self.gso = False
                super().send_segments(buf, seg, addr, ecn)
            else:
                self._send_failed(e)
                if e.errno == errno.EMSGSIZE:
                    # A GSO send over the path MTU fails without queueing anything; one plain
                    # datagram queues a local error that carries the path MTU for read_errors.
                    self.send(buf[:seg], addr, ecn)

    def receive(self, buf: bytearray) -> tuple[int, int, Address]:
        self._raise_pending()
        n, anc, _flags, addr = self.sock.recvmsg_into([buf], _RX_CMSG_SPACE)
        seg = ecn = 0
        for level, kind, data in anc:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
                seg = _INT.unpack(data[:4])[0] if len(data) >= 4 else _USHORT.unpack(data[:2])[0]
            elif data and ((level == SOL_IP and kind == IP_TOS)
                           or (level == SOL_IPV6 and kind == IPV6_TCLASS)):
                ecn = data[0] & 3  # a byte (IP_TOS), or a host-order int (little-endian)
        self.rx_ecn = ecn
        if addr and addr[0].startswith("::ffff:"):
            addr = (addr[0][7:], addr[1])
        return n, seg, addr


class RawTransport(Transport):
    """IP protocol 253 (RFC 3692 experimentation): no ports, so one tunnel per address pair.

    Raw sockets see every protocol-253 packet arriving at this host; packets from addresses
    that are not a peer are dropped (and counted) by the engine like any unknown source.
    """

    kind = "raw"

    def __init__(self, *, family: socket.AddressFamily = socket.AF_INET):
        self.family = family
        try:
            self.sock = socket.socket(family, socket.SOCK_RAW, RAW_IP_PROTOCOL)
        except PermissionError:
            raise TransportError("raw IP transport needs root (CAP_NET_RAW)") from None
        mark_socket(self.sock)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        # IPv4 raw sockets hand over the IP header, TOS included; IPv6 ones need a cmsg.
        self._v6 = family == socket.AF_INET6
        if self._v6:
            self.sock.setsockopt(SOL_IPV6, IPV6_RECVTCLASS, 1)
        self._ecn_cmsgs = _TCLASS_CMSG if self._v6 else _TOS_CMSG
        self._rx = _MMSG.RawRx(not self._v6) if _MMSG is not None else None
        """The native receive batch (IPv4 raw sockets hand over the IP header)."""
        self._dests: dict[str, tuple[bytes, int] | None] = {}
        self._sources: dict[tuple[bytes, int], Address] = {}

    def send(self, data: bytes | bytearray | memoryview, addr: Address, ecn: int = 0) -> None:
        try:
            if ecn:
                self.sock.sendmsg([data], [self._ecn_cmsgs[ecn & 3]], self.send_flags,
                                  (addr[0], 0))
            else:
                self.sock.sendto(data, self.send_flags, (addr[0], 0))
        except OSError as e:
            self._send_failed(e)

    def _tunseal_payload(self, data: bytes) -> bytes:
        if self.family == socket.AF_INET and data and data[0] >> 4 == 4:
            return data[(data[0] & 0x0F) * 4:]
        return data

    def send_segments(self, buf: memoryview, seg: int, addr: Address, ecn: int = 0) -> None:
        dest = self._dest(addr[0]) if _MMSG is not None and len(buf) > seg else None
        if dest is None:
            super().send_segments(buf, seg, addr, ecn)
            return
        # All of them in one system call (a datagram the kernel refuses is lost and the next
        # one tried, as with one send each); the first error is handled as a send's.
        _sent, err = _MMSG.send_mmsg(self.sock.fileno(), buf, seg, dest[0], dest[1], ecn,
                                     self.send_flags)
        if err:
            self._send_failed(OSError(err, os.strerror(err)))

    def _dest(self, host: str) -> tuple[bytes, int] | None:
        """``host`` packed for the native send (with its IPv6 scope); None: send it from
        Python, which reports whatever is wrong with it."""
        try:
            return self._dests[host]
        except KeyError:
            pass
        d: tuple[bytes, int] | None = None
        try:
            if self._v6:
                sa = socket.getaddrinfo(host, 0, socket.AF_INET6, socket.SOCK_RAW, 0,
                                        socket.AI_NUMERICHOST)[0][4]
                scope = int(sa[-1]) if len(sa) == 4 else 0
                d = socket.inet_pton(socket.AF_INET6, str(sa[0]).split("%")[0]), scope
            else:
                d = socket.inet_pton(socket.AF_INET, host), 0
        except (OSError, ValueError, IndexError):
            d = None
        if len(self._dests) >= _ADDRESS_CACHE:
            self._dests.clear()
        self._dests[host] = d
        return d

    def native_rx(self, addr: Address) -> NativeRx | None:
        if self._rx is None:
            return None
        dest = self._dest(addr[0])
        if dest is None:
            return None
        return NativeRx(self, self._rx, self.sock.fileno(), dest[0], dest[1], [],
                        not self.sock.getblocking())

    def source(self, packed: bytes, scope: int) -> Address:
        """The source address as ``recvfrom`` gives it, from the native receive's bytes."""
        return self._source(packed, scope)

    def _source(self, packed: bytes, scope: int) -> Address:
        """The source address as ``recvfrom`` gives it, from the native receive's bytes."""
        key = (packed, scope)
        a = self._sources.get(key)
        if a is None:
            if len(packed) == 4:
                host = socket.inet_ntop(socket.AF_INET, packed)
            else:
                host = socket.inet_ntop(socket.AF_INET6, packed)
                if scope:
                    host = socket.getnameinfo((host, 0, 0, scope), socket.NI_NUMERICHOST)[0]
            if len(self._sources) >= _ADDRESS_CACHE:
                self._sources.clear()
            a = self._sources[key] = (host, 0)
        return a

    def receive(self, buf: bytearray) -> tuple[int, int, Address]:
        self._raise_pending()
        rx = self._rx
        if rx is not None:
            # The next run of the last recvmmsg batch (a new batch when none is left), its
            # IP header (IPv4) stripped: (length, segment size, source) as a UDP GRO run's.
            n, seg, self.rx_ecn, packed, scope = rx.receive(self.sock.fileno(), buf, 0)
            return n, seg, self._source(packed, scope)
        if self._v6:
            n, anc, _flags, addr = self.sock.recvmsg_into([buf], _RX_CMSG_SPACE)
            ecn = 0
            for level, kind, data in anc:
                if level == SOL_IPV6 and kind == IPV6_TCLASS and data:
                    ecn = data[0] & 3
            self.rx_ecn = ecn
            return n, 0, (addr[0], 0)
        n, addr = self.sock.recvfrom_into(buf)
        # IPv4 raw sockets deliver the IP header too (its TOS byte holds the ECN field).
        self.rx_ecn = buf[1] & 3 if n >= 2 else 0
        ihl = min((buf[0] & 0x0F) * 4, n) if n else 0
        buf[:n - ihl] = buf[ihl:n]
        n -= ihl
        return n, 0, (addr[0], 0)

    @property
    def local_port(self) -> int:
        return 0


class DualRawTransport(Transport):
    """A listening raw-IP end: one raw socket per address family, because a peer may reach it
    over IPv4 or IPv6 and a raw socket serves one family only."""

    kind = "raw"

    def __init__(self) -> None:
        self.parts = [RawTransport(family=socket.AF_INET)]
        try:
            self.parts.append(RawTransport(family=socket.AF_INET6))
        except (TransportError, OSError) as e:
            log.info("no IPv6 raw socket (%s): listening on IPv4 only", e)
        self.sock = self.parts[0].sock

    def _part(self, addr: Address) -> RawTransport:
        return self.parts[-1] if ":" in addr[0] else self.parts[0]

    def send(self, data: bytes | bytearray | memoryview, addr: Address, ecn: int = 0) -> None:
        self._part(addr).send(data, addr, ecn)

    def receive(self, buf: bytearray) -> tuple[int, int, Address]:
        for part in self.parts:
            try:
                got = part.receive(buf)
            except BlockingIOError:
                continue
            self.rx_ecn = part.rx_ecn
            return got
        raise BlockingIOError

    def fds(self) -> list[int]:
        return [p.sock.fileno() for p in self.parts]

    def native_rx(self, addr: Address) -> NativeRx | None:
        part = self._part(addr)
        got = part.native_rx(addr)
        if got is None:
            return None
        # Both sockets are non-blocking here (block_in_receive declines two): the loop polls
        # both and leaves when the other one is readable.
        others = [p.sock.fileno() for p in self.parts if p is not part]
        return got._replace(others=others, poll=True)

    def set_blocking(self, flag: bool) -> None:
        for p in self.parts:
            p.sock.setblocking(flag)

    def enable_path_errors(self) -> None:
        for p in self.parts:
            p.enable_path_errors()

    def read_errors(self, limit: int = 64) -> list[PathError]:
        return [e for p in self.parts for e in p.read_errors(limit)]

    def close(self) -> None:
        for p in self.parts:
            p.close()

    @property
    def local_port(self) -> int:
        return 0


def mark_socket(sock: socket.socket) -> None:
    """Give the helper's own outer packets FWMARK: the full tunnel's policy rule lets them use
    the main table, and the lockdown table lets them (and only them) reach the endpoint."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, FWMARK)
    except OSError as e:  # without CAP_NET_ADMIN: no full tunnel or lockdown can work anyway
        log.warning("cannot mark the transport socket (SO_MARK): %s", e)


def _note_send_error(e: OSError) -> None:
    # A send can fail for reasons that pass (no route yet, buffer full, ICMP-induced errors on
    # a later send): the packet is lost like any other, and upper layers retransmit.
    if e.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOBUFS, errno.EAGAIN,
                       errno.ECONNREFUSED, errno.EMSGSIZE, errno.EPERM, errno.ENETDOWN):
        raise e


def open_transport(kind: str, *, port: int = 0, ipv6: bool = False,
                   listening: bool = False) -> Transport:
    """``listening``: the end waits for peers, which may come over either address family."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    if kind == "udp":
        return UdpTransport(port=port, family=family)
    if kind == "raw":
        return DualRawTransport() if listening else RawTransport(family=family)
    raise TransportError(f"unknown transport {kind!r}; choose udp or raw")

