"""Hostile datagrams against the real receive loop (``DataPath.run_rx``), in-process: issue 9
findings 0, 1 and 6. Each test sends what an attacker would and then proves the loop still
delivers genuine packets (every rig round ends with a genuine sentinel that must arrive)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
import rxrig
from rxrig import RxRig, addr_of, tcp, udp4

from core.constants import Flag, PacketType

CSUM = int(Flag.CSUM_PARTIAL)
CONT = int(Flag.CONTINUATION)


@pytest.fixture(params=["plain", "ephemeral"])
def rig(request: pytest.FixtureRequest) -> Iterator[RxRig]:
    r = rxrig.build(request.param)
    try:
        yield r
    finally:
        r.close()


@pytest.mark.parametrize("size", [0, 1, 11, 65507])
def test_finding0_empty_datagram_does_not_stop_rx(rig: RxRig, size: int) -> None:
    """A 0-byte datagram (and other runts, and the largest UDP payload) is one counted drop;
    the loop goes on reading."""
    for _ in range(3):
        out = rig.run([b"\0" * size])
        assert out.frames == []
        assert out.dropped == 1 and set(out.drops) <= {"bad_header", "unknown_peer",
                                                       "unknown_session"}, out.drops
    assert rig.thread.is_alive()
    assert "internal_error" not in rig.drops()


def _short_tcp_pair(v6: bool) -> list[bytes]:
    """Two in-order segments of one flow whose TCP data offset says 0 (a 0-byte header)."""
    src, dst = addr_of(0, v6), addr_of(0, v6, host=9)
    hl = 40 if v6 else 20
    first = tcp(src, dst, b"A" * 40, seq=5000, doff=0)
    second = tcp(src, dst, b"B" * 40, seq=5000 + len(first) - hl, doff=0)
    return [first, second]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_finding1_tcp_header_below_20_bytes_does_not_stop_rx(rig: RxRig, v6: bool) -> None:
    """Two partial-checksum segments with data offset 0 in one GRO batch made
    Coalescer.flush raise struct.error; now each is a counted malformed_inner."""
    far = rig.far[0]
    datagrams = [far.seal(p, CSUM) for p in _short_tcp_pair(v6)]
    out = rig.run(datagrams)
    assert out.frames == []
    assert out.drops == {"malformed_inner": 2}
    assert rig.thread.is_alive()


def test_finding1_short_continuation_does_not_stop_rx(rig: RxRig) -> None:
    """A run opened by a 0-offset segment, continued (CONTINUATION) by a 21-byte one: the
    continuation read the TCP flags past its end (IndexError)."""
    far = rig.far[0]
    first = tcp(addr_of(0), addr_of(0, host=9), b"A" * 40, doff=0)
    datagrams = [far.seal(first, CSUM), far.seal(first[:21], CSUM | CONT)]
    out = rig.run(datagrams)
    assert out.frames == []
    assert out.drops == {"malformed_inner": 2}
    # And the well-formed version of the same flow is still carried and coalesced.
    src, dst = addr_of(0), addr_of(0, host=9)
    good = [tcp(src, dst, bytes([i]) * 100, seq=1 + 100 * i) for i in range(3)]
    out = rig.run([far.seal(p, CSUM | (CONT if i else 0)) for i, p in enumerate(good)])
    assert out.drops == {}
    assert [f.segments for f in out.frames] == [3]
    assert out.frames[0].packet[40:] == b"".join(p[40:] for p in good)


@pytest.mark.parametrize("variant", ["doff-0", "doff-4", "doff-15-past-end", "ipv6-doff-2"])
def test_finding1_every_short_or_overlong_tcp_header_is_counted(rig: RxRig,
                                                                 variant: str) -> None:
    far = rig.far[0]
    v6 = variant.startswith("ipv6")
    doff = {"doff-0": 0, "doff-4": 4, "doff-15-past-end": 15, "ipv6-doff-2": 2}[variant]
    src, dst = addr_of(0, v6), addr_of(0, v6, host=9)
    pkts = [tcp(src, dst, b"x" * 20, seq=1 + 20 * i, doff=doff) for i in range(4)]
    if doff == 15:
        pkts = [p[:60] for p in pkts]  # the header claims 60 bytes of TCP; 40 are there
    out = rig.run([far.seal(p, CSUM) for p in pkts])
    assert out.frames == [] and out.drops == {"malformed_inner": 4}, out


def test_finding6_continuation_cannot_join_another_peers_run() -> None:
    """On a gateway, peer X (spoofing peer Y's outer address, so both land in one GRO batch)
    sends a packet that fails the source check and then a CONTINUATION of it: it used to be
    glued onto the TCP run Y had open, injecting X's bytes into Y's connection."""
    rig = rxrig.build("ephemeral", peers=2)
    try:
        y, x = rig.far
        ysrc, ydst = addr_of(0), addr_of(0, host=9)
        y_seg = tcp(ysrc, ydst, b"Y" * 200, seq=1)
        # X's packets: same size as Y's (one GSO send), Y's addresses and the next sequence
        # number, so that glued on they would look like Y's next segment.
        x_first = tcp(ysrc, ydst, b"X" * 200, seq=201)
        x_cont = tcp(ysrc, ydst, b"Z" * 200, seq=401)
        batch = [y.seal(y_seg, CSUM), x.seal(x_first, CSUM), x.seal(x_cont, CSUM | CONT)]
        out = rig.run(batch, sock=y.sock)
        assert all(b"Z" * 8 not in f.packet for f in out.frames), "X's bytes in Y's run"
        assert [f.packet for f in out.frames] == [y_seg]
        assert out.drops == {"bad_source": 2}, out.drops
        # X's own continuation after its own first segment (its own addresses) still works.
        xsrc, xdst = addr_of(1), addr_of(1, host=9)
        own = [tcp(xsrc, xdst, bytes([65 + i]) * 200, seq=1 + 200 * i) for i in range(3)]
        out = rig.run([x.seal(p, CSUM | (CONT if i else 0)) for i, p in enumerate(own)],
                      sock=x.sock)
        assert out.drops == {} and [f.segments for f in out.frames] == [3]
    finally:
        rig.close()


def test_datagram_storm_is_counted_and_survived(rig: RxRig) -> None:
    """Runts, oversize claims and garbage in one GRO batch and singly: all counted."""
    far = rig.far[0]
    junk = [bytes([0x11, 0x07]) + struct.pack("!H", 0xFFFF) + bytes(60), bytes(64),
            bytes([0xFF]) * 64]
    out = rig.run(junk)
    assert out.frames == [] and out.dropped == 3, out
    out = rig.run([far.seal(udp4(addr_of(0), addr_of(0, host=3), b""))])
    assert out.drops == {} and len(out.frames) == 1
    assert "internal_error" not in rig.drops()


def test_a_batch_that_meets_a_bug_is_counted_and_the_loop_goes_on(rig: RxRig) -> None:
    """The per-batch guard: a fault injected into the CONTROL handler (the engine's code the
    loop calls) costs the rest of its batch, counted as internal_error, not the loop."""
    def broken(peer: object, payload: bytes) -> None:
        raise RuntimeError("injected fault")

    rig.datapath.on_control = broken
    far = rig.far[0]
    good = far.seal(udp4(addr_of(0), addr_of(0, host=3), b"x" * 40))
    control = far.seal(b"\0" * (len(good) - len(far.seal(b""))), ptype=PacketType.CONTROL)
    assert len(control) == len(good)
    out = rig.run([good, control, good[:-1]])
    assert out.drops == {"internal_error": 2}, out.drops  # the CONTROL packet and the one after
    assert len(out.frames) == 1
    assert rig.thread.is_alive()
    rig.datapath.on_control = lambda peer, payload: None
    assert rig.run([far.seal(b"", ptype=PacketType.CONTROL)]).drops == {}
