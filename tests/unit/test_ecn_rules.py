"""RFC 6040 (normal mode) in core/ecn.py: the decapsulation table, the in-place rewrite of IPv4
and IPv6 headers, and the IPv4 header checksum after it (recomputed from scratch and compared)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import ecn

CODEPOINTS = (ecn.NOT_ECT, ecn.ECT1, ecn.ECT0, ecn.CE)

# RFC 6040 section 4.2, Figure 4, written out by name (rows: inner; columns: outer).
FIGURE_4 = {
    "Not-ECT": {"Not-ECT": "Not-ECT", "ECT(0)": "Not-ECT", "ECT(1)": "Not-ECT", "CE": "drop"},
    "ECT(0)": {"Not-ECT": "ECT(0)", "ECT(0)": "ECT(0)", "ECT(1)": "ECT(1)", "CE": "CE"},
    "ECT(1)": {"Not-ECT": "ECT(1)", "ECT(0)": "ECT(1)", "ECT(1)": "ECT(1)", "CE": "CE"},
    "CE": {"Not-ECT": "CE", "ECT(0)": "CE", "ECT(1)": "CE", "CE": "CE"},
}


def name(cp: int) -> str:
    return "drop" if cp == ecn.DROP else ecn.NAMES[cp]


def ones_sum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_checksum(header: bytes) -> int:
    """The header checksum from scratch (the checksum field taken as zero)."""
    return ~ones_sum(header[:10] + b"\0\0" + header[12:]) & 0xFFFF


def ipv4(tos: int, ihl: int, rest: bytes) -> bytearray:
    """A valid IPv4 header of ``ihl`` words (options from ``rest``) and a few payload bytes."""
    hlen = ihl * 4
    body = rest.ljust(hlen - 2 + 8, b"\x5a")
    pkt = bytearray(bytes([0x40 | ihl, tos]) + body[:hlen - 2 + 8])
    pkt[10:12] = b"\0\0"
    struct.pack_into("!H", pkt, 10, ipv4_checksum(bytes(pkt[:hlen])))
    return pkt


def test_the_table_is_rfc_6040_figure_4() -> None:
    for outer in CODEPOINTS:
        for inner in CODEPOINTS:
            assert name(ecn.decap(outer, inner)) == FIGURE_4[name(inner)][name(outer)]


def test_encapsulation_copies_the_inner_field() -> None:
    assert [ecn.encap(cp) for cp in CODEPOINTS] == list(CODEPOINTS)
    assert ecn.encap(0xB8 | ecn.ECT0) == ecn.ECT0  # DSCP bits never reach the outer header


def test_rewrites_says_which_outer_fields_need_a_look_at_the_inner_packets() -> None:
    for outer in CODEPOINTS:
        changes = any(ecn.decap(outer, inner) != inner for inner in CODEPOINTS)
        assert ecn.REWRITES[outer] == changes


@given(outer=st.sampled_from(CODEPOINTS), tos=st.integers(0, 255), ihl=st.integers(5, 15),
       rest=st.binary(min_size=0, max_size=80))
def test_ipv4_rewrite_and_checksum(outer: int, tos: int, ihl: int, rest: bytes) -> None:
    pkt = ipv4(tos, ihl, rest)
    before = bytes(pkt)
    verdict = ecn.apply(pkt, 0, outer)
    expected = ecn.decap(outer, tos & 3)
    if expected == ecn.DROP:
        assert verdict == ecn.DROP and bytes(pkt) == before
        return
    assert pkt[1] == (tos & 0xFC) | expected  # the DSCP bits are kept
    assert ecn.of_packet(pkt) == expected
    # Nothing else changed but the checksum, which is what a from-scratch sum gives.
    assert pkt[:1] + pkt[2:10] + pkt[12:] == before[:1] + before[2:10] + before[12:]
    assert struct.unpack_from("!H", pkt, 10)[0] == ipv4_checksum(bytes(pkt[:ihl * 4]))
    assert ones_sum(bytes(pkt[:ihl * 4])) == 0xFFFF  # the receiver's check: the sum is -0
    if expected == tos & 3:
        assert verdict == ecn.UNCHANGED and bytes(pkt) == before
    else:
        assert verdict == (ecn.MARKED if expected == ecn.CE else ecn.REWRITTEN)


@given(outer=st.sampled_from(CODEPOINTS), first=st.integers(0, 0xFFFFFFF),
       rest=st.binary(min_size=36, max_size=80), lead=st.binary(max_size=12))
def test_ipv6_rewrite_at_an_offset(outer: int, first: int, rest: bytes, lead: bytes) -> None:
    word = 0x60000000 | first
    buf = bytearray(lead + struct.pack("!I", word) + rest)
    off = len(lead)
    before = bytes(buf)
    inner = word >> 20 & 3
    verdict = ecn.apply(buf, off, outer)
    expected = ecn.decap(outer, inner)
    if expected == ecn.DROP:
        assert verdict == ecn.DROP and bytes(buf) == before
        return
    new_word = struct.unpack_from("!I", buf, off)[0]
    assert new_word == (word & ~(3 << 20)) | expected << 20  # flow label and DSCP kept
    assert buf[:off] == before[:off] and buf[off + 4:] == before[off + 4:]
    assert ecn.of_packet(buf, off) == expected


@given(outer=st.sampled_from(CODEPOINTS), data=st.binary(max_size=60))
def test_anything_else_is_left_alone(outer: int, data: bytes) -> None:
    """Short packets and packets of no known IP version: never an exception, never a change."""
    v = data[0] >> 4 if data else 0
    if (v == 4 and len(data) >= 20) or (v == 6 and len(data) >= 40):
        return
    buf = bytearray(data)
    assert ecn.apply(buf, 0, outer) == ecn.UNCHANGED
    assert bytes(buf) == data
    assert ecn.of_packet(data) in CODEPOINTS


@pytest.mark.parametrize("tos", [0x00, 0xFE, 0x02, 0xB9])
def test_checksum_edge_values(tos: int) -> None:
    """Headers whose checksum is 0x0000 or 0xFFFF-adjacent before or after the rewrite."""
    for ident in range(0, 0x10000, 251):
        pkt = ipv4(tos, 5, struct.pack("!HHHBB", 40, ident, 0, 64, 6) + bytes(8))
        if ecn.apply(pkt, 0, ecn.CE) == ecn.DROP:
            continue
        assert struct.unpack_from("!H", pkt, 10)[0] == ipv4_checksum(bytes(pkt[:20]))


# --- what status says about it -----------------------------------------------------------------


def test_status_shows_congestion_marks_seen() -> None:
    from core.format import format_status
    from core.status import TunnelStatus

    quiet = TunnelStatus(name="office", state="up")
    assert quiet.congestion_summary() == ""
    assert "congestion" not in format_status(quiet, 0.0)
    marked = TunnelStatus(name="office", state="up", ecn_ce=12,
                          drops={"ecn_not_ect_ce": 2, "replay": 1})
    assert marked.congestion_summary() == \
        "14 congestion marks seen (2 packets dropped: not ECN-capable)"
    assert "  congestion 14 congestion marks seen (2 packets dropped: not ECN-capable)" in \
        format_status(marked, 0.0).splitlines()
    one = TunnelStatus(name="office", state="up", ecn_ce=1)
    assert one.congestion_summary() == "1 congestion mark seen"
    # Through the IPC schema and back.
    assert TunnelStatus.from_dict(marked.to_dict()) == marked
