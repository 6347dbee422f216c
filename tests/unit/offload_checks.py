"""Properties of the offload code shared by the atheris harness (fuzz_offload.py) and the
hypothesis tests (test_offload_fuzz.py): what a Coalescer writes is something the kernel can act
on, and every packet it was given is written or counted dropped."""

from __future__ import annotations

import struct

from helper import offload


def check_frame(frame: bytes | bytearray) -> int:
    """A frame the Coalescer wrote is one the kernel can act on; returns its segments."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_off = offload.VNET.unpack_from(frame)
    pkt = frame[offload.VNET_LEN:]
    if flags & offload.F_NEEDS_CSUM:
        assert csum_start + csum_off + 2 <= len(pkt), (csum_start, csum_off, len(pkt))
    kind = gso_type & ~offload.GSO_ECN
    if kind == offload.GSO_NONE:
        return 1
    assert kind in (offload.GSO_TCPV4, offload.GSO_TCPV6)
    assert gso_size > 0 and csum_start + 20 <= hdr_len < len(pkt), (hdr_len, len(pkt))
    if kind == offload.GSO_TCPV4:
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
    else:
        assert struct.unpack_from("!H", pkt, 4)[0] + 40 == len(pkt)
    return -(-(len(pkt) - hdr_len) // gso_size)


def run_coalescer(data: bytes) -> None:
    frames: list[bytes] = []
    drops: list[str] = []
    c = offload.Coalescer(lambda f: frames.append(bytes(f)), drops.append)
    accepted = 0
    pos = 0
    while pos + 4 <= len(data):
        op, owner = data[pos], data[pos + 1] & 1
        n = struct.unpack_from("!H", data, pos + 2)[0] % 1600
        pkt = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        if op & 2 and c.continue_run(pkt, owner):
            accepted += 1
        else:
            c.add(pkt, bool(op & 1), owner)
            accepted += 1
        if op & 4:
            c.flush()
    c.flush()
    assert set(drops) <= {"malformed_inner"}, drops
    written = sum(check_frame(f) for f in frames)
    assert written + len(drops) == accepted, (written, len(drops), accepted)
