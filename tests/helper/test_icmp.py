"""helper/icmp.py: who an ICMP error to an inner sender comes from."""

from __future__ import annotations

import ipaddress
import struct

from helper import icmp

TUNNEL = ipaddress.IPv4Address("10.44.0.2").packed
"""Our tunnel interface's address."""


def udp4(src: str, dst: str) -> bytes:
    payload = b"x" * 32
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0x4000, 64, 17, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return ip + struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload


def source_and_destination(msg: bytes | None) -> tuple[str, str]:
    assert msg is not None
    return str(ipaddress.IPv4Address(msg[12:16])), str(ipaddress.IPv4Address(msg[16:20]))


def test_an_error_to_a_local_sender_comes_from_the_destination() -> None:
    """Linux drops a packet arriving on the TUN with one of its own addresses as source
    (a martian), so an error for an application on this host cannot come from our address."""
    msg = icmp.too_big(udp4("10.44.0.2", "10.44.0.1"), 1208, from_addr=TUNNEL)
    assert source_and_destination(msg) == ("10.44.0.1", "10.44.0.2")
    assert msg is not None and msg[20:22] == bytes((3, 4))
    assert struct.unpack_from("!H", msg, 26)[0] == 1208


def test_an_error_to_a_forwarded_sender_comes_from_the_tunnel() -> None:
    """A sender behind us (a gateway's LAN) sees the tunnel as the router that reports."""
    msg = icmp.icmp_error(udp4("198.18.200.2", "10.44.0.1"), from_addr=TUNNEL,
                          v4=(3, 1), v6=(1, 3))
    assert source_and_destination(msg) == ("10.44.0.2", "198.18.200.2")


def udp6(src: str, dst: str) -> bytes:
    payload = b"y" * 32
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + udp


def test_finding11_the_sent_ring_keeps_enough_to_quote_an_ipv6_packet() -> None:
    """What the data path records of each sent packet must be enough for icmp_error: an IPv6
    header and the ports behind it (48 bytes), an IPv4 header with options and its ports."""
    ring = icmp.SentRing()
    pkt6 = udp6("fd44:5eed::2", "fd01::1")
    ring.record(0x1234, 1, pkt6[:icmp.QUOTE_LEN])
    quoted = ring.find(0x1234)
    assert quoted is not None
    msg = icmp.icmp_error(quoted, from_addr=ipaddress.IPv6Address("fd44:5eed::2").packed,
                          v4=(3, 1), v6=(1, 3))
    assert msg is not None and msg[40:42] == bytes((1, 3))
    assert msg[48:96] == pkt6[:48]  # the inner IPv6 header and its UDP header, quoted
    opts = bytearray(udp4("10.44.0.2", "10.44.0.1")) + bytes(40)
    opts[0] = 0x4F  # a 60-byte header (40 bytes of options)
    ring.record(0x2000, 1, bytes(opts[:icmp.QUOTE_LEN]))
    msg4 = icmp.icmp_error(ring.find(0x2000) or b"", from_addr=TUNNEL, v4=(3, 1), v6=(1, 3))
    assert msg4 is not None and len(msg4) == 20 + 8 + 60 + 8
