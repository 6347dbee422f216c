"""The native receive call on its own: RFC 6040 decapsulation (not yet in the pure-Python
path), verdicts per datagram, and the coalescer against offload.Coalescer."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rxrig import tcp

from core import ecn, native
from core.session import Keypair
from helper import offload

INDEX = 0x0A0B0C0D


def keypairs() -> tuple[Keypair, Keypair]:
    k1, k2 = os.urandom(32), os.urandom(32)
    tx = Keypair(cipher="aes-256-gcm", send_key=k1, recv_key=k2, local_index=1,
                 remote_index=INDEX, device_id=4, is_initiator=True, created=0.0, native=False)
    rx = Keypair(cipher="aes-256-gcm", send_key=k2, recv_key=k1, local_index=INDEX,
                 remote_index=1, device_id=4, is_initiator=False, created=0.0, native=True)
    return tx, rx


def ipv4(tos: int, payload: bytes = b"x" * 20) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), 1, 0x4000, 64,
                                17, 0, bytes([10, 1, 0, 1]), bytes([10, 1, 0, 9])))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr) + payload


def ipv6(tc: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x6000_0000 | tc << 20, 8, 17, 64, bytes(16),
                       bytes(16)) + bytes(8)


def header_ok(pkt: bytes) -> bool:
    s = sum(struct.unpack("!10H", pkt[:20]))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def receive(rx: Keypair, datagrams: list[bytes], outer_ecn: int
            ) -> tuple[list[bytes], dict[str, int], bytes]:
    """What the native receive call wrote, its drops (and congestion marks, as ``ecn_ce``,
    from the sink's separate marks counter) and its verdicts."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sink = native.built.Coalescer(a.fileno(), False)
        allow_all = native.built.SourceFilter([(0, 0, True)], [(0, 0, True)])
        buf = bytearray(b"".join(datagrams))
        seg = len(datagrams[0])
        verdicts = bytearray(len(datagrams))
        pos, status, _i, _c, _packets, _b = native.built.rx_run(
            rx.native, INDEX, buf, len(buf), 0, seg, sink, allow_all, None, outer_ecn,
            native.built.NO_CONT, False, verdicts)
        assert (pos, status) == (len(buf), 0)
        sink.flush()
        b.setblocking(False)
        got = []
        while True:
            try:
                got.append(b.recv(70000))
            except BlockingIOError:
                break
        drops = dict(sink.take_drops())
        assert "ecn_ce" not in drops  # a mark is not a drop
        if (marks := sink.take_marks()):
            drops["ecn_ce"] = marks
        assert sink.take_marks() == 0  # taken means reset
        return got, drops, bytes(verdicts)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("tos", [0, 1, 2, 3])
@pytest.mark.parametrize("outer", [0, 1, 2, 3])
def test_rfc6040_decapsulation_ipv4(tos: int, outer: int) -> None:
    tx, rx = keypairs()
    pkt = ipv4(tos | 0xB8)  # DSCP bits around the ECN field are left alone
    got, drops, verdicts = receive(rx, [bytes(tx.seal(pkt))], outer)
    want = ecn.decap(outer, tos)  # the pure-Python rule (RFC 6040's table) is the oracle
    if want == ecn.DROP:
        assert got == [] and drops == {"ecn_not_ect_ce": 1} and verdicts[0] != 0
    elif want == tos:
        assert got == [pkt] and drops == {}
    else:
        assert len(got) == 1 and got[0][1] == 0xB8 | want and header_ok(got[0])
        assert got[0][2:] == pkt[2:10] + got[0][10:12] + pkt[12:]
        assert drops == ({"ecn_ce": 1} if want == ecn.CE else {})


@pytest.mark.parametrize("ecn", [0, 1, 2, 3])
def test_rfc6040_decapsulation_ipv6(ecn: int) -> None:
    tx, rx = keypairs()
    pkt = ipv6(0xA0 | ecn)
    got, drops, _v = receive(rx, [bytes(tx.seal(pkt))], 3)
    if ecn == 0:
        assert got == [] and drops == {"ecn_not_ect_ce": 1}
    else:
        assert got == [ipv6(0xA3)]


def test_verdicts_per_datagram() -> None:
    tx, rx = keypairs()
    good = bytes(tx.seal(ipv4(0)))
    forged = bytearray(tx.seal(ipv4(0)))
    forged[-1] ^= 1
    got, drops, verdicts = receive(rx, [good, bytes(forged), good, b"\x11" * 5], 0)
    assert len(got) == 1
    assert drops == {"bad_tag": 1, "replay": 1, "bad_header": 1}
    reasons = ["delivered", *native.built.REASONS]
    assert [reasons[v] for v in verdicts] == ["delivered", "bad_tag", "replay", "bad_header"]


@st.composite
def coalescer_ops(draw: st.DrawFn) -> list[tuple[str, bytes, bool, int]]:
    ops = []
    seq = 1000
    for _ in range(draw(st.integers(1, 30))):
        v6 = draw(st.booleans())
        src = bytes(15) + b"\x01" if v6 else bytes([10, 1, 0, 1])
        dst = bytes(15) + b"\x09" if v6 else bytes([10, 1, 0, 9])
        size = draw(st.sampled_from([100, 100, 100, 60, 0, 7]))
        flags = draw(st.sampled_from([0x10, 0x10, 0x18, 0x02, 0x11]))
        if draw(st.integers(0, 3)) == 0:
            seq = draw(st.integers(0, 2**32 - 1))
        doff = draw(st.sampled_from([5, 5, 8, 3, 15]))
        pkt = tcp(src, dst, bytes([0xA5]) * size, seq=seq, doff=doff, flags=flags)
        if draw(st.integers(0, 6)) == 0:
            pkt = pkt[:draw(st.integers(0, len(pkt)))]
        seq = (seq + size) & 0xFFFFFFFF
        op = draw(st.sampled_from(["add", "add", "add", "cont", "flush"]))
        ops.append((op, pkt, draw(st.booleans()) or True, draw(st.integers(0, 1))))
    return ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=coalescer_ops())
def test_coalescer_matches_offload_coalescer(ops: list[tuple[str, bytes, bool, int]]) -> None:
    owners = [object(), object()]
    written: list[bytes] = []
    drops: dict[str, int] = {}

    def count(reason: str) -> None:
        drops[reason] = drops.get(reason, 0) + 1

    ref = offload.Coalescer(lambda f: written.append(bytes(f)), count)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        nat = native.built.Coalescer(a.fileno(), True)
        for op, pkt, partial, who in ops:
            if op == "add":
                ref.add(pkt, partial, owners[who])
                nat.add(pkt, partial, owners[who])
            elif op == "cont":
                assert ref.continue_run(pkt, owners[who]) == nat.continue_run(pkt, owners[who])
            else:
                ref.flush()
                nat.flush()
        ref.flush()
        nat.flush()
        b.setblocking(False)
        got = []
        while True:
            try:
                got.append(b.recv(1 << 17))
            except BlockingIOError:
                break
        assert got == written
        assert dict(nat.take_drops()) == drops
    finally:
        a.close()
        b.close()
