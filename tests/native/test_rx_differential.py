"""Receive: the real receive loop on the native core and on the pure-Python path, sealed and
`plain` modes, fed the same hostile GRO batches (genuine packets carrying hostile inner
packets, forged, damaged, replayed and cut datagrams; a gateway whose two peers share a
batch), write the same frames to the TUN and count the same drops, reason by reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import rxrig
from hostile import inner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rxrig import RxRig, addr_of

from core import native
from core.constants import Flag, PacketType

CSUM = int(Flag.CSUM_PARTIAL)
CONT = int(Flag.CONTINUATION)
FILL = {0: 0xA5, 1: 0x5A}
CONFIGS = [("ephemeral", True, 1), ("psk", True, 1), ("ephemeral", False, 1),
           ("ephemeral", True, 2), ("plain", True, 1), ("plain", False, 1), ("plain", True, 2)]
SIZES = st.sampled_from([0, 1, 19, 20, 39, 40, 41, 59, 60, 61, 100, 600, 1400])


@dataclass
class Twin:
    nat: RxRig
    py: RxRig


def build_python(mode: str, vnet: bool, peers: int) -> RxRig:
    """A rig whose keypairs and data path are pure Python (as with TUNSEAL_NATIVE=0)."""
    saved = native.module
    native.module = None
    try:
        return rxrig.build(mode, vnet=vnet, peers=peers)
    finally:
        native.module = saved


def build_native(mode: str, vnet: bool, peers: int) -> RxRig:
    """A rig on the native core (also under TUNSEAL_NATIVE=0)."""
    saved = native.module
    native.module = native.built
    try:
        return rxrig.build(mode, vnet=vnet, peers=peers)
    finally:
        native.module = saved


@pytest.fixture(scope="module", params=CONFIGS,
                ids=[f"{m}-{'vnet' if v else 'novnet'}-{p}peer" for m, v, p in CONFIGS])
def twin(request: pytest.FixtureRequest) -> Iterator[Twin]:
    mode, vnet, peers = request.param
    nat = build_native(mode, vnet, peers)
    try:
        py = build_python(mode, vnet, peers)
    except BaseException:
        nat.close()
        raise
    assert nat.datapath.native is not None and py.datapath.native is None
    near_nat, near_py = nat.endpoint.peers[0], py.endpoint.peers[0]
    if mode != "plain":
        assert near_nat.current.native is not None and near_py.current.native is None
    try:
        yield Twin(nat, py)
    finally:
        nat.close()
        py.close()


@dataclass(frozen=True)
class Op:
    """One datagram of a batch, as a recipe each rig seals with its own keys."""

    peer: int
    packet: bytes
    flags: int
    ptype: int = PacketType.DATA
    damage: tuple[str, int, int] | None = None
    """("flip", byte, bit), ("cut", length, 0), ("replay", which earlier op, 0)."""
    raw: bytes | None = None


def realise(rig: RxRig, ops: list[Op], last_cut: int | None) -> list[bytes]:
    out: list[bytes] = []
    for op in ops:
        if op.raw is not None:
            out.append(op.raw)
            continue
        if op.damage is not None and op.damage[0] == "replay" and out:
            out.append(out[op.damage[1] % len(out)])
            continue
        d = rig.far[op.peer].seal(op.packet, op.flags, op.ptype)
        if op.damage is not None and op.damage[0] == "flip":
            b = bytearray(d)
            b[op.damage[1] % len(b)] ^= 1 << op.damage[2]
            d = bytes(b)
        out.append(d)
    if out:
        size = len(out[0])
        out = [d for d in out[:-1] if len(d) == size] + [out[-1]]  # one GRO batch
        if last_cut is not None:
            out[-1] = out[-1][:max(1, last_cut % (len(out[-1]) + 1))]
    return out


@st.composite
def recipes(draw: st.DrawFn, peers: int) -> tuple[list[Op], int | None]:
    size = draw(SIZES)
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 20))):
        k = draw(st.integers(0, peers - 1))
        src_peer = draw(st.integers(0, peers - 1)) if draw(st.booleans()) else k
        v6 = draw(st.booleans())
        src = addr_of(src_peer, v6, host=draw(st.integers(1, 3)))
        pkt = draw(inner(src, addr_of(src_peer, v6, host=9), size=size, fill=FILL[k]))
        flags = draw(st.sampled_from([0, CSUM, CSUM, CSUM | CONT, CSUM | CONT, CONT]))
        kind = draw(st.integers(0, 9))
        if kind == 0:
            ops.append(Op(k, pkt, flags, damage=("flip", draw(st.integers(0, 2000)),
                                                 draw(st.integers(0, 7)))))
        elif kind == 1:
            ops.append(Op(k, pkt, flags, damage=("replay", draw(st.integers(0, 30)), 0)))
        elif kind == 2:
            ops.append(Op(k, b"", 0, raw=draw(st.binary(min_size=0, max_size=80))))
        elif kind == 3:
            ops.append(Op(k, b"\0" * 8, 0, ptype=PacketType.KEEPALIVE))
        else:
            ops.append(Op(k, pkt, flags))
    cut = draw(st.one_of(st.none(), st.integers(0, 2000)))
    return ops, cut


def frames(out: rxrig.Outcome) -> list[tuple[object, bytes]]:
    return [(f.vnet, f.packet) for f in out.frames]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_both_paths_agree_on_hostile_batches(twin: Twin, data: st.DataObject) -> None:
    ops, cut = data.draw(recipes(len(twin.nat.far)))
    got = {}
    for name, rig in (("native", twin.nat), ("python", twin.py)):
        batch = realise(rig, ops, cut)
        got[name] = rig.run(batch)
        assert "internal_error" not in got[name].drops, (name, got[name].drops)
    assert got["native"].drops == got["python"].drops
    assert frames(got["native"]) == frames(got["python"])


def test_empty_datagram_is_a_bad_header_on_the_native_path(twin: Twin) -> None:
    out = twin.nat.run([b""])
    assert out.drops == {"bad_header": 1} and out.frames == []
