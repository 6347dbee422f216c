"""helper/hostlookup.py: /etc/hosts, the choice of resolvers, and real DNS queries (UDP, TCP
after truncation, CNAME chains, NXDOMAIN, silence) against a small DNS server on loopback."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from helper import hostlookup
from helper.hostlookup import HostLookupError, hosts_file, query, upstream_servers


def test_hosts_file_names_and_aliases_case_blind_comments_and_families(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n"
                     "# 10.0.0.9 office.test\n"
                     "198.18.2.2  vpn Office.Test  # the office\n"
                     "2001:db8::2 office.test\n"
                     "not-an-address office.test\n"
                     "198.18.2.3\n")
    assert hosts_file("office.test", path=hosts) == ["198.18.2.2", "2001:db8::2"]
    assert hosts_file("OFFICE.test.", socket.AF_INET, path=hosts) == ["198.18.2.2"]
    assert hosts_file("office.test", socket.AF_INET6, path=hosts) == ["2001:db8::2"]
    assert hosts_file("vpn", path=hosts) == ["198.18.2.2"]
    assert hosts_file("elsewhere.test", path=hosts) == []
    assert hosts_file("office.test", path=tmp_path / "missing") == []


def test_resolvers_come_from_resolv_conf_or_behind_resolveds_stub(tmp_path: Path) -> None:
    etc, run = tmp_path / "resolv.conf", tmp_path / "resolved.conf"
    run.write_text("nameserver 192.168.50.1\nnameserver 10.44.0.53\nnameserver fe80::1%wlan0\n")
    etc.write_text("# stub\nnameserver 127.0.0.53\noptions edns0\n")
    assert upstream_servers(paths=(etc, run)) == ["192.168.50.1", "10.44.0.53",
                                                  "fe80::1%wlan0"]
    # The tunnel's own server is only reached through the tunnel: never asked past it.
    assert upstream_servers(["10.44.0.53"], paths=(etc, run)) == ["192.168.50.1",
                                                                  "fe80::1%wlan0"]
    etc.write_text("nameserver 192.168.60.1\nnameserver 192.168.60.1\nnameserver ::1\n")
    assert upstream_servers(paths=(etc, run)) == ["192.168.60.1"]
    assert upstream_servers(paths=(tmp_path / "none",)) == []


class _Server:
    """A DNS server on 127.0.0.1 (UDP and TCP, one port) answering from ``zone``: name ->
    list of (type, data); names ending in ``big.`` get 60 A records (truncated over UDP)."""

    def __init__(self, zone: dict[str, list[tuple[str, str]]], *, silent: bool = False):
        self.zone, self.silent = zone, silent
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(4)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self.transports: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    def answer(self, data: bytes) -> dns.message.Message:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        name = q.question[0].name
        records = self.zone.get(name.to_text())
        if records is None:
            r.set_rcode(dns.rcode.NXDOMAIN)
            return r
        for rdtype, value in records:
            r.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, value))
            if rdtype == "CNAME":  # the chain's end goes in the same answer, as servers do
                for t, v in self.zone[value]:
                    r.answer.append(dns.rrset.from_text(value, 60, "IN", t, v))
        return r

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            self.transports.append("udp")
            if self.silent:
                continue
            wire = self.answer(data).to_wire()
            if len(wire) > 512:  # as a server without EDNS: truncated, asks for TCP
                q = dns.message.from_wire(data)
                r = dns.message.make_response(q)
                r.flags |= dns.flags.TC
                wire = r.to_wire()
            self.udp.sendto(wire, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                self.transports.append("tcp")
                conn.settimeout(2)
                length = int.from_bytes(conn.recv(2), "big")
                data = b""
                while len(data) < length:
                    data += conn.recv(length - len(data))
                wire = self.answer(data).to_wire()
                conn.sendall(len(wire).to_bytes(2, "big") + wire)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.udp.close()
        self.tcp.close()


ZONE = {
    "office.test.": [("A", "198.18.2.2"), ("AAAA", "2001:db8::2")],
    "vpn.test.": [("CNAME", "office.test.")],
    "big.test.": [("A", f"198.18.5.{i}") for i in range(1, 61)],
    "v6only.test.": [("AAAA", "2001:db8::6")],
    "odd.test.": [("A", "0.0.0.0"), ("A", "224.0.0.1"), ("A", "127.0.0.1"),
                  ("A", "255.255.255.255"), ("A", "198.18.7.7")],
    "bad.test.": [("A", "0.0.0.0"), ("AAAA", "ff02::1")],
}


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server(ZONE)
    yield s
    s.close()


def test_a_and_aaaa_records_over_udp(server: _Server) -> None:
    assert query("office.test", dns.rdatatype.A, "127.0.0.1", port=server.port) == \
        ["198.18.2.2"]
    assert query("office.test", dns.rdatatype.AAAA, "127.0.0.1", port=server.port) == \
        ["2001:db8::2"]
    assert query("v6only.test", dns.rdatatype.A, "127.0.0.1", port=server.port) == []
    assert server.transports == ["udp"] * 3


def test_addresses_no_peer_can_have_are_ignored(server: _Server) -> None:
    # A hostile or broken resolver on the LAN: its answer would become the lockdown's accept
    # rule and the handshakes' destination.
    assert query("odd.test", dns.rdatatype.A, "127.0.0.1", port=server.port) == ["198.18.7.7"]
    assert query("bad.test", dns.rdatatype.A, "127.0.0.1", port=server.port) == []
    assert query("bad.test", dns.rdatatype.AAAA, "127.0.0.1", port=server.port) == []


def test_a_cname_chain_gives_the_addresses_at_its_end(server: _Server) -> None:
    assert query("vpn.test", dns.rdatatype.A, "127.0.0.1", port=server.port) == ["198.18.2.2"]


def test_a_truncated_answer_is_asked_again_over_tcp(server: _Server) -> None:
    got = query("big.test", dns.rdatatype.A, "127.0.0.1", port=server.port)
    assert len(got) == 60 and "198.18.5.60" in got
    assert server.transports == ["udp", "tcp"]


def test_no_such_name_and_a_silent_server_are_clear_errors(server: _Server) -> None:
    with pytest.raises(HostLookupError, match="no such name"):
        query("nowhere.test", dns.rdatatype.A, "127.0.0.1", port=server.port)
    silent = _Server(ZONE, silent=True)
    try:
        with pytest.raises(HostLookupError, match="did not answer in 1 s"):
            query("office.test", dns.rdatatype.A, "127.0.0.1", timeout=1, port=silent.port)
    finally:
        silent.close()


def test_without_a_lockdown_the_system_resolver_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostlookup.lockdown, "present", lambda: False)
    assert hostlookup.resolve("localhost", 51900, socket.AF_INET) == ("127.0.0.1", 51900)
    with pytest.raises(HostLookupError, match=r"cannot resolve 'no-such-host\.invalid'"):
        hostlookup.resolve("no-such-host.invalid", 1)


def test_under_a_lockdown_no_known_resolver_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setattr(hostlookup.lockdown, "present", lambda: True)
    monkeypatch.setattr(hostlookup, "HOSTS", tmp_path / "hosts")
    monkeypatch.setattr(hostlookup, "RESOLV_CONF", tmp_path / "resolv.conf")
    monkeypatch.setattr(hostlookup, "RESOLVED_CONF", tmp_path / "resolved.conf")
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    with pytest.raises(HostLookupError, match="give the endpoint as an address"):
        hostlookup.resolve("office.test", 51900)
    (tmp_path / "hosts").write_text("198.18.2.2 office.test\n")
    assert hostlookup.resolve("office.test", 51900) == ("198.18.2.2", 51900)


def test_an_address_literal_is_never_looked_up(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    # Under a lockdown with no resolver at all a literal must still come back as itself:
    # most endpoints and invitations name an address, and asking DNS for one only fails.
    monkeypatch.setattr(hostlookup.lockdown, "present", lambda: True)
    monkeypatch.setattr(hostlookup, "RESOLV_CONF", tmp_path / "resolv.conf")
    monkeypatch.setattr(hostlookup, "RESOLVED_CONF", tmp_path / "resolved.conf")
    monkeypatch.setattr(hostlookup, "_marked", _never_asked)
    assert hostlookup.resolve("198.18.2.2", 51900) == ("198.18.2.2", 51900)
    assert hostlookup.resolve("fd00::2", 51900, socket.AF_INET6) == ("fd00::2", 51900)
    assert hostlookup.resolve("[fd00::2]", 7) == ("fd00::2", 7)
    with pytest.raises(HostLookupError,
                       match="an IPv6 address and this tunnel's socket reaches IPv4 only"):
        hostlookup.resolve("fd00::2", 51900, socket.AF_INET)


def _never_asked(host: str, family: int, avoid: object) -> list[str]:
    raise AssertionError(f"{host} was sent to DNS")


def test_direct_asks_the_servers_the_tunnel_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: _Server,
) -> None:
    # No lockdown, but the file names only the tunnel's server: the lookup skips it and asks
    # the one the tunnel's DNS settings replaced (a real server on loopback).
    monkeypatch.setattr(hostlookup.lockdown, "present", lambda: False)
    monkeypatch.setattr(hostlookup, "HOSTS", tmp_path / "hosts")
    monkeypatch.setattr(hostlookup, "RESOLV_CONF", tmp_path / "resolv.conf")
    monkeypatch.setattr(hostlookup, "RESOLVED_CONF", tmp_path / "resolved.conf")
    monkeypatch.setattr(hostlookup, "query", functools.partial(hostlookup.query,
                                                               port=server.port))
    (tmp_path / "resolv.conf").write_text("nameserver 10.77.0.1\n")
    with pytest.raises(HostLookupError, match="no other DNS server of this network is known"):
        hostlookup.resolve("office.test", 51900, socket.AF_INET, avoid=("10.77.0.1",),
                           direct=True)
    got = hostlookup.resolve("office.test", 51900, socket.AF_INET, avoid=("10.77.0.1",),
                             known=("10.77.0.1", "127.0.0.1"), direct=True)
    assert got == ("198.18.2.2", 51900)
    assert server.transports == ["udp"]  # one query, to the known server
