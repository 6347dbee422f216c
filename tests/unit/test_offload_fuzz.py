"""The offload code driven directly with hostile input (hypothesis): the Coalescer with runs of
almost-valid TCP segments from two owners, and the transmit side's segment/seal_tso/
frame_tso_plain with hostile virtio headers. Nothing may raise; every packet handed to the
Coalescer is written (as one segment of a frame) or counted dropped; every frame asks the kernel
only for what fits inside it; no run carries two owners' bytes. fuzz_offload.py is the
coverage-guided version of the same properties, for long runs."""

from __future__ import annotations

import struct

from hostile import inner, owner_of_fill
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offload_checks import check_frame, run_coalescer
from protocol_helpers import keypair_pair

from helper import offload

SRC = {0: (bytes([10, 1, 0, 1]), bytes(15) + b"\1"), 1: (bytes([10, 2, 0, 1]), bytes(15) + b"\2")}
DST = (bytes([10, 9, 0, 9]), bytes(15) + b"\x09")
FILL = {0: 0xA5, 1: 0x5A}
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, int, bool, bytes]]:
    """(op, owner, partial, packet): op is add, cont(inue_run) or flush."""
    out = []
    size = draw(st.one_of(st.none(), st.sampled_from([40, 60, 100, 140])))
    for _ in range(draw(st.integers(1, 24))):
        owner = draw(st.integers(0, 1))
        v6 = draw(st.booleans())
        pkt = draw(inner(SRC[owner][v6], DST[v6], size=size, fill=FILL[owner]))
        op = draw(st.sampled_from(["add", "add", "cont", "flush"]))
        out.append((op, owner, draw(st.booleans()) or op == "cont", pkt))
    return out


@FUZZ
@given(steps())
def test_coalescer_writes_or_counts_every_packet(script: list[tuple[str, int, bool, bytes]]
                                                 ) -> None:
    frames: list[bytes] = []
    drops: list[str] = []
    c = offload.Coalescer(lambda f: frames.append(bytes(f)), drops.append)
    handed = 0
    for op, owner, partial, pkt in script:
        if op == "flush":
            c.flush()
            continue
        handed += 1
        if op == "cont" and c.continue_run(pkt, owner):
            continue
        c.add(pkt, partial, owner)
    c.flush()
    assert set(drops) <= {"malformed_inner"}
    assert sum(check_frame(f) for f in frames) + len(drops) == handed
    for f in frames:
        vnet = offload.VNET.unpack_from(f)
        if vnet[1] != offload.GSO_NONE:
            assert len(owner_of_fill(f[offload.VNET_LEN + vnet[2]:], FILL)) <= 1, \
                "one run carries two owners' bytes"


@FUZZ
@given(st.binary(max_size=3000))
def test_coalescer_script_of_raw_bytes(data: bytes) -> None:
    """The atheris harness's reading of an input, on hypothesis' inputs."""
    run_coalescer(data)


SENDER = keypair_pair("chacha20-poly1305")[0]


@st.composite
def tso_frames(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    pkt = draw(inner(SRC[0][v6], DST[v6]))
    if draw(st.booleans()):
        pkt = pkt + draw(st.binary(min_size=0, max_size=3000))
    flags = draw(st.sampled_from([0, 1, 1, 3]))
    gso_type = draw(st.one_of(st.sampled_from([offload.GSO_TCPV6 if v6 else offload.GSO_TCPV4,
                                               offload.GSO_NONE]),
                              st.integers(0, 255)))
    gso = draw(st.one_of(st.sampled_from([0, 1, 8, 100, 1388]), st.integers(0, 0xFFFF)))
    csum_start = draw(st.one_of(st.just(40 if v6 else 20), st.integers(0, 0xFFFF)))
    hdr = offload.VNET.pack(flags, gso_type, draw(st.integers(0, 0xFFFF)), gso, csum_start,
                            draw(st.sampled_from([16, 6, 0xFFFF])))
    cut = draw(st.integers(0, 12))
    frame = hdr + pkt
    return frame[:cut] if cut < offload.VNET_LEN else frame


@FUZZ
@given(tso_frames(), st.sampled_from([1400, 576, 65535]))
def test_transmit_side_cuts_any_frame_or_declines(frame: bytes, mtu: int) -> None:
    scratch = bytearray(65536 + 64)
    out = bytearray(65000 + 2048)
    emitted: list[bytes] = []
    n = offload.segment(memoryview(frame), lambda p, partial: emitted.append(bytes(p)), scratch)
    assert n == len(emitted)
    body = len(frame) - offload.VNET_LEN
    for seg in emitted:
        assert len(seg) <= max(body, 0) or n == 1
    offload.tso_segment_size(memoryview(frame))

    def flush(end: int, seg: int) -> int:
        assert seg > 0 and end <= len(out)
        return 0

    off, seg, count, _ = offload.seal_tso(memoryview(frame), SENDER, out, 0, scratch, flush, mtu)
    assert count == -1 or (count >= 1 and off <= len(out) and seg > 0)
    off, seg, count, _, _ = offload.frame_tso_plain(memoryview(frame), 7, 1, out, 0, flush, mtu)
    assert count == -1 or (count >= 1 and off <= len(out) and seg > 0)


def test_segment_of_a_frame_shorter_than_its_virtio_header() -> None:
    assert offload.segment(memoryview(b"\x01\x01"), lambda p, c: None, bytearray(70000)) == 0
    assert offload.tso_segment_size(memoryview(b"")) == 0
    assert offload.seal_tso(memoryview(b"\0" * 5), SENDER, bytearray(70000), 0,
                            bytearray(70000), lambda e, s: 0)[2] == -1
    hdr = struct.pack("<BBHHHH", 0, 0, 0, 0, 0, 0)
    got: list[bytes] = []
    assert offload.segment(memoryview(hdr), lambda p, c: got.append(bytes(p)),
                           bytearray(70000)) == 1
    assert got == [b""]


def test_segment_refuses_an_ip_header_shorter_than_its_version() -> None:
    """Found by fuzz_offload.py: a TSO frame saying the IPv6 header is 0 bytes long made
    segment() pack a negative payload length (struct.error)."""
    tcp_hdr = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 0x50, 0x10, 9, 0, 0)
    pkt6 = tcp_hdr + bytes(20) + bytes(3000)
    for gso_type, csum_start in ((offload.GSO_TCPV6, 0), (offload.GSO_TCPV6, 20),
                                 (offload.GSO_TCPV4, 0), (offload.GSO_TCPV4, 8)):
        frame = offload.VNET.pack(1, gso_type, 0, 8, csum_start, 16) + pkt6
        assert offload.segment(memoryview(frame), lambda p, c: None, bytearray(70000)) == 0
    huge = offload.VNET.pack(1, offload.GSO_TCPV4, 40, 60000, 20, 16) + bytes(65536)
    assert offload.segment(memoryview(huge), lambda p, c: None, bytearray(70000)) == 0
