"""Real tunnels between two real helpers, in every security mode, cipher and transport.

client ns -- router ns -- server ns; the server's helper runs the listening profile, the client's
helper the one with the endpoint; both were made through the CLI (tests/net/tunnellab.py). Each
test moves TCP bytes through the tunnel and checks their sha256 on both ends, echoes UDP
datagrams of many sizes up to the tunnel MTU, looks at the outer packets (plaintext visible in
plain mode only) and at what ``tunseal status`` says.

The full cross product is 5 modes x 3 ciphers x 2 transports. The 50 MB transfer runs for each
mode's default combination, for each cipher in ephemeral mode, and over raw IP for ephemeral
and plain; every other combination moves 2 MB.
"""

from __future__ import annotations

import time

import netlab
import pytest
from tunnellab import (
    MARKER,
    MODES,
    Capture,
    Spec,
    TunnelPair,
    assert_transfer,
    assert_udp_echo,
    ip_json,
    tcp_transfer,
    tunnel_pair,
    udp_echo,
)

from core.constants import CIPHERS, DEFAULT_CIPHER, TRANSPORTS

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

FULL = 50_000_000
SMALL = 2_000_000
UNSAFE_LINE = "UNSAFE: no encryption (mode plain)"


def full_size(spec: Spec) -> bool:
    """The combinations that get the 50 MB transfer."""
    if spec.transport == "raw":
        return spec.mode in ("ephemeral", "plain") and spec.cipher == DEFAULT_CIPHER
    return spec.cipher == DEFAULT_CIPHER or spec.mode == "ephemeral"


def combinations() -> list[object]:
    params = []
    for transport in TRANSPORTS:
        for mode in MODES:
            for cipher in CIPHERS:
                spec = Spec(mode=mode, cipher=cipher, transport=transport)
                size = FULL if full_size(spec) else SMALL
                label = f"{mode}-{cipher}-{transport}-{size // 1_000_000}MB"
                params.append(pytest.param(spec, size, id=label))
    return params


@pytest.mark.parametrize(("spec", "nbytes"), combinations())
def test_mode_cipher_transport(lab: netlab.Lab, spec: Spec, nbytes: int) -> None:
    with tunnel_pair(lab, spec) as pair:
        transfer = tcp_transfer(pair, nbytes)
        assert_transfer(transfer, nbytes, pair)
        print(f"{spec.id}: {nbytes / 1e6:.0f} MB at {transfer.mbit_per_s:.0f} Mbit/s")

        with Capture(pair) as capture:
            assert_udp_echo(*udp_echo(pair, count=60))
        outer = [p for p in capture.packets() if p.src == pair.topo.client_addr]
        assert outer, "no outer packet from the client was captured"
        in_clear = [p for p in outer if MARKER in p.payload]
        if spec.sealed:
            assert in_clear == [], "the inner payload is readable on the outer wire"
            # Every Tunseal packet that carries data is sealed: VER 1, TYPE DATA, flags A|E.
            assert all(p.payload[0] == 0x11 and p.payload[8] & 0xC0 == 0xC0
                       for p in outer if p.payload[0] & 0x0F == 1)
        else:
            assert in_clear, "plain mode should carry the inner packets in the clear"

        check_status(pair, nbytes)


def check_status(pair: TunnelPair, nbytes: int) -> None:
    """``tunseal --json status`` on both ends, and the human form's safety line."""
    spec = pair.spec
    for end in pair.ends:
        st = end.cli_json("status", end.name)["tunnels"][0]
        assert st["state"] == "up"
        assert st["mode"] == spec.profile_mode
        assert st["cipher"] == (spec.cipher if spec.sealed else "none")
        assert st["transport"] == spec.transport
        assert st["interface"] and st["interface"].startswith("ts-")
        assert [link["ifname"] for link in ip_json(pair.lab, end.ns, "link", "show",
                                                   st["interface"])] == [st["interface"]]
        assert st["mtu"] == pair.mtu
        assert (st["last_handshake"] is not None) == spec.sealed
        bad = {k: v for k, v in st["drops"].items()
               if k in ("bad_tag", "bad_header", "replay", "too_old", "handshake_failed",
                        "handshake_mac", "unknown_peer")}
        assert bad == {}, st["drops"]
        [peer] = st["peers"]
        assert peer["state"] == "up"
        human = end.cli("status", end.name).stdout
        assert human.startswith(f"{end.name}: up")
        if spec.sealed:
            assert UNSAFE_LINE not in human
            assert f"security   {spec.profile_mode}, {spec.cipher}" in human
        else:
            assert UNSAFE_LINE in human, human
    server = pair.server.status()
    client = pair.client.status()
    assert server["rx_bytes"] >= nbytes and client["tx_bytes"] >= nbytes
    if spec.transport == "raw":  # no ports: the status shows port 0
        assert client["endpoint"] == pair.endpoint.rsplit(":", 1)[0] + ":0"
    else:
        assert client["endpoint"] == pair.endpoint
    host = server["endpoint"].rsplit(":", 1)[0].strip("[]")
    expected = pair.topo.client_addr6 if spec.outer6 else pair.topo.client_addr
    assert host == expected, server["endpoint"]


# --- IPv6 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ipv6_inside_the_tunnel(lab: netlab.Lab, transport: str) -> None:
    """Inner addresses fd44:5eed::1/64 and ::2/64 next to the IPv4 ones: TCP and UDP over v6,
    and v4 still works alongside."""
    with tunnel_pair(lab, Spec(transport=transport, inner6=True)) as pair:
        for end in pair.ends:
            addrs = [a["local"] for link in ip_json(lab, end.ns, "-6", "addr", "show", "dev",
                                                    end.status()["interface"])
                     for a in link["addr_info"] if a["scope"] == "global"]
            assert addrs == [end.inner6]
        transfer = tcp_transfer(pair, 10_000_000, v6=True)
        assert_transfer(transfer, 10_000_000, pair, v6=True)
        assert_udp_echo(*udp_echo(pair, count=60, v6=True))
        assert_udp_echo(*udp_echo(pair, count=20))
        check_status(pair, 10_000_000)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ipv6_outer_path(lab: netlab.Lab, transport: str) -> None:
    """The endpoint is ``[fd00:5eed:2::2]:51900``: the tunnel runs over IPv6, IPv4 and IPv6
    inside."""
    spec = Spec(transport=transport, outer6=True, inner6=True)
    with tunnel_pair(lab, spec) as pair:
        assert pair.endpoint.startswith("[fd00:5eed:2::2]")
        with Capture(pair) as capture:
            transfer = tcp_transfer(pair, 10_000_000)
            assert_transfer(transfer, 10_000_000, pair)
            assert_udp_echo(*udp_echo(pair, count=40, v6=True))
        outer = capture.packets()
        # Only IPv6 between the two ends on the wire (a raw-IP capture has no port to tell the
        # directions apart, so it sees the server's packets too).
        ends = {pair.topo.client_addr6, pair.topo.server_addr6}
        assert outer and pair.topo.client_addr6 in {p.src for p in outer}
        assert all(p.src in ends and p.dst in ends for p in outer)
        check_status(pair, 10_000_000)


def test_rotating_mode_rotates_session_keys_under_traffic(lab: netlab.Lab) -> None:
    """rekey_messages = 1000 (the smallest allowed): a 10 MB transfer (~7000 packets) runs
    through several new sessions, and not a byte is lost or changed."""
    with tunnel_pair(lab, Spec(mode="rotating", rekey_messages=1000)) as pair:
        first = {end.role: end.status()["last_handshake"] for end in pair.ends}
        transfer = tcp_transfer(pair, 10_000_000)
        assert_transfer(transfer, 10_000_000, pair)
        # The timers (every 250 ms) start the rekey the message count asks for.
        deadline = time.monotonic() + 5
        while True:
            now = {end.role: end.status(cli=False)["last_handshake"] for end in pair.ends}
            if all(now[role] > first[role] for role in now):
                break
            assert time.monotonic() < deadline, f"no new session: {first} -> {now}"
            time.sleep(0.1)
        assert_udp_echo(*udp_echo(pair, count=30))
        check_status(pair, 10_000_000)
