"""The real receive loop (``DataPath.run_rx``) fuzzed in-process with hypothesis: GRO batches of
genuine packets carrying hostile inner packets, mixed with forged and damaged datagrams, in
every mode, with and without the virtio header, and for a gateway with two peers (one of them
spoofing the other's outer address, so their packets share a batch).

For every batch: the loop survives (the rig's sentinel after it must arrive), no internal error
is counted, every datagram is either delivered (one segment of a frame written to the TUN) or
counted as a drop with a reason, every frame written is one the kernel can act on, its source
belongs to a peer, and no coalesced run carries two peers' bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import rxrig
from hostile import inner, owner_of_fill
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offload_checks import check_frame
from rxrig import RxRig, addr_of

from core.constants import Flag
from helper import offload

CSUM = int(Flag.CSUM_PARTIAL)
CONT = int(Flag.CONTINUATION)
FILL = {0: 0xA5, 1: 0x5A}
CONFIGS = [
    ("plain", True, 1), ("psk", True, 1), ("rotating", True, 1), ("ephemeral", True, 1),
    ("ephemeral", False, 1), ("ephemeral", True, 2), ("plain", True, 2),
]
SIZES = st.sampled_from([0, 1, 19, 20, 39, 40, 41, 59, 60, 61, 100, 600, 1400])


@pytest.fixture(scope="module", params=CONFIGS,
                ids=[f"{m}-{'vnet' if v else 'novnet'}-{p}peer" for m, v, p in CONFIGS])
def rig(request: pytest.FixtureRequest) -> Iterator[RxRig]:
    mode, vnet, peers = request.param
    r = rxrig.build(mode, vnet=vnet, peers=peers)
    try:
        yield r
    finally:
        r.close()


def damaged(draw: st.DrawFn, datagram: bytes) -> bytes:
    """A genuine datagram with one byte changed, or cut short, or raw bytes of its length."""
    how = draw(st.sampled_from(["flip", "cut", "raw"]))
    if how == "flip" and datagram:
        buf = bytearray(datagram)
        buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if how == "cut":
        return datagram[:draw(st.integers(0, len(datagram)))]
    return draw(st.binary(min_size=len(datagram), max_size=len(datagram)))


def draw_batch(draw: st.DrawFn, rig: RxRig) -> list[bytes]:
    peers = len(rig.far)
    size = draw(SIZES)
    batch: list[bytes] = []
    for _ in range(draw(st.integers(1, 24))):
        k = draw(st.integers(0, peers - 1))
        src_peer = draw(st.integers(0, peers - 1)) if draw(st.booleans()) else k
        v6 = draw(st.booleans())
        src = addr_of(src_peer, v6, host=draw(st.integers(1, 3)))
        pkt = draw(inner(src, addr_of(src_peer, v6, host=9), size=size, fill=FILL[k]))
        flags = draw(st.sampled_from([0, CSUM, CSUM, CSUM | CONT, CSUM | CONT, CONT]))
        datagram = rig.far[k].seal(pkt, flags)
        if draw(st.integers(0, 5)) == 0:
            datagram = damaged(draw, datagram)
            if len(datagram) != len(batch[0] if batch else datagram):
                continue  # a batch's datagrams are equal-sized: keep this one for the end
        batch.append(datagram)
    if draw(st.booleans()) and batch and batch[0]:  # (a damaged first one may be empty)
        last = draw(st.integers(1, len(batch[0])))
        batch[-1] = batch[-1][:last]
    return batch


def check(rig: RxRig, batch: list[bytes]) -> None:
    out = rig.run(batch)
    assert "internal_error" not in out.drops, out.drops
    assert out.delivered + out.dropped == len(batch), (out.delivered, out.drops, len(batch))
    for f in out.frames:
        packet = f.packet
        if f.vnet is not None:
            check_frame(offload.VNET.pack(*f.vnet) + packet)
        assert rig.datapath.routes.source_owner(packet) is not None
        if f.vnet is not None and f.vnet[1] != offload.GSO_NONE:
            assert len(owner_of_fill(packet[f.vnet[2]:], FILL)) <= 1, "two peers in one run"


FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(data=st.data())
def test_rx_survives_and_accounts_for_hostile_batches(rig: RxRig, data: st.DataObject) -> None:
    check(rig, data.draw(st.composite(lambda draw: draw_batch(draw, rig))()))


@FUZZ
@given(datagrams=st.lists(st.one_of(
    st.binary(max_size=120), SIZES.flatmap(lambda n: st.binary(min_size=n, max_size=n))),
    min_size=1, max_size=8))
def test_rx_survives_and_counts_raw_datagrams(rig: RxRig, datagrams: list[bytes]) -> None:
    """Anything at all, one datagram at a time (anyone can send these to the port)."""
    for d in datagrams:
        out = rig.run([d])
        assert "internal_error" not in out.drops
        if rig.mode == "plain":
            # `plain` cannot authenticate: a datagram that happens to be a valid KEEPALIVE or
            # CONTROL packet is neither delivered nor dropped.
            assert out.delivered + out.dropped <= 1, out
        else:
            assert out.delivered == 0 and out.dropped == 1, out
