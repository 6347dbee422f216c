"""ECN (RFC 6040) through the real data path loops, in-process (tests/unit/rxrig.py): a far end
sends GRO batches whose outer TOS it sets with an IP_TOS control message, the way a router on the
path leaves it; the receive loop must carry CE into ECN-capable inner packets (merged runs
included), drop and count Not-ECT ones, and leave the rest as RFC 6040 says. The transmit loop
must copy each inner packet's ECN field to the outer datagrams it sends."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import rxrig
from rxrig import LOOPBACK, RxRig, addr_of, tcp, udp4

from core import ecn
from core.constants import Flag
from helper import offload
from helper.transport import IP_RECVTOS, IP_TOS, SOL_IP, SOL_UDP, UDP_SEGMENT

CSUM = int(Flag.CSUM_PARTIAL)
CONT = int(Flag.CONTINUATION)
CODEPOINTS = (ecn.NOT_ECT, ecn.ECT1, ecn.ECT0, ecn.CE)


def with_ecn(pkt: bytes, cp: int, *, dscp: int = 0x28) -> bytes:
    """``pkt`` with ECN field ``cp`` (and some DSCP bits, which must survive) and, for IPv4, a
    valid header checksum."""
    b = bytearray(pkt)
    if b[0] >> 4 == 4:
        b[1] = dscp << 2 | cp
        b[10:12] = b"\0\0"
        struct.pack_into("!H", b, 10, checksum(bytes(b[:20])))
    else:
        b[1] = (b[1] & 0x0F) | ((dscp << 2 | cp) & 0x0F) << 4
        b[0] = 0x60 | (dscp << 2 | cp) >> 4
    return bytes(b)


def checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def run_marked(rig: RxRig, datagrams: list[bytes], outer: int) -> rxrig.Outcome:
    """rig.run, with the batch arriving with outer ECN field ``outer`` (the sentinel that ends
    it is sent Not-ECT, so it always arrives)."""
    before = rig.drops()
    sock = rig.far[0].sock
    size = len(datagrams[0])
    assert all(len(d) == size for d in datagrams[:-1]) and len(datagrams[-1]) <= size
    cmsgs = [(SOL_IP, IP_TOS, struct.pack("i", outer))]
    if len(datagrams) > 1:
        cmsgs.append((SOL_UDP, UDP_SEGMENT, struct.pack("H", size)))
    sock.sendmsg([b"".join(datagrams)], cmsgs, 0, (LOOPBACK, rig.port))
    sock.sendto(rig.sentinel(), (LOOPBACK, rig.port))
    frames = rig.read_until_sentinel()
    after = rig.drops()
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return rxrig.Outcome(frames, {k: v for k, v in grown.items() if v})


@pytest.fixture(scope="module", params=[("ephemeral", True), ("plain", True),
                                        ("ephemeral", False)],
                ids=["ephemeral-vnet", "plain-vnet", "ephemeral-no-vnet"])
def rig(request: pytest.FixtureRequest) -> Iterator[RxRig]:
    mode, vnet = request.param
    r = rxrig.build(mode, vnet=vnet)
    try:
        yield r
    finally:
        r.close()


def tcp_run(v6: bool, cp: int, seq: int, count: int = 3) -> list[bytes]:
    src, dst = addr_of(0, v6), addr_of(0, v6, host=9)
    return [with_ecn(tcp(src, dst, bytes([65 + i]) * 300, seq=seq + 300 * i), cp)
            for i in range(count)]


def assert_ip_header_valid(pkt: bytes) -> None:
    if pkt[0] >> 4 == 4:
        assert checksum(pkt[:20]) == 0, "IPv4 header checksum broken"


_seq = iter(range(1_000, 1 << 31, 10_000))


@pytest.mark.parametrize("inner", CODEPOINTS, ids=ecn.NAMES)
@pytest.mark.parametrize("outer", CODEPOINTS, ids=[f"outer-{n}" for n in ecn.NAMES])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_decapsulation_follows_rfc_6040(rig: RxRig, outer: int, inner: int, v6: bool) -> None:
    """A TCP run (coalesced on vnet devices, CONTINUATION-flagged like a TSO burst) and a UDP
    packet, all with one inner ECN field, in one batch with one outer ECN field."""
    far = rig.far[0]
    run = tcp_run(v6, inner, next(_seq))
    udp = with_ecn(udp4(addr_of(0), addr_of(0, host=3), b"u" * 100), inner)
    datagrams = [far.seal(p, CSUM | (CONT if i else 0)) for i, p in enumerate(run)]
    datagrams.append(far.seal(udp))
    marks = rig.datapath.ecn_ce
    out = run_marked(rig, datagrams, outer)
    expected = ecn.decap(outer, inner)
    assert rig.thread.is_alive()
    if expected == ecn.DROP:
        assert out.frames == []
        assert out.drops == {"ecn_not_ect_ce": 4}
        assert rig.datapath.ecn_ce == marks
        return
    assert out.drops == {}
    assert out.delivered == 4
    if rig.vnet:
        assert [f.segments for f in out.frames] == [3, 1]  # the run still coalesced
    for f in out.frames:
        assert ecn.of_packet(f.packet) == expected
        assert_ip_header_valid(f.packet)
        dscp = f.packet[1] >> 2 if not v6 or f.packet[0] >> 4 == 4 else \
            ((f.packet[0] & 0x0F) << 4 | f.packet[1] >> 4) >> 2
        assert dscp == 0x28
    delivered = b"".join(f.packet for f in out.frames)
    assert all(p[(40 if v6 else 20) + 20:] in delivered for p in run)
    marked = 4 if expected == ecn.CE and inner != ecn.CE else 0
    assert rig.datapath.ecn_ce - marks == marked


def test_a_ce_batch_after_a_clean_one_marks_only_its_own(rig: RxRig) -> None:
    far = rig.far[0]
    first = tcp_run(False, ecn.ECT0, next(_seq))
    out = run_marked(rig, [far.seal(p, CSUM) for p in first], ecn.ECT0)
    assert {ecn.of_packet(f.packet) for f in out.frames} == {ecn.ECT0}
    second = tcp_run(False, ecn.ECT0, next(_seq))
    out = run_marked(rig, [far.seal(p, CSUM) for p in second], ecn.CE)
    assert {ecn.of_packet(f.packet) for f in out.frames} == {ecn.CE}
    third = tcp_run(False, ecn.ECT0, next(_seq))
    out = run_marked(rig, [far.seal(p, CSUM) for p in third], ecn.NOT_ECT)
    assert {ecn.of_packet(f.packet) for f in out.frames} == {ecn.ECT0}


# --- transmit: the inner ECN field goes to the outer header ----------------------------------


@pytest.fixture()
def tx_rig() -> Iterator[tuple[RxRig, socket.socket]]:
    """An rxrig whose data path also runs its transmit loop; the far end's socket reports the
    TOS of what it receives."""
    rig = rxrig.build("ephemeral", vnet=True)
    sock = rig.far[0].sock
    sock.setsockopt(SOL_IP, IP_RECVTOS, 1)
    tx = threading.Thread(target=rig.datapath.run_tx, daemon=True)
    tx.start()
    try:
        yield rig, sock
    finally:
        rig.close()
        tx.join(timeout=5)
        assert not tx.is_alive()


def received_tos(sock: socket.socket, expect: int) -> list[int]:
    """The outer ECN field of each of ``expect`` datagrams (GSO ones arrive one by one: the
    socket has no UDP_GRO)."""
    out: list[int] = []
    deadline = time.monotonic() + rxrig.WAIT
    while len(out) < expect:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {expect} datagrams arrived"
        r, _, _ = select.select([sock], [], [], min(left, 0.5))
        if not r:
            continue
        _data, anc, _flags, _addr = sock.recvmsg(70000, 64)
        tos = [d[0] for level, kind, d in anc if (level, kind) == (SOL_IP, IP_TOS)]
        assert len(tos) == 1
        out.append(tos[0] & 3)
    return out


def tso_frame(cp: int, payload_len: int, mss: int) -> bytes:
    pkt = with_ecn(tcp(addr_of(0), addr_of(0, host=9), b"t" * payload_len, seq=77), cp)
    vnet = offload.VNET.pack(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 40, mss, 20, 16)
    return vnet + pkt


def test_encapsulation_copies_the_inner_ecn_field(tx_rig: tuple[RxRig, socket.socket]) -> None:
    rig, sock = tx_rig
    tun = rig.tun_theirs
    for cp in (ecn.ECT0, ecn.NOT_ECT, ecn.ECT1, ecn.CE):
        # A TSO super-packet: cut into 5 segments that leave in one GSO send with one TOS.
        tun.send(tso_frame(cp, 5 * 1000, 1000))
        assert received_tos(sock, 5) == [cp] * 5
    # Single packets of alternating ECN fields, back to back: never batched under one TOS.
    cps = [ecn.ECT0, ecn.ECT0, ecn.NOT_ECT, ecn.CE, ecn.ECT1, ecn.NOT_ECT]
    for i, cp in enumerate(cps):
        pkt = with_ecn(udp4(addr_of(0), addr_of(0, host=3), bytes([i]) * 200), cp)
        tun.send(offload.plain_frame(pkt))
    assert received_tos(sock, len(cps)) == cps
