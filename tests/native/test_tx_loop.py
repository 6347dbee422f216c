"""Transmit: the real transmit loop (``DataPath.run_tx``) on the native core, which reads and
seals the single packets the TUN has ready in one call (``drain_tx``) and cuts TSO frames
natively, and on the pure-Python path, fed the same frames: the far end receives the same
packets (in `plain` mode the same bytes; sealed, the same inner packets, flags and counters),
and the same drops are counted and ICMP errors written back."""

from __future__ import annotations

import itertools
import os
import select
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import rxrig
from hostile import inner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rxrig import RxRig, addr_of, udp4
from test_rx_differential import build_native, build_python

from core import ecn, session
from helper import offload

SENTINEL = b"tunseal-txloop-sentinel"
MODES = ["plain", "ephemeral"]


class TxRig:
    """An rxrig whose data path also runs its transmit loop."""

    def __init__(self, rig: RxRig):
        self.rig = rig
        self.thread = threading.Thread(target=rig.datapath.run_tx, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.rig.close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()

    def run(self, frames: list[bytes]) -> tuple[list[tuple[Any, ...]], dict[str, int],
                                                 list[bytes]]:
        """Write ``frames`` to the TUN, then a sentinel; what the far end got (decoded),
        how the drops grew, and what the loop wrote back to the TUN (ICMP errors)."""
        rig = self.rig
        before = rig.drops()
        tun = rig.tun_theirs
        for f in frames:
            tun.send(f)
        pkt = udp4(addr_of(0), addr_of(0, host=2), SENTINEL)
        tun.send(offload.plain_frame(pkt) if rig.vnet else pkt)
        got: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + rxrig.WAIT
        sock = rig.far[0].sock
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the transmit loop never sent the sentinel"
            assert self.thread.is_alive(), "the transmit loop ended"
            r, _, _ = select.select([sock], [], [], min(left, 0.5))
            if not r:
                continue
            d = sock.recv(70000)
            decoded = self.decode(d)
            if decoded[-1].endswith(SENTINEL):
                break
            got.append(decoded)
        back: list[bytes] = []
        tun.setblocking(False)
        try:
            while True:
                back.append(tun.recv(1 << 17))
        except BlockingIOError:
            pass
        after = rig.drops()
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return got, {k: v for k, v in grown.items() if v}, back

    def decode(self, d: bytes) -> tuple[Any, ...]:
        if self.rig.mode == "plain":
            return (d,)  # no keys: the bytes themselves must agree
        far = self.rig.far[0]
        r = far.endpoint.receive(d, far.source)
        assert r.drop is None and r.inner is not None, r.drop
        counter = struct.unpack_from("!Q", d, 20)[0]
        return r.flags, counter, r.inner


@pytest.fixture(scope="module", params=[(m, v) for m in MODES for v in (True, False)],
                ids=[f"{m}-{'vnet' if v else 'novnet'}" for m in MODES for v in (True, False)])
def twin(request: pytest.FixtureRequest) -> Iterator[tuple[TxRig, TxRig]]:
    mode, vnet = request.param
    rigs = []
    try:
        for build in (build_native, build_python):
            rigs.append(TxRig(build(mode, vnet=vnet, peers=1)))
        assert rigs[0].rig.datapath.native is not None
        assert rigs[1].rig.datapath.native is None
        yield rigs[0], rigs[1]
    finally:
        for r in rigs:
            r.close()


def with_ecn(pkt: bytes, cp: int) -> bytes:
    b = bytearray(pkt)
    if b and b[0] >> 4 == 4 and len(b) >= 2:
        b[1] = (b[1] & ~3) | cp
    elif b and b[0] >> 4 == 6 and len(b) >= 2:
        b[1] = (b[1] & ~0x30) | cp << 4
    return bytes(b)


@st.composite
def frames(draw: st.DrawFn, vnet: bool) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(1, 12))):
        v6 = draw(st.booleans())
        kind = draw(st.integers(0, 9))
        if kind == 0:
            pkt = draw(st.binary(max_size=80))
        elif kind == 1:  # link-local: never carried
            pkt = udp4(addr_of(0), bytes([224, 0, 0, 251]), b"m" * 30)
        elif kind == 2:  # larger than the tunnel's MTU, DF set: too_big and an ICMP error
            pkt = udp4(addr_of(0), addr_of(0, host=9), b"b" * 1500)
        else:
            pkt = draw(inner(addr_of(0, v6), addr_of(0, v6, host=9),
                             size=draw(st.sampled_from([None, 60, 100, 100, 100, 1000]))))
        pkt = with_ecn(pkt, draw(st.sampled_from([0, 0, ecn.ECT0, ecn.CE, ecn.ECT1])))
        if vnet:
            flags = draw(st.sampled_from([0, offload.F_NEEDS_CSUM]))
            gso = draw(st.sampled_from([offload.GSO_NONE] * 4 + [offload.GSO_TCPV4, 3]))
            out.append(offload.VNET.pack(flags, gso, 0, 0, 20, 16) + pkt
                       if draw(st.integers(0, 15)) else pkt[:draw(st.integers(0, 9))])
        elif pkt:
            out.append(pkt)
    return out


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_both_loops_send_the_same(twin: tuple[TxRig, TxRig], data: st.DataObject) -> None:
    nat, py = twin
    batch = data.draw(frames(nat.rig.vnet))
    sent_nat, drops_nat, back_nat = nat.run(batch)
    sent_py, drops_py, back_py = py.run(batch)
    assert "internal_error" not in drops_nat and "internal_error" not in drops_py
    assert drops_nat == drops_py
    assert back_nat == back_py
    if nat.rig.mode == "plain":
        assert sent_nat == sent_py
    else:  # different keys: the same packets, flags and counter steps
        assert [s[0] for s in sent_nat] == [s[0] for s in sent_py]
        assert [s[2] for s in sent_nat] == [s[2] for s in sent_py]
        steps = [[int(b[1]) - int(a[1]) for a, b in itertools.pairwise(s)]
                 for s in (sent_nat, sent_py)]
        assert steps[0] == steps[1]


def test_native_drain_records_each_packet_for_icmp(twin: tuple[TxRig, TxRig]) -> None:
    nat, _py = twin
    dp = nat.rig.datapath
    pkts = [udp4(addr_of(0), addr_of(0, host=9), bytes([i]) * 50) for i in range(3)]
    frames_ = [offload.plain_frame(p) if nat.rig.vnet else p for p in pkts]
    sent, drops, _back = nat.run(frames_)
    assert len(sent) == 3 and not drops
    peer = nat.rig.endpoint.peers[0]
    ring = dp.ring(peer)
    for s, p in zip(sent, pkts, strict=True):
        encap = (struct.unpack_from("!H", s[0], 6)[0] if nat.rig.mode == "plain"
                 else int(s[1]) & 0xFFFF)
        assert ring.find(encap) == p[:68]


def test_session_counter_follows_the_native_drain(twin: tuple[TxRig, TxRig]) -> None:
    nat, _py = twin
    if nat.rig.mode == "plain":
        pytest.skip("plain mode has no session counter")
    kp = nat.rig.endpoint.peers[0].current
    assert isinstance(kp, session.Keypair)
    pkt = udp4(addr_of(0), addr_of(0, host=9), os.urandom(40))
    nat.run([offload.plain_frame(pkt) if nat.rig.vnet else pkt])
    assert kp.send_counter == kp.native.next_counter

