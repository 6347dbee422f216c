"""Attacks on a real tunnel from the client's side of the path: replays, wrong keys, tampering.

The attacker sits in the client namespace, so its packets take the tunnel's own path to the
server. Real tunnel packets are captured with tcpdump on the server's outer interface while
numbered datagrams go through the tunnel to an echo server that counts each number it gets;
they are then sent again as they were (replays) or changed (tampering). The server's
``tunseal --json status`` drop counters must grow by exactly what was sent, and no inner packet
may reach the server twice.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import time
from collections.abc import Callable

import netlab
import pytest
from tunnellab import (
    Capture,
    EchoServer,
    Outer,
    Spec,
    TunnelPair,
    echo_sizes,
    placeholder_key,
    send_outer,
    tunnel_pair,
)

from core import wire
from core.constants import DATA_HEADER_LEN, FIXED_HEADER_LEN, Flag, PacketType
from core.session import seal_plain_into

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

COUNT_TIMEOUT = 10.0
DATA = 0x10 | PacketType.DATA
INIT = 0x10 | PacketType.HANDSHAKE_INIT


def wait_drops(pair: TunnelPair, expected: dict[str, int], before: dict[str, int],
               timeout: float = COUNT_TIMEOUT) -> dict[str, int]:
    """Wait until the server's drop counters grew by ``expected`` (reason -> count), then a
    little longer to be sure they grow no further; returns the counters."""
    deadline = time.monotonic() + timeout
    while True:
        drops = pair.server.drops(cli=False)
        grown = {k: drops.get(k, 0) - before.get(k, 0) for k in expected}
        if grown == expected:
            break
        assert time.monotonic() < deadline, f"drops grew by {grown}, expected {expected}"
        time.sleep(0.1)
    time.sleep(0.5)
    drops = pair.server.drops()  # the CLI's JSON has the last word
    assert {k: drops.get(k, 0) - before.get(k, 0) for k in expected} == expected
    return drops


def numbered_traffic(pair: TunnelPair, echo: EchoServer, count: int) -> list[Outer]:
    """Send ``count`` numbered datagrams through the tunnel, one at a time, while capturing;
    returns the sealed DATA packets the client sent."""
    def sent(packets: list[Outer]) -> list[Outer]:
        return [p for p in packets if p.src == pair.client_outer and p.payload[0] == DATA]

    with Capture(pair) as capture:
        result = echo.exchange(echo_sizes(1000, count), stop=False)
        capture.wait_until(lambda packets: len(sent(packets)) >= count)
    assert result["ok"] == count and result["retries"] == 0, result
    data = sent(capture.packets())
    assert len(data) >= count, f"captured {len(data)} data packets for {count} datagrams"
    return data


# --- replays -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "transport", "source"), [
    pytest.param("ephemeral", "udp", "same-port", id="ephemeral-udp-same-port"),
    pytest.param("ephemeral", "udp", "other-port", id="ephemeral-udp-other-port"),
    pytest.param("ephemeral+psk", "udp", "other-port", id="ephemeral+psk-udp-other-port"),
    pytest.param("psk", "udp", "other-port", id="psk-udp-other-port"),
    pytest.param("rotating", "raw", "same-address", id="rotating-raw"),
])
def test_replayed_data_is_dropped_and_counted(lab: netlab.Lab, mode: str, transport: str,
                                              source: str) -> None:
    with tunnel_pair(lab, Spec(mode=mode, transport=transport)) as pair:
        echo = EchoServer(pair)
        data = numbered_traffic(pair, echo, 40)
        before = pair.server.drops()
        sport = 0
        if source == "same-port":
            # The very source the tunnel used: its port is free once the client's helper stops.
            sport = data[0].sport
            assert {p.sport for p in data} == {sport}
            assert pair.client.helper.stop() == 0
        sent = send_outer(pair, [p.payload for p in data], sport=sport)
        assert sent["sent"] == len(data)
        if source == "same-port":
            assert sent["port"] == sport
        drops = wait_drops(pair, {"replay": len(data), "too_old": 0}, before)
        assert drops.get("bad_tag", 0) == before.get("bad_tag", 0)
        counts = echo.counts()
        assert len(counts) == 40 and set(counts.values()) == {1}, counts
        assert pair.server.status()["state"] == "up"


def test_replayed_handshake_initiation_is_refused(lab: netlab.Lab) -> None:
    """A recorded initiation sent again must not make the server answer with a new session:
    its timestamp is not newer than the last one the server accepted."""
    with tunnel_pair(lab, Spec(mode="ephemeral"), up=False) as pair:
        with Capture(pair) as capture:
            pair.up()
            time.sleep(0.5)
        inits = [p.payload for p in capture.packets() if p.payload[0] == INIT]
        assert inits, "no handshake initiation captured"
        before = pair.server.drops()
        handshake = pair.server.status()["last_handshake"]
        send_outer(pair, inits)
        wait_drops(pair, {"handshake_replay": len(inits)}, before)
        assert pair.server.status()["last_handshake"] == handshake
        echo = EchoServer(pair)
        assert echo.exchange(echo_sizes(1000, 10))["ok"] == 10
        assert set(echo.counts().values()) == {1}


# --- wrong keys --------------------------------------------------------------------------------


def _new_client_key(pair: TunnelPair) -> None:
    """The client makes itself a new private key: the server only knows the old public key."""
    pair.client.cli("genkey", pair.client.name)


def _wrong_server_key(pair: TunnelPair) -> None:
    """The client is told a public key for the server that the server does not have."""
    pair.client.cli("setpeerkey", pair.client.name, placeholder_key())


def _new_client_psk(pair: TunnelPair) -> None:
    """The client makes itself a new pre-shared key, different from the server's."""
    pair.client.cli("genpsk", pair.client.name)


@pytest.mark.parametrize(("mode", "spoil", "counted_by", "reason"), [
    pytest.param("ephemeral", _new_client_key, "server", "unknown_peer",
                 id="ephemeral-wrong-private-key"),
    pytest.param("ephemeral", _wrong_server_key, "server", "handshake_mac",
                 id="ephemeral-wrong-server-public-key"),
    # IKpsk2 mixes the psk in only for message 2: the server cannot tell and answers; the
    # client refuses the response (counted as bad_tag, as tests/unit/test_handshake.py has it)
    # and never confirms, so the server's half-made session is never used.
    pytest.param("ephemeral+psk", _new_client_psk, "client", "bad_tag",
                 id="ephemeral+psk-wrong-psk"),
    pytest.param("psk", _new_client_psk, "server", "handshake_mac", id="psk-wrong-psk"),
    pytest.param("rotating", _new_client_psk, "server", "handshake_mac",
                 id="rotating-wrong-psk"),
])
def test_a_peer_with_the_wrong_key_never_comes_up(
    lab: netlab.Lab, mode: str, spoil: Callable[[TunnelPair], None], counted_by: str,
    reason: str,
) -> None:
    with tunnel_pair(lab, Spec(mode=mode), up=False) as pair:
        spoil(pair)
        pair.note_keys()
        counter = pair.server if counted_by == "server" else pair.client
        for end in pair.ends:
            assert end.cli_json("up", end.name)["status"]["state"] != "up"
        deadline = time.monotonic() + COUNT_TIMEOUT
        while counter.drops(cli=False).get(reason, 0) < 1:
            assert time.monotonic() < deadline, f"no {reason!r} drop: {counter.drops()}"
            time.sleep(0.1)
        assert counter.drops().get(reason, 0) >= 1
        echo = EchoServer(pair)
        result = echo.exchange([100], stop=False)  # ~6 s of tries: handshake retries too
        assert result["ok"] == 0, result
        assert echo.counts() == {}
        for end in pair.ends:
            st = end.status()
            assert st["state"] != "up" and st["rx_bytes"] == 0, st
            assert not st["peers"] or st["peers"][0]["state"] != "up", st
        if counted_by == "server":
            assert pair.server.status()["last_handshake"] is None
        assert pair.client.status()["last_handshake"] is None


# --- tampering ---------------------------------------------------------------------------------


def _header(pkt: bytes, *, counter: int | None = None, encap: int | None = None,
            index: int | None = None, first: int | None = None,
            fix_checksum: bool = True) -> bytearray:
    """A copy of sealed data packet ``pkt`` with header fields changed (see core/session.py
    DATA_HEADER for the layout), its header checksum recomputed unless told otherwise."""
    out = bytearray(pkt)
    if first is not None:
        out[0] = first
    if encap is not None:
        struct.pack_into("!H", out, 6, encap)
    if index is not None:
        struct.pack_into("!I", out, 14, index)
    if counter is not None:
        struct.pack_into("!Q", out, 20, counter)
    if fix_checksum:
        struct.pack_into("!H", out, 10, 0)
        struct.pack_into("!H", out, 10, wire.internet_checksum(out[:DATA_HEADER_LEN]))
    return out


def tampered(data: list[Outer]) -> dict[str, list[bytes]]:
    """Forged packets from captured ones, by the drop counter each must land in. Counters are
    moved past anything sent so far (the header checksum recomputed), so the replay window lets
    them through to the tag check; a forgery that moved the window would make the genuine
    packets that follow "too old"."""
    base = data[-1].payload
    counter = struct.unpack_from("!Q", base, 20)[0] + 100_000
    index = struct.unpack_from("!I", base, 14)[0]
    encap = struct.unpack_from("!H", base, 6)[0]
    out: dict[str, list[bytes]] = {"bad_tag": [], "bad_header": [], "unknown_session": []}
    for i, p in enumerate(data[:6]):
        c = counter + 10 * i
        ciphertext = _header(p.payload, counter=c)
        ciphertext[DATA_HEADER_LEN + 3] ^= 0x40  # one bit of the encrypted inner packet
        tag = _header(p.payload, counter=c + 1)
        tag[-1] ^= 0x01  # one bit of the authentication tag
        out["bad_tag"] += [
            bytes(ciphertext),
            bytes(tag),
            bytes(_header(p.payload, counter=c + 2)),  # a new nonce: the tag no longer fits
            bytes(_header(p.payload, counter=c + 3, encap=encap ^ 0x8000)),  # header is AAD
        ]
        out["bad_header"] += [
            bytes(_header(p.payload, encap=encap ^ 0x0100, fix_checksum=False)),  # checksum
            bytes(_header(p.payload, counter=c + 4))[:-1],  # one byte short: length mismatch
            bytes(_header(p.payload, counter=c + 5, first=0x21)),  # version 2
        ]
        out["unknown_session"].append(bytes(_header(p.payload, index=index ^ 0x5A5A5A5A)))
    return out


@pytest.mark.parametrize("transport", ["udp", "raw"])
def test_tampered_packets_are_dropped_and_counted(lab: netlab.Lab, transport: str) -> None:
    with tunnel_pair(lab, Spec(mode="ephemeral", transport=transport)) as pair:
        echo = EchoServer(pair)
        data = numbered_traffic(pair, echo, 20)
        forged = tampered(data)
        before = pair.server.drops()
        packets = [p for group in forged.values() for p in group]
        send_outer(pair, packets)
        expected = {reason: len(group) for reason, group in forged.items()}
        wait_drops(pair, {**expected, "replay": 0, "too_old": 0}, before)
        # Genuine traffic still flows, and nothing forged reached the echo server.
        after = echo.exchange(echo_sizes(1000, 20), first=20)
        assert after["ok"] == 20 and after["retries"] == 0, after
        counts = echo.counts()
        assert sorted(counts) == sorted(i.to_bytes(4, "big").hex() for i in range(40))
        assert set(counts.values()) == {1}, counts
        drops = pair.server.drops()
        assert drops.get("too_old", 0) == before.get("too_old", 0), drops


# --- unauthenticated packets and the peer's address --------------------------------------------


def test_unauthenticated_packets_do_not_move_the_peer(lab: netlab.Lab) -> None:
    """A replayed and a forged packet from another port both carry a live session index; the
    server must not send this peer's traffic to their source (only an authenticated packet may
    move a peer's endpoint, as in WireGuard)."""
    with tunnel_pair(lab, Spec(mode="ephemeral")) as pair:
        echo = EchoServer(pair)
        data = numbered_traffic(pair, echo, 5)
        echo.counts()
        endpoint = pair.server.status()["endpoint"]
        assert endpoint == f"{pair.topo.client_addr}:{data[0].sport}"
        # The genuine client falls silent, so nothing it sends can move the endpoint back.
        assert pair.client.helper.stop() == 0
        before = pair.server.drops()
        attacker = send_outer(pair, [data[0].payload, tampered(data)["bad_tag"][0]])
        wait_drops(pair, {"replay": 1, "bad_tag": 1}, before)
        assert pair.server.status()["endpoint"] == endpoint, (
            f"the server now sends this peer's traffic to the attacker's port "
            f"{attacker['port']}")


# --- datagrams that used to end the receive loop (issue 9, findings 0 and 1) --------------------

_GSO_SENDER = r"""
import json, socket, struct, sys
dst, dport = sys.argv[1], int(sys.argv[2])
batches = [[bytes.fromhex(h) for h in b] for b in json.loads(sys.stdin.read())]
sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
for batch in batches:
    if len(batch) == 1:
        sock.sendto(batch[0], (dst, dport))
    else:  # one UDP GSO send: the receiver's UDP_GRO socket gets them as one batch
        sock.sendmsg([b"".join(batch)], [(17, 103, struct.pack("H", len(batch[0])))], 0,
                     (dst, dport))
print(json.dumps({"sent": sum(map(len, batches))}), flush=True)
"""


def _plain_tcp_pair(src: str, dst: str, *, encap: int) -> list[bytes]:
    """Two in-order TCP segments with data offset 0, framed as `plain` data packets flagged
    CSUM_PARTIAL: before the fix, one GRO batch of them ended the receive thread."""
    out = []
    for i in range(2):
        tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000 + 40 * i, 7, 0, 0x10, 502, 0, 0)
        body = tcp + bytes([0x41 + i]) * 20
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0x4000, 64, 6, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
        inner = ip + body
        buf = bytearray(FIXED_HEADER_LEN + len(inner))
        seal_plain_into(buf, 0, inner, device_id=0, encap_id=encap + i,
                        flags=int(Flag.CSUM_PARTIAL))
        out.append(bytes(buf))
    return out


def test_findings_0_and_1_hostile_datagrams_do_not_silence_the_tunnel(lab: netlab.Lab) -> None:
    """Empty datagrams and GRO batches of TCP segments with a 0-byte TCP header, sent from the
    client's namespace to a real server helper's UDP port (`plain`, so anyone can): each one is
    counted in `tunseal --json status` and the tunnel carries traffic after them."""
    with tunnel_pair(lab, Spec(mode="plain")) as pair:
        echo = EchoServer(pair)
        assert echo.exchange(echo_sizes(1000, 5), stop=False)["ok"] == 5
        before = pair.server.drops()
        batches = [[b""] for _ in range(3)]
        batches += [_plain_tcp_pair(pair.client.inner4, pair.server.inner4, encap=100 + 2 * i)
                    for i in range(3)]
        dst = pair.topo.server_addr
        assert dst is not None
        sent = json.loads(pair.lab.python(pair.topo.client, _GSO_SENDER, dst,
                                          str(pair.spec.port),
                                          input=json.dumps([[p.hex() for p in b]
                                                            for b in batches])).stdout)
        assert sent["sent"] == 9
        drops = wait_drops(pair, {"bad_header": 3, "malformed_inner": 6}, before)
        assert drops.get("internal_error", 0) == 0
        after = echo.exchange(echo_sizes(1000, 10), first=5)
        assert after["ok"] == 10, after
        status = pair.server.status()
        assert status["state"] == "up" and status["error"] == "", status
