"""core.wire: header encoding, the RFC 1071 checksum, and a parser that is total on any input."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    keypair_pair,
    mutate,
    mutations,
    ones_complement_sum,
    raw_header,
)

from core import wire
from core.constants import (
    FIXED_HEADER_LEN,
    KNOWN_FLAGS,
    MAX_HEADER_LEN,
    OPTION_CRITICAL,
    Flag,
    Option,
    PacketType,
)
from core.errors import WireError
from core.handshake import CookieGenerator, Identity, Initiator, Suite, read_initiation, respond
from core.noise import generate_private_key, public_key
from core.session import seal_plain_into

OPTION_SIZES = {
    Option.COUNTER: 8,
    Option.RECEIVER_INDEX: 4,
    Option.SENDER_INDEX: 4,
    Option.MAC1: 16,
    Option.MAC2: 16,
    Option.CONTROL_KIND: 1,
    Option.ORIGIN: 16,
}
"""Options whose data has one legal length; the rest (PAD_HINT) take any length."""
KNOWN_OPTION_TYPES = frozenset(int(o) for o in Option)
UNKNOWN_CRITICAL = [t for t in range(OPTION_CRITICAL, 0x100) if t not in KNOWN_OPTION_TYPES]
UNKNOWN_NONCRITICAL = [t for t in range(1, OPTION_CRITICAL) if t not in KNOWN_OPTION_TYPES]
UNDEFINED_FLAG_BITS = [1 << b for b in range(16) if not (1 << b) & KNOWN_FLAGS]

CANONICAL_OPTIONS: dict[PacketType, list[tuple[int, bytes]]] = {
    PacketType.DATA: [(Option.RECEIVER_INDEX, b"\x01\x02\x03\x04"),
                      (Option.COUNTER, bytes(range(8)))],
    PacketType.HANDSHAKE_INIT: [(Option.SENDER_INDEX, b"\xa1\xa2\xa3\xa4"),
                                (Option.MAC1, bytes(range(16, 32))),
                                (Option.MAC2, bytes(range(32, 48)))],
    PacketType.HANDSHAKE_RESP: [(Option.SENDER_INDEX, b"\xb1\xb2\xb3\xb4"),
                                (Option.RECEIVER_INDEX, b"\xa1\xa2\xa3\xa4"),
                                (Option.MAC1, bytes(range(48, 64))),
                                (Option.MAC2, bytes(16))],
    PacketType.COOKIE: [(Option.RECEIVER_INDEX, b"\xa1\xa2\xa3\xa4")],
    PacketType.KEEPALIVE: [(Option.RECEIVER_INDEX, b"\x01\x02\x03\x04"),
                           (Option.COUNTER, bytes(8))],
    PacketType.CONTROL: [(Option.CONTROL_KIND, b"\x01"),
                         (Option.RECEIVER_INDEX, b"\x01\x02\x03\x04"),
                         (Option.COUNTER, b"\xff" * 8)],
    PacketType.ENROL: [(Option.SENDER_INDEX, b"\xc1\xc2\xc3\xc4"),
                       (Option.MAC1, bytes(range(64, 80))), (Option.MAC2, bytes(16))],
    PacketType.ENROL_REPLY: [(Option.RECEIVER_INDEX, b"\xc1\xc2\xc3\xc4"),
                             (Option.MAC1, bytes(range(80, 96))), (Option.MAC2, bytes(16))],
}
"""The option set each packet type carries in the protocol (deterministic data)."""


# --- strategies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderSpec:
    ptype: PacketType
    inner_len: int
    device_id: int
    encap_id: int
    flags: int
    options: tuple[tuple[int, bytes], ...]
    """As encoded, unknown non-critical options included."""

    def encode(self) -> bytes:
        return wire.encode_header(self.ptype, inner_len=self.inner_len, device_id=self.device_id,
                                  encap_id=self.encap_id, flags=self.flags, options=self.options)

    @property
    def expected_options(self) -> tuple[tuple[int, bytes], ...]:
        return tuple((t, d) for t, d in self.options if t in KNOWN_OPTION_TYPES)


@st.composite
def option_lists(draw: st.DrawFn) -> tuple[tuple[int, bytes], ...]:
    """Any subset of the known options in any order, with unknown non-critical ones mixed in."""
    known = draw(st.lists(st.sampled_from(list(Option)), unique=True))
    opts: list[tuple[int, bytes]] = []
    for o in known:
        size = OPTION_SIZES.get(o)
        data = draw(st.binary(min_size=size or 0, max_size=size if size is not None else 60))
        opts.append((int(o), data))
    for _ in range(draw(st.integers(0, 3))):
        unknown = (draw(st.sampled_from(UNKNOWN_NONCRITICAL)), draw(st.binary(max_size=40)))
        opts.insert(draw(st.integers(0, len(opts))), unknown)
    return tuple(opts)


flag_sets = st.sets(st.sampled_from(list(Flag))).map(lambda fs: sum(int(f) for f in fs))
u16 = st.integers(0, 0xFFFF)
header_specs = st.builds(HeaderSpec, ptype=st.sampled_from(list(PacketType)), inner_len=u16,
                         device_id=u16, encap_id=u16, flags=flag_sets, options=option_lists())


def flip_bit(data: bytes, bit: int) -> bytes:
    buf = bytearray(data)
    buf[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(buf)


def assert_well_formed(data: bytes, p: wire.Packet) -> None:
    """What a Packet returned by parse() must satisfy, whatever the input was."""
    assert p.header + p.payload == bytes(data)
    assert len(p.header) % 4 == 0
    assert FIXED_HEADER_LEN <= len(p.header) <= MAX_HEADER_LEN
    assert wire.checksum_ok(p.header)
    assert p.flags & ~KNOWN_FLAGS == 0
    types = [t for t, _ in p.options]
    assert len(set(types)) == len(types)
    for t, d in p.options:
        assert t in KNOWN_OPTION_TYPES
        assert len(d) == OPTION_SIZES.get(Option(t), len(d))
    # Re-encoding what was understood gives a packet that parses to the same thing.
    again = wire.parse(wire.encode_header(p.type, inner_len=p.inner_len, device_id=p.device_id,
                                          encap_id=p.encap_id, flags=p.flags,
                                          options=p.options) + p.payload)
    assert (again.type, again.inner_len, again.device_id, again.encap_id, again.flags,
            again.options, again.payload) == (p.type, p.inner_len, p.device_id, p.encap_id,
                                              p.flags, p.options, p.payload)


# --- checksum ----------------------------------------------------------------------------------


def test_rfc1071_numerical_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum (end-around carry) to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert wire.internet_checksum(data) == 0x220D
    assert wire.checksum_ok(data + b"\x22\x0d")
    assert not wire.checksum_ok(data + b"\x22\x0c")


@pytest.mark.parametrize(("data", "expected"), [
    (bytes(4), 0xFFFF),                      # +0 sums to 0: checksum is all ones
    (b"\xff\xff", 0x0000),                   # -0 (0xffff) sums to 0xffff
    (b"\x00\x01\xff\xfe", 0x0000),           # end-around carry landing on 0xffff
    (b"\x80\x00\x80\x00", 0xFFFE),           # carry out of the top folds back in as 1
])
def test_checksum_edge_values(data: bytes, expected: int) -> None:
    assert wire.internet_checksum(data) == expected


@given(st.binary(max_size=300).map(lambda b: b[: len(b) // 2 * 2]))
def test_checksum_matches_rfc1071_reference(data: bytes) -> None:
    csum = wire.internet_checksum(data)
    assert csum == ~ones_complement_sum(data) & 0xFFFF
    # Appending the checksum makes the whole sum to all ones (the receiver's check).
    assert ones_complement_sum(data + csum.to_bytes(2, "big")) == 0xFFFF


# --- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("ptype", list(PacketType))
def test_round_trip_canonical_options_per_type(ptype: PacketType) -> None:
    header = wire.encode_header(ptype, inner_len=1234, device_id=0xBEEF, encap_id=0x0102,
                                flags=KNOWN_FLAGS, options=CANONICAL_OPTIONS[ptype])
    p = wire.parse(header + b"payload")
    assert (p.type, p.inner_len, p.device_id, p.encap_id, p.flags) == (
        ptype, 1234, 0xBEEF, 0x0102, KNOWN_FLAGS)
    assert p.options == tuple(CANONICAL_OPTIONS[ptype])
    assert p.header == header and p.payload == b"payload"
    for t, d in CANONICAL_OPTIONS[ptype]:
        assert p.require(Option(t)) == d


@settings(max_examples=400)
@given(spec=header_specs, payload=st.binary(max_size=64))
def test_round_trip_property(spec: HeaderSpec, payload: bytes) -> None:
    header = spec.encode()
    assert len(header) % 4 == 0
    assert wire.checksum_ok(header)
    assert ones_complement_sum(header) == 0xFFFF
    p = wire.parse(header + payload)
    assert (p.type, p.inner_len, p.device_id, p.encap_id, p.flags) == (
        spec.ptype, spec.inner_len, spec.device_id, spec.encap_id, spec.flags)
    assert p.options == spec.expected_options
    assert p.header == header
    assert p.payload == payload


def test_require_names_the_missing_option() -> None:
    p = wire.parse(wire.encode_header(PacketType.COOKIE, inner_len=0, device_id=1, encap_id=0,
                                      flags=0, options=[(Option.RECEIVER_INDEX, bytes(4))]))
    assert p.option(Option.COUNTER) is None
    with pytest.raises(WireError, match="COUNTER"):
        p.require(Option.COUNTER)


def test_largest_header_hlen_can_express() -> None:
    # 3 x (2 + 255) + (2 + 235) = 1008 option bytes: exactly HLEN 255 words.
    options = [(Option.PAD_HINT, bytes(255))] + [(t, bytes(255)) for t in (0x02, 0x03)]
    options.append((0x04, bytes(235)))
    header = wire.encode_header(PacketType.DATA, inner_len=0, device_id=0, encap_id=0, flags=0,
                                options=options)
    assert len(header) == MAX_HEADER_LEN and header[1] == 255
    assert wire.parse(header).options == ((Option.PAD_HINT, bytes(255)),)
    with pytest.raises(WireError, match="1020"):
        wire.encode_header(PacketType.DATA, inner_len=0, device_id=0, encap_id=0, flags=0,
                           options=[*options, (0x05, b"ab")])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"inner_len": -1}, "inner length"),
    ({"inner_len": 0x10000}, "inner length"),
    ({"flags": 0x0001}, "undefined bits"),
    ({"options": [(0, b"")]}, "out of range"),
    ({"options": [(0x100, b"")]}, "out of range"),
    ({"options": [(Option.PAD_HINT, bytes(256))]}, "maximum is 255"),
])
def test_encode_header_refuses_what_cannot_be_encoded(kwargs: dict[str, object],
                                                      match: str) -> None:
    args: dict[str, object] = {"inner_len": 0, "device_id": 0, "encap_id": 0, "flags": 0}
    args.update(kwargs)
    with pytest.raises(WireError, match=match):
        wire.encode_header(PacketType.DATA, **args)  # type: ignore[arg-type]


# --- corruption is detected ---------------------------------------------------------------------


@pytest.mark.parametrize("ptype", list(PacketType))
def test_every_single_bit_flip_in_a_header_is_detected(ptype: PacketType) -> None:
    header = wire.encode_header(ptype, inner_len=77, device_id=0x1234, encap_id=0x5678,
                                flags=int(Flag.AUTHENTICATED), options=CANONICAL_OPTIONS[ptype])
    packet = header + bytes(range(100, 177))
    for bit in range(len(header) * 8):
        with pytest.raises(WireError):
            wire.parse(flip_bit(packet, bit))


@given(spec=header_specs, payload=st.binary(max_size=32), data=st.data())
def test_single_bit_flip_property(spec: HeaderSpec, payload: bytes, data: st.DataObject) -> None:
    """Outside the HLEN byte a flip changes the one's-complement sum by +-2**k, never 0 mod
    0xffff, so it is always caught. (A flip in HLEN also changes which bytes are summed, so
    there detection is only overwhelmingly likely: the deterministic test above covers it.)"""
    header = spec.encode()
    bit = data.draw(st.integers(0, len(header) * 8 - 1).filter(lambda b: b // 8 != 1))
    with pytest.raises(WireError):
        wire.parse(flip_bit(header + payload, bit))


@pytest.mark.parametrize("flag", UNDEFINED_FLAG_BITS, ids=hex)
def test_unknown_flags_rejected(flag: int) -> None:
    good = raw_header(PacketType.DATA, flags=int(Flag.AUTHENTICATED))
    wire.parse(good)
    with pytest.raises(WireError, match="unknown flags"):
        wire.parse(raw_header(PacketType.DATA, flags=int(Flag.AUTHENTICATED) | flag))
    with pytest.raises(WireError):
        wire.encode_header(PacketType.DATA, inner_len=0, device_id=0, encap_id=0, flags=flag)


@pytest.mark.parametrize("kind", UNKNOWN_CRITICAL, ids=hex)
def test_unknown_critical_option_rejected(kind: int) -> None:
    options = wire.encode_options([(Option.RECEIVER_INDEX, bytes(4)), (kind, b"\xaa\xbb")])
    with pytest.raises(WireError, match=f"unknown critical option 0x{kind:02x}"):
        wire.parse(raw_header(options=options))


@pytest.mark.parametrize("kind", UNKNOWN_NONCRITICAL, ids=hex)
def test_unknown_noncritical_option_skipped(kind: int) -> None:
    opts = [(kind, b"\x55" * (kind % 7)), (Option.RECEIVER_INDEX, b"\x00\x00\x00\x09"),
            (kind, b"twice is fine"), (Option.COUNTER, (5).to_bytes(8, "big"))]
    p = wire.parse(wire.encode_header(PacketType.DATA, inner_len=0, device_id=0, encap_id=0,
                                      flags=0, options=opts) + b"body")
    assert p.options == ((Option.RECEIVER_INDEX, b"\x00\x00\x00\x09"),
                         (Option.COUNTER, (5).to_bytes(8, "big")))
    assert p.payload == b"body"


@pytest.mark.parametrize(("options", "pad_positions"), [
    (bytes([Option.RECEIVER_INDEX, 4, 1, 2, 3, 4, 0, 0]), [7]),   # END, then one pad byte
    (bytes(4), [1, 2, 3]),                                         # END first, three pad bytes
    (bytes([Option.RECEIVER_INDEX, 4, 1, 2, 3, 4, 0, 0]) + bytes(4), list(range(7, 12))),
])
def test_padding_after_end_must_be_zero(options: bytes, pad_positions: list[int]) -> None:
    wire.parse(raw_header(options=options))
    for pos in pad_positions:
        for value in (0x01, 0x80, 0xFF):
            bad = bytearray(options)
            bad[pos] = value
            with pytest.raises(WireError, match="padding"):
                wire.parse(raw_header(options=bytes(bad)))


@pytest.mark.parametrize("version", [v for v in range(16) if v != 1])
def test_other_versions_rejected(version: int) -> None:
    with pytest.raises(WireError, match="version"):
        wire.parse(raw_header(version=version))


@pytest.mark.parametrize("ptype", [0, *range(9, 16)])
def test_unknown_packet_types_rejected(ptype: int) -> None:
    with pytest.raises(WireError, match="packet type"):
        wire.parse(raw_header(ptype))


@pytest.mark.parametrize(("option", "size"), list(OPTION_SIZES.items()))
def test_known_option_with_wrong_length_rejected(option: Option, size: int) -> None:
    wire.parse(wire.encode_header(PacketType.DATA, inner_len=0, device_id=0, encap_id=0,
                                  flags=0, options=[(option, bytes(size))]))
    for wrong in (0, size - 1, size + 1, 255):
        if wrong < 0 or wrong == size:
            continue
        with pytest.raises(WireError, match="must be"):
            wire.parse(wire.encode_header(PacketType.DATA, inner_len=0, device_id=0,
                                          encap_id=0, flags=0, options=[(option, bytes(wrong))]))


def test_duplicate_known_option_rejected() -> None:
    opts = [(Option.COUNTER, bytes(8)), (Option.PAD_HINT, b""), (Option.COUNTER, bytes(8))]
    with pytest.raises(WireError, match="twice"):
        wire.parse(wire.encode_header(PacketType.DATA, inner_len=0, device_id=0, encap_id=0,
                                      flags=0, options=opts))


def test_truncated_packets_rejected() -> None:
    header = wire.encode_header(PacketType.HANDSHAKE_RESP, inner_len=0, device_id=1, encap_id=2,
                                flags=0, options=CANONICAL_OPTIONS[PacketType.HANDSHAKE_RESP])
    wire.parse(header)
    for cut in range(len(header)):
        with pytest.raises(WireError):
            wire.parse(header[:cut])


@pytest.mark.parametrize("hlen_words", [0, 1, 2])
def test_hlen_below_fixed_header_rejected(hlen_words: int) -> None:
    with pytest.raises(WireError, match="minimum"):
        wire.parse(raw_header(hlen_words=hlen_words) + bytes(8))


def test_hlen_beyond_packet_rejected() -> None:
    with pytest.raises(WireError, match="HLEN says"):
        wire.parse(raw_header(hlen_words=5) + bytes(7))  # 19 bytes, HLEN claims 20


@pytest.mark.parametrize("options", [
    bytes([Option.PAD_HINT, 3, 0, 0]),           # claims 3 bytes, 2 left in the header
    bytes([Option.PAD_HINT, 255, 0, 0]),         # claims far more than the header holds
    bytes([Option.PAD_HINT, 1, 0, 0x05]),        # the last byte is a type with no length byte
    bytes([Option.COUNTER, 8]) + bytes(6),       # a fixed-size option cut short
])
def test_option_overrunning_header_rejected(options: bytes) -> None:
    # Payload bytes follow, but an option may never read into the payload.
    with pytest.raises(WireError, match=r"truncated|claims|must be"):
        wire.parse(raw_header(options=options) + bytes(64))


# --- fuzz --------------------------------------------------------------------------------------


@st.composite
def plausible_packets(draw: st.DrawFn) -> bytes:
    """Random packets that get past the cheap checks (version, type, flags, checksum) into the
    option parser: a soup of TLVs with any type, a length byte that may lie, random data,
    random trailing bytes, cut or zero-filled to a random HLEN, and a correct checksum."""
    soup = bytearray()
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.one_of(st.sampled_from([int(o) for o in Option]), st.integers(0, 255)))
        data = draw(st.binary(max_size=20))
        length = draw(st.one_of(st.just(len(data)), st.integers(0, 255)))
        soup += bytes([kind, length]) + data
    soup += draw(st.binary(max_size=8))
    hlen_words = draw(st.integers(3, 3 + (len(soup) + 3) // 4))
    options = bytes(soup[: hlen_words * 4 - 12]).ljust(hlen_words * 4 - 12, b"\0")
    header = raw_header(draw(st.integers(1, 6)), options=options, flags=draw(flag_sets),
                        inner_len=draw(u16), device_id=draw(u16), encap_id=draw(u16))
    return header + draw(st.binary(max_size=16))


@settings(max_examples=2500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=120), plausible_packets()))
def test_parse_arbitrary_bytes_raises_only_wire_error(data: bytes) -> None:
    try:
        p = wire.parse(data)
    except WireError:
        return
    assert_well_formed(data, p)


def _seed_packets() -> list[bytes]:
    """One valid packet of every kind the protocol sends."""
    seeds = []
    sender, _, _, _ = keypair_pair("chacha20-poly1305")
    seeds.append(bytes(sender.seal(b"inner packet " * 3)))
    seeds.append(bytes(sender.seal(b"", PacketType.KEEPALIVE)))
    seeds.append(bytes(sender.seal(b"\x01probe", PacketType.CONTROL, int(Flag.CSUM_PARTIAL))))
    plain = bytearray(FIXED_HEADER_LEN + 20)
    seal_plain_into(plain, 0, b"plain inner packet..", device_id=3, encap_id=9)
    seeds.append(bytes(plain))
    responder_static = generate_private_key()
    for suite, ident in (
        (Suite("psk", "chacha20-poly1305", True), Identity(psk=os.urandom(32))),
        (Suite("ephemeral", "aes-256-gcm", False),
         Identity(generate_private_key(), public_key(responder_static))),
    ):
        init = Initiator(suite, ident, device_id=1, local_index=0x0A0B0C0D, now=1.7e9)
        seeds.append(init.packet)
        own = Identity(responder_static)
        key = ident.mac1_key_for(None) if suite.mode == "psk" else own.mac1_key_for(
            own.own_public)
        parsed = read_initiation(init.packet, key)
        seeds.append(respond(parsed, suite, lambda _pub, ident=ident: ident,
                             own_static=responder_static, device_id=2,
                             local_index=0x01020304).packet)
        seeds.append(CookieGenerator(os.urandom(32)).reply(parsed, b"src", device_id=2))
    seeds.append(wire.encode_header(PacketType.CONTROL, inner_len=3, device_id=1, encap_id=1,
                                    flags=0, options=[(0x33, b"x"), (Option.PAD_HINT, bytes(9))])
                 + b"abc")
    return seeds


SEEDS = _seed_packets()

mutated_packets = st.builds(mutate, st.sampled_from(SEEDS), mutations,
                            repair_checksum=st.booleans())
"""A valid packet with a few flips, overwrites, truncations, extensions, insertions and
deletions; half of them get their checksum repaired so the mutation reaches the option parser."""


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        assert_well_formed(seed, wire.parse(seed))


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_packets)
def test_parse_mutated_packets_raises_only_wire_error(data: bytes) -> None:
    try:
        p = wire.parse(data)
    except WireError:
        return
    assert_well_formed(data, p)
