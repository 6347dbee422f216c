"""The Tunseal encapsulation header: encoding and a total parser.

Layout (network byte order), normative text in docs/PROTOCOL.md::

     0       4       8               16              24             31
    | VER   | TYPE  |     HLEN      |          OLDPACKETLEN          |
    |           DeviceID            |            EncapID             |
    |            Flags              |            Checksum            |
    |  TLV options (Type 8 bits, Length 8 bits, Data ...)            |
    |  padding to a 32-bit boundary                                  |

:func:`parse` accepts any byte string and either returns a :class:`Packet` or raises
:class:`~core.errors.WireError`; it never reads out of bounds and allocates nothing sized by the
packet beyond slices of the input. The per-packet data path in ``core/session.py`` has its own
fixed-layout fast path that accepts a subset of what this parser accepts and falls back to it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from core.constants import (
    FIXED_HEADER_LEN,
    KNOWN_FLAGS,
    MAX_INNER_LEN,
    OPTION_CRITICAL,
    OPTION_END,
    VERSION,
    Option,
    PacketType,
)
from core.errors import WireError

FIXED = struct.Struct("!BBHHHHH")
"""ver/type, hlen, oldpacketlen, device id, encap id, flags, checksum."""

_KNOWN_OPTIONS = frozenset(int(o) for o in Option)
_KNOWN_TYPES = frozenset(int(t) for t in PacketType)
_OPTION_SIZES = {
    Option.COUNTER: 8,
    Option.RECEIVER_INDEX: 4,
    Option.SENDER_INDEX: 4,
    Option.MAC1: 16,
    Option.MAC2: 16,
    Option.CONTROL_KIND: 1,
    Option.ORIGIN: 16,
}


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of an even-length buffer.

    The one's-complement sum of 16-bit words equals the buffer read as one big integer modulo
    0xFFFF (because 2**16 == 1 mod 0xFFFF), which CPython computes in C: far cheaper per packet
    than a Python loop over words.
    """
    s = int.from_bytes(data, "big") % 0xFFFF
    if s == 0 and any(data):
        s = 0xFFFF
    return ~s & 0xFFFF


def checksum_ok(header: bytes | bytearray | memoryview) -> bool:
    """True if ``header`` (checksum field included) sums to 0xFFFF in one's complement."""
    # A Tunseal header is never all zero (VER is 1), so "sum == 0 mod 0xFFFF" means 0xFFFF.
    return int.from_bytes(header, "big") % 0xFFFF == 0


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed Tunseal packet. ``header`` is the raw header (the AEAD's associated data)."""

    type: PacketType
    inner_len: int
    device_id: int
    encap_id: int
    flags: int
    options: tuple[tuple[int, bytes], ...]
    header: bytes
    payload: bytes

    def option(self, kind: Option) -> bytes | None:
        for t, data in self.options:
            if t == kind:
                return data
        return None

    def require(self, kind: Option) -> bytes:
        data = self.option(kind)
        if data is None:
            raise WireError(f"{self.type.name} packet lacks the required {kind.name} option")
        return data


def encode_options(options: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...]) -> bytes:
    """TLV-encode ``options`` and pad with END + zeros to a 32-bit boundary."""
    out = bytearray()
    for t, data in options:
        if not 0 < t <= 0xFF:
            raise WireError(f"option type {t} is out of range (1-255)")
        if len(data) > 0xFF:
            raise WireError(f"option {t} is {len(data)} bytes; the maximum is 255")
        out += bytes((t, len(data))) + data
    if len(out) % 4:
        out += bytes(4 - len(out) % 4)  # first pad byte is OPTION_END (0)
    return bytes(out)


def encode_header(
    ptype: PacketType,
    *,
    inner_len: int,
    device_id: int,
    encap_id: int,
    flags: int,
    options: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """Build a complete header, checksum included."""
    if not 0 <= inner_len <= MAX_INNER_LEN:
        raise WireError(f"inner length {inner_len} does not fit OLDPACKETLEN (0-65535)")
    if flags & ~KNOWN_FLAGS:
        raise WireError(f"flags 0x{flags:04x} include undefined bits")
    opts = encode_options(options)
    hlen_words = (FIXED_HEADER_LEN + len(opts)) // 4
    if hlen_words > 0xFF:
        raise WireError("options make the header longer than HLEN can express (1020 bytes)")
    hdr = bytearray(FIXED.pack(
        (VERSION << 4) | int(ptype), hlen_words, inner_len,
        device_id & 0xFFFF, encap_id & 0xFFFF, flags, 0,
    ) + opts)
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr)


def _parse_options(raw: bytes) -> tuple[tuple[int, bytes], ...]:
    options: list[tuple[int, bytes]] = []
    i, end = 0, len(raw)
    while i < end:
        t = raw[i]
        if t == OPTION_END:
            if any(raw[i:]):
                raise WireError("non-zero bytes in header padding after the END option")
            break
        if i + 2 > end:
            raise WireError(f"option 0x{t:02x} is truncated (no length byte)")
        length = raw[i + 1]
        if i + 2 + length > end:
            raise WireError(f"option 0x{t:02x} claims {length} bytes but the header ends first")
        data = raw[i + 2 : i + 2 + length]
        if t in _KNOWN_OPTIONS:
            want = _OPTION_SIZES.get(Option(t))
            if want is not None and length != want:
                raise WireError(f"option {Option(t).name} must be {want} bytes, not {length}")
            if any(o == t for o, _ in options):
                raise WireError(f"option {Option(t).name} appears twice")
            options.append((t, data))
        elif t & OPTION_CRITICAL:
            raise WireError(f"unknown critical option 0x{t:02x}")
        # an unknown non-critical option is skipped
        i += 2 + length
    return tuple(options)


def parse(buf: bytes | bytearray | memoryview) -> Packet:
    """Parse one Tunseal packet. Total: returns a Packet or raises WireError."""
    data = bytes(buf)
    if len(data) < FIXED_HEADER_LEN:
        raise WireError(f"packet of {len(data)} bytes is shorter than the 12-byte header")
    vt, hlen_words, inner_len, device_id, encap_id, flags, _ = FIXED.unpack_from(data)
    version, ptype = vt >> 4, vt & 0x0F
    if version != VERSION:
        raise WireError(f"unsupported version {version} (this peer speaks version {VERSION})")
    if ptype not in _KNOWN_TYPES:
        raise WireError(f"unknown packet type {ptype}")
    hlen = hlen_words * 4
    if hlen < FIXED_HEADER_LEN:
        raise WireError(f"HLEN {hlen_words} is below the minimum of 3 words")
    if hlen > len(data):
        raise WireError(f"HLEN says {hlen} header bytes but the packet has {len(data)}")
    if flags & ~KNOWN_FLAGS:
        raise WireError(f"unknown flags 0x{flags & ~KNOWN_FLAGS:04x}")
    header = data[:hlen]
    if not checksum_ok(header):
        raise WireError("header checksum mismatch")
    options = _parse_options(header[FIXED_HEADER_LEN:])
    return Packet(
        type=PacketType(ptype),
        inner_len=inner_len,
        device_id=device_id,
        encap_id=encap_id,
        flags=flags,
        options=options,
        header=header,
        payload=data[hlen:],
    )


def option_offset(header: bytes | bytearray, kind: int) -> int | None:
    """Offset of option ``kind``'s data inside an already-validated ``header``, or None."""
    i, end = FIXED_HEADER_LEN, len(header)
    while i + 2 <= end and header[i] != OPTION_END:
        if header[i] == kind:
            return i + 2
        i += 2 + header[i + 1]
    return None
