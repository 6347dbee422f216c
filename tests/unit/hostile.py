"""Hypothesis strategies for hostile inner packets: what an authenticated peer (or anyone, in
`plain` mode) can put inside a tunnel packet. Mostly almost-valid IPv4/IPv6 TCP segments with
one field wrong (data offset, lengths, version, header length, flags), so they get past the
cheap checks to the code behind them; plus raw bytes of every length.

Importable as ``hostile`` from the test files next to it.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

SHORT_LENGTHS = st.sampled_from([0, 1, 2, 9, 19, 20, 21, 33, 39, 40, 41, 53, 59, 60, 61, 79, 80])


@st.composite
def ip_tcp(draw: st.DrawFn, src: bytes, dst: bytes, *, size: int | None = None,
           fill: int | None = None) -> bytes:
    """An IPv4 (4-byte addresses) or IPv6 TCP segment from ``src``, fields hostile at will;
    exactly ``size`` bytes when given; payload bytes all ``fill`` when given."""
    v6 = len(src) == 16
    doff = draw(st.one_of(st.just(5), st.integers(0, 15)))
    flags = draw(st.one_of(st.just(0x10), st.just(0x18), st.integers(0, 255)))
    seq = draw(st.one_of(st.integers(0, 3) .map(lambda i: 1000 + 100 * i),
                         st.integers(0, 2**32 - 1)))
    tcp_hdr = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, doff << 4, flags, 502, 0, 0)
    opts = draw(st.binary(min_size=0, max_size=40))
    hl = 40 if v6 else 20
    want = size if size is not None else hl + len(tcp_hdr) + len(opts) + draw(
        st.integers(0, 300))
    body_len = max(0, want - hl - len(tcp_hdr) - len(opts))
    payload = bytes([fill]) * body_len if fill is not None else draw(
        st.binary(min_size=body_len, max_size=body_len))
    body = tcp_hdr + opts + payload
    proto = draw(st.one_of(st.just(6), st.just(6), st.integers(0, 255)))
    if v6:
        plen = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
        first = draw(st.one_of(st.just(0x60000000), st.integers(0, 2**32 - 1)))
        pkt = struct.pack("!IHBB16s16s", first, plen, proto, 64, src, dst) + body
    else:
        total = draw(st.one_of(st.just(20 + len(body)), st.integers(0, 0xFFFF)))
        vihl = draw(st.one_of(st.just(0x45), st.integers(0, 255)))
        frag = draw(st.one_of(st.just(0x4000), st.integers(0, 0xFFFF)))
        pkt = struct.pack("!BBHHHBBH4s4s", vihl, 0, total, 1, frag, 64, proto, 0,
                          src, dst) + body
    return pkt if size is None else pkt[:size]


def inner(src: bytes, dst: bytes, *, size: int | None = None,
          fill: int | None = None) -> st.SearchStrategy[bytes]:
    """A hostile inner packet from ``src`` (or any bytes at all)."""
    if size is None:
        raw = st.one_of(SHORT_LENGTHS.flatmap(lambda n: st.binary(min_size=n, max_size=n)),
                        st.binary(max_size=400))
    else:
        raw = st.binary(min_size=size, max_size=size)
    return st.one_of(ip_tcp(src, dst, size=size, fill=fill),
                     ip_tcp(src, dst, size=size, fill=fill), raw)


def owner_of_fill(frame_payload: bytes, fills: dict[int, int]) -> set[int]:
    """Which owners' fill bytes appear (as runs of 16) in a payload."""
    return {owner for owner, b in fills.items() if bytes([b]) * 16 in frame_payload}
