"""core.handshake and core.responder: every handshake pattern, what is refused and where, and
the defences against floods (MAC1 before DH, cookies under load, bounded per-source limits)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    SOURCE_A,
    SOURCE_B,
    FakeClock,
    Keys,
    Pair,
    establish,
    fix_checksum,
    make_endpoint,
    make_keys,
    make_pair,
    mutate,
    mutations,
    ptype_of,
)

from core import handshake, noise, wire
from core.constants import CIPHERS, REKEY_TIMEOUT, TIMESTAMP_LEN, Flag, Option, PacketType
from core.endpoint import Endpoint, Inbound
from core.errors import CryptoError, HandshakeError, WireError
from core.handshake import (
    CookieGenerator,
    FloodGuard,
    Identity,
    Initiator,
    Suite,
    open_cookie_reply,
    read_initiation,
    respond,
)
from core.responder import ANY_DEVICE
from helper.handshakestate import HandshakeStore

SUITES = [  # (mode, psk, expected Noise pattern)
    ("psk", True, "NNpsk0"),
    ("rotating", True, "NNpsk0"),
    ("ephemeral", False, "IK"),
    ("ephemeral", True, "IKpsk2"),
]
# Noise message sizes: e = 32, sealed s = 32 + 16, sealed TAI64N = 12 + 16, empty payload = 16.
INIT_PAYLOAD_LEN = {"NNpsk0": 32 + TIMESTAMP_LEN + 16, "IK": 32 + 48 + TIMESTAMP_LEN + 16,
                    "IKpsk2": 32 + 48 + TIMESTAMP_LEN + 16}
RESP_PAYLOAD_LEN = 32 + 16


def handshake_packets(pair: Pair, ptype: PacketType) -> list[bytes]:
    return [p for _, p in pair.wire_log if ptype_of(p) == ptype]


def no_session(pair: Pair) -> bool:
    return (pair.pa.current is None and pair.pb.current is None and pair.pb.next is None
            and pair.pa.stats.handshakes == 0)


# --- every suite completes ---------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize(("mode", "psk", "pattern"), SUITES)
def test_every_mode_and_cipher_completes(mode: str, psk: bool, pattern: str,
                                         cipher: str) -> None:
    pair = make_pair(mode, cipher, psk=psk)
    assert pair.a.suite is not None and pair.a.suite.pattern == pattern
    establish(pair)
    init, = handshake_packets(pair, PacketType.HANDSHAKE_INIT)
    resp, = handshake_packets(pair, PacketType.HANDSHAKE_RESP)
    assert len(wire.parse(init).payload) == INIT_PAYLOAD_LEN[pattern]
    assert len(wire.parse(resp).payload) == RESP_PAYLOAD_LEN
    assert pair.pa.stats.handshakes == pair.pb.stats.handshakes == 1
    assert pair.pa.state == pair.pb.state == "up"
    assert pair.a.drops == pair.b.drops == {}
    # The two ends hold the two halves of one session.
    assert pair.pa.current.remote_index == pair.pb.current.local_index
    assert pair.pb.current.remote_index == pair.pa.current.local_index


@pytest.mark.parametrize(("mode", "psk", "pattern"), SUITES)
def test_handshake_api_directly(mode: str, psk: bool, pattern: str) -> None:
    """Initiator -> read_initiation -> respond -> consume_response, without Endpoints: the
    keys cross over, indices are echoed, and IK proves the initiator's static key."""
    keys = make_keys(mode, psk=psk)
    suite = Suite(mode, "chacha20-poly1305", keys.psk is not None)
    ident_a, ident_b = keys.identity_for_a(), keys.identity_for_b()
    init = Initiator(suite, ident_a, device_id=1, local_index=0xA, now=1.7e9)
    mac1_key = ident_b.mac1_key_for(ident_b.own_public if mode == "ephemeral" else None)
    parsed = read_initiation(init.packet, mac1_key)
    assert parsed.sender_index == 0xA
    seen: list[bytes | None] = []

    def ident_for(initiator_public: bytes | None) -> Identity:
        seen.append(initiator_public)
        return ident_b

    resp = respond(parsed, suite, ident_for, own_static=keys.static_b, device_id=2,
                   local_index=0xB)
    done = init.consume_response(resp.packet)
    assert (done.send_key, done.recv_key) == (resp.completed.recv_key, resp.completed.send_key)
    assert done.send_key != done.recv_key
    assert (done.local_index, done.remote_index) == (0xA, 0xB)
    assert (resp.completed.local_index, resp.completed.remote_index) == (0xB, 0xA)
    assert resp.timestamp == handshake.tai64n(1.7e9)
    if mode == "ephemeral":
        assert resp.completed.remote_static == noise.public_key(keys.static_a)
        assert done.remote_static == noise.public_key(keys.static_b)
        assert seen == [noise.public_key(keys.static_a)]
    else:
        assert resp.completed.remote_static is None and seen[0] is None


def test_two_handshakes_never_share_keys() -> None:
    keys = make_keys("psk")
    suite = Suite("psk", "chacha20-poly1305", True)
    results = []
    for index in (1, 2):
        init = Initiator(suite, keys.identity_for_a(), device_id=1, local_index=index, now=1.7e9)
        parsed = read_initiation(init.packet, keys.identity_for_b().mac1_key_for(None))
        resp = respond(parsed, suite, lambda _pub: keys.identity_for_b(), own_static=None,
                       device_id=2, local_index=10 + index)
        results.append(init.consume_response(resp.packet))
    assert results[0].send_key != results[1].send_key
    assert results[0].recv_key != results[1].recv_key


# --- refusals ----------------------------------------------------------------------------------


def test_unknown_static_key_refused_and_counted() -> None:
    pair = make_pair("ephemeral", psk=False)
    intruder_keys = Keys(noise.generate_private_key(), pair.keys.static_b, None)
    intruder, peer = make_endpoint("ephemeral", "chacha20-poly1305", intruder_keys, pair.clock,
                                   side="a")
    r = pair.b.receive(intruder.seal(peer, b"let me in")[0], SOURCE_A)
    assert r.drop == "unknown_peer" and r.replies == []
    assert pair.b.drops == {"unknown_peer": 1}
    assert pair.pb.next is None and pair.pb.current is None


def test_initiator_with_wrong_responder_key_fails_mac1() -> None:
    pair = make_pair("ephemeral", psk=False)
    wrong = Keys(pair.keys.static_a, noise.generate_private_key(), None)
    a, pa = make_endpoint("ephemeral", "chacha20-poly1305", wrong, pair.clock, side="a")
    r = pair.b.receive(a.seal(pa, b"x")[0], SOURCE_A)
    assert r.drop == "handshake_mac"
    assert pair.b.drops == {"handshake_mac": 1}


@pytest.mark.parametrize("mode", ["psk", "rotating"])
def test_wrong_psk_refused_by_mac1(mode: str) -> None:
    pair = make_pair(mode)
    wrong = Keys(None, None, os.urandom(32))
    a, pa = make_endpoint(mode, "chacha20-poly1305", wrong, pair.clock, side="a")
    r = pair.b.receive(a.seal(pa, b"x")[0], SOURCE_A)
    assert r.drop == "handshake_mac"
    assert pair.b.drops == {"handshake_mac": 1}
    assert pair.pb.next is None


def test_wrong_psk_in_ikpsk2_fails_at_the_initiator() -> None:
    """IKpsk2 mixes the psk in only for message 2: the responder answers (it cannot tell), and
    the initiator refuses the response. Neither end gets a session it could send with."""
    pair = make_pair("ephemeral", psk=True)
    wrong = Keys(pair.keys.static_a, pair.keys.static_b, os.urandom(32))
    pair.a, pair.pa = make_endpoint("ephemeral", "chacha20-poly1305", wrong, pair.clock,
                                    side="a")
    results = pair.a_to_b(b"x")
    assert [r.drop for r in results] == [None, "bad_tag"]
    assert pair.a.drops == {"bad_tag": 1}
    assert pair.pa.current is None and pair.pa.pending is not None
    assert pair.pb.sending_keypair() is None  # b's keypair is never confirmed


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("ephemeral", False),
                                           ("ephemeral", True)])
@pytest.mark.parametrize(("cipher_a", "cipher_b"), list(itertools.permutations(CIPHERS, 2)))
def test_mismatched_cipher_fails(mode: str, psk: bool, cipher_a: str, cipher_b: str) -> None:
    keys = make_keys(mode, psk=psk)
    clock = FakeClock()
    a, pa = make_endpoint(mode, cipher_a, keys, clock, side="a")
    b, pb = make_endpoint(mode, cipher_b, keys, clock, side="b")
    pair = Pair(mode, cipher_a, keys, clock, a, b, pa, pb)
    results = pair.a_to_b(b"x")
    assert results[0].drop == "handshake_failed"
    assert b.drops == {"handshake_failed": 1}
    assert no_session(pair) and pair.got["b"] == []


def test_replayed_initiation_refused_and_live_session_kept() -> None:
    pair = make_pair("ephemeral")
    establish(pair)
    init, = handshake_packets(pair, PacketType.HANDSHAKE_INIT)
    live_b, live_a = pair.pb.current, pair.pa.current
    indices = len(pair.b.indices)
    r = pair.b.receive(init, SOURCE_A)
    assert r.drop == "handshake_replay" and r.replies == []
    assert pair.b.drops == {"handshake_replay": 1}
    assert pair.pb.current is live_b and pair.pb.next is None
    assert len(pair.b.indices) == indices  # the refused attempt's index was released
    pair.a_to_b(b"still flowing")
    pair.b_to_a(b"both ways")
    assert pair.got["b"][-1] == b"still flowing" and pair.got["a"][-1] == b"both ways"
    assert pair.pa.current is live_a and pair.pb.stats.handshakes == 1


def test_replayed_initiation_before_completion_is_refused_too() -> None:
    pair = make_pair("psk")
    init = pair.a.seal(pair.pa, b"x")[0]
    assert pair.b.receive(init, SOURCE_A).drop is None
    answered = pair.pb.next
    assert pair.b.receive(init, SOURCE_A).drop == "handshake_replay"
    assert pair.pb.next is answered


def test_unknown_static_key_costs_one_dh_and_known_peers_keep_working(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An initiation with a valid MAC1 from a key no peer has is refused (``unknown_peer``)
    after the es DH that reveals the key, before the ss DH, and takes no state; the real
    peer's handshake then completes as before."""
    pair = make_pair("ephemeral", psk=False)
    intruder_keys = Keys(noise.generate_private_key(), pair.keys.static_b, None)
    intruder, peer = make_endpoint("ephemeral", "chacha20-poly1305", intruder_keys, pair.clock,
                                   side="a")
    packet = intruder.seal(peer, b"let me in")[0]
    dhs: list[object] = []
    real_dh = noise._dh
    monkeypatch.setattr(noise, "_dh", lambda *a: (dhs.append(a), real_dh(*a))[1])
    for _ in range(3):
        assert pair.b.receive(packet, SOURCE_A).drop == "unknown_peer"
    assert len(dhs) == 3 and pair.b.drops == {"unknown_peer": 3}
    assert len(pair.b.indices) == 0 and pair.pb.next is None
    establish(pair)
    assert pair.pb.current is not None or pair.pb.next is not None


def test_bad_mac1_refused_before_any_diffie_hellman(monkeypatch: pytest.MonkeyPatch) -> None:
    """The responder pays for DH in handshake.respond; a wrong MAC1 must never get there, nor
    cost a rate-limit token."""
    calls: list[object] = []
    real_respond = handshake.respond

    def counting_respond(*args: Any, **kwargs: Any) -> handshake.Responded:
        calls.append(args)
        return real_respond(*args, **kwargs)

    monkeypatch.setattr(handshake, "respond", counting_respond)
    pair = make_pair("ephemeral", psk=False)
    wrong = Keys(pair.keys.static_a, noise.generate_private_key(), None)
    _, pa = make_endpoint("ephemeral", "chacha20-poly1305", wrong, pair.clock, side="a")
    for _ in range(5):
        assert pair.b.receive(pa.begin_handshake(), SOURCE_A).drop == "handshake_mac"
    assert calls == [] and pair.b.drops == {"handshake_mac": 5}
    assert pair.b.responder is not None and pair.b.responder.guard.tracked_sources == 0
    # The spy is live: a genuine initiation does reach respond().
    establish(pair)
    assert len(calls) == 1


def test_tampered_initiation_fails_mac1() -> None:
    pair = make_pair("psk")
    init = bytearray(pair.a.seal(pair.pa, b"x")[0])
    init[-1] ^= 1  # last payload byte: the checksum does not cover it, MAC1 does
    r = pair.b.receive(bytes(init), SOURCE_A)
    assert r.drop == "handshake_mac"


def test_response_for_another_attempt_refused() -> None:
    pair = make_pair("psk")
    first = pair.a.seal(pair.pa, b"x")[0]
    resp = pair.b.receive(first, SOURCE_A).replies[0]
    pair.clock.advance(REKEY_TIMEOUT)
    retry, = pair.a.tick()  # a new attempt replaces the first
    assert ptype_of(retry[1]) == PacketType.HANDSHAKE_INIT
    r = pair.a.receive(resp, SOURCE_B)
    assert r.drop == "unknown_session" and pair.pa.current is None


# --- cookies and flood defences ----------------------------------------------------------------


def load_guard(pair: Pair, threshold: int) -> FloodGuard:
    """Give b a FloodGuard with a low load threshold on the pair's fake clock."""
    guard = FloodGuard(pair.clock, load_threshold=threshold)
    assert pair.b.responder is not None
    pair.b.responder.guard = guard
    return guard


def overload(guard: FloodGuard, threshold: int) -> None:
    """Other sources' initiations this second push the responder over its threshold."""
    for i in range(threshold):
        guard.admit(b"elsewhere %d" % i)
    assert guard.under_load()


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("ephemeral", False),
                                           ("ephemeral", True)])
def test_cookie_round_trip_under_load(mode: str, psk: bool) -> None:
    pair = make_pair(mode, psk=psk)
    guard = load_guard(pair, threshold=3)
    overload(guard, 3)
    init = pair.a.seal(pair.pa, b"staged until the handshake completes")[0]
    r = pair.b.receive(init, SOURCE_A)
    assert r.drop is None and r.peer is None and pair.b.drops == {"cookie_sent": 1}
    cookie_reply, = r.replies
    assert ptype_of(cookie_reply) == PacketType.COOKIE
    assert pair.pb.next is None  # no DH was done, no state kept

    assert pair.a.receive(cookie_reply, SOURCE_B).drop is None
    assert pair.pa.cookie is not None

    # REKEY_TIMEOUT later the retry carries MAC2; the load is still there.
    pair.clock.advance(REKEY_TIMEOUT)
    overload(guard, 3)
    (_, retry), = pair.a.tick()
    assert ptype_of(retry) == PacketType.HANDSHAKE_INIT
    assert wire.parse(retry).require(Option.MAC2) != bytes(16)
    # The cookie is bound to a's address: from elsewhere the same packet gets a cookie reply.
    r = pair.b.receive(retry, SOURCE_B)
    assert r.peer is None and ptype_of(r.replies[0]) == PacketType.COOKIE
    assert pair.b.drops == {"cookie_sent": 2}
    # From a's address it is answered, and the staged packet follows.
    pair.deliver(pair.a, [retry])
    assert pair.pb.stats.handshakes == 1 and pair.pa.state == "up"
    assert pair.got["b"] == [b"staged until the handshake completes"]


def test_initiation_without_mac2_answered_when_not_under_load() -> None:
    pair = make_pair("psk")
    load_guard(pair, threshold=3)
    establish(pair)
    assert pair.pb.stats.handshakes == 1 and "cookie_sent" not in pair.b.drops


def test_cookie_reply_only_opens_for_its_own_attempt() -> None:
    keys = make_keys("psk")
    suite = Suite("psk", "chacha20-poly1305", True)
    ident = keys.identity_for_a()
    mine = Initiator(suite, ident, device_id=1, local_index=5, now=1.7e9)
    other = Initiator(suite, ident, device_id=1, local_index=6, now=1.7e9)
    gen = CookieGenerator(ident.cookie_key_for(None))
    reply = gen.reply(read_initiation(mine.packet, ident.mac1_key_for(None)), b"src",
                      device_id=2)
    cookie = open_cookie_reply(reply, ident.cookie_key_for(None), mine)
    assert cookie == gen.cookie_for(b"src") != gen.cookie_for(b"other src")
    with pytest.raises(HandshakeError, match="another handshake attempt"):
        open_cookie_reply(reply, ident.cookie_key_for(None), other)
    with pytest.raises(CryptoError):
        open_cookie_reply(reply, os.urandom(32), mine)


def test_cookie_reply_without_pending_attempt_dropped() -> None:
    pair = make_pair("psk")
    guard = load_guard(pair, threshold=1)
    overload(guard, 1)
    cookie_reply = pair.b.receive(pair.a.seal(pair.pa, b"x")[0], SOURCE_A).replies[0]
    stranger = make_pair("psk")
    r = stranger.a.receive(cookie_reply, SOURCE_B)
    assert r.drop == "unknown_session"


def test_flood_guard_memory_is_bounded() -> None:
    clock = FakeClock()
    guard = FloodGuard(clock, max_sources=4096)
    for i in range(20_000):
        guard.admit(i.to_bytes(6, "big"))
        if i % 1000 == 0:
            clock.advance(0.01)
    assert 0 < guard.tracked_sources <= 4096


def test_flood_guard_rate_limits_a_burst_per_source() -> None:
    clock = FakeClock()
    guard = FloodGuard(clock, rate=5.0, load_threshold=10**6)
    assert [guard.admit(b"burst") for _ in range(8)] == [True] * 5 + [False] * 3
    assert guard.admit(b"someone else")  # other sources are not affected
    clock.advance(0.2)  # one token back at 5 per second
    assert guard.admit(b"burst") and not guard.admit(b"burst")
    clock.advance(10.0)  # refills, but only up to the burst size
    assert [guard.admit(b"burst") for _ in range(6)] == [True] * 5 + [False]


def test_flood_guard_load_window() -> None:
    clock = FakeClock()
    guard = FloodGuard(clock, load_threshold=4)
    for i in range(4):
        assert not guard.under_load()
        guard.admit(b"s%d" % i)
    assert guard.under_load()
    clock.advance(1.0)
    assert not guard.under_load()


def test_responder_refuses_a_burst_from_one_source() -> None:
    pair = make_pair("psk")
    burst = [pair.pa.begin_handshake() for _ in range(25)]  # each a fresh, valid initiation
    results = [pair.b.receive(p, SOURCE_A) for p in burst]
    answered = [r for r in results if r.drop is None]
    assert len(answered) == 20  # HANDSHAKE_RATE_PER_SOURCE tokens
    assert all(ptype_of(r.replies[0]) == PacketType.HANDSHAKE_RESP for r in answered)
    assert pair.b.drops == {"handshake_rate": 5}
    # Another source is still served in the same second.
    assert pair.b.receive(pair.pa.begin_handshake(), SOURCE_B).drop is None


def garbage_init(payload: bytes, mac1_key: bytes, origin: bytes | None = None) -> bytes:
    """An initiation around an arbitrary Noise payload, with a valid MAC1 computed as the
    protocol specifies (over the header with the checksum and both MACs zeroed, and the
    payload). Anyone who knows b's public key can make one."""
    header = bytearray(wire.encode_header(
        PacketType.HANDSHAKE_INIT, inner_len=len(payload), device_id=1, encap_id=0,
        flags=int(Flag.AUTHENTICATED | Flag.KEY_PRESENT),
        options=[(Option.SENDER_INDEX, (77).to_bytes(4, "big")),
                 *([(Option.ORIGIN, origin)] if origin is not None else []),
                 (Option.MAC1, bytes(16)), (Option.MAC2, bytes(16))]))
    header[10:12] = bytes(2)
    at = wire.option_offset(header, Option.MAC1)
    assert at is not None
    header[at:at + 16] = handshake.mac(mac1_key, bytes(header) + payload)
    return fix_checksum(bytes(header) + payload)


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("ephemeral", False),
                                           ("ephemeral", True)])
@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 60, 79, 80, 108, 109, 500])
def test_mac1_valid_garbage_is_refused_cleanly(mode: str, psk: bool, size: int) -> None:
    pair = make_pair(mode, psk=psk)
    ident_b = pair.keys.identity_for_b()
    mac1_key = ident_b.mac1_key_for(ident_b.own_public if mode == "ephemeral" else None)
    # psk mode: with an ORIGIN, so that the garbage gets as far as Noise.
    origin = os.urandom(16) if mode == "psk" else None
    r = pair.b.receive(garbage_init(os.urandom(size), mac1_key, origin), SOURCE_A)
    assert r.drop == "handshake_failed", r.detail
    # Low-order points: an all-zero ephemeral key must not yield a session either.
    r = pair.b.receive(garbage_init(bytes(size), mac1_key, origin), SOURCE_A)
    assert r.drop == "handshake_failed", r.detail
    assert pair.pb.next is None
    establish(pair)  # and the genuine peer is still served



# --- finding 2: reflection, stale replays, and what moves an endpoint ----------------------------

REFLECTION_CASES = [  # (mode, psk, how the reflected initiation is refused)
    ("psk", True, "handshake_reflected"),
    ("rotating", True, "handshake_reflected"),
    ("ephemeral", False, "handshake_mac"),
    ("ephemeral", True, "handshake_mac"),
]


def reflect(ep: Endpoint, packets: list[bytes], *, rounds: int = 10) -> list[Inbound]:
    """An on-path attacker who sends ``ep`` everything it sends, back, from the peer's
    address: the replies to reflected packets are reflected too, until ``ep`` falls silent."""
    results: list[Inbound] = []
    for _ in range(rounds):
        if not packets:
            break
        nxt: list[bytes] = []
        for pkt in packets:
            r = ep.receive(pkt, SOURCE_B)
            results.append(r)
            nxt.extend(r.replies)
        packets = nxt
    return results


@pytest.mark.parametrize(("mode", "psk", "reason"), REFLECTION_CASES)
def test_finding2_reflected_initiation_never_completes_a_session_with_itself(
        mode: str, psk: bool, reason: str) -> None:
    """Issue 9, finding 2: an end that is sent its own initiation back must not answer it,
    must not complete a session with itself, and must not come up. The first attempt and every
    retry are reflected. Both ends take any DeviceID for their one peer, as tunnels made from
    profiles do, so the DeviceID does not tell the initiation apart either."""
    pair = make_pair(mode, psk=psk, any_device=True)
    results = reflect(pair.a, pair.a.seal(pair.pa, b"to the peer, not to myself"))
    for _ in range(3):
        pair.clock.advance(REKEY_TIMEOUT)
        results += reflect(pair.a, [pkt for _, pkt in pair.a.tick()])
    assert [r.drop for r in results] == [reason] * 4
    assert all(r.replies == [] and r.peer is None for r in results)
    assert pair.a.drops == {reason: 4}
    pa = pair.pa
    assert pa.current is None and pa.next is None and pa.stats.handshakes == 0
    assert pa.state == "handshaking" and pa.sending_keypair() is None
    assert pair.got["a"] == []
    # The genuine peer is still served at once.
    pair.deliver(pair.a, [pa.begin_handshake()])
    assert pa.state == "up" and pair.got["b"] == [b"to the peer, not to myself"]


def test_finding2_origin_is_bound_into_the_noise_prologue() -> None:
    """The ORIGIN option is not just a label: the responder's Noise state starts from a
    prologue that ends with it, so even an end that knows the psk (and can recompute MAC1)
    cannot swap the origin of someone else's initiation; and a responder's own origin is what
    it refuses."""
    keys = make_keys("psk")
    suite = Suite("psk", "chacha20-poly1305", True)
    ident = keys.identity_for_a()
    mine, theirs = bytes([1]) * 16, bytes([2]) * 16
    init = Initiator(suite, ident, device_id=1, local_index=9, now=1.7e9, origin=theirs)
    assert wire.parse(init.packet).require(Option.ORIGIN) == theirs
    assert suite.prologue_for(theirs) == b"Tunseal v1|chacha20-poly1305|" + theirs
    parsed = read_initiation(init.packet, ident.mac1_key_for(None))
    assert parsed.origin == theirs
    resp = respond(parsed, suite, lambda _pub: ident, own_static=None, device_id=2,
                   local_index=10)
    assert init.consume_response(resp.packet).send_key == resp.completed.recv_key
    # Rewrite ORIGIN and recompute MAC1 as a psk holder could: Noise message 1 fails.
    forged = bytearray(init.packet)
    at = wire.option_offset(forged, Option.ORIGIN)
    assert at is not None
    forged[at:at + 16] = mine
    forged = bytearray(fix_checksum(forged))
    p = wire.parse(forged)
    in1, _, _, _ = handshake._mac_inputs(p)
    m1 = wire.option_offset(forged, Option.MAC1)
    assert m1 is not None
    forged[m1:m1 + 16] = handshake.mac(ident.mac1_key_for(None), in1)
    forged = bytearray(fix_checksum(forged))
    reparsed = read_initiation(bytes(forged), ident.mac1_key_for(None))
    assert reparsed.origin == mine
    with pytest.raises(CryptoError):
        respond(reparsed, suite, lambda _pub: ident, own_static=None, device_id=2,
                local_index=11)
    # Without an origin a psk-mode initiation is not answered at all.
    bare = handshake.Initiation(parsed.packet, parsed.sender_index, parsed.mac1, None)
    with pytest.raises(HandshakeError, match="ORIGIN"):
        respond(bare, suite, lambda _pub: ident, own_static=None, device_id=2, local_index=12)


def test_finding2_an_ik_end_refuses_its_own_public_key_as_its_peer() -> None:
    """IK's one reflection: an end told that its peer's public key is its own would answer its
    own initiations. Such a peer is refused when it is added."""
    own = noise.generate_private_key()
    ep = Endpoint("ephemeral", "chacha20-poly1305", device_id=1, static_private=own,
                  clock=FakeClock())
    with pytest.raises(HandshakeError, match="own public key"):
        ep.add_peer("me", Identity(own, noise.public_key(own)), remote_device_id=2,
                    initiates=True)
    assert ep.peers == []


def store_for(tmp_path: Path, name: str = "tun") -> HandshakeStore:
    return HandshakeStore.open(tmp_path, name)


def listening_end(pair: Pair, memory: HandshakeStore) -> tuple[Endpoint, Any]:
    """b again, as a helper restart makes it: a fresh Endpoint, the same keys, the memory
    the helper keeps in its state directory."""
    ep = Endpoint(pair.mode, pair.cipher, device_id=2, static_private=pair.keys.static_b,
                  has_psk=pair.keys.psk is not None, clock=pair.clock, memory=memory)
    peer = ep.add_peer("a", pair.keys.identity_for_b(), remote_device_id=1, initiates=False)
    return ep, peer


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("rotating", True),
                                           ("ephemeral", False), ("ephemeral", True)])
def test_finding2_initiation_replayed_after_a_listener_restart_is_refused(
        tmp_path: Path, mode: str, psk: bool) -> None:
    """Issue 9, finding 2: a listening end never initiates, so only the timestamps it accepted
    stand between it and a captured initiation. They survive a restart of the helper (the
    store in its state directory); an initiation captured before is refused after."""
    pair = make_pair(mode, psk=psk)
    memory = store_for(tmp_path)
    pair.b, pair.pb = listening_end(pair, memory)
    establish(pair)
    captured, = handshake_packets(pair, PacketType.HANDSHAKE_INIT)
    memory.flush()
    assert (tmp_path / "handshakes" / "tun.json").stat().st_mode & 0o777 == 0o600

    # The helper restarts: a new process reads the memory back.
    restarted = store_for(tmp_path)
    assert restarted.origin == memory.origin
    b, pb = listening_end(pair, restarted)
    assert pb.last_timestamp == pair.pb.last_timestamp != b""
    r = b.receive(captured, SOURCE_A)
    assert r.drop == "handshake_replay" and r.replies == [] and r.peer is None
    assert b.drops == {"handshake_replay": 1} and pb.next is None
    # A genuine new initiation (a newer timestamp) is still answered.
    pair.b, pair.pb = b, pb
    pair.clock.advance(1.0)
    pair.deliver(pair.a, [pair.pa.begin_handshake()])
    assert pb.current is not None and pb.stats.handshakes == 1


def test_finding2_the_origin_survives_a_restart_so_old_own_initiations_stay_refused(
        tmp_path: Path) -> None:
    """An initiation of this end captured before its helper restarted, reflected after: the
    origin ID comes back from the state directory, so the end still knows it as its own."""
    pair = make_pair("psk")
    a = Endpoint("psk", "chacha20-poly1305", device_id=1, has_psk=True, clock=pair.clock,
                 memory=store_for(tmp_path, "client"))
    pa = a.add_peer("b", pair.keys.identity_for_a(), remote_device_id=ANY_DEVICE,
                    initiates=True)
    old = pa.begin_handshake()
    assert a.memory is not None
    a.memory.flush()  # type: ignore[attr-defined]
    again = Endpoint("psk", "chacha20-poly1305", device_id=1, has_psk=True, clock=pair.clock,
                     memory=store_for(tmp_path, "client"))
    again.add_peer("b", pair.keys.identity_for_a(), remote_device_id=ANY_DEVICE,
                   initiates=True)
    r = again.receive(old, SOURCE_B)
    assert r.drop == "handshake_reflected" and r.replies == []


def test_finding2_handshake_memory_store(tmp_path: Path) -> None:
    """The store: newest timestamps only grow; new credentials start afresh; nothing is
    written until flushed; a damaged file costs the memory, not the tunnel."""
    s = store_for(tmp_path)
    t1, t2 = handshake.tai64n(1.7e9), handshake.tai64n(1.7e9 + 1)
    s.accepted("peer", b"cred-1", t2)
    s.accepted("peer", b"cred-1", t1)  # older: ignored
    assert s.newest("peer", b"cred-1") == t2
    assert s.newest("peer", b"cred-2") == b"" and s.newest("other", b"cred-1") == b""
    s.flush()
    reread = store_for(tmp_path)
    assert reread.newest("peer", b"cred-1") == t2 and reread.origin == s.origin
    reread.accepted("peer", b"cred-2", t1)  # the peer's keys changed: it starts afresh
    assert reread.newest("peer", b"cred-2") == t1 and reread.newest("peer", b"cred-1") == b""
    path = tmp_path / "handshakes" / "tun.json"
    path.write_text("{not json")
    damaged = store_for(tmp_path)
    assert damaged.newest("peer", b"cred-1") == b"" and len(damaged.origin) == 16
    assert [p.name for p in (tmp_path / "handshakes").iterdir()] == ["tun.json"]


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("ephemeral", False)])
def test_finding2_handshake_packets_never_move_the_endpoint(mode: str, psk: bool) -> None:
    """Only a sealed packet that opened may move a peer's endpoint (Inbound.roam, which the
    helper's data path obeys): not a fresh initiation, not a replayed one, not a response.
    The first sealed packet of the new session does."""
    pair = make_pair(mode, psk=psk)
    init, = pair.a.seal(pair.pa, b"first")
    answered = pair.b.receive(init, SOURCE_A)
    assert answered.peer is pair.pb and answered.drop is None and not answered.roam
    replayed = pair.b.receive(init, SOURCE_A)
    assert replayed.drop == "handshake_replay" and not replayed.roam
    completed = pair.a.receive(answered.replies[0], SOURCE_B)
    assert completed.peer is pair.pa and not completed.roam
    confirming, = completed.replies  # the staged "first", sealed with the new session
    opened = pair.b.receive(confirming, SOURCE_A)
    assert opened.roam and opened.peer is pair.pb and opened.inner == b"first"


# --- finding 10: the TYPE nibble alone does not make a packet a handshake ----------------------


def header_spoils(packet: bytes) -> dict[str, bytes]:
    """A genuine handshake packet with one header rule of PROTOCOL.md 3.5/7.4 broken each."""
    def edit(fn: Any, fix: bool = True) -> bytes:
        buf = bytearray(packet)
        fn(buf)
        return fix_checksum(buf) if fix else bytes(buf)

    def add_option(buf: bytearray, opt: bytes) -> None:
        hlen = buf[1] * 4
        buf[hlen:hlen] = opt
        buf[1] += len(opt) // 4

    return {
        "version 0": edit(lambda b: b.__setitem__(0, b[0] & 0x0F)),
        "version 3": edit(lambda b: b.__setitem__(0, 0x30 | b[0] & 0x0F)),
        "checksum": edit(lambda b: b.__setitem__(10, b[10] ^ 0xFF), fix=False),
        "undefined flag": edit(lambda b: b.__setitem__(9, b[9] | 0x01)),
        "flags 0x8000": edit(lambda b: b.__setitem__(8, 0x80)),
        "flags 0xc000": edit(lambda b: b.__setitem__(8, 0xC0)),
        "unknown critical option": edit(lambda b: add_option(b, b"\xf0\x02\x00\x00")),
        "HLEN past the end": edit(lambda b: b.__setitem__(1, 0xFF)),
        "HLEN below 3": edit(lambda b: b.__setitem__(1, 2)),
        "payload short of OLDPACKETLEN": edit(lambda b: b.__delitem__(slice(-1, None))),
        "payload beyond OLDPACKETLEN": edit(lambda b: b.extend(b"\0")),
    }


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("ephemeral", False),
                                           ("ephemeral", True)])
def test_finding10_type_nibble_2_checks_the_header_first(mode: str, psk: bool) -> None:
    """Issue 9, finding 10: a packet whose TYPE nibble is 2 (or 3) but whose VER, checksum,
    flags, options or length break the header rules is a header drop (``bad_header``), before
    any peer lookup or MAC: not ``handshake_mac``, ``unknown_peer`` or ``handshake_failed``."""
    pair = make_pair(mode, psk=psk)
    init, = pair.a.seal(pair.pa, b"x")
    spoilt = header_spoils(init)
    for what, pkt in spoilt.items():
        r = pair.b.receive(pkt, SOURCE_A)
        assert r.drop == "bad_header", (what, r.drop, r.detail)
    assert pair.b.drops == {"bad_header": len(spoilt)}
    resp = pair.b.receive(init, SOURCE_A).replies[0]
    spoilt_resp = header_spoils(resp)
    for what, pkt in spoilt_resp.items():
        r = pair.a.receive(pkt, SOURCE_B)
        assert r.drop == "bad_header", (what, r.drop, r.detail)
    assert pair.a.drops == {"bad_header": len(spoilt_resp)}
    assert pair.pa.pending is not None and pair.pa.current is None
    # The genuine packets still work after all that.
    pair.deliver(pair.b, [resp])
    assert pair.pa.state == "up" and pair.got["b"] == [b"x"]


_FINDING10_PAIRS = {mode: make_pair(mode, psk=psk) for mode, psk in
                    (("psk", True), ("ephemeral", True))}
_FINDING10_SEEDS = {mode: [pair.a.seal(pair.pa, b"x")[0]] for mode, pair in
                    _FINDING10_PAIRS.items()}
for _mode, _pair in _FINDING10_PAIRS.items():
    _FINDING10_SEEDS[_mode].append(_pair.b.receive(_FINDING10_SEEDS[_mode][0],
                                                   SOURCE_A).replies[0])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(sorted(_FINDING10_PAIRS)), which=st.integers(0, 1), ops=mutations,
       repair=st.booleans())
def test_finding10_a_broken_handshake_header_is_always_a_header_drop(
        mode: str, which: int, ops: list[Any], repair: bool) -> None:
    """Issue 9, finding 10, as a property: whatever the edit, a handshake packet that breaks
    the header rules is counted ``bad_header`` and nothing else, at either end."""
    pair = _FINDING10_PAIRS[mode]
    pkt = mutate(_FINDING10_SEEDS[mode][which], ops, repair_checksum=repair)
    if len(pkt) < 12 or pkt[0] & 0x0F not in (PacketType.HANDSHAKE_INIT,
                                              PacketType.HANDSHAKE_RESP):
        return  # runts and other types: covered by test_endpoint's fuzzing
    ptype = PacketType(pkt[0] & 0x0F)
    try:
        handshake.parse_handshake(pkt, ptype)
    except WireError:
        receiver = pair.b if ptype == PacketType.HANDSHAKE_INIT else pair.a
        before = dict(receiver.drops)
        r = receiver.receive(pkt, SOURCE_A)
        assert r.drop == "bad_header", (r.drop, r.detail)
        assert receiver.drops == {**before, "bad_header": before.get("bad_header", 0) + 1}
