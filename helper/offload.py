"""TCP segmentation and coalescing around the TUN device's virtio_net_hdr.

Transmit: the kernel hands over a TCP super-packet (up to 64 KB) with a virtio header. We cut it
into MSS-sized segments, each a valid TCP/IP packet except for its TCP checksum, which holds
only the pseudo-header sum; the packet goes out flagged CSUM_PARTIAL and the far end's kernel
completes the sum. Each segment is sealed on its own, so a lost outer datagram costs one
segment, as it would on a plain link.

Receive: consecutive segments of one TCP flow are glued back into one super-packet and written
with a GSO virtio header, so the kernel's TCP stack sees one 64 KB packet instead of 45.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from core import ecn
from core import native as _native
from core.constants import DATA_HEADER_LEN, FIXED_HEADER_LEN, TAG_LEN, Flag, PacketType
from core.session import DATA_CONST, DATA_HEADER, SEALED_FLAGS, Keypair

VNET = struct.Struct("<BBHHHH")
"""virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset. TUN uses the
host's byte order unless TUNSETVNETBE is set; every platform we ship for is little-endian."""
VNET_LEN = VNET.size
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
PROTO_TCP = 6
PROTO_UDP = 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
MAX_COALESCED = 65535 - 60
_GSO_BUDGET = 65000
_MAX_SEGMENTS = 64
"""Datagrams per GSO send at most: the kernel's UDP_MAX_SEGMENTS (as transport.py's
MAX_GSO_SEGMENTS and the native cutters' cap)."""
"""Bytes of sealed datagrams per GSO send (the UDP payload limit is 65,507)."""
_PLAIN_VNET = VNET.pack(0, GSO_NONE, 0, 0, 0, 0)
_CONT = int(Flag.CONTINUATION)
_CSUM_FLAG = int(Flag.CSUM_PARTIAL)
_PLAIN_HDR = struct.Struct("!BBHHHHH")
_NO_MERGE = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR
_TCP_FIELDS = struct.Struct("!4sIIBBH")
"""TCP ports, seq, ack, data offset, flags, window."""

Emit = Callable[[memoryview, bool], None]
"""Receives one inner packet and whether its transport checksum is partial."""


def _fold(x: int) -> int:
    return x % 0xFFFF or 0xFFFF


def _pseudo_v4(pkt: memoryview, proto: int) -> int:
    return int.from_bytes(pkt[12:20], "big") + proto


def _pseudo_v6(pkt: memoryview, proto: int) -> int:
    return int.from_bytes(pkt[8:40], "big") + proto


def segment(frame: memoryview, emit: Emit, scratch: bytearray) -> int:
    """Split one frame read from a vnet TUN into inner packets; return how many were emitted.

    ``scratch`` is a reusable buffer of at least 65536 bytes for building segments.
    """
    if len(frame) < VNET_LEN:
        return 0
    flags, gso_type, _hdr_len, gso_size, csum_start, _csum_off = VNET.unpack_from(frame)
    pkt = frame[VNET_LEN:]
    partial = bool(flags & F_NEEDS_CSUM)
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE or len(pkt) < 40:
        emit(pkt, partial)
        return 1
    if kind not in (GSO_TCPV4, GSO_TCPV6) or not partial or gso_size == 0:
        return 0  # we never enable UFO/USO, so the kernel sends nothing else; drop defensively
    v4 = kind == GSO_TCPV4
    ip_len = csum_start
    # The kernel never hands over anything else; checked so a frame cannot make us write
    # headers outside the segment (an IP header shorter than its version's) or lengths that
    # do not fit their 16-bit fields.
    if ip_len < (20 if v4 else 40) or len(pkt) < ip_len + 20 or len(pkt) > 0xFFFF:
        return 0
    tcp_len_hdr = (pkt[ip_len + 12] >> 4) * 4
    hl = ip_len + tcp_len_hdr
    payload = len(pkt) - hl
    if payload <= 0 or tcp_len_hdr < 20 or hl > len(pkt):
        return 0
    out = memoryview(scratch)
    out[:hl] = pkt[:hl]
    seq0 = int.from_bytes(pkt[ip_len + 4:ip_len + 8], "big")
    tcp_flags = pkt[ip_len + 13]
    if v4:
        ip_id0 = int.from_bytes(pkt[4:6], "big")
        out[10:12] = b"\0\0"
        out[2:4] = b"\0\0"
        out[4:6] = b"\0\0"
        ip_base = int.from_bytes(out[:ip_len], "big")
        pseudo = _pseudo_v4(pkt, PROTO_TCP)
    else:
        pseudo = _pseudo_v6(pkt, PROTO_TCP)
    count = 0
    off = hl
    last_flags_mask = 0xFF
    mid_flags_mask = ~(TCP_FIN | TCP_PSH) & 0xFF
    while off < len(pkt):
        n = min(gso_size, len(pkt) - off)
        last = off + n >= len(pkt)
        seg_total = hl + n
        if v4:
            ip_id = (ip_id0 + count) & 0xFFFF
            csum = ~_fold(ip_base + seg_total + ip_id) & 0xFFFF
            struct.pack_into("!HH", out, 2, seg_total, ip_id)
            struct.pack_into("!H", out, 10, csum)
        else:
            struct.pack_into("!H", out, 4, seg_total - 40)
        seq = (seq0 + off - hl) & 0xFFFFFFFF
        fl = tcp_flags & (last_flags_mask if last else mid_flags_mask)
        if count:
            fl &= ~TCP_CWR & 0xFF
        struct.pack_into("!I", out, ip_len + 4, seq)
        out[ip_len + 13] = fl
        struct.pack_into("!H", out, ip_len + 16, _fold(pseudo + seg_total - ip_len))
        out[hl:seg_total] = pkt[off:off + n]
        emit(out[:seg_total], True)
        count += 1
        off += n
    return count


class Coalescer:
    """Collects received inner packets and writes them to the TUN device, merging runs of
    in-order TCP segments of one flow into GSO super-packets."""

    __slots__ = (
        "_bufs",
        "_count",
        "_drop",
        "_gso",
        "_hl",
        "_ip_len",
        "_key",
        "_mark",
        "_next_seq",
        "_owner",
        "_psh",
        "_size",
        "_v4",
        "_write",
        "outer_ecn",
    )

    def __init__(self, write: Callable[[bytes | bytearray], object],
                 drop: Callable[[str], None] | None = None,
                 mark: Callable[[int], None] | None = None):
        """``mark(n)``: ``n`` inner packets were marked CE for an outer CE (RFC 6040)."""
        self._write = write
        self._drop = drop or (lambda reason: None)
        self._mark = mark or (lambda n: None)
        self.outer_ecn = 0
        """The outer ECN field of the receive batch being added (the caller sets it per batch,
        and flushes at the end of each): applied to every frame on its way out."""
        self._bufs: list[bytes | memoryview] = []
        self._key: tuple[object, ...] = ()
        self._next_seq = 0
        self._gso = 0
        self._count = 0
        self._size = 0
        self._hl = 0
        self._ip_len = 0
        self._v4 = True
        self._psh = False
        self._owner: object = None

    def add(self, pkt: bytes, partial: bool, owner: object = None) -> None:
        """Queue one inner packet from ``owner`` (the peer it came from); call :meth:`flush`
        at the end of a receive batch. A packet that cannot be what it claims (a partial
        checksum that would lie outside it, a TCP header shorter than 20 bytes) is dropped and
        counted ``malformed_inner``: the kernel must never be asked to act on it."""
        n = len(pkt)
        if partial and n >= 40:
            if pkt[0] == 0x45 and pkt[9] == PROTO_TCP and not pkt[6] & 0x3F:
                # The common case first, inline: the next in-order segment of the run being
                # built (same flow, ack, window, options, TOS and TTL as its first segment,
                # so the same valid header length; and exactly as long as it says).
                if self._count:
                    ports, seq, ack, doff, flags, win = _TCP_FIELDS.unpack_from(pkt, 20)
                    hl = 20 + (doff >> 4) * 4
                    payload = n - hl
                    key = self._key
                    if (seq == self._next_seq and hl == self._hl and 0 < payload <= self._gso
                            and not flags & _NO_MERGE and ports == key[1] and ack == key[2]
                            and win == key[4] and pkt[12:20] == key[0]
                            and pkt[38:hl] == key[5] and pkt[1] | pkt[8] << 8 == key[6]
                            and pkt[2] << 8 | pkt[3] == n
                            and self._size + payload <= MAX_COALESCED):
                        self._next_seq = (seq + payload) & 0xFFFFFFFF
                        self._append(pkt, hl, payload, flags)
                        return
                self._add_tcp(pkt, 20, True, owner)
                return
            if pkt[0] >> 4 == 6 and pkt[6] == PROTO_TCP and n >= 60:
                self._add_tcp(pkt, 40, False, owner)
                return
        self.flush()
        self._emit_single(pkt, partial)

    def continue_run(self, pkt: bytes, owner: object = None) -> bool:
        """Append a segment the sender flagged CONTINUATION of the previous one (which the
        caller checked: consecutive counter, same session) if the open run is ``owner``'s. No
        header comparison: the flag says it belongs to the run, and a peer can only garble
        its own flow by lying, never glue its bytes onto another peer's."""
        hl = self._hl
        payload = len(pkt) - hl
        if (not self._count or owner is not self._owner or payload <= 0
                or payload > self._gso or self._size + payload > MAX_COALESCED):
            return False
        flags = pkt[self._ip_len + 13]  # hl >= ip_len + 20 (checked when the run began)
        if flags & _NO_MERGE:
            return False
        self._append(pkt, hl, payload, flags)
        return True

    def _append(self, pkt: bytes, hl: int, payload: int, flags: int) -> None:
        """Add a segment's payload to the open run; a short or pushed segment ends it."""
        self._bufs.append(memoryview(pkt)[hl:])
        self._count += 1
        self._size += payload
        if payload < self._gso or flags & TCP_PSH:
            self._psh = bool(flags & TCP_PSH)
            self.flush()

    def reset(self) -> None:
        """Forget the open run without writing it (after a receive batch failed half-way)."""
        self._bufs = []
        self._count = 0
        self._owner = None

    def _emit_single(self, pkt: bytes, partial: bool) -> None:
        if partial:
            n = len(pkt)
            v = pkt[0] >> 4 if n else 0
            if v == 4 and n >= 20:
                ip_len, proto = (pkt[0] & 0x0F) * 4, pkt[9]
            elif v == 6 and n >= 40:
                ip_len, proto = 40, pkt[6]
            else:
                self._drop("malformed_inner")
                return
            off = 16 if proto == PROTO_TCP else 6
            if ip_len < 20 or ip_len + off + 2 > n:
                self._drop("malformed_inner")  # the checksum to complete lies outside it
                return
            hdr = VNET.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ip_len, off)
        else:
            hdr = _PLAIN_VNET
        if ecn.REWRITES[self.outer_ecn]:
            frame = bytearray(hdr)
            frame += pkt
            if not self._decap(frame, VNET_LEN, 1):
                return
            self._write(frame)
        else:
            self._write(hdr + pkt)

    def _decap(self, buf: bytearray, off: int, count: int) -> bool:
        """RFC 6040 decapsulation of the frame at ``buf[off:]`` that carries ``count`` inner
        packets (a merged run carries its first segment's header, and the segments of a run
        share their ECN field: the Coalescer merges only equal TOS / traffic class, and a
        CONTINUATION run comes from one TSO frame). False: dropped (Not-ECT under CE)."""
        verdict = ecn.apply(buf, off, self.outer_ecn)
        if verdict == ecn.DROP:
            for _ in range(count):
                self._drop("ecn_not_ect_ce")
            return False
        if verdict == ecn.MARKED:
            self._mark(count)
        return True

    def _add_tcp(self, pkt: bytes, ip_len: int, v4: bool, owner: object) -> None:
        th = ip_len
        n = len(pkt)
        ports, seq, ack, doff, flags, win = _TCP_FIELDS.unpack_from(pkt, th)
        hl = ip_len + (doff >> 4) * 4
        if doff >> 4 < 5 or hl > n:
            self.flush()
            self._drop("malformed_inner")  # no TCP header is shorter than 20 bytes
            return
        payload = n - hl
        length = (pkt[2] << 8 | pkt[3]) if v4 else (pkt[4] << 8 | pkt[5]) + 40
        if payload <= 0 or flags & _NO_MERGE or length != n:
            self.flush()
            self._emit_single(pkt, True)
            return
        # Everything but seq, flags and checksums must match for segments to merge, so the
        # merged packet tells TCP exactly what its parts did: addresses, ports, ack, window,
        # options (timestamps), and TOS/TTL (IPv4) or traffic class/flow (IPv6).
        key = (pkt[12:20] if v4 else pkt[8:40], ports, ack, doff, win, pkt[th + 18:hl],
               pkt[1] | pkt[8] << 8 if v4 else pkt[0:4])  # the fast path in add() mirrors this
        if (self._count and seq == self._next_seq and key == self._key
                and owner is self._owner
                and payload <= self._gso and self._size + payload <= MAX_COALESCED):
            self._bufs.append(memoryview(pkt)[hl:])
            self._count += 1
            self._size += payload
            self._next_seq = (seq + payload) & 0xFFFFFFFF
            if payload < self._gso or flags & TCP_PSH:
                self._psh = bool(flags & TCP_PSH)
                self.flush()  # a short or pushed segment ends the run
            return
        self.flush()
        self._bufs = [pkt]
        self._key = key
        self._owner = owner
        self._count = 1
        self._gso = payload
        self._size = payload
        self._hl = hl
        self._ip_len = ip_len
        self._v4 = v4
        self._psh = False
        self._next_seq = (seq + payload) & 0xFFFFFFFF
        if flags & TCP_PSH:
            self.flush()

    def flush(self) -> None:
        if not self._count:
            return
        if self._count == 1:
            pkt = self._bufs[0]
            assert isinstance(pkt, bytes)
            self._bufs = []
            self._count = 0
            self._emit_single(pkt, True)
            return
        first = self._bufs[0]
        hl, ip_len = self._hl, self._ip_len
        total = hl + self._size
        head = bytearray(first[:hl])
        if self._psh:
            head[ip_len + 13] |= TCP_PSH  # the run's last segment pushed; so does the whole
        if self._v4:
            struct.pack_into("!H", head, 2, total)
            head[10:12] = b"\0\0"
            csum = ~_fold(int.from_bytes(head[:ip_len], "big")) & 0xFFFF
            struct.pack_into("!H", head, 10, csum)
            pseudo = int.from_bytes(head[12:20], "big") + PROTO_TCP
            gso_type = GSO_TCPV4
        else:
            struct.pack_into("!H", head, 4, total - 40)
            pseudo = int.from_bytes(head[8:40], "big") + PROTO_TCP
            gso_type = GSO_TCPV6
        struct.pack_into("!H", head, ip_len + 16, _fold(pseudo + total - ip_len))
        if ecn.REWRITES[self.outer_ecn] and not self._decap(head, 0, self._count):
            self._bufs = []
            self._count = 0
            return
        vnet = VNET.pack(F_NEEDS_CSUM, gso_type, hl, self._gso, ip_len, 16)
        parts: list[bytes | bytearray | memoryview] = [vnet, head, memoryview(first)[hl:]]
        parts.extend(self._bufs[1:])
        self._write(b"".join(parts))
        self._bufs = []
        self._count = 0



# --- fused segment-and-seal for the common case ----------------------------------------------
# A TSO super-packet to a peer with a live session: one loop builds each segment's TCP/IP
# header with a single struct call, copies the payload slice, and seals it straight into the
# GSO output buffer. This is segment() + Keypair.seal_into() without the per-segment function
# calls, which is most of what a segment costs in CPython.

_V4HDR = struct.Struct("!BBHHHBBH4s4sHHIIBBHH")
"""IPv4 header (no options) + the TCP header up to and including the checksum."""
_V6HDR = struct.Struct("!IHBB16s16sHHIIBBHH")
"""IPv6 header + the TCP header up to and including the checksum."""


def tso_segment_size(frame: memoryview) -> int:
    """Size of the segments (headers included) a TSO frame asks to be cut into."""
    if len(frame) < VNET_LEN:
        return 0
    _f, _t, _hl, gso_size, ip_len, _co = VNET.unpack_from(frame)
    pkt = frame[VNET_LEN:]
    if len(pkt) < ip_len + 13:
        return 0
    return int(ip_len + (pkt[ip_len + 12] >> 4) * 4 + gso_size)


def plain_frame(packet: bytes) -> bytes:
    """A packet with the virtio header a vnet TUN write needs (no offload requested)."""
    return _PLAIN_VNET + packet


class _Tso:
    """A TCP super-packet from the TUN device, parsed once, and the header of each segment
    cut from it (every field that differs between segments is recomputed; the IPv4 header
    checksum and the TCP pseudo-header sum arithmetically, without a pass over the bytes)."""

    __slots__ = ("ack", "doff", "dst", "flags", "frag", "gso", "hl", "ip_base", "ip_id0",  # noqa: RUF023
                 "ip_len", "mid_flags", "pkt", "pseudo", "seq0", "sport_dport", "src", "total",
                 "tos", "ttl", "v4", "vtf", "win")
    pkt: memoryview
    src: bytes
    dst: bytes
    sport_dport: tuple[int, int]
    v4: bool
    ack: int
    doff: int
    flags: int
    frag: int
    gso: int
    hl: int
    ip_base: int
    ip_id0: int
    ip_len: int
    mid_flags: int
    pseudo: int
    seq0: int
    total: int
    tos: int
    ttl: int
    vtf: int
    win: int

    @classmethod
    def parse(cls, frame: memoryview, mtu: int) -> _Tso | None:
        """None unless ``frame`` is a TCP TSO frame we can cut (IPv4 without options, or
        IPv6 with TCP right after the fixed header)."""
        if len(frame) < VNET_LEN:
            return None
        _flags, gso_type, _hl, gso_size, ip_len, _co = VNET.unpack_from(frame)
        pkt = frame[VNET_LEN:]
        kind = gso_type & ~GSO_ECN
        t = cls()
        t.pkt, t.total, t.ip_len = pkt, len(pkt), ip_len
        if kind == GSO_TCPV4:
            if t.total < 40 or ip_len != 20 or pkt[0] != 0x45:
                return None
            (_vihl, t.tos, _tl, t.ip_id0, t.frag, t.ttl, _proto, _c, t.src, t.dst, sport, dport,
             t.seq0, t.ack, t.doff, t.flags, t.win, _tc) = _V4HDR.unpack_from(pkt)
            t.v4, t.vtf = True, 0
            addrs = int.from_bytes(t.src + t.dst, "big")
            t.ip_base = (0x4500 | t.tos) + t.frag + (t.ttl << 8) + PROTO_TCP + addrs
        elif kind == GSO_TCPV6:
            if t.total < 60 or ip_len != 40 or pkt[6] != PROTO_TCP:
                return None
            (t.vtf, _pl, _nh, t.ttl, t.src, t.dst, sport, dport, t.seq0, t.ack, t.doff, t.flags,
             t.win, _tc) = _V6HDR.unpack_from(pkt)
            t.v4, t.tos, t.frag, t.ip_id0, t.ip_base = False, 0, 0, 0, 0
            addrs = int.from_bytes(t.src + t.dst, "big")
        else:
            return None
        t.sport_dport = (sport, dport)
        t.pseudo = addrs + PROTO_TCP
        thl = (t.doff >> 4) * 4
        t.hl = ip_len + thl
        if thl < 20 or t.hl >= t.total or gso_size == 0:
            return None
        # Cut to fit the tunnel MTU even if TCP asked for larger segments: after the path MTU
        # dropped, data already queued still gets through (TCP accepts any segmentation).
        t.gso = gso_size if t.hl + gso_size <= mtu else max(8, mtu - t.hl)
        t.mid_flags = t.flags & ~(TCP_FIN | TCP_PSH)
        return t

    def header(self, buf: bytearray, at: int, count: int, pos: int, n: int, last: bool) -> int:
        """Write the TCP/IP header of the segment with payload ``pkt[pos:pos+n]`` (the
        ``count``-th) at ``buf[at:]``; return the segment's total length."""
        hl, ip_len = self.hl, self.ip_len
        seg_total = hl + n
        fl = (self.flags if last else self.mid_flags) & (0xFF if count == 0 else ~TCP_CWR)
        seq = (self.seq0 + pos - hl) & 0xFFFFFFFF
        tcp_csum = (self.pseudo + seg_total - ip_len) % 0xFFFF or 0xFFFF
        sport, dport = self.sport_dport
        if self.v4:
            ip_id = (self.ip_id0 + count) & 0xFFFF
            ip_csum = ~((self.ip_base + seg_total + ip_id) % 0xFFFF or 0xFFFF) & 0xFFFF
            _V4HDR.pack_into(buf, at, 0x45, self.tos, seg_total, ip_id, self.frag, self.ttl,
                             PROTO_TCP, ip_csum, self.src, self.dst, sport, dport, seq,
                             self.ack, self.doff, fl, self.win, tcp_csum)
        else:
            _V6HDR.pack_into(buf, at, self.vtf, seg_total - 40, PROTO_TCP, self.ttl, self.src,
                             self.dst, sport, dport, seq, self.ack, self.doff, fl, self.win,
                             tcp_csum)
        # urgent pointer and options: the same in every segment
        buf[at + ip_len + 18:at + hl] = self.pkt[ip_len + 18:hl]
        return seg_total


def seal_tso(frame: memoryview, kp: Keypair, out: bytearray, off: int, scratch: bytearray,
             flush: Callable[[int, int], int], mtu: int = 65535) -> tuple[int, int, int, int]:
    """Segment a vnet TSO frame and seal every segment into ``out`` from ``off``.

    ``flush(end, seg)`` is called when the next segment would overflow the GSO budget; it sends
    ``out[:end]`` as segments of ``seg`` bytes and returns the new offset (0). Returns
    ``(off, seg, count, inner_bytes)`` for the caller's batch, or ``count == -1`` if the frame
    is not a TCP TSO frame we can cut (the caller then uses the generic path).
    """
    if kp.native is not None:  # a keypair with a native half is sealed by the native core
        assert _native.built is not None  # (only made when the module is built)
        off, seg, count, nbytes, first = _native.built.seal_tso(kp.native, frame, out, off,
                                                               flush, mtu)
        if count > 0:
            kp.send_counter = first + count
        return off, seg, count, nbytes
    t = _Tso.parse(frame, mtu)
    if t is None:
        return off, 0, -1, 0
    pkt, total, hl, gso_size, ip_len = t.pkt, t.total, t.hl, t.gso, t.ip_len
    aead, nonces, device_id, index = kp.sealing_parts()
    smv = memoryview(scratch)
    omv = memoryview(out)
    encrypt_into = aead.encrypt_into
    pack_hdr = DATA_HEADER.pack_into
    # _Tso.header's work, inlined with local variables: a method call and attribute look-ups
    # per segment cost ~13 % of this loop under callgrind, and this is the hottest loop.
    v4, tos, frag, ttl, src, dst, ack, doff, win, vtf = (t.v4, t.tos, t.frag, t.ttl, t.src,
                                                        t.dst, t.ack, t.doff, t.win, t.vtf)
    sport, dport = t.sport_dport
    seq0, pseudo, ip_base, ip_id0 = t.seq0, t.pseudo, t.ip_base, t.ip_id0
    tcp_flags, mid_flags = t.flags, t.mid_flags
    smv[ip_len + 18:hl] = pkt[ip_len + 18:hl]  # urgent pointer and options: same throughout
    vt = 0x10 | PacketType.DATA
    sealed_flags = int(SEALED_FLAGS | Flag.CSUM_PARTIAL)
    const = DATA_CONST + (vt << 8) + device_id + sealed_flags + index
    seg = 0
    count = batch = 0
    pos = hl
    counter = kp.send_counter
    while pos < total:
        n = total - pos
        last = n <= gso_size
        if not last:
            n = gso_size
        seg_total = hl + n
        fl = (tcp_flags if last else mid_flags) & (0xFF if count == 0 else ~TCP_CWR)
        seq = (seq0 + pos - hl) & 0xFFFFFFFF
        tcp_csum = (pseudo + seg_total - ip_len) % 0xFFFF or 0xFFFF
        if v4:
            ip_id = (ip_id0 + count) & 0xFFFF
            ip_csum = ~((ip_base + seg_total + ip_id) % 0xFFFF or 0xFFFF) & 0xFFFF
            _V4HDR.pack_into(scratch, 0, 0x45, tos, seg_total, ip_id, frag, ttl, PROTO_TCP,
                             ip_csum, src, dst, sport, dport, seq, ack, doff, fl, win, tcp_csum)
        else:
            _V6HDR.pack_into(scratch, 0, vtf, seg_total - 40, PROTO_TCP, ttl, src, dst, sport,
                             dport, seq, ack, doff, fl, win, tcp_csum)
        smv[hl:seg_total] = pkt[pos:pos + n]
        size = DATA_HEADER_LEN + seg_total + TAG_LEN
        if count and (size > seg or off + size > _GSO_BUDGET or batch >= _MAX_SEGMENTS):
            off = flush(off, seg)
            seg = batch = 0
        batch += 1
        counter = next(nonces)
        encap = counter & 0xFFFF
        cont = _CONT if count else 0
        csum = ~((const + seg_total + encap + counter + cont) % 0xFFFF or 0xFFFF) & 0xFFFF
        pack_hdr(out, off, vt, 7, seg_total, device_id, encap, sealed_flags | cont, csum,
                 0x82, 4, index, 0x81, 8, counter)
        end = off + DATA_HEADER_LEN
        encrypt_into(counter.to_bytes(12, "big"), smv[:seg_total], omv[off:end],
                     omv[end:end + seg_total + TAG_LEN])
        if not seg:
            seg = size
        off += size
        count += 1
        pos += n
    kp.send_counter = counter + 1
    return off, seg, count, total - hl + count * hl


def frame_tso_plain(frame: memoryview, device_id: int, encap: int, out: bytearray, off: int,
                    flush: Callable[[int, int], int],
                    mtu: int = 65535) -> tuple[int, int, int, int, int]:
    """`plain` mode's seal_tso: segments framed with the 12-byte header, built in place in
    ``out``. Returns ``(off, seg, count, inner_bytes, next_encap)``; count -1: not cuttable."""
    t = _Tso.parse(frame, mtu)
    if t is None:
        return off, 0, -1, 0, encap
    pkt, total, hl, gso_size = t.pkt, t.total, t.hl, t.gso
    omv = memoryview(out)
    header = t.header
    pack_plain = _PLAIN_HDR.pack_into
    vt = 0x10 | PacketType.DATA
    base = (vt << 8) + 3 + device_id + _CSUM_FLAG
    seg = 0
    count = batch = 0
    pos = hl
    while pos < total:
        n = total - pos
        last = n <= gso_size
        if not last:
            n = gso_size
        size = FIXED_HEADER_LEN + hl + n
        if count and (size > seg or off + size > _GSO_BUDGET or batch >= _MAX_SEGMENTS):
            off = flush(off, seg)
            seg = batch = 0
        batch += 1
        seg_total = header(out, off + FIXED_HEADER_LEN, count, pos, n, last)
        omv[off + FIXED_HEADER_LEN + hl:off + size] = pkt[pos:pos + n]
        cont = _CONT if count else 0
        csum = ~((base + seg_total + encap + cont) % 0xFFFF or 0xFFFF) & 0xFFFF
        pack_plain(out, off, vt, 3, seg_total, device_id, encap, _CSUM_FLAG | cont, csum)
        encap = (encap + 1) & 0xFFFF
        if not seg:
            seg = size
        off += size
        count += 1
        pos += n
    return off, seg, count, total - hl + count * hl, encap
