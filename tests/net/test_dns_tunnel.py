"""Names resolve through the tunnel's DNS, for real: a client "machine" running systemd-resolved
(resolvedlab) and a helper, a real tunnel to the office, dnsmasq as the office's resolver on its
inner address, and another dnsmasq as the café LAN's resolver on the router, which the client's
physical link uses (as DHCP would have set it). Each resolver answers the same names with its
own addresses and logs every query it gets, so an answer says which one was asked, and the logs
say which one never was."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import netlab
import pytest
import resolvedlab
import tunnellab
from helpers_proc import HelperProcess
from tunnellab import End, Spec, TunnelPair

from core.profile import Profile

OFFICE_DNS = tunnellab.INNER4[0]  # the server end's inner address
OFFICE = {"db.corp.example": "10.44.7.7", "www.elsewhere.test": "10.44.7.8"}
CAFE = {"db.corp.example": "198.18.66.6", "www.elsewhere.test": "198.18.66.8",
        "printer.lan.test": "198.18.66.9"}


class DnsPair(TunnelPair):
    """A TunnelPair whose client helper runs on the resolved machine and whose client profile
    has the office's DNS."""

    def __init__(self, lab: netlab.Lab, topo: netlab.Topology, workdir: Path,
                 resolved: resolvedlab.Resolved, *, domains: tuple[str, ...],
                 allowed: tuple[str, ...]) -> None:
        self.resolved = resolved
        self.domains = domains
        self.allowed = allowed
        super().__init__(lab, topo, Spec(), workdir)

    def _end(self, role: str, ns: str, name: str, i: int) -> End:
        end = super()._end(role, ns, name, i)
        if role == "client":
            end.helper = HelperProcess(end.helper.socket.parents[1], tunnellab.NO_GROUP,
                                       env=self.resolved.env, wrap=self.resolved.wrap)
        return end

    def profile(self, end: End, *, public_key: str = "") -> Profile:
        profile = super().profile(end, public_key=public_key)
        if end.role != "client":
            return profile
        return dataclasses.replace(profile, dns=(OFFICE_DNS,), dns_search=self.domains,
                                   allowed_ips=self.allowed)


class Dnsmasq:
    """dnsmasq answering ``names`` on ``addr`` in ``ns``, every query logged to a file."""

    def __init__(self, lab: netlab.Lab, ns: str, addr: str, names: dict[str, str],
                 log: Path) -> None:
        self.log_path = log
        records = [f"--host-record={name},{ip}" for name, ip in names.items()]
        with open(log, "wb") as out:
            self.proc = lab.popen(ns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                                  "--no-hosts", "--bind-interfaces", f"--listen-address={addr}",
                                  "--log-queries", "--log-facility=-", "--pid-file=",
                                  *records, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while "started, version" not in self.log():
            assert self.proc.poll() is None, f"dnsmasq exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"dnsmasq did not start:\n{self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queries(self) -> list[str]:
        """``query[A] NAME from ADDR`` lines."""
        return re.findall(r"query\[\w+\] \S+ from \S+", self.log())


@contextlib.contextmanager
def dns_world(lab: netlab.Lab, *, domains: tuple[str, ...],
              allowed: tuple[str, ...]) -> Iterator[tuple[DnsPair, Dnsmasq, Dnsmasq]]:
    topo = netlab.two_hosts_with_router(lab)
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-dns-"))
    try:
        with resolvedlab.Resolved(lab, topo.client) as resolved:
            cafe = Dnsmasq(lab, topo.router, topo.router_client_addr, CAFE, workdir / "cafe.log")
            resolved.resolvectl("dns", topo.client_if, topo.router_client_addr)  # "DHCP"
            pair = DnsPair(lab, topo, workdir, resolved, domains=domains, allowed=allowed)
            try:
                pair.start_helpers()
                pair.build()
                pair.up()
                office = Dnsmasq(lab, topo.server, OFFICE_DNS, OFFICE, workdir / "office.log")
                yield pair, office, cafe
                pair.teardown()
                pair.watch.check()
            finally:
                pair.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def lookup(pair: DnsPair, name: str) -> str:
    """``getent ahostsv4 NAME`` on the client: the C library, /etc/resolv.conf, the stub
    127.0.0.53: the way any program resolves a name."""
    done = pair.resolved.run("getent", "ahostsv4", name, check=False)
    assert done.returncode == 0, f"{name} did not resolve: {done.stdout}{done.stderr}"
    return done.stdout.split()[0]


def via_link(pair: DnsPair, name: str) -> tuple[str, str]:
    """(address, link) of ``name`` as resolved answers it over D-Bus (``resolvectl query``),
    search domains applied to a single label."""
    out = pair.resolved.resolvectl("query", "--cache=no", "-4", name).stdout
    found = re.search(r"^\S+: (\S+)\s+-- link: (\S+)", out, re.MULTILINE)
    assert found, out
    return found.group(1), found.group(2)


@pytest.mark.netns
def test_split_tunnel_names_under_the_profiles_domain_go_to_the_office(
    lab: netlab.Lab,
) -> None:
    with dns_world(lab, domains=("~corp.example",), allowed=("10.44.0.1/32",)) as (
            pair, office, cafe):
        client = pair.client
        tun = client.status()["interface"]
        assert lookup(pair, "db.corp.example") == OFFICE["db.corp.example"]
        assert via_link(pair, "db.corp.example") == (OFFICE["db.corp.example"], tun)
        assert f"query[A] db.corp.example from {client.inner4}" in office.queries()
        # A split tunnel leaves every other name to the LAN...
        assert lookup(pair, "printer.lan.test") == CAFE["printer.lan.test"]
        # ...and the LAN never hears of the office's names.
        assert not [q for q in cafe.queries() if "corp.example" in q], cafe.queries()

        dns = client.status()["dns"]
        assert dns == {"backend": "resolved", "servers": [OFFICE_DNS],
                       "domains": ["~corp.example"], "default_route": False}
        shown = client.cli("status", client.name).stdout
        assert f"DNS        {OFFICE_DNS} for ~corp.example (systemd-resolved)" in shown


@pytest.mark.netns
def test_full_tunnel_sends_every_query_into_the_tunnel_and_none_to_the_lan(
    lab: netlab.Lab,
) -> None:
    with dns_world(lab, domains=("corp.example",), allowed=("0.0.0.0/0",)) as (
            pair, office, cafe):
        client = pair.client
        tun = client.status()["interface"]
        for name in ("db.corp.example", "www.elsewhere.test"):
            assert lookup(pair, name) == OFFICE[name]
            assert via_link(pair, name) == (OFFICE[name], tun)
        assert via_link(pair, "db") == (OFFICE["db.corp.example"], tun)  # the search domain
        assert len(office.queries()) >= 3
        assert cafe.queries() == [], "a query went to the LAN's resolver"

        dns = client.status()["dns"]
        assert dns == {"backend": "resolved", "servers": [OFFICE_DNS],
                       "domains": ["corp.example", "~."], "default_route": True}
        shown = client.cli("status", client.name).stdout
        assert (f"DNS        {OFFICE_DNS} for corp.example ~. (systemd-resolved, default "
                "route)") in shown

        # Someone resets the link (NetworkManager, an admin): the helper puts it back.
        pair.resolved.resolvectl("revert", tun)
        client.helper.wait_for_log(f"{tun}: DNS settings changed", timeout=20)
        deadline = time.monotonic() + 20
        while "~." not in pair.resolved.link_status(tun):
            assert time.monotonic() < deadline, pair.resolved.link_status(tun)
            time.sleep(0.1)
        assert via_link(pair, "www.elsewhere.test") == (OFFICE["www.elsewhere.test"], tun)
        assert cafe.queries() == []

        client.cli("down", client.name)
        # Down: the LAN's resolver answers again, as before the tunnel.
        assert lookup(pair, "www.elsewhere.test") == CAFE["www.elsewhere.test"]
