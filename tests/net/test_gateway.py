"""The office gateway end to end: one gateway helper (``--gateway CONFIG``), twelve peers each
in its own namespace with its own helper and keyring, a server on the gateway's LAN side, and a
namespace that floods the gateway with bogus handshake initiations.

Peers are added through the gateway's socket with ``tunseal peer add NAME -o FILE`` and each
peer imports its file and brings it up (tests/net/gatewaylab.py). Then: every peer moves 5 MB
to the LAN server at once (sha256 on both ends, the LAN sees each peer's own inner address);
a peer sending with another peer's inner address is dropped and counted, and nothing of it
reaches the LAN; 20,000 bogus initiations in a few seconds (half with a correct MAC1 for keys
the gateway does not know) neither stop the real peers' pings and transfers nor grow the
gateway's memory, and the refusals show in its counters; a removed peer is cut off.
"""

from __future__ import annotations

import json
import time

import netlab
import pytest
from gatewaylab import GW_LAN, LAN_SERVER, Office, UdpSink, flood, office
from pathlab import Pinger, Stream, assert_stream

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

N_PEERS = 12
TRANSFER = 5_000_000
FLOOD_PACKETS = 20_000
FLOOD_SECONDS = 4.0
RSS_GROWTH_LIMIT_KB = 30 * 1024


def test_office_gateway(lab: netlab.Lab) -> None:
    with office(lab, N_PEERS, flood=True) as o:
        check_peer_listing(o)
        check_all_peers_transfer_at_once(o)
        check_spoofed_source_is_dropped(o)
        check_flood(o)
        check_peer_remove(o)


def check_peer_listing(o: Office) -> None:
    listing = o.gw_cli_json("peer", "list")
    assert [p["name"] for p in listing["peers"]] == [p.name for p in o.peers]
    by_name = {p["name"]: p for p in listing["peers"]}
    inner = [p.inner for p in o.peers]
    assert len(set(inner)) == len(inner), inner
    for p in o.peers:
        assert by_name[p.name]["allowed_ips"] == [f"{p.inner}/32"]
        assert p.status()["state"] == "up"
    shown = o.gw_cli_json("peer", "show", o.peers[0].name)
    assert shown["state"] == "up", shown
    assert shown["endpoint"].startswith(f"{o.peers[0].outer}:"), shown
    human = o.gw_cli("peer", "list").stdout
    assert f"gateway {o.name}" in human and all(p.name in human for p in o.peers), human


def check_all_peers_transfer_at_once(o: Office) -> None:
    started = time.monotonic()
    streams = [Stream(o.lab, p.ns, o.lan, LAN_SERVER, TRANSFER, port=5400 + i,
                      timeout=120).start() for i, p in enumerate(o.peers)]
    results = [s.finish() for s in streams]
    took = time.monotonic() - started
    for p, result in zip(o.peers, results, strict=True):
        assert_stream(result, TRANSFER)
        assert result[1]["peer"] == p.inner, (p.name, result[1])  # routed, not masqueraded
    total = TRANSFER * len(o.peers)
    print(f"{len(o.peers)} peers x {TRANSFER / 1e6:.0f} MB at once: {took:.1f} s "
          f"({total * 8 / took / 1e6:.0f} Mbit/s through the gateway)")
    gw = o.gw_status()
    assert gw["rx_bytes"] >= total
    assert {p["name"] for p in gw["peers"] if p["rx_bytes"] >= TRANSFER} == {
        p.name for p in o.peers}


def check_spoofed_source_is_dropped(o: Office) -> None:
    """p00 puts p01's inner address on its own tunnel interface and sends from it: the gateway
    drops every such packet (counted as bad_source); the LAN server never sees one."""
    a, b = o.peers[0], o.peers[1]
    sink = UdpSink(o)
    o.lab.run(a.ns, "ip", "addr", "add", f"{b.inner}/32", "dev", a.status()["interface"])
    before = o.drops().get("bad_source", 0)
    sink.send_from(a, b.inner, "spoofed-by-p00")
    sink.send_from(a, a.inner, "from-p00")
    sink.send_from(b, b.inner, "from-p01")
    seen = sink.seen()
    assert [s for s in seen if s[1] == "spoofed-by-p00"] == [], seen
    assert (a.inner, "from-p00") in seen and (b.inner, "from-p01") in seen, seen
    assert o.drops().get("bad_source", 0) >= before + 5
    o.lab.run(a.ns, "ip", "addr", "del", f"{b.inner}/32", "dev", a.status()["interface"])


def check_flood(o: Office) -> None:
    """20,000 bogus initiations in 4 s while every peer pings the LAN server every 0.2 s and
    four peers transfer 5 MB each."""
    rss_before = o.gateway.rss_kb()
    drops_before = o.drops()
    pingers = [Pinger(o.lab, p.ns, LAN_SERVER, deadline=60) for p in o.peers]
    try:
        time.sleep(1.0)
        start = time.monotonic()
        flooder = flood(o, total=FLOOD_PACKETS, seconds=FLOOD_SECONDS)
        streams = [Stream(o.lab, p.ns, o.lan, LAN_SERVER, TRANSFER, port=5500 + i,
                          timeout=120).start() for i, p in enumerate(o.peers[:4])]
        out, err = flooder.communicate(timeout=FLOOD_SECONDS + 60)
        assert flooder.returncode == 0, err
        end = time.monotonic()
        sent = json.loads(out.splitlines()[-1])
        for stream in streams:
            assert_stream(stream.finish(), TRANSFER)
        time.sleep(1.0)
        after = time.monotonic()
    finally:
        for pinger in pingers:
            pinger.stop()
    rss_after = o.gateway.rss_kb()
    drops = o.drops()
    grew = {k: v - drops_before.get(k, 0) for k, v in drops.items()
            if v != drops_before.get(k, 0)}
    expected = (end - start) / 0.2
    answered = {p.name: len([t for t in pinger.answers(start) if t <= end])
                for p, pinger in zip(o.peers, pingers, strict=True)}
    print(f"flood: {sum(sent['sent'].values())} packets in {sent['seconds']:.1f} s "
          f"{sent['sent']}; gateway counters grew {grew}; RSS {rss_before} -> {rss_after} KiB; "
          f"pings answered during the flood (of ~{expected:.0f} each): {answered}")

    assert sum(sent["sent"].values()) >= FLOOD_PACKETS * 0.95, sent
    for p, pinger in zip(o.peers, pingers, strict=True):
        assert answered[p.name] >= expected * 0.5, (p.name, answered)
        assert pinger.answered_since(end) or pinger.answers(after - 1.0), p.name
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KB, (rss_before, rss_after)
    assert grew.get("handshake_mac", 0) > 0, grew
    assert grew.get("unknown_peer", 0) > 0, grew
    assert grew.get("cookie_sent", 0) + grew.get("handshake_rate", 0) > 0, grew
    for p in o.peers:
        assert p.status()["state"] == "up", p.name


def check_peer_remove(o: Office) -> None:
    gone = o.peers[-1]
    done = o.gw_cli("peer", "remove", gone.name)
    assert f"removed peer {gone.name}" in done.stdout
    assert gone.name not in [p["name"] for p in o.gw_cli_json("peer", "list")["peers"]]
    assert f'"{gone.name}"' not in o.config.read_text()
    assert o.lab.run(gone.ns, "ping", "-c", "2", "-W", "1", LAN_SERVER,
                     check=False).returncode != 0, "a removed peer still reaches the LAN"
    kept = o.peers[0]
    o.lab.run(kept.ns, "ping", "-c", "1", "-W", "2", LAN_SERVER)


def test_network_behind_a_peer_added_at_runtime_is_routed(lab: netlab.Lab) -> None:
    """`tunseal peer add site --allowed-ip 10.77.0.40/32 --allowed-ip 10.88.0.0/24`: a peer
    with a network behind it (a branch office). The LAN reaches that network through the
    gateway; after `peer remove` the gateway no longer routes it to the tunnel."""
    site = ["10.77.0.40/32", "10.88.0.0/24"]
    with office(lab, 1, allowed_ips={"p00": site}) as o:
        p = o.peers[0]
        assert p.inner == "10.77.0.40"
        o.lab.run(p.ns, "ip", "addr", "add", "10.88.0.1/32", "dev", "lo")
        o.lab.route(o.lan, "10.88.0.0/24", GW_LAN)
        o.lab.run(o.lan, "ping", "-c", "1", "-W", "2", "10.88.0.1")
        o.gw_cli("peer", "remove", p.name)
        routes = o.lab.run(o.gw, "ip", "-4", "route", "show", "10.88.0.0/24").stdout
        assert routes.strip() == "", routes
        # The removed peer's networks are free: a new site may take them (they were still
        # counted as the removed peer's until the tunnel restarted).
        done = o.gw_cli("peer", "add", "site2", "--allowed-ip", "10.88.0.0/24",
                        "-o", str(o.workdir / "site2.tunseal"))
        assert "added peer site2" in done.stdout, done.stdout + done.stderr


def test_finding5_peer_add_refuses_routes_that_capture_the_gateway(lab: netlab.Lab) -> None:
    """Issue 9 finding 5: `tunseal peer add --allowed-ip` with a default route, a network that
    overlaps another peer's (not only an equal string), the gateway's LAN, or the network the
    gateway host's own uplink is on (only the helper sees that one: it is not in the file) is
    refused with a message naming the conflict. Nothing is saved or routed, and the existing
    peer still reaches the LAN."""
    with office(lab, 1) as o:
        p = o.peers[0]
        before = o.config.read_text()
        routes_before = o.lab.run(o.gw, "ip", "-4", "route", "show").stdout
        cases = {
            "0.0.0.0/0": "0.0.0.0/0 is a default route",
            "::/0": "::/0 is a default route",
            "64.0.0.0/2": "64.0.0.0/2 is wider than /8",
            f"{p.inner.rsplit('.', 1)[0]}.0/28": f"overlaps {p.inner}/32, already routed to "
                                                 "peer 'p00'",
            "198.18.200.0/25": "overlaps the gateway's own network 198.18.200.0/24",
            "198.18.100.128/25": "overlaps the gateway's own network 198.18.100.0/24",
        }
        for net, why in cases.items():
            done = o.gw_cli("peer", "add", "intruder", "--allowed-ip", net, expect=1)
            said = done.stdout + done.stderr
            assert why in said, (net, said)
        assert o.config.read_text() == before
        assert o.lab.run(o.gw, "ip", "-4", "route", "show").stdout == routes_before
        assert "intruder" not in [q["name"] for q in o.gw_cli_json("peer", "list")["peers"]]
        o.lab.run(p.ns, "ping", "-c", "1", "-W", "2", LAN_SERVER)
        # A network of its own behind a new peer is still fine.
        done = o.gw_cli("peer", "add", "branch", "--allowed-ip", "10.77.0.50/32",
                        "--allowed-ip", "10.99.0.0/16", "-o", str(o.workdir / "branch.tunseal"))
        assert "added peer branch" in done.stdout, done.stdout
