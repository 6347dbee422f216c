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
