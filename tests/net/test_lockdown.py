"""Lockdown (the kill switch), IPv6 beside an IPv4 full tunnel, and roaming full tunnels, on a
"laptop" with Wi-Fi and Ethernet (tests/net/laptoplab.py). Every packet tcpdump sees on the
laptop's physical interfaces is counted and sorted; anything but the encrypted outer flow and
link-level control (ARP, neighbour discovery, router solicitation, MLD, DHCP) is a leak.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
import time

import netlab
import pytest
from laptoplab import (
    ETH,
    OFFICE,
    OFFICE2,
    OUTSIDE,
    OUTSIDE6,
    WIFI,
    Download,
    Frame,
    LaptopPair,
    LinkCapture,
    Listener,
    NameServer,
    classify_frame,
    echo_server,
    laptop_pair,
    prober_result,
    reached,
    start_prober,
    try_reach,
)
from tunnellab import INNER4, Spec

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

TABLE = "tunseal_lockdown"
ROAM_SECONDS = 30.0
"""How long the prober runs across the Wi-Fi -> Ethernet move."""


def wait_until(what: str, ok: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def tunseal_rules(pair: LaptopPair) -> list[str]:
    return [line for line in pair.world.rules().splitlines() if "proto 77" in line]


def assert_no_leaks(cap: LinkCapture, scenario: str = "", *,
                    tunnel: bool = True) -> dict[str, int]:
    """Every frame captured is the outer flow or link-level control; with ``tunnel``, there was
    an outer flow to see."""
    counts = cap.counts()
    print(f"capture {scenario}: {counts}")
    leaks = cap.leaks()
    assert not leaks, f"{len(leaks)} packets leaked: " + "; ".join(
        f"{f.iface}: {f.what}" for f in leaks[:20])
    assert counts.get("outer", 0) > 0 or not tunnel, counts
    return counts


def test_full_tunnel_leaks_nothing_through_a_crash_a_reconnect_and_a_network_move(
    lab: netlab.Lab, record_property: object
) -> None:
    """lockdown = connected (the default of a full tunnel): a download runs; the laptop's
    helper is SIGKILLed mid-download, its table stays in the kernel, it restarts and the
    persisting tunnel reconnects; then Wi-Fi goes away and Ethernet comes up with another
    address and default route. Not one packet but the outer flow leaves."""
    with laptop_pair(lab, Spec(persist=True)) as pair:
        laptop, office = pair.client, pair.server
        assert laptop.status()["lockdown"] == "connected"
        assert TABLE in pair.world.nft_ruleset()
        assert len(tunseal_rules(pair)) == 2, pair.world.rules()  # suppress + fwmark, IPv4
        with LinkCapture(pair.world, pair.workdir) as cap:
            download = Download(pair, seconds=25).start()
            time.sleep(2)
            laptop.helper.kill()
            # Dead helper: the TUN device is gone, the table is not.
            wait_until("tunnel device gone", lambda: not any(
                link.startswith("ts-") for link in lab.run(
                    pair.world.laptop, "ip", "-o", "link").stdout.split()), 10)
            assert TABLE in pair.world.nft_ruleset()
            outside = Listener(lab, pair.world.outside, OUTSIDE[0], 9100, seconds=60)
            assert not reached(try_reach(lab, pair.world.laptop, OUTSIDE[0], 9100))
            time.sleep(2)  # the download's retransmissions meet the table
            laptop.helper.start()
            laptop.helper.wait_for_log(f"brought up persisting tunnel {laptop.name!r}")
            pair.wait_state("up", ends=(laptop,), timeout=45)
            got = download.result()
            assert got["bytes"] > 1_000_000, got

            echo = echo_server(lab, pair.world.office, office.inner4, 7100, idle=90)
            prober = start_prober(lab, pair.world.laptop, office.inner4, 7100, ROAM_SECONDS)
            t0 = time.monotonic()
            time.sleep(3)
            moved = time.monotonic() - t0
            pair.world.move_to_ethernet()
            answered = prober_result(prober, ROAM_SECONDS)
            echo.kill()
            echo.communicate(timeout=10)
            assert outside.heard() == []
        counts = assert_no_leaks(cap, "download, SIGKILL, restart, reconnect, Wi-Fi -> Ethernet")
        assert [t for t in answered if t < moved], "no probe got through before the move"
        # The first answer to a probe sent after the move (a probe waits 0.1 s for its echo).
        after = [t for t in answered if t > moved + 0.15]
        assert after, "the tunnel did not recover after the move"
        recovery = after[0] - moved
        record_property("recovery_seconds", round(recovery, 2))
        record_property("capture", counts)
        print(f"recovery after the Wi-Fi -> Ethernet move: {recovery:.2f} s")
        assert laptop.status()["state"] == "up"
        # The outer flow now leaves through Ethernet, from its address.
        assert any(f.iface == pair.world.eth and f.kind == "outer" for f in cap.frames)
        assert office.status()["peers"][0]["endpoint"].startswith(ETH[0])


def test_nothing_gets_around_the_lockdown_and_allow_lan_opens_the_lan_only(
    lab: netlab.Lab,
) -> None:
    """Under lockdown: a process bound to the Wi-Fi interface (SO_BINDTODEVICE), one that adds
    its own route, IPv6 to an outside address and a DNS query to the LAN's resolver reach
    nothing. With allow_lan the LAN host answers, and still nothing else does."""
    with laptop_pair(lab) as pair:
        w = pair.world
        outside = Listener(lab, w.outside, OUTSIDE[0], 9200)
        outside6 = Listener(lab, w.outside, OUTSIDE6[0], 9200)
        lan = Listener(lab, w.router, WIFI[1], 9200)
        resolver = Listener(lab, w.router, WIFI[1], 53)
        with LinkCapture(w, pair.workdir) as cap:
            assert not reached(try_reach(lab, w.laptop, OUTSIDE[0], 9200, device=w.wifi,
                                         label="bound"))
            lab.run(w.laptop, "ip", "route", "add", f"{OUTSIDE[0]}/32", "via", WIFI[1],
                    "dev", w.wifi)
            assert not reached(try_reach(lab, w.laptop, OUTSIDE[0], 9200, label="own-route"))
            lab.run(w.laptop, "ip", "route", "del", f"{OUTSIDE[0]}/32")
            assert not reached(try_reach(lab, w.laptop, OUTSIDE6[0], 9200, label="v6"))
            assert not reached(try_reach(lab, w.laptop, WIFI[1], 53, label="dns"))
            assert not reached(try_reach(lab, w.laptop, WIFI[1], 9200, label="lan"))
            # The tunnel itself still works.
            echo = echo_server(lab, w.office, pair.server.inner4, 7200)
            assert reached(try_reach(lab, w.laptop, pair.server.inner4, 7200))
            echo.kill()
            echo.communicate(timeout=10)
        assert_no_leaks(cap, "SO_BINDTODEVICE, own route, IPv6 outside, LAN DNS, LAN host")

        pair.reconfigure(allow_lan=True)
        assert pair.lockdown_status()["allow_lan"] is True
        with LinkCapture(w, pair.workdir) as cap:
            assert reached(try_reach(lab, w.laptop, WIFI[1], 9200, label="lan"))
            assert not reached(try_reach(lab, w.laptop, WIFI[1], 53, label="dns"))
            assert not reached(try_reach(lab, w.laptop, OUTSIDE[0], 9200, device=w.wifi))
            assert not reached(try_reach(lab, w.laptop, OUTSIDE6[0], 9200))
        lan_frames = [f for f in cap.leaks() if WIFI[1] in f.what and ":9200" in f.what]
        assert lan_frames, "the LAN host's traffic should have been seen"
        others = [f for f in cap.leaks() if f not in lan_frames]
        assert others == [], others
        print(f"capture allow_lan: {cap.counts()} (LAN host frames: {len(lan_frames)}, "
              f"others: {len(others)})")
        assert outside.heard() == [] and outside6.heard() == [] and resolver.heard() == []
        assert {h[0] for h in lan.heard()} == {"udp", "tcp"}

        # `down` removes the table and the policy rules.
        pair.client.cli("down", pair.client.name)
        assert TABLE not in w.nft_ruleset()
        assert tunseal_rules(pair) == []
        assert reached(try_reach(lab, w.laptop, OUTSIDE[0], 9201)) is False  # nobody listens
        # A crash leaves the table; the next start of a helper whose profile does not persist
        # removes it, and the rules.
        pair.client.cli("up", pair.client.name)
        pair.wait_state("up", ends=(pair.client,))
        ifname = pair.client.status()["interface"]
        pair.client.helper.kill()
        assert TABLE in w.nft_ruleset()
        assert tunseal_rules(pair)
        # The crash record names what the crashed helper left (helper/records.py).
        record = json.loads((pair.client.helper.state_dir / "run" / f"{ifname}.json").read_text())
        assert record["nft_table"] == TABLE
        assert record["rules"] == [{"family": 4, "kind": "suppress"},
                                   {"family": 4, "kind": "tunnel"}]
        pair.client.helper.start()
        pair.client.helper.wait_for_log("removed the IPv4 tunnel policy rule")
        assert TABLE not in w.nft_ruleset()
        assert tunseal_rules(pair) == []
        listener = Listener(lab, w.outside, OUTSIDE[0], 9202)
        assert reached(try_reach(lab, w.laptop, OUTSIDE[0], 9202))
        assert listener.heard()

        # `lockdown off` ends the kill switch of a running tunnel; its IPv6 block stays.
        pair.client.cli("up", pair.client.name)
        pair.wait_state("up", ends=(pair.client,))
        assert "meta nfproto ipv4 counter" in w.nft_ruleset()
        pair.client.cli("lockdown", "off")
        ruleset = w.nft_ruleset()
        assert "meta nfproto ipv4 counter" not in ruleset
        assert "meta nfproto ipv6 counter" in ruleset
        st = pair.client.status()
        assert (st["state"], st["lockdown"], st["ipv6"]) == ("up", "off", "blocked")


def test_an_ipv4_full_tunnel_blocks_ipv6_even_without_lockdown_and_a_leak_is_seen(
    lab: netlab.Lab,
) -> None:
    """lockdown = off: IPv6 still cannot leave beside an IPv4 full tunnel (and status says so).
    Without a kill switch, a crash of the helper lets traffic out: the capture sees it, which
    is what makes its zero counts elsewhere mean something."""
    with laptop_pair(lab, lockdown="off") as pair:
        w = pair.world
        st = pair.client.status()
        assert st["lockdown"] == "off" and st["ipv6"] == "blocked"
        text = pair.client.cli("status", pair.client.name).stdout
        assert re.search(r"IPv6 +blocked", text), text
        outside6 = Listener(lab, w.outside, OUTSIDE6[0], 9300)
        outside = Listener(lab, w.outside, OUTSIDE[0], 9300)
        assert not reached(try_reach(lab, w.laptop, OUTSIDE6[0], 9300))
        assert outside6.heard() == []
        lock = pair.lockdown_status()
        assert lock["active"] is False and lock["ipv6_blocked"] == [pair.client.name]
        with LinkCapture(w, pair.workdir) as cap:
            pair.client.helper.kill()
            assert reached(try_reach(lab, w.laptop, OUTSIDE[0], 9300, label="after-crash"))
        assert [h[2] for h in outside.heard() if h[0] == "udp"] == ["after-crash"]
        assert any(OUTSIDE[0] in f.what for f in cap.leaks()), cap.counts()
        pair.client.helper.start()


def test_lockdown_always_blocks_with_no_tunnel_until_turned_off(lab: netlab.Lab) -> None:
    with laptop_pair(lab, up=False) as pair:
        w = pair.world
        outside = Listener(lab, w.outside, OUTSIDE[0], 9400)
        # The office helper has no profile that could bring a tunnel up: refused.
        refused = pair.server.cli("lockdown", "on", expect=1)
        assert "no profile here can bring a tunnel up" in refused.stderr
        pair.client.cli("lockdown", "on")
        st = pair.lockdown_status()
        assert st["always"] and st["active"] and st["blocked"], st
        assert "BLOCKED" in pair.client.cli("lockdown", "status").stdout
        with LinkCapture(w, pair.workdir) as cap:
            assert not reached(try_reach(lab, w.laptop, OUTSIDE[0], 9400, label="blocked"))
            assert not reached(try_reach(lab, w.laptop, OUTSIDE6[0], 9400, label="blocked"))
            assert not reached(try_reach(lab, w.laptop, WIFI[1], 9400))
            assert not reached(try_reach(lab, w.laptop, WIFI[1], 53))
        assert_no_leaks(cap, "always, no tunnel up", tunnel=False)
        # A tunnel up: no longer "blocked", and its own traffic flows.
        pair.up()
        wait_until("not blocked", lambda: not pair.lockdown_status()["blocked"], 10)
        pair.client.cli("down", pair.client.name)
        assert TABLE in w.nft_ruleset()
        # A crash and a restart keep it.
        pair.client.helper.kill()
        pair.client.helper.start()
        assert TABLE in w.nft_ruleset()
        assert pair.lockdown_status()["blocked"]
        with LinkCapture(w, pair.workdir) as cap:
            assert not reached(try_reach(lab, w.laptop, OUTSIDE[0], 9400, label="blocked"))
        assert_no_leaks(cap, "always, after a crash and a restart", tunnel=False)
        pair.client.cli("lockdown", "off")
        assert TABLE not in w.nft_ruleset()
        assert reached(try_reach(lab, w.laptop, OUTSIDE[0], 9400, label="free"))
        assert [h[2] for h in outside.heard() if h[0] == "udp"] == ["free"]


def test_the_uninstallers_end_the_lockdown(lab: netlab.Lab, tmp_path: object) -> None:
    """tunseal_remove_lockdown (installers/common/system-setup.sh, run by postrm and
    uninstall.sh) removes a table left in force and the policy rules a crash left."""
    from pathlib import Path

    from helper.lockdown import Policy, ruleset
    ns = lab.ns("host")
    lab.nft(ns, ruleset(Policy(frozenset({4, 6}))))
    for fam in ("-4", "-6"):
        lab.run(ns, "ip", fam, "rule", "add", "priority", "32764", "table", "main",
                "suppress_prefixlength", "0", "proto", "77")
        lab.run(ns, "ip", fam, "rule", "add", "priority", "32765", "not", "fwmark", "0x7453",
                "table", "29779", "proto", "77")
    state = Path(str(tmp_path)) / "lockdown.json"
    state.write_text('{"always": true}\n')
    setup = netlab.REPO_ROOT / "installers" / "common" / "system-setup.sh"
    lab.run(ns, "env", f"TUNSEAL_LOCKDOWN_STATE={state}", "sh", "-c",
            f". {setup}; tunseal_remove_lockdown")
    assert TABLE not in lab.run(ns, "nft", "list", "ruleset").stdout
    rules = lab.run(ns, "ip", "-4", "rule").stdout + lab.run(ns, "ip", "-6", "rule").stdout
    assert "proto 77" not in rules, rules
    assert not state.exists()


def test_an_endpoint_host_name_is_looked_up_again_when_handshakes_keep_failing(
    lab: netlab.Lab,
) -> None:
    """The office moves to another address and its name follows (the laptop's /etc/hosts): once
    the old address stops answering the laptop's traffic, the laptop's helper looks the name up
    again, the lockdown table lets the new address through, and the tunnel comes back. Nothing
    leaks meanwhile. (An idle tunnel with no keepalive notices nothing, as in WireGuard: it is
    the user's traffic going unanswered that makes the handshakes fail.)"""
    with laptop_pair(lab, Spec(), endpoint_name="office.test",
                     hosts={"office.test": OFFICE[0]}) as pair:
        w = pair.world
        assert pair.client.status()["endpoint"] == f"{OFFICE[0]}:51900"
        _second_office_link(lab, pair)
        assert pair.hosts is not None
        with LinkCapture(w, pair.workdir, office=(OFFICE[0], OFFICE2[0])) as cap:
            pair.hosts.write({"office.test": OFFICE2[0]})
            _office_moves_and_the_endpoint_follows(lab, pair)
            _office_reached_again(lab, pair)
        assert f"ip daddr {OFFICE2[0]} udp dport 51900 accept" in w.nft_ruleset()
        assert OFFICE[0] not in w.nft_ruleset()
        assert_no_leaks(cap, "endpoint moved, name looked up again")
        assert "now resolves to" in pair.client.helper.log()


@pytest.mark.parametrize("lockdown", ["", "off"])
def test_a_tunnel_with_its_own_dns_follows_its_servers_name_through_the_networks_dns(
    lab: netlab.Lab, lockdown: str,
) -> None:
    """The laptop's profile names the office by a host name only the Wi-Fi's DNS server knows,
    and gives a DNS server inside the office: once up, the laptop's /etc/resolv.conf names only
    that one (the file backend). The office moves and the Wi-Fi's DNS follows it. Asking the
    system's resolver would now mean asking the office's server through the tunnel that has
    stopped answering, so the helper asks the server the tunnel's settings replaced, from a
    marked socket, and the tunnel comes back; with a full tunnel's default lockdown and with
    none. (Before: 'no DNS server of this network is known' under the lockdown; without it the
    lookup went to the office's server and timed out.)"""
    with laptop_pair(lab, Spec(), up=False, endpoint_name="office.test", lockdown=lockdown,
                     nameservers=[WIFI[1]], dns=(INNER4[0],)) as pair:
        w = pair.world
        before = NameServer(lab, w.router, WIFI[1], {"office.test": OFFICE[0]})
        try:
            pair.up()
        finally:
            asked = before.asked()
        # (the system's resolver at the first connection: A and AAAA)
        assert {(a[0], a[1]) for a in asked} == {(WIFI[0], "office.test")}, asked
        assert pair.client.status()["endpoint"] == f"{OFFICE[0]}:51900"
        assert pair.hosts is not None
        resolv = (pair.hosts.dir / "resolv.conf").read_text()
        assert f"nameserver {INNER4[0]}" in resolv and WIFI[1] not in resolv, resolv
        _second_office_link(lab, pair)
        after = NameServer(lab, w.router, WIFI[1], {"office.test": OFFICE2[0]})
        try:
            _office_moves_and_the_endpoint_follows(lab, pair)
        finally:
            asked = after.asked()
        assert (WIFI[0], "office.test", "A") in {tuple(a) for a in asked}, asked
        _office_reached_again(lab, pair)
        log = pair.client.helper.log()
        assert "looked up office.test directly" in log and "now resolves to" in log


def _second_office_link(lab: netlab.Lab, pair: LaptopPair) -> None:
    """The office gets a second uplink, OFFICE2, where it will move."""
    w = pair.world
    lab.link(w.router, w.office, a_addr=f"{OFFICE2[1]}/24", b_addr=f"{OFFICE2[0]}/24")
    lab.run(w.office, "ip", "route", "add", "192.168.0.0/16", "via", OFFICE2[1])


def _office_moves_and_the_endpoint_follows(lab: netlab.Lab, pair: LaptopPair) -> None:
    """The office's first address goes away; the laptop's traffic, unanswered, makes the helper
    look the name up again until the endpoint is OFFICE2's."""
    w = pair.world
    addrs = lab.run(w.office, "ip", "-o", "addr").stdout.splitlines()
    old = next(line for line in addrs if f" {OFFICE[0]}/" in line).split()[1]
    lab.run(w.office, "ip", "link", "set", old, "down")
    traffic = start_prober(lab, w.laptop, pair.server.inner4, 7501, 90)
    try:
        wait_until("the endpoint followed the name", lambda: pair.client.status(
            cli=False)["endpoint"] == f"{OFFICE2[0]}:51900", 60)
    finally:
        traffic.kill()
        traffic.communicate(timeout=10)


def _office_reached_again(lab: netlab.Lab, pair: LaptopPair) -> None:
    w = pair.world
    pair.wait_state("up", ends=(pair.client,), timeout=45)
    echo = echo_server(lab, w.office, pair.server.inner4, 7500)
    assert reached(try_reach(lab, w.laptop, pair.server.inner4, 7500))
    echo.kill()
    echo.communicate(timeout=10)


_DIG = r"""
import socket, sys
import dns.message, dns.query
try:
    dns.query.udp(dns.message.make_query(sys.argv[2], "A"), sys.argv[1], timeout=2)
    print("answered")
except Exception as e:
    print(f"error: {e.__class__.__name__}")
"""


def test_an_always_on_lockdown_still_finds_the_endpoint_by_name(lab: netlab.Lab) -> None:
    """A kill-switched laptop whose profile names its office by host name, with the name only
    in the network's DNS (no /etc/hosts entry): the lockdown blocks the system's resolver, so
    the helper asks the Wi-Fi's DNS server itself from a marked socket, and connects. Only its
    own queries for the office's name get out: another program's DNS query is dropped, and the
    capture shows nothing but the outer flow, link-level control and those lookups. (Before:
    'cannot resolve endpoint', the query dropped like any other.)"""
    with laptop_pair(lab, Spec(), up=False, endpoint_name="office.test", lockdown="always",
                     nameservers=[WIFI[1]]) as pair:
        w = pair.world
        dns_server = NameServer(lab, w.router, WIFI[1], {"office.test": OFFICE[0],
                                                         "other.test": OUTSIDE[0]})
        try:
            pair.client.cli("lockdown", "on")
            assert pair.lockdown_status()["blocked"]
            with LinkCapture(w, pair.workdir) as cap:
                pair.up()
                assert pair.client.status()["endpoint"] == f"{OFFICE[0]}:51900"
                other = lab.python(w.laptop, _DIG, WIFI[1], "other.test", timeout=30)
                # The output hook's drop shows as EPERM on the send, or as no answer.
                assert other.stdout.strip() in ("error: PermissionError", "error: Timeout"), \
                    other.stdout
        finally:
            asked = dns_server.asked()
        assert asked and {tuple(a) for a in asked} <= {
            (WIFI[0], "office.test", "A")}, asked
        assert "looked up office.test directly" in pair.client.helper.log()
        lookups = [f for f in cap.leaks()
                   if f.what.endswith(f"> {WIFI[1]}:53 proto 17")
                   or f.what.startswith(f"{WIFI[1]}:53 > ")]
        assert lookups, cap.frames
        assert_no_leaks(_without(cap, lookups), "always, endpoint looked up past it")


def test_an_always_on_lockdown_asks_a_link_local_ipv6_resolver_by_its_zone(
    lab: netlab.Lab,
) -> None:
    """The Wi-Fi's only DNS server is the router on its IPv6 link-local address, as many home
    routers announce it: /etc/resolv.conf says `nameserver fe80::53%<wifi>`. Under the
    lockdown the helper asks it from a marked socket on that link, and connects."""
    # The file must exist when the helper starts (the bind mount); it is rewritten in place
    # once the Wi-Fi interface's name is known.
    with laptop_pair(lab, Spec(), up=False, endpoint_name="office.test", lockdown="always",
                     nameservers=[WIFI[1]]) as pair:
        w = pair.world
        router_if = lab.run(w.router, "ip", "-o", "addr", "show", "to",
                            WIFI[1]).stdout.split()[1]
        lab.run(w.router, "ip", "-6", "addr", "add", "fe80::53/64", "dev", router_if, "nodad")
        lab.run(w.laptop, "ip", "-6", "addr", "add", "fe80::2/64", "dev", w.wifi, "nodad")
        assert pair.hosts is not None
        pair.hosts.resolv_conf([f"fe80::53%{w.wifi}"])
        dns_server = NameServer(lab, w.router, f"fe80::53%{router_if}",
                                {"office.test": OFFICE[0]})
        try:
            pair.client.cli("lockdown", "on")
            pair.up()
            assert pair.client.status()["endpoint"] == f"{OFFICE[0]}:51900"
        finally:
            asked = dns_server.asked()
        assert [a[1:] for a in asked] == [["office.test", "A"]], asked
        assert f"looked up office.test directly through fe80::53%{w.wifi}" in \
            pair.client.helper.log()


def _without(cap: LinkCapture, frames: list[Frame]) -> LinkCapture:
    cap.frames = [f for f in cap.frames if f not in frames]
    return cap


def test_a_tunnel_that_routes_ipv6_carries_it(lab: netlab.Lab) -> None:
    with laptop_pair(lab, Spec(inner6=True),
                     client_routes=("0.0.0.0/0", "::/0")) as pair:
        w = pair.world
        st = pair.client.status()
        assert st["ipv6"] == "tunnel" and st["lockdown"] == "connected"
        assert len(tunseal_rules(pair)) == 4  # suppress + fwmark, both families
        with LinkCapture(w, pair.workdir) as cap:
            echo = echo_server(lab, w.office, pair.server.inner6, 7600)
            assert reached(try_reach(lab, w.laptop, pair.server.inner6, 7600))
            echo.kill()
            echo.communicate(timeout=10)
            # IPv6 to the outside goes into the tunnel (the office does not route it on).
            assert not reached(try_reach(lab, w.laptop, OUTSIDE6[0], 7600))
        assert_no_leaks(cap, "IPv4+IPv6 full tunnel")


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
            + payload)


def test_the_capture_tells_icmp_errors_about_the_outer_flow_from_leaks() -> None:
    """The router's 'host unreachable' about a packet of the outer flow is the path answering
    the tunnel (kind outer_error); the same error about anything else, or an echo request,
    is a leak."""
    ether = bytes(12) + b"\x08\x00"
    def error_quoting(dport: int) -> bytes:
        quoted = _ipv4(WIFI[0], OFFICE[0], 17, struct.pack("!HHHH", 40000, dport, 8, 0))
        return ether + _ipv4(WIFI[1], WIFI[0], 1, bytes([3, 1, 0, 0, 0, 0, 0, 0]) + quoted)
    assert classify_frame(error_quoting(51900))[0] == "outer_error"
    assert classify_frame(error_quoting(53))[0] == "leak"
    echo = ether + _ipv4(WIFI[0], OFFICE[0], 1, bytes([8, 0, 0, 0, 0, 1, 0, 1]))
    assert classify_frame(echo)[0] == "leak"
