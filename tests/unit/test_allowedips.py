"""helper/allowedips.py without namespaces: longest-prefix match both ways, removal, junk."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from helper.allowedips import AllowedIPs


def v4(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def v6(addr: str) -> int:
    return int(ipaddress.IPv6Address(addr))


def ipv4_packet(src: str, dst: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)


def ipv6_packet(src: str, dst: str) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, 0, 17, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed)


@pytest.fixture
def table() -> AllowedIPs[str]:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/8", "wide")
    t.insert("10.1.0.0/16", "site")
    t.insert("10.1.2.3/32", "host")
    t.insert("0.0.0.0/0", "default")
    t.insert("fd00::/8", "ula")
    t.insert("fd00:1::/64", "lan6")
    return t


@pytest.mark.parametrize(("addr", "owner"), [
    ("10.1.2.3", "host"), ("10.1.2.4", "site"), ("10.200.0.1", "wide"), ("192.0.2.1", "default"),
])
def test_longest_prefix_wins_v4(table: AllowedIPs[str], addr: str, owner: str) -> None:
    assert table.lookup_v4(v4(addr)) == owner


@pytest.mark.parametrize(("addr", "owner"), [
    ("fd00:1::5", "lan6"), ("fd00:2::5", "ula"), ("2001:db8::1", None),
])
def test_longest_prefix_wins_v6(table: AllowedIPs[str], addr: str, owner: str | None) -> None:
    assert table.lookup_v6(v6(addr)) == owner


def test_host_bits_of_an_inserted_prefix_are_ignored() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.9.9.9/24", "p")
    assert t.lookup_v4(v4("10.9.9.1")) == "p"
    assert t.lookup_v4(v4("10.9.10.1")) is None


def test_remove_value_removes_every_prefix_of_that_peer_only(table: AllowedIPs[str]) -> None:
    table.insert("172.16.0.0/12", "site")
    table.remove_value("site")
    assert table.lookup_v4(v4("10.1.2.4")) == "wide"
    assert table.lookup_v4(v4("172.16.0.1")) == "default"
    assert table.lookup_v4(v4("10.1.2.3")) == "host"
    table.remove_value("default")
    assert table.lookup_v4(v4("192.0.2.1")) is None


def test_source_and_destination_owner(table: AllowedIPs[str]) -> None:
    pkt = ipv4_packet("10.1.2.3", "10.200.0.1")
    assert (table.source_owner(pkt), table.destination_owner(pkt)) == ("host", "wide")
    pkt6 = ipv6_packet("fd00:1::1", "fd00:3::1")
    assert (table.source_owner(pkt6), table.destination_owner(pkt6)) == ("lan6", "ula")
    assert table.source_owner(memoryview(pkt)) == "host"


@pytest.mark.parametrize("junk", [b"", b"\x45" * 19, b"\x60" * 39, b"\x00" * 60, b"\xf0" * 60])
def test_junk_has_no_owner(table: AllowedIPs[str], junk: bytes) -> None:
    assert table.source_owner(junk) is None
    assert table.destination_owner(junk) is None


def test_matches_a_linear_scan_on_random_tables() -> None:
    """The per-length dicts give the same answer as checking every network, longest first."""
    rng = random.Random(12)
    for _ in range(20):
        t: AllowedIPs[int] = AllowedIPs()
        nets: dict[ipaddress.IPv4Network, int] = {}
        for i in range(30):
            plen = rng.choice([0, 8, 12, 16, 20, 24, 28, 32])
            net = ipaddress.IPv4Network((rng.getrandbits(32) & ~((1 << (32 - plen)) - 1), plen))
            t.insert(str(net), i)
            nets[net] = i
        for _ in range(200):
            addr = ipaddress.IPv4Address(rng.getrandbits(32))
            if rng.random() < 0.5:  # an address inside a known network
                addr = rng.choice(list(nets)).network_address + rng.getrandbits(2)
                addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
            best = max((n for n in nets if addr in n), key=lambda n: n.prefixlen, default=None)
            assert t.lookup_v4(int(addr)) == (nets[best] if best is not None else None)


def test_longest_prefix_at_a_thousand_peers_whatever_the_insertion_order() -> None:
    """A gateway's table: 1,000 peers' /32s inside a branch's /16 inside a site's /8 (overlaps
    a gateway file refuses, but the table must still answer by length): every address goes
    to its longest prefix whether the wide networks were inserted first or last. A scan
    that returns the first match found would answer "site" or "branch" here."""
    hosts = [f"10.1.{i // 250}.{1 + i % 250}" for i in range(1000)]
    owners = [f"peer{i}" for i in range(1000)]  # the values themselves: removal is by identity
    for wide_first in (True, False):
        t: AllowedIPs[str] = AllowedIPs()
        if wide_first:
            t.insert("10.0.0.0/8", "site")
            t.insert("10.1.0.0/16", "branch")
        for i, h in enumerate(hosts):
            t.insert(f"{h}/32", owners[i])
        if not wide_first:
            t.insert("10.1.0.0/16", "branch")
            t.insert("10.0.0.0/8", "site")
        for i, h in enumerate(hosts):
            assert t.lookup_v4(v4(h)) == f"peer{i}"
        assert t.lookup_v4(v4("10.1.200.1")) == "branch"
        assert t.lookup_v4(v4("10.2.0.1")) == "site"
        # Three lengths in use: a lookup is at most three dict look-ups, not 1,002 tests.
        assert t._v4_lens == [32, 16, 8]
        t.remove_value(owners[7])
        assert t.lookup_v4(v4(hosts[7])) == "branch"
