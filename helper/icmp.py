"""ICMP for the inner network: what the tunnel says to an inner sender (RFC 2003 §4-5).

Two jobs. When an inner packet is too big for the tunnel and may not be fragmented, the tunnel
entry answers like a router would: ICMP "fragmentation needed" (IPv4) or "packet too big"
(IPv6) carrying the tunnel MTU, so TCP shrinks its segments instead of stalling. And when the
outer path reports an error about one of our packets, the EncapID it quotes identifies the inner
packet that caused it (``SentRing``), and an ICMP error of the same meaning goes to its sender.
"""

from __future__ import annotations

import struct

from core.wire import internet_checksum

ICMP4_UNREACH = 3
ICMP4_FRAG_NEEDED = 4
ICMP4_TIME_EXCEEDED = 11
ICMP6_UNREACH = 1
ICMP6_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
RING_SIZE = 1024
"""Sends remembered per peer for ICMP matching: about the packets of the last round trip at
gigabit rates (TSO frames count once), bounded whatever the traffic."""
QUOTE_LEN = 68
"""Inner IP header + 8 bytes of transport header: what an ICMP error must quote (RFC 792,
RFC 4443 2.4). The longest header is IPv4's with options (60 bytes); IPv6's is 40, so 28 bytes
(enough for IPv4 without options only) left every IPv6 packet unquotable, its errors unsent."""


def _ip4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, 64,
                                proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr) + payload


def _ip6(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), 58, 64, src, dst) + payload


def _icmp6_checksum(src: bytes, dst: bytes, msg: bytes) -> int:
    pseudo = src + dst + struct.pack("!IxxxB", len(msg), 58)
    data = pseudo + msg + (b"\0" if len(msg) % 2 else b"")
    return internet_checksum(data)


def icmp_error(inner: bytes | memoryview, *, from_addr: bytes, v4: tuple[int, int],
               v6: tuple[int, int], info: int = 0) -> bytes | None:
    """An ICMP error about ``inner`` addressed to its sender, from ``from_addr`` (an address of
    our tunnel interface of the same family), or None if none may be sent (RFC 1812 4.3.2.7:
    never about an ICMP error, a fragment tail, or a multicast/broadcast source).

    When the sender *is* ``from_addr`` (an application on this host, as on every client), the
    error comes from the inner packet's destination instead: Linux drops a packet that arrives
    on the TUN device with one of its own addresses as source (``fib_validate_source``, a
    "martian source"), so an error from our own address would never reach the sender. The
    destination is routed through the tunnel, so even a strict rp_filter accepts it, and the
    receiving stack matches the error to its socket by the quoted headers alone."""
    pkt = bytes(inner)
    if len(pkt) >= 20 and pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if pkt[9] == 1 and len(pkt) > ihl and pkt[ihl] not in (0, 8):
            return None  # an ICMP error (or other non-echo ICMP): never answer with an error
        if struct.unpack_from("!H", pkt, 6)[0] & 0x1FFF or pkt[12] >= 224 or len(from_addr) != 4:
            return None
        src = _reporter(from_addr, sender=pkt[12:16], dst=pkt[16:20], multicast=pkt[16] >= 224)
        quote = pkt[:ihl + 8]
        typ, code = v4
        body = bytearray(struct.pack("!BBHHH", typ, code, 0, 0, info & 0xFFFF) + quote)
        struct.pack_into("!H", body, 2, internet_checksum(body + b"\0" * (len(body) % 2)))
        return _ip4(src, pkt[12:16], 1, bytes(body))
    if len(pkt) >= 40 and pkt[0] >> 4 == 6:
        if pkt[6] == 58 and len(pkt) > 40 and pkt[40] < 128:
            return None
        if pkt[8] == 0xFF or len(from_addr) != 16:
            return None
        src = _reporter(from_addr, sender=pkt[8:24], dst=pkt[24:40], multicast=pkt[24] == 0xFF)
        quote = pkt[:1232 - 48]  # the whole offending packet, as far as the minimum MTU allows
        typ, code = v6
        msg = bytearray(struct.pack("!BBHI", typ, code, 0, info) + quote)
        struct.pack_into("!H", msg, 2, _icmp6_checksum(src, pkt[8:24], bytes(msg)))
        return _ip6(src, pkt[8:24], bytes(msg))
    return None


def _reporter(from_addr: bytes, *, sender: bytes, dst: bytes, multicast: bool) -> bytes:
    """The source of an ICMP error to ``sender`` (see :func:`icmp_error`): our tunnel address,
    unless that is the sender's own, then the (unicast) destination it was sending to."""
    return dst if sender == from_addr and not multicast else from_addr


def too_big(inner: bytes | memoryview, mtu: int, *, from_addr: bytes) -> bytes | None:
    """"Fragmentation needed" / "packet too big" for an inner packet over the tunnel MTU."""
    return icmp_error(inner, from_addr=from_addr, v4=(ICMP4_UNREACH, ICMP4_FRAG_NEEDED),
                      v6=(ICMP6_TOO_BIG, 0), info=mtu)


def dont_fragment(inner: bytes | memoryview) -> bool:
    """May this inner packet not be fragmented on its way (IPv4 DF set, or any IPv6)?"""
    if inner[0] >> 4 == 6:
        return True
    return len(inner) >= 20 and bool(inner[6] & 0x40)


def translate_outer(v4_outer: bool, typ: int, code: int) -> tuple[tuple[int, int],
                                                                    tuple[int, int]] | None:
    """Map an outer ICMP error to the (IPv4, IPv6) error to tell the inner sender, or None.

    RFC 2003 §4: unreachable errors become "host unreachable" for the inner sender (the tunnel
    is its next hop); time exceeded is passed on; fragmentation needed is handled by lowering
    the tunnel MTU instead.
    """
    if v4_outer:
        if typ == ICMP4_UNREACH and code != ICMP4_FRAG_NEEDED:
            return (ICMP4_UNREACH, 1), (ICMP6_UNREACH, 3)
        if typ == ICMP4_TIME_EXCEEDED:
            return (ICMP4_TIME_EXCEEDED, 0), (ICMP6_TIME_EXCEEDED, 0)
        return None
    if typ == ICMP6_UNREACH:
        return (ICMP4_UNREACH, 1), (ICMP6_UNREACH, 3)
    if typ == ICMP6_TIME_EXCEEDED:
        return (ICMP4_TIME_EXCEEDED, 0), (ICMP6_TIME_EXCEEDED, 0)
    return None


class SentRing:
    """EncapIDs of recent sends and the start of the inner packet each carried.

    A TSO frame sealed as N segments is one entry (its first EncapID and the count), so the
    cost in the data path is one list store per frame, not per packet.
    """

    __slots__ = ("_entries", "_pos")

    def __init__(self) -> None:
        self._entries: list[tuple[int, int, bytes] | None] = [None] * RING_SIZE
        self._pos = 0

    def record(self, first_encap: int, count: int, inner_prefix: bytes) -> None:
        self._entries[self._pos] = (first_encap, count, inner_prefix)
        self._pos = (self._pos + 1) % RING_SIZE

    def find(self, encap: int) -> bytes | None:
        """The inner header prefix sent with ``encap``, newest match first."""
        for i in range(RING_SIZE):
            e = self._entries[(self._pos - 1 - i) % RING_SIZE]
            if e is None:
                return None
            start, count, prefix = e
            if (encap - start) & 0xFFFF < count:
                return prefix
        return None
