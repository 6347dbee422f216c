"""core.session: sealing and opening data packets (fast path and its fallback), plain mode."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    establish,
    fix_checksum,
    keypair_pair,
    lookup_of,
    make_pair,
    mutate,
    mutations,
    sealed_body,
    start_counter_at,
)

from core import wire
from core.constants import (
    CIPHERS,
    DATA_HEADER_LEN,
    FIXED_HEADER_LEN,
    KNOWN_FLAGS,
    REJECT_AFTER_MESSAGES,
    TAG_LEN,
    Flag,
    Option,
    PacketType,
)
from core.errors import CryptoError, TunsealError
from core.session import (
    Keypair,
    make_aead,
    open_data,
    open_plain,
    seal_plain_into,
)

SEALED_TYPES = (PacketType.DATA, PacketType.KEEPALIVE, PacketType.CONTROL)
SEALED = int(Flag.AUTHENTICATED | Flag.ENCRYPTED)
DROP_REASONS = {"bad_header", "unknown_session", "bad_tag", "replay", "too_old"}


def receiver_for(cipher: str, recv_key: bytes, local_index: int = 0x22222222) -> Keypair:
    """A fresh receiving keypair for packets sealed under ``recv_key``."""
    return Keypair(cipher=cipher, send_key=os.urandom(32), recv_key=recv_key,
                   local_index=local_index, remote_index=0x11111111, device_id=7,
                   is_initiator=False, created=0.0)


def reason_of(pkt: bytes | bytearray, receiver: Keypair) -> str:
    """The ``reason`` open_data gives for refusing ``pkt`` (fails the test if it accepts)."""
    with pytest.raises(TunsealError) as info:
        open_data(pkt, lookup_of(receiver))
    return info.value.reason  # type: ignore[attr-defined, no-any-return]


def hand_sealed(cipher: str, key: bytes, *, options: list[tuple[int, bytes]], inner: bytes,
                counter: int, ptype: int = PacketType.DATA, flags: int = SEALED,
                device_id: int = 7, encap_id: int = 0) -> bytes:
    """A sealed packet built from the wire spec alone (encode_header + the AEAD), not by
    Keypair: the header is the associated data, the counter is the 96-bit big-endian nonce."""
    header = wire.encode_header(PacketType(ptype), inner_len=len(inner), device_id=device_id,
                                encap_id=encap_id, flags=flags, options=options)
    aead = ChaCha20Poly1305(key) if cipher == "chacha20-poly1305" else AESGCM(
        key[:16] if cipher == "aes-128-gcm" else key)
    return header + aead.encrypt(counter.to_bytes(12, "big"), inner, header)


def data_options(receiver_index: int, counter: int, *, canonical: bool = True,
                 extra: list[tuple[int, bytes]] | None = None) -> list[tuple[int, bytes]]:
    index = (Option.RECEIVER_INDEX, receiver_index.to_bytes(4, "big"))
    count = (Option.COUNTER, counter.to_bytes(8, "big"))
    opts = [index, count] if canonical else [count, index]
    return [*(extra or []), *opts] if extra else opts


# --- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_seal_open_round_trip(cipher: str) -> None:
    sender, receiver, _, _ = keypair_pair(cipher)
    for n, size in enumerate((0, 1, 15, 16, 17, 1400, 0xFFFF)):
        inner = os.urandom(size)
        pkt = sender.seal(inner)
        assert len(pkt) == DATA_HEADER_LEN + size + TAG_LEN
        kp, ptype, flags, encap, out = open_data(pkt, lookup_of(receiver))
        assert (kp, ptype, flags, encap, out) == (receiver, PacketType.DATA, SEALED, n, inner)
    assert receiver.receive_count == 7
    # And the other direction, with the keys swapped.
    back = receiver.seal(b"reply", PacketType.CONTROL)
    assert open_data(back, lookup_of(sender))[1:] == (PacketType.CONTROL, SEALED, 0, b"reply")


@settings(max_examples=150)
@given(cipher=st.sampled_from(CIPHERS), inner=st.binary(max_size=300),
       ptype=st.sampled_from(SEALED_TYPES), csum_partial=st.booleans(),
       counter=st.integers(0, REJECT_AFTER_MESSAGES - 1), device_id=st.integers(0, 0xFFFF),
       remote_index=st.integers(0, 0xFFFFFFFF))
def test_sealed_packets_are_standard_wire_packets(
        cipher: str, inner: bytes, ptype: PacketType, csum_partial: bool, counter: int,
        device_id: int, remote_index: int) -> None:
    """The fast path computes the checksum from field values, not bytes: the general parser
    must agree with it for every counter, index and device ID, and the receiver must open it."""
    k1, k2 = os.urandom(32), os.urandom(32)
    sender = Keypair(cipher=cipher, send_key=k1, recv_key=k2, local_index=1,
                     remote_index=remote_index, device_id=device_id, is_initiator=True,
                     created=0.0)
    receiver = Keypair(cipher=cipher, send_key=k2, recv_key=k1, local_index=remote_index,
                       remote_index=1, device_id=device_id, is_initiator=False, created=0.0)
    start_counter_at(sender, counter)
    flags = int(Flag.CSUM_PARTIAL) if csum_partial else 0
    pkt = sender.seal(inner, ptype, flags)
    p = wire.parse(pkt)
    assert (p.type, p.inner_len, p.device_id, p.encap_id, p.flags) == (
        ptype, len(inner), device_id, counter & 0xFFFF, SEALED | flags)
    assert p.options == ((Option.RECEIVER_INDEX, remote_index.to_bytes(4, "big")),
                         (Option.COUNTER, counter.to_bytes(8, "big")))
    assert open_data(pkt, lookup_of(receiver))[1:] == (ptype, SEALED | flags,
                                                       counter & 0xFFFF, inner)


def test_seal_into_writes_only_its_slot() -> None:
    sender, receiver, _, _ = keypair_pair("aes-256-gcm")
    buf = bytearray(b"\xee" * 300)
    n = sender.seal_into(buf, 50, b"abc" * 10)
    assert n == DATA_HEADER_LEN + 30 + TAG_LEN
    assert buf[:50] == b"\xee" * 50 and buf[50 + n:] == b"\xee" * (250 - n)
    assert open_data(buf[50:50 + n], lookup_of(receiver))[4] == b"abc" * 10


@pytest.mark.parametrize("cipher", CIPHERS)
def test_csum_partial_flag_passes_through(cipher: str) -> None:
    sender, receiver, _, _ = keypair_pair(cipher)
    pkt = sender.seal(b"tso segment", flags=int(Flag.CSUM_PARTIAL))
    _, _, flags, _, inner = open_data(pkt, lookup_of(receiver))
    assert flags & Flag.CSUM_PARTIAL and inner == b"tso segment"
    _, _, flags, _, _ = open_data(sender.seal(b"normal"), lookup_of(receiver))
    assert not flags & Flag.CSUM_PARTIAL


# --- tampering, wrong keys, replays -----------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampering_any_byte_is_refused(cipher: str) -> None:
    sender, receiver, _, _ = keypair_pair(cipher)
    pkt = bytes(sender.seal(b"0123456789abcdef" * 3))
    for pos in range(len(pkt)):
        for xor in (0x01, 0x80, 0xFF):
            bad = bytearray(pkt)
            bad[pos] ^= xor
            expected = "bad_header" if pos < DATA_HEADER_LEN else "bad_tag"
            assert reason_of(bad, receiver) == expected, (pos, xor)
    # Nothing forged moved the replay window: the genuine packet still opens, once.
    assert open_data(pkt, lookup_of(receiver))[4] == b"0123456789abcdef" * 3
    assert reason_of(pkt, receiver) == "replay"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampered_header_with_repaired_checksum_fails_the_tag(cipher: str) -> None:
    """An attacker can recompute the checksum; the AEAD's associated data still covers every
    header field, including the ones nothing else checks (DeviceID, EncapID, CSUM_PARTIAL)."""
    sender, receiver, _, _ = keypair_pair(cipher)
    pkt = bytes(sender.seal(b"payload" * 5))
    for pos in range(DATA_HEADER_LEN):
        if pos in (10, 11):  # the checksum field itself is overwritten by the repair
            continue
        for xor in (0x01, 0x10, 0xFF):
            bad = bytearray(pkt)
            bad[pos] ^= xor
            reason = reason_of(fix_checksum(bad), receiver)
            assert reason in {"bad_header", "bad_tag", "unknown_session"}, (pos, xor, reason)
            if pos in (4, 5, 6, 7):  # DeviceID, EncapID
                assert reason == "bad_tag"
            if 14 <= pos < 18:  # RECEIVER_INDEX now names no session
                assert reason == "unknown_session"
    bad = bytearray(pkt)
    bad[8] ^= Flag.CSUM_PARTIAL >> 8
    assert reason_of(fix_checksum(bad), receiver) == "bad_tag"
    assert open_data(pkt, lookup_of(receiver))[4] == b"payload" * 5


def test_forged_packet_does_not_move_the_replay_window() -> None:
    sender, receiver, _, _ = keypair_pair("chacha20-poly1305")
    early = sender.seal(b"counter 0")
    forged = hand_sealed("chacha20-poly1305", os.urandom(32), inner=b"forged",
                         options=data_options(receiver.local_index, 10**9), counter=10**9)
    assert reason_of(forged, receiver) == "bad_tag"
    assert receiver.replay.highest == 0
    assert open_data(early, lookup_of(receiver))[4] == b"counter 0"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_key_is_bad_tag(cipher: str) -> None:
    sender, receiver, _, _ = keypair_pair(cipher)
    _, stranger, _, _ = keypair_pair(cipher)  # same indices, other keys
    pkt = sender.seal(b"for the receiver only")
    assert reason_of(pkt, stranger) == "bad_tag"
    assert stranger.receive_count == 0
    assert open_data(pkt, lookup_of(receiver))[4] == b"for the receiver only"


def test_replayed_and_too_old_packets() -> None:
    sender, receiver, _, _ = keypair_pair("chacha20-poly1305")
    first = sender.seal(b"first")
    open_data(first, lookup_of(receiver))
    assert reason_of(first, receiver) == "replay"
    start_counter_at(sender, 100_000)
    open_data(sender.seal(b"far ahead"), lookup_of(receiver))
    assert reason_of(first, receiver) == "too_old"
    assert receiver.receive_count == 2


def test_counter_at_the_nonce_limit() -> None:
    sender, receiver, _, _ = keypair_pair("chacha20-poly1305")
    start_counter_at(sender, REJECT_AFTER_MESSAGES - 1)
    open_data(sender.seal(b"last"), lookup_of(receiver))
    with pytest.raises(CryptoError, match="exhausted"):
        sender.seal(b"one too many")
    assert sender.send_counter == REJECT_AFTER_MESSAGES
    _, receiver2, key, _ = keypair_pair("chacha20-poly1305")
    beyond = hand_sealed("chacha20-poly1305", key, inner=b"x", counter=REJECT_AFTER_MESSAGES,
                         options=data_options(receiver2.local_index, REJECT_AFTER_MESSAGES))
    assert reason_of(beyond, receiver2) == "too_old"


@pytest.mark.parametrize("canonical", [True, False], ids=["fast-path", "slow-path"])
@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_oldpacketlen_must_match_the_sealed_payload(canonical: bool, delta: int) -> None:
    """The length is checked before any lookup or decryption (a lying header is bad_header,
    not bad_tag), on both paths."""
    _, receiver, key, _ = keypair_pair("aes-256-gcm")
    good = hand_sealed("aes-256-gcm", key, inner=b"twelve bytes", counter=0,
                       options=data_options(receiver.local_index, 0, canonical=canonical))
    lying = fix_checksum(good[:2] + (12 + delta).to_bytes(2, "big") + good[4:])
    assert reason_of(lying, receiver) == "bad_header"
    assert open_data(good, lookup_of(receiver))[4] == b"twelve bytes"


def test_unknown_session_index() -> None:
    sender, _, _, _ = keypair_pair("chacha20-poly1305")
    pkt = sender.seal(b"x")
    with pytest.raises(TunsealError) as info:
        open_data(pkt, lambda index: None)
    assert info.value.reason == "unknown_session"  # type: ignore[attr-defined]


def test_endpoint_counts_replays_and_unknown_sessions() -> None:
    pair = make_pair("psk")
    establish(pair)
    pkt = pair.a.seal(pair.pa, b"once")[0]
    assert pair.b.receive(pkt).inner == b"once"
    again = pair.b.receive(pkt)
    assert (again.drop, again.inner) == ("replay", None)
    assert pair.b.drops == {"replay": 1}
    other = make_pair("psk")
    establish(other)
    stray = pair.b.receive(other.a.seal(other.pa, b"not for you")[0])
    assert stray.drop == "unknown_session"
    assert pair.b.drops == {"replay": 1, "unknown_session": 1}


# --- the fallback parser agrees with the fast path --------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_noncanonical_option_order_accepted(cipher: str) -> None:
    """COUNTER before RECEIVER_INDEX, with a PAD_HINT and an unknown non-critical option in
    front: valid per the spec, so the slow path must open it exactly like the fast path."""
    _, receiver, key, _ = keypair_pair(cipher)
    extra = [(Option.PAD_HINT, bytes(5)), (0x42, b"skip me")]
    for counter, opts in enumerate((
        data_options(receiver.local_index, 0, canonical=False),
        data_options(receiver.local_index, 1, canonical=False, extra=extra),
        data_options(receiver.local_index, 2, extra=extra),
    )):
        pkt = hand_sealed(cipher, key, options=opts, inner=b"inner %d" % counter,
                          counter=counter, encap_id=counter, flags=SEALED | Flag.CSUM_PARTIAL)
        assert pkt[12] != Option.RECEIVER_INDEX or pkt[1] != DATA_HEADER_LEN // 4
        kp, ptype, flags, encap, inner = open_data(pkt, lookup_of(receiver))
        assert (kp, ptype, flags, encap, inner) == (
            receiver, PacketType.DATA, SEALED | Flag.CSUM_PARTIAL, counter, b"inner %d" % counter)
        assert reason_of(pkt, receiver) == "replay"
    assert receiver.replay.highest == 2


def test_hand_built_canonical_packet_takes_the_fast_path_byte_for_byte() -> None:
    sender, receiver, key, _ = keypair_pair("chacha20-poly1305")
    by_keypair = bytes(sender.seal(b"same bytes"))
    by_hand = hand_sealed("chacha20-poly1305", key, inner=b"same bytes", counter=0,
                          options=data_options(receiver.local_index, 0))
    assert by_keypair == by_hand


@pytest.mark.parametrize("canonical", [True, False], ids=["fast-path", "slow-path"])
def test_key_present_refused_on_sealed_packets(canonical: bool) -> None:
    """PROTOCOL.md 5.1: KEY_PRESENT MUST NOT be set on a sealed packet; both paths drop it."""
    _, receiver, key, _ = keypair_pair("chacha20-poly1305")
    pkt = hand_sealed("chacha20-poly1305", key, inner=b"x", counter=0,
                      flags=SEALED | Flag.KEY_PRESENT,
                      options=data_options(receiver.local_index, 0, canonical=canonical))
    assert reason_of(pkt, receiver) == "bad_header"


def _verdict(pkt: bytes, receiver: Keypair) -> tuple[object, ...]:
    try:
        _, ptype, flags, encap, inner = open_data(pkt, lookup_of(receiver))
    except TunsealError as e:
        return ("drop", e.reason)  # type: ignore[attr-defined]
    return ("ok", ptype, flags, encap, inner)


@settings(max_examples=300)
@given(cipher=st.sampled_from(CIPHERS), ptype=st.sampled_from(list(PacketType)),
       flags=st.sets(st.sampled_from(list(Flag))).map(lambda fs: sum(int(f) for f in fs)),
       inner=st.binary(max_size=40),
       counter=st.integers(0, 2**64 - 1), lie_about_length=st.booleans())
def test_fast_and_slow_paths_agree(cipher: str, ptype: PacketType, flags: int, inner: bytes,
                                   counter: int, lie_about_length: bool) -> None:
    """The same packet, once in the canonical layout (fast path) and once with the options
    swapped (slow path), gets the same verdict: accepted alike, or dropped for the same
    reason. Every type, every combination of defined flags (new ones included as they are
    added to constants.Flag), any counter."""
    assert flags & ~KNOWN_FLAGS == 0
    key = os.urandom(32)
    verdicts = []
    for canonical in (True, False):
        receiver = receiver_for(cipher, key)
        pkt = hand_sealed(cipher, key, inner=inner, counter=counter, ptype=ptype, flags=flags,
                          options=data_options(receiver.local_index, counter,
                                               canonical=canonical))
        if lie_about_length:
            pkt = fix_checksum(pkt[:2] + (len(inner) + 1).to_bytes(2, "big") + pkt[4:])
        verdicts.append(_verdict(pkt, receiver))
    assert verdicts[0] == verdicts[1]


# --- ciphers -----------------------------------------------------------------------------------


def test_aes128_uses_a_16_byte_key() -> None:
    sender, _, key, _ = keypair_pair("aes-128-gcm")
    pkt = bytes(sender.seal(b"aes-128"))
    nonce, header, body = bytes(12), pkt[:DATA_HEADER_LEN], sealed_body(pkt)
    assert AESGCM(key[:16]).decrypt(nonce, body, header) == b"aes-128"
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(nonce, body, header)
    # Only the first 16 bytes of the handshake's 32-byte key matter.
    other_half = receiver_for("aes-128-gcm", key[:16] + os.urandom(16))
    assert open_data(pkt, lookup_of(other_half))[4] == b"aes-128"


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_256_bit_ciphers_use_the_whole_key(cipher: str) -> None:
    sender, _, key, _ = keypair_pair(cipher)
    pkt = sender.seal(b"x")
    half_match = receiver_for(cipher, key[:16] + bytes(b ^ 1 for b in key[16:]))
    assert reason_of(pkt, half_match) == "bad_tag"


def test_unknown_cipher_refused() -> None:
    with pytest.raises(CryptoError, match="unknown cipher"):
        make_aead("rot13", bytes(32))


# --- plain mode --------------------------------------------------------------------------------


def plain_packet(inner: bytes, *, device_id: int = 3, encap_id: int = 9, flags: int = 0,
                 ptype: int = PacketType.DATA) -> bytes:
    out = bytearray(FIXED_HEADER_LEN + len(inner))
    n = seal_plain_into(out, 0, inner, device_id=device_id, encap_id=encap_id, ptype=ptype,
                        flags=flags)
    assert n == len(out)
    return bytes(out)


@given(inner=st.binary(max_size=200), device_id=st.integers(0, 0xFFFF),
       encap_id=st.integers(0, 0xFFFF), csum_partial=st.booleans(),
       ptype=st.sampled_from(SEALED_TYPES))
def test_plain_round_trip(inner: bytes, device_id: int, encap_id: int, csum_partial: bool,
                          ptype: PacketType) -> None:
    flags = int(Flag.CSUM_PARTIAL) if csum_partial else 0
    pkt = plain_packet(inner, device_id=device_id, encap_id=encap_id, flags=flags, ptype=ptype)
    p = wire.parse(pkt)
    assert (p.type, p.device_id, p.encap_id, p.flags, p.payload) == (
        ptype, device_id, encap_id, flags, inner)
    assert open_plain(pkt) == (ptype, device_id, encap_id, flags, inner)


def test_plain_noncanonical_header_accepted() -> None:
    header = wire.encode_header(PacketType.DATA, inner_len=5, device_id=3, encap_id=4,
                                flags=int(Flag.CSUM_PARTIAL), options=[(Option.PAD_HINT, b"")])
    assert open_plain(header + b"hello") == (PacketType.DATA, 3, 4, int(Flag.CSUM_PARTIAL),
                                             b"hello")


@pytest.mark.parametrize("flags", [int(Flag.ENCRYPTED), int(Flag.AUTHENTICATED),
                                   int(Flag.KEY_PRESENT), SEALED])
@pytest.mark.parametrize("options", [(), ((Option.PAD_HINT, b""),)])
def test_plain_refuses_sealed_or_keyed_flags(flags: int, options: tuple[tuple[int, bytes]]
                                             ) -> None:
    header = wire.encode_header(PacketType.DATA, inner_len=1, device_id=3, encap_id=4,
                                flags=flags, options=options)
    with pytest.raises(TunsealError) as info:
        open_plain(header + b"x")
    assert info.value.reason == "bad_header"  # type: ignore[attr-defined]


@pytest.mark.parametrize("ptype", [PacketType.HANDSHAKE_INIT, PacketType.HANDSHAKE_RESP,
                                   PacketType.COOKIE])
def test_plain_refuses_handshake_types(ptype: PacketType) -> None:
    with pytest.raises(TunsealError, match="not data"):
        open_plain(plain_packet(b"x", ptype=ptype))


def test_plain_length_must_match() -> None:
    pkt = plain_packet(b"exactly this")
    for bad in (pkt[:-1], pkt + b"!"):
        with pytest.raises(TunsealError, match="OLDPACKETLEN"):
            open_plain(bad)


# --- fuzz --------------------------------------------------------------------------------------

_FUZZ_SENDER, _FUZZ_RECEIVER, _FUZZ_KEY, _ = keypair_pair("chacha20-poly1305")
SEALED_SEEDS = [
    bytes(_FUZZ_SENDER.seal(b"data packet " * 4)),
    bytes(_FUZZ_SENDER.seal(b"", PacketType.KEEPALIVE)),
    bytes(_FUZZ_SENDER.seal(b"\x01probe", PacketType.CONTROL, int(Flag.CSUM_PARTIAL))),
    hand_sealed("chacha20-poly1305", _FUZZ_KEY, inner=b"slow path", counter=3,
                options=data_options(_FUZZ_RECEIVER.local_index, 3, canonical=False,
                                     extra=[(Option.PAD_HINT, b"pad")])),
]
PLAIN_SEEDS = [plain_packet(b"plain " * 5), plain_packet(b"", ptype=PacketType.KEEPALIVE),
               wire.encode_header(PacketType.DATA, inner_len=2, device_id=1, encap_id=2,
                                  flags=0, options=[(0x10, b"?")]) + b"hi"]


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=120),
                 st.builds(mutate, st.sampled_from(SEALED_SEEDS), mutations,
                           repair_checksum=st.booleans())))
def test_open_data_on_hostile_bytes_only_drops(data: bytes) -> None:
    """Arbitrary and mutated packets: open_data raises only a TunsealError carrying a drop
    reason, and never accepts anything but an untouched genuine packet."""
    try:
        open_data(data, lookup_of(_FUZZ_RECEIVER))
    except TunsealError as e:
        assert getattr(e, "reason", None) in DROP_REASONS, repr(e)
        return
    assert data in SEALED_SEEDS


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=120),
                 st.builds(mutate, st.sampled_from(PLAIN_SEEDS), mutations,
                           repair_checksum=st.booleans())))
def test_open_plain_on_hostile_bytes_only_drops(data: bytes) -> None:
    try:
        ptype, device_id, encap_id, flags, inner = open_plain(data)
    except TunsealError as e:
        assert getattr(e, "reason", None) == "bad_header", repr(e)
        return
    p = wire.parse(data)  # what open_plain accepted, the general parser accepts
    assert (ptype, device_id, encap_id, flags) == (p.type, p.device_id, p.encap_id, p.flags)
    assert ptype in SEALED_TYPES and not flags & ~(Flag.CSUM_PARTIAL | Flag.CONTINUATION)
    assert inner == p.payload and len(inner) == p.inner_len
