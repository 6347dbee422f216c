"""core/gateway.py's checks of what may be routed to a peer (issue 9 finding 5)."""

from __future__ import annotations

import pytest

from core import gateway
from core.errors import ProfileInvalid
from core.gateway import Gateway, GatewayPeer

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def office(*peers: tuple[str, ...], lan: tuple[str, ...] = ("192.168.10.0/24",)) -> Gateway:
    return Gateway(name="office", addresses=("10.213.0.1/24", "fd13::1/64"), lan=lan,
                   peers=tuple(GatewayPeer(name=f"p{i}", public_key=KEY, device_id=i + 2,
                                           allowed_ips=allowed)
                               for i, allowed in enumerate(peers)))


def problems(gw: Gateway) -> list[tuple[str, str]]:
    """(field, message) of every problem the full validation finds."""
    try:
        gateway.from_dict(gateway.to_dict(gw))
    except ProfileInvalid as e:
        return [(p.field or "", p.reason) for p in e.problems]
    return []


def test_finding5_distinct_peers_and_site_networks_are_fine() -> None:
    gw = office(("10.213.0.2/32", "10.88.0.0/24"), ("10.213.0.3/32", "fd13::3/128"),
                ("172.16.0.0/12",))
    assert problems(gw) == []


@pytest.mark.parametrize("prefix", ["0.0.0.0/0", "::/0"])
def test_finding5_a_default_route_is_refused_for_a_peer(prefix: str) -> None:
    found = problems(office(("10.213.0.2/32", prefix)))
    assert [f for f, _ in found] == ["peer[0].allowed_ips[1]"], found
    assert "is a default route" in found[0][1] and "gateway's own traffic" in found[0][1]


@pytest.mark.parametrize(("prefix", "bound"), [("0.0.0.0/1", 8), ("128.0.0.0/7", 8),
                                               ("8000::/1", 16), ("2000::/3", 16)])
def test_finding5_a_prefix_wider_than_the_bound_is_refused(prefix: str, bound: int) -> None:
    found = problems(office((prefix,)))
    assert [f for f, _ in found] == ["peer[0].allowed_ips[0]"], found
    assert f"wider than /{bound}" in found[0][1]


def test_finding5_overlap_is_real_prefix_overlap_not_string_equality() -> None:
    """The old check compared strings: 10.88.0.0/24 and 10.88.0.7/32 were both accepted, and
    the second peer's host route silently took that address from the first."""
    found = problems(office(("10.213.0.2/32", "10.88.0.0/24"), ("10.88.0.7/32",),
                            ("10.213.0.4/32", "fd77::/48"), ("fd77:0:0:1::/64",)))
    assert found == [
        ("peer[1].allowed_ips[0]", "10.88.0.7/32 overlaps 10.88.0.0/24, already routed to "
                                   "peer 'p0'"),
        ("peer[3].allowed_ips[0]", "fd77:0:0:1::/64 overlaps fd77::/48, already routed to "
                                   "peer 'p2'"),
    ]
    # a wider network that covers an earlier peer's is caught the other way round too
    assert problems(office(("10.88.0.7/32",), ("10.88.0.0/16",)))[0][1] == (
        "10.88.0.0/16 overlaps 10.88.0.7/32, already routed to peer 'p0'")


@pytest.mark.parametrize(("prefix", "why"), [
    ("10.213.0.0/24", "10.213.0.0/24 holds the gateway's own address 10.213.0.1"),
    ("10.213.0.1/32", "10.213.0.1/32 holds the gateway's own address 10.213.0.1"),
    ("192.168.10.128/25", "192.168.10.128/25 overlaps the gateway's own network "
                          "192.168.10.0/24"),
    ("192.168.0.0/16", "192.168.0.0/16 overlaps the gateway's own network 192.168.10.0/24"),
    ("fd13::/48", "fd13::/48 holds the gateway's own address fd13::1"),
])
def test_finding5_a_peer_may_not_take_the_gateways_own_address_or_lan(prefix: str,
                                                                       why: str) -> None:
    assert problems(office(("10.99.0.2/32",), (prefix,))) == [("peer[1].allowed_ips[0]", why)]


def test_finding5_peer_add_revalidates_with_the_same_rules() -> None:
    """`tunseal peer add` goes through gateway.add_peer, which re-validates the whole file."""
    gw = office(("10.213.0.2/32", "10.88.0.0/24"))
    with pytest.raises(ProfileInvalid, match=r"overlaps 10\.88\.0\.0/24, already routed to peer"):
        gateway.add_peer(gw, GatewayPeer(name="new", public_key=KEY, device_id=9,
                                         allowed_ips=("10.88.0.128/25",)))
    with pytest.raises(ProfileInvalid, match="is a default route"):
        gateway.add_peer(gw, GatewayPeer(name="new", public_key=KEY, device_id=9,
                                         allowed_ips=("0.0.0.0/0",)))
    ok = gateway.add_peer(gw, GatewayPeer(name="new", public_key=KEY, device_id=9,
                                          allowed_ips=("10.213.0.9/32",)))
    assert [p.name for p in ok.peers] == ["p0", "new"]


def test_finding5_prefix_conflicts_on_its_own() -> None:
    assert gateway.prefix_conflicts("10.9.0.0/16", taken={}, own=[]) == []
    assert gateway.prefix_conflicts("not a network", taken={"x": "p"}, own=[]) == []
    assert gateway.prefix_conflicts("10.9.0.0/16", taken={"10.9.3.0/24": "b"}, own=[]) == [
        "10.9.0.0/16 overlaps 10.9.3.0/24, already routed to peer 'b'"]


def test_prefix_index_finds_exactly_the_overlaps_a_full_scan_finds() -> None:
    """The index (look-ups per prefix length, a sorted list for the networks inside) against
    ipaddress's own overlaps() over every recorded network, nested and disjoint, both
    families, in insertion order."""
    import ipaddress
    import random

    rng = random.Random(9)
    for _ in range(30):
        index = gateway.PrefixIndex()
        recorded: list[tuple[str, str]] = []
        for i in range(40):
            v6 = rng.random() < 0.3
            bits = 128 if v6 else 32
            plen = rng.choice([8, 12, 16, 20, 24, 28, bits] if not v6 else [16, 32, 48, 64, 128])
            base = rng.choice([0x0A000000, 0x0A0A0000]) if not v6 else 0xFD00 << 112
            addr = base | rng.getrandbits(bits - 8 if not v6 else 24)
            net = ipaddress.ip_network((addr, plen), strict=False)
            text = str(net)
            if text not in dict(recorded):
                index.add(text, f"p{i}")
                recorded.append((text, f"p{i}"))
        for text, _ in [*recorded[:10], ("10.10.0.0/16", ""), ("fd00::/16", "")]:
            net = ipaddress.ip_network(text)
            expected = [(t, p) for t, p in recorded
                        if ipaddress.ip_network(t).version == net.version
                        and ipaddress.ip_network(t).overlaps(net)]
            assert index.overlapping(net) == expected


def test_a_thousand_peer_file_is_checked_as_a_whole() -> None:
    """1,000 peers load (each checked against all the others through the index), and one
    more that overlaps the 500th is refused naming it, with nothing else."""
    peers = tuple(GatewayPeer(name=f"p{i}", public_key=KEY, device_id=i + 2,
                              allowed_ips=(f"10.{100 + i // 250}.{i % 250}.0/24",))
                  for i in range(1000))
    gw = Gateway(name="office", addresses=("10.213.0.1/24",), peers=peers)
    assert problems(gw) == []
    bad = GatewayPeer(name="late", public_key=KEY, device_id=5000,
                      allowed_ips=("10.102.0.0/23",))
    assert problems(Gateway(name="office", addresses=("10.213.0.1/24",),
                            peers=(*peers, bad))) == [
        ("peer[1000].allowed_ips[0]",
         "10.102.0.0/23 overlaps 10.102.0.0/24, already routed to peer 'p500'"),
        ("peer[1000].allowed_ips[0]",
         "10.102.0.0/23 overlaps 10.102.1.0/24, already routed to peer 'p501'"),
    ]


def test_prefix_conflicts_gives_the_same_answer_from_a_mapping_and_an_index() -> None:
    taken = {"10.9.3.0/24": "b", "10.9.0.0/16": "a", "10.10.0.0/16": "c", "fd13:9::/64": "d",
             "10.9.3.7/32": "e"}
    index = gateway.PrefixIndex(taken)
    for text in ("10.9.0.0/20", "10.9.3.7/32", "10.10.5.0/24", "10.11.0.0/16", "fd13::/32",
                 "10.0.0.0/8"):
        assert gateway.prefix_conflicts(text, taken=taken, own=[]) == \
            gateway.prefix_conflicts(text, taken=index, own=[])
    assert gateway.prefix_conflicts("10.9.0.0/20", taken=taken, own=[]) == [
        "10.9.0.0/20 overlaps 10.9.3.0/24, already routed to peer 'b'",
        "10.9.0.0/20 overlaps 10.9.0.0/16, already routed to peer 'a'",
        "10.9.0.0/20 overlaps 10.9.3.7/32, already routed to peer 'e'"]
