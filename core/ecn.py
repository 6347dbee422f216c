"""Explicit Congestion Notification through the tunnel: RFC 6040, normal mode.

A router on the outer path that is congested may mark a tunnel packet CE (Congestion
Experienced) instead of dropping it, but only if the outer header says the packet's transport
can take it (ECT, ECN-Capable Transport). So the encapsulator copies the inner packet's ECN field
to the outer header, and the decapsulator carries an outer CE mark on into the inner packet,
where the inner transport (TCP, QUIC) sees it and slows down as it would for a loss. An inner
packet whose transport does not do ECN (Not-ECT) cannot carry the mark: the decapsulator drops
it, which is what the congested router would have done.

The ECN field is the low two bits of the IPv4 TOS byte / IPv6 traffic class. The functions here
are small and cheap enough to call once per packet, and the data path calls them once per run
of packets at most: every datagram of one GSO send or GRO run shares one outer ECN field.
"""

from __future__ import annotations

from typing import Final

NOT_ECT: Final = 0b00
"""Not ECN-Capable Transport."""
ECT1: Final = 0b01
"""ECN-Capable Transport (1): L4S senders (RFC 9331) use it."""
ECT0: Final = 0b10
"""ECN-Capable Transport (0): classic ECN senders (RFC 3168)."""
CE: Final = 0b11
"""Congestion Experienced."""
NAMES: Final = ("Not-ECT", "ECT(1)", "ECT(0)", "CE")

DROP: Final = -1
""":func:`decap`: the inner packet must be dropped."""

# RFC 6040 section 4.2, Figure 4 (normal mode), indexed [outer << 2 | inner]: the inner ECN
# field the decapsulated packet leaves with, or DROP.
#                       inner:  Not-ECT  ECT(1)  ECT(0)  CE
_DECAP: Final = (
    NOT_ECT, ECT1, ECT0, CE,  # outer Not-ECT: the inner field as it is
    NOT_ECT, ECT1, ECT1, CE,  # outer ECT(1): ECT(0) inner becomes ECT(1)
    NOT_ECT, ECT1, ECT0, CE,  # outer ECT(0): unchanged (Not-ECT inner: forwarded as is)
    DROP, CE, CE, CE,         # outer CE: an ECN-capable inner becomes CE; Not-ECT is dropped
)
REWRITES: Final = (False, True, False, True)
"""Indexed by the outer ECN field: whether any inner packet can leave different (or dropped).
For outer Not-ECT and ECT(0), the decapsulator need not look at the inner packets at all."""

UNCHANGED: Final = 0
MARKED: Final = 1
"""The inner packet was ECN-capable and is now CE: one congestion mark passed on."""
REWRITTEN: Final = 2
"""The inner ECT(0) became ECT(1) (an outer ECT(1)); not a congestion mark."""


def encap(inner: int) -> int:
    """The outer ECN field for an inner one: normal mode copies it (RFC 6040 section 4.1), CE
    included, so a mark made before the tunnel still reaches the far end."""
    return inner & 3


def decap(outer: int, inner: int) -> int:
    """The inner ECN field after decapsulation, or :data:`DROP` (RFC 6040 section 4.2)."""
    return _DECAP[(outer & 3) << 2 | (inner & 3)]


def of_packet(pkt: bytes | bytearray | memoryview, off: int = 0) -> int:
    """The ECN field of the IP packet at ``pkt[off:]``; Not-ECT for anything that is not an
    IPv4 or IPv6 header."""
    if len(pkt) < off + 2:
        return NOT_ECT
    v = pkt[off] >> 4
    if v == 4:
        return int(pkt[off + 1] & 3)
    if v == 6:
        return int(pkt[off + 1] >> 4 & 3)
    return NOT_ECT


def apply(buf: bytearray | memoryview, off: int, outer: int) -> int:
    """Decapsulate the ECN field of the IP packet at ``buf[off:]`` in place, for a packet that
    arrived with outer ECN field ``outer``. Returns :data:`UNCHANGED`, :data:`MARKED`,
    :data:`REWRITTEN` or :data:`DROP` (the caller drops and counts it).

    IPv4: the header checksum is updated incrementally (RFC 1624, equation 3), so a valid
    checksum stays valid (and a broken one stays broken: the kernel still refuses it). IPv6's
    traffic class has no checksum. Anything that is not an IPv4 or IPv6 header is left alone
    (the kernel refuses it at the TUN write).
    """
    n = len(buf) - off
    if n < 2:
        return UNCHANGED
    v = buf[off] >> 4
    if v == 4 and n >= 20:
        tos = buf[off + 1]
        new = _DECAP[(outer & 3) << 2 | (tos & 3)]
        if new == DROP:
            return DROP
        if new == tos & 3:
            return UNCHANGED
        new_tos = (tos & 0xFC) | new
        buf[off + 1] = new_tos
        # HC' = ~(~HC + ~m + m'), m being the 16-bit word holding version/IHL and TOS.
        first = buf[off] << 8
        hc = buf[off + 10] << 8 | buf[off + 11]
        s = (~hc & 0xFFFF) + (~(first | tos) & 0xFFFF) + (first | new_tos)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        hc = ~s & 0xFFFF
        buf[off + 10] = hc >> 8
        buf[off + 11] = hc & 0xFF
    elif v == 6 and n >= 40:
        b1 = buf[off + 1]
        old = b1 >> 4 & 3
        new = _DECAP[(outer & 3) << 2 | old]
        if new == DROP:
            return DROP
        if new == old:
            return UNCHANGED
        buf[off + 1] = (b1 & 0xCF) | new << 4
    else:
        return UNCHANGED
    return MARKED if new == CE else REWRITTEN
