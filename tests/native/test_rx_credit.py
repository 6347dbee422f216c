"""Receive counters on a gateway: when one receive batch holds datagrams of two peers (a peer
sending from another's outer address shares its GRO batch), each peer is credited its own
packets, on the native core and on the pure-Python path alike (both used to credit the whole
batch to the peer the batch ended with)."""

from __future__ import annotations

import time

import pytest
from rxrig import addr_of, udp4
from test_rx_differential import build_native, build_python

from core import native


@pytest.mark.parametrize("mode", ["ephemeral", "plain"])
@pytest.mark.parametrize("core", ["python", "native"])
def test_each_peer_of_a_shared_batch_is_credited_its_own(mode: str, core: str) -> None:
    if core == "native" and native.built is None:
        pytest.skip("the native module is not built")
    rig = (build_native if core == "native" else build_python)(mode, True, 2)
    try:
        ours = {id(p): p for p in rig.peers}
        assert len(ours) == 2
        rig.run([])  # the loop is up; what it still books after a frame is written settles
        time.sleep(0.3)
        before = {k: p.stats.rx_packets for k, p in ours.items()}
        payload = bytes(100)
        # peer 1's four packets first, then peer 0's two, all from peer 0's socket: one batch
        batch = [rig.far[1].seal(udp4(addr_of(1), addr_of(1, host=9), payload))
                 for _ in range(4)]
        batch += [rig.far[0].seal(udp4(addr_of(0), addr_of(0, host=9), payload))
                  for _ in range(2)]
        out = rig.run(batch)
        assert out.delivered == 6, out  # (the sentinel that ends the run is not listed)
        # The counters are booked after the TUN write: stop the loop, then read them.
        rig.datapath.stop.set()
        rig.thread.join(5)
        assert not rig.thread.is_alive()
        grown = sorted(p.stats.rx_packets - before[k] for k, p in ours.items())
        assert grown == [3, 4], grown  # peer 0: 2 + the sentinel; peer 1: 4
    finally:
        rig.close()
