"""core.status's hand-written to_dict gives what dataclasses.asdict gave (the IPC's status
schema, docs/IPC.md), and round-trips through from_dict; a TunnelSpec's full_families, now
worked out once, follows dataclasses.replace."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from core.status import DnsStatus, PeerStatus, TunnelStatus
from helper.tunnelspec import TunnelSpec


def _status() -> TunnelStatus:
    peers = tuple(PeerStatus(name=f"p{i}", state="up", endpoint="192.0.2.1:51820",
                             allowed_ips=(f"10.0.0.{i}/32",), last_handshake=1.5,
                             rx_bytes=i, rtt_ms=3.0, loss=0.25) for i in range(3))
    return TunnelStatus(name="office", state="up", mode="ephemeral", drops={"bad_mac": 2},
                        peers=peers, peer_count=3, peers_up=3,
                        dns=DnsStatus("resolved", ("10.0.0.1",), ("~.",), True))


def test_to_dict_is_what_asdict_gave() -> None:
    st = _status()
    assert json.dumps(st.to_dict(), sort_keys=True) == json.dumps(asdict(st), sort_keys=True)
    bare = TunnelStatus(name="laptop", state="down")
    assert json.dumps(bare.to_dict(), sort_keys=True) == json.dumps(asdict(bare),
                                                                    sort_keys=True)


def test_to_dict_round_trips() -> None:
    st = _status()
    assert TunnelStatus.from_dict(json.loads(json.dumps(st.to_dict()))) == st


def test_to_dict_shares_no_mutable_state() -> None:
    st = _status()
    d = st.to_dict()
    d["drops"]["bad_mac"] = 99
    assert st.drops == {"bad_mac": 2}


def _spec(routes: tuple[str, ...]) -> TunnelSpec:
    return TunnelSpec(name="t", mode="ephemeral", cipher="chacha20-poly1305", transport="udp",
                      device_id=1, addresses=("10.0.0.2/24",), mtu=1400, routes=routes,
                      listen_port=0, ipv6_outer=False, static_private=None, has_psk=False,
                      peers=())


def test_full_families_computed_once_and_after_replace() -> None:
    split = _spec(("10.1.0.0/16",))
    assert split.full_families == () and not split.blocks_ipv6
    full = replace(split, routes=("0.0.0.0/0",))
    assert full.full_families == (4,) and full.blocks_ipv6
    both = replace(full, routes=("0.0.0.0/0", "::/0"))
    assert both.full_families == (4, 6)
