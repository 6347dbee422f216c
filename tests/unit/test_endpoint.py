"""core.endpoint: two Endpoints back to back on a fake clock — bulk traffic in every mode and
cipher, rekeying on time and on message count, expiry, restarts, and hostile input."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    SOURCE_A,
    Pair,
    counter_of,
    establish,
    is_handshake,
    keystream,
    make_pair,
    mutate,
    mutations,
    payload,
    ptype_of,
    raw_header,
)

from core import wire
from core.constants import (
    CIPHERS,
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    Flag,
    Option,
    PacketType,
)
from core.endpoint import Endpoint
from core.handshake import Identity
from core.peer import RekeyPolicy

MODES = [("plain", False), ("psk", True), ("rotating", True), ("ephemeral", True),
         ("ephemeral", False)]
"""(mode, with a psk): every way two ends can be configured."""
MODE_IDS = ["plain", "psk", "rotating", "ephemeral+psk", "ephemeral"]
PER_DIRECTION = 10_000


def sent_data(pair: Pair, side: str) -> list[bytes]:
    """Sealed DATA packets ``side`` put on the wire, in order."""
    return [p for s, p in pair.wire_log if s == side and ptype_of(p) == PacketType.DATA]


def index_of(packet: bytes) -> int:
    return int.from_bytes(wire.parse(packet).require(Option.RECEIVER_INDEX), "big")


# --- bulk loopback -----------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize(("mode", "psk"), MODES, ids=MODE_IDS)
def test_loopback_ten_thousand_each_way(mode: str, psk: bool, cipher: str) -> None:
    pair = make_pair(mode, cipher, psk=psk)
    for i in range(PER_DIRECTION):
        pair.a_to_b(payload(i))
        pair.b_to_a(payload(i)[::-1])
        if i % 1000 == 0:
            pair.clock.advance(1.0)
            pair.tick()
    assert pair.got["b"] == [payload(i) for i in range(PER_DIRECTION)]
    assert pair.got["a"] == [payload(i)[::-1] for i in range(PER_DIRECTION)]
    assert pair.a.drops == pair.b.drops == {}
    assert pair.pa.stats.rx_packets >= PER_DIRECTION
    assert pair.pb.stats.rx_bytes >= sum(len(payload(i)) for i in range(PER_DIRECTION))
    if mode != "plain":
        assert pair.pa.stats.handshakes == pair.pb.stats.handshakes == 1
        assert pair.pa.state == pair.pb.state == "up"


@pytest.mark.parametrize(("mode", "psk"), MODES, ids=MODE_IDS)
def test_csum_partial_passes_through_the_endpoint(mode: str, psk: bool) -> None:
    pair = make_pair(mode, psk=psk)
    establish(pair)
    r, = pair.a_to_b(b"segment", flags=int(Flag.CSUM_PARTIAL))
    assert r.inner == b"segment" and r.flags & Flag.CSUM_PARTIAL
    r, = pair.b_to_a(b"normal")
    assert r.inner == b"normal" and not r.flags & Flag.CSUM_PARTIAL


@pytest.mark.parametrize("mode", ["psk", "ephemeral"])
def test_responder_holds_packets_until_its_session_is_confirmed(mode: str) -> None:
    """PROTOCOL.md 10.2: the responder must not seal with an unconfirmed keypair; what it has
    to send meanwhile is held, and sent as soon as the initiator's first packet confirms it."""
    pair = make_pair(mode)
    init, = pair.a.seal(pair.pa, b"first from a")
    resp, = pair.b.receive(init, SOURCE_A).replies
    assert pair.pb.next is not None and pair.pb.sending_keypair() is None
    assert pair.b.seal(pair.pb, b"early from b") == []  # held, nothing sealed
    pair.deliver(pair.b, [resp])  # a completes, flushes "first from a"; that confirms b
    assert pair.got["b"] == [b"first from a"]
    assert pair.got["a"] == [b"early from b"]
    assert pair.pb.current is not None and pair.pb.next is None and not pair.pb.staged


def test_plain_mode_ignores_unknown_devices_and_counts_them() -> None:
    pair = make_pair("plain")
    stranger = Endpoint("plain", "chacha20-poly1305", device_id=99)
    peer = stranger.add_peer("b", Identity(), remote_device_id=2, initiates=True)
    r = pair.b.receive(stranger.seal(peer, b"who am i")[0])
    assert r.drop == "unknown_peer" and pair.b.drops == {"unknown_peer": 1}


# --- rekeying ----------------------------------------------------------------------------------


def run_traffic(pair: Pair, seconds: float, *, step: float = 0.25, start: int = 0,
                lose: Callable[[bytes], bool] | None = None) -> int:
    """Both directions send every ``step`` seconds of fake time, with a timer tick each
    second; returns the next message number."""
    i = start
    ticks_every = max(1, round(1.0 / step))
    for n in range(round(seconds / step)):
        pair.clock.advance(step)
        pair.a_to_b(payload(i), lose=lose)
        pair.b_to_a(payload(i)[::-1], lose=lose)
        i += 1
        if n % ticks_every == 0:
            pair.tick(lose=lose)
    return i


def test_ephemeral_rekeys_after_rekey_after_time_without_losing_packets() -> None:
    pair = make_pair("ephemeral")
    establish(pair)
    first_a, first_b = pair.pa.current, pair.pb.current
    n = run_traffic(pair, REKEY_AFTER_TIME - 5)
    assert pair.pa.stats.handshakes == 1
    n = run_traffic(pair, 10, start=n)
    assert pair.pa.stats.handshakes == pair.pb.stats.handshakes == 2
    assert pair.pa.current is not first_a and pair.pb.current is not first_b
    assert pair.pa.previous is first_a and pair.pb.previous is first_b
    # Every message arrived, in order, across the switch.
    assert pair.got["b"][1:] == [payload(i) for i in range(n)]
    assert pair.got["a"][1:] == [payload(i)[::-1] for i in range(n)]
    assert pair.a.drops == pair.b.drops == {}
    # Traffic really moved to the new session in both directions.
    assert index_of(sent_data(pair, "a")[-1]) == pair.pb.current.local_index
    assert index_of(sent_data(pair, "b")[-1]) == pair.pa.current.local_index


def test_packets_in_flight_across_a_rekey_still_open() -> None:
    pair = make_pair("ephemeral")
    establish(pair)
    pair.clock.advance(REKEY_AFTER_TIME + 1)
    old_index_at_b = pair.pb.current.local_index
    # a seals with the old keypair; its handshake initiation goes out alongside.
    late_from_a = [pair.a.seal(pair.pa, b"late a %d" % i) for i in range(3)]
    assert all(len(out) == 1 for out in late_from_a[1:])
    data0, init = late_from_a[0]
    assert ptype_of(init) == PacketType.HANDSHAKE_INIT
    late_from_b = [pair.b.seal(pair.pb, b"late b %d" % i)[0] for i in range(3)]
    pair.deliver(pair.a, [init])  # handshake completes; both ends switch to the new keypair
    assert pair.pb.current.local_index != old_index_at_b
    assert pair.pb.previous.local_index == old_index_at_b
    # Packets sealed before the switch arrive after it, out of order: all open.
    at_b = [pair.b.receive(p).inner for p in reversed([data0] + [o[0] for o in late_from_a[1:]])]
    at_a = [pair.a.receive(p).inner for p in late_from_b]
    assert at_b == [b"late a 2", b"late a 1", b"late a 0"]
    assert at_a == [b"late b 0", b"late b 1", b"late b 2"]
    assert pair.a.drops == pair.b.drops == {}


def test_lost_rekey_initiation_is_retried_while_data_flows() -> None:
    """PROTOCOL.md 12.3: an unanswered initiation is retried REKEY_TIMEOUT after it was sent,
    whatever else is being sent meanwhile; the rekey must not wait for the old session to
    expire."""
    pair = make_pair("ephemeral")
    establish(pair)
    lost: list[bytes] = []

    def lose_first_initiation(pkt: bytes) -> bool:
        if ptype_of(pkt) == PacketType.HANDSHAKE_INIT and not lost:
            lost.append(pkt)
            return True
        return False

    n = run_traffic(pair, REKEY_AFTER_TIME + 3 * REKEY_TIMEOUT, lose=lose_first_initiation)
    assert lost, "no rekey initiation was sent"
    assert pair.pa.stats.handshakes == pair.pb.stats.handshakes == 2
    assert pair.got["b"][1:] == [payload(i) for i in range(n)]
    assert pair.a.drops == pair.b.drops == {}


def test_received_keepalive_does_not_by_itself_cause_one_to_be_sent() -> None:
    """PROTOCOL.md 12.4: data received earns one passive keepalive; a keepalive received earns
    none, or two idle ends would ping-pong keepalives forever."""
    pair = make_pair("psk")  # psk: no time-based rekey to muddy the picture
    establish(pair)
    pair.b_to_a(b"the last data packet")  # a owes b one passive keepalive for this
    mark = len(pair.wire_log)
    for _ in range(120):
        pair.clock.advance(1.0)
        pair.tick()
    keepalives = [s for s, p in pair.wire_log[mark:] if ptype_of(p) == PacketType.KEEPALIVE]
    assert keepalives == ["a"]


def test_keypair_past_reject_after_time_is_not_used_to_send() -> None:
    pair = make_pair("ephemeral")
    establish(pair)
    first_a, first_b = pair.pa.current, pair.pb.current
    expires = max(first_a.created, first_b.created) + REJECT_AFTER_TIME
    # Every handshake packet is lost: the rekey that starts at REKEY_AFTER_TIME never lands.
    run_traffic(pair, expires - pair.clock() - 1, lose=is_handshake)
    assert pair.pa.current is first_a and pair.pa.pending is not None
    assert pair.pa.stats.handshakes == 1
    assert pair.got["b"][-1] == payload(len(pair.got["b"]) - 2)  # still flowing until now

    pair.clock.advance(expires - pair.clock())
    mark = len(pair.wire_log)
    run_traffic(pair, 5, lose=is_handshake)
    sealed = [p for _, p in pair.wire_log[mark:] if not is_handshake(p)]
    assert sealed == []  # neither end sealed anything with the expired keypair
    assert pair.pa.sending_keypair() is None and pair.pb.sending_keypair() is None
    assert pair.pa.state == "handshaking"
    # The expired keypairs were forgotten: a late packet sealed with them no longer opens.
    assert pair.pb.current is None and pair.pb.previous is None
    assert all(ep.indices.keypair(kp.local_index) is None
               for ep, kp in ((pair.a, first_a), (pair.b, first_b)))

    # Handshakes get through again: the session recovers and the staged packets are sent.
    staged = list(pair.pa.staged)
    assert staged
    pair.clock.advance(REKEY_TIMEOUT)
    pair.tick()
    assert pair.pa.state == pair.pb.state == "up"
    assert pair.got["b"][-len(staged):] == staged
    pair.a_to_b(b"after recovery")
    assert pair.got["b"][-1] == b"after recovery"


def test_rotating_rekeys_after_rotate_seconds() -> None:
    policy = RekeyPolicy.for_mode("rotating", rotate_seconds=30, rotate_messages=10**9)
    pair = make_pair("rotating", policy=policy)
    establish(pair)
    n = run_traffic(pair, 29)
    assert pair.pa.stats.handshakes == 1
    n = run_traffic(pair, 2, start=n)
    assert pair.pa.stats.handshakes == pair.pb.stats.handshakes == 2
    n = run_traffic(pair, 30, start=n)
    assert pair.pa.stats.handshakes == 3
    assert pair.got["b"][1:] == [payload(i) for i in range(n)]
    assert pair.a.drops == pair.b.drops == {}


def test_rotating_rekeys_after_rotate_messages() -> None:
    policy = RekeyPolicy.for_mode("rotating", rotate_seconds=10**6, rotate_messages=500)
    pair = make_pair("rotating", policy=policy)
    establish(pair)  # one message from a already
    for i in range(1, 499):
        pair.a_to_b(payload(i))
    assert pair.pa.stats.handshakes == 1
    for i in range(499, 1700):
        pair.a_to_b(payload(i))
    assert pair.pa.stats.handshakes == pair.pb.stats.handshakes == 4
    assert pair.pa.current.send_counter < 500
    assert pair.got["b"] == [b"hello b"] + [payload(i) for i in range(1, 1700)]
    assert pair.a.drops == pair.b.drops == {}


def test_psk_mode_never_rekeys_on_time() -> None:
    pair = make_pair("psk")
    establish(pair)
    first = pair.pa.current
    for _ in range(5):
        pair.clock.advance(100 * REKEY_AFTER_TIME)
        pair.a_to_b(b"ping")
        pair.b_to_a(b"pong")
        pair.tick()
    assert pair.pa.current is first and pair.pa.stats.handshakes == 1
    assert pair.a.drops == pair.b.drops == {}
    assert pair.got["b"][-5:] == [b"ping"] * 5


def test_rekey_policies() -> None:
    assert RekeyPolicy.for_mode("psk").reject_after_time is None
    assert RekeyPolicy.for_mode("ephemeral").after_time == REKEY_AFTER_TIME
    rot = RekeyPolicy.for_mode("rotating", rotate_seconds=40, rotate_messages=7)
    assert (rot.after_time, rot.after_messages, rot.reject_after_time) == (40, 7, 60)


# --- restarts ----------------------------------------------------------------------------------


def assert_no_keystream_reuse(pair: Pair, inner: bytes) -> None:
    """No two DATA packets carrying ``inner`` were sealed with the same key and nonce: for
    each counter value, the keystreams of the different sessions differ."""
    by_counter: dict[int, dict[bytes, int]] = {}
    for _, pkt in pair.wire_log:
        if ptype_of(pkt) == PacketType.DATA and len(pkt) == 28 + len(inner) + 16:
            ks = keystream(pkt, inner)
            streams = by_counter.setdefault(counter_of(pkt), {})
            streams[ks] = streams.get(ks, 0) + 1
    reused = {c: s for c, s in by_counter.items() if any(n > 1 for n in s.values())}
    assert not reused
    assert any(len(s) > 1 for s in by_counter.values())  # the check had sessions to compare


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("rotating", True),
                                           ("ephemeral", True), ("ephemeral", False)])
def test_restarted_responder_recovers_without_nonce_reuse(mode: str, psk: bool) -> None:
    inner = bytes(range(32))
    pair = make_pair(mode, psk=psk)
    for _ in range(20):
        pair.a_to_b(inner)
        pair.b_to_a(inner)
    old_a = pair.pa.current
    pair.restart("b")
    # a keeps sending; b has forgotten the session and drops it all.
    for _ in range(int((KEEPALIVE_TIMEOUT + REKEY_TIMEOUT) / 0.5) + 4):
        pair.clock.advance(0.5)
        pair.a_to_b(inner)
        pair.tick()
        if pair.pa.current is not old_a:
            break
    assert pair.pa.current is not old_a, "silent-peer detection never started a handshake"
    assert pair.b.drops.get("unknown_session", 0) > 0
    for _ in range(20):
        pair.a_to_b(inner)
        pair.b_to_a(inner)
    assert pair.got["b"][-20:] == [inner] * 20 and pair.got["a"][-20:] == [inner] * 20
    assert set(pair.b.drops) == {"unknown_session"}
    assert_no_keystream_reuse(pair, inner)


@pytest.mark.parametrize(("mode", "psk"), [("psk", True), ("ephemeral", True)])
def test_restarted_initiator_recovers_without_nonce_reuse(mode: str, psk: bool) -> None:
    inner = bytes(range(40))
    pair = make_pair(mode, psk=psk)
    for _ in range(10):
        pair.a_to_b(inner)
        pair.b_to_a(inner)
    pair.restart("a")
    pair.clock.advance(1.0)
    for _ in range(10):
        pair.a_to_b(inner)
        pair.b_to_a(inner)
    assert pair.got["b"][-10:] == [inner] * 10 and pair.got["a"][-10:] == [inner] * 10
    assert pair.pb.stats.handshakes == 2
    assert_no_keystream_reuse(pair, inner)


# --- hostile input -----------------------------------------------------------------------------


def _fuzz_target(mode: str, psk: bool) -> tuple[Pair, list[bytes]]:
    """An established pair and one genuine packet of every kind b can receive."""
    pair = make_pair(mode, psk=psk)
    establish(pair)
    seeds = [p for _, p in pair.wire_log]
    seeds.append(pair.a.seal(pair.pa, b"data " * 8)[0])
    seeds.append(pair.a.seal(pair.pa, b"", PacketType.KEEPALIVE)[0])
    seeds.append(pair.a.seal(pair.pa, b"\x01", PacketType.CONTROL, int(Flag.CSUM_PARTIAL))[0])
    if mode != "plain":
        seeds.append(pair.pa.begin_handshake())
    return pair, seeds


FUZZ_TARGETS = {m: _fuzz_target(*m) for m in MODES}


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(MODES), data=st.data())
def test_receive_never_raises_and_counts_every_drop(target: tuple[str, bool],
                                                    data: st.DataObject) -> None:
    """Arbitrary bytes, and genuine packets of every kind (handshakes included) with random
    edits, half with a repaired checksum, delivered to both ends of an established pair."""
    pair, seeds = FUZZ_TARGETS[target]
    pkt = data.draw(st.one_of(
        st.binary(max_size=150),
        st.builds(mutate, st.sampled_from(seeds), mutations, repair_checksum=st.booleans()),
    ))
    for ep in (pair.b, pair.a):
        # "cookie_sent" shares the drops counters but is not a drop: leave it out.
        before = {k: v for k, v in ep.drops.items() if k != "cookie_sent"}
        r = ep.receive(pkt, SOURCE_A)
        after = {k: v for k, v in ep.drops.items() if k != "cookie_sent"}
        if r.drop is None:
            assert after == before
        else:
            assert r.inner is None and r.replies == []
            assert after == {**before, r.drop: before.get(r.drop, 0) + 1}
        if r.inner is not None and target[0] != "plain":
            assert pkt in seeds  # sealed modes accept only untouched genuine packets


def test_receive_runt_and_unknown_type() -> None:
    pair = make_pair("psk")
    for pkt in (b"", b"\x11", bytes(11)):
        assert pair.b.receive(pkt).drop == "bad_header"
    r = pair.b.receive(raw_header(PacketType.CONTROL) + os.urandom(20))
    assert r.drop == "bad_header"
    assert pair.b.drops == {"bad_header": 4}


@pytest.mark.parametrize("mode", ["psk", "ephemeral"])
def test_sealed_modes_drop_plain_packets(mode: str) -> None:
    pair = make_pair(mode)
    establish(pair)
    plain = make_pair("plain")
    for ptype in (PacketType.DATA, PacketType.KEEPALIVE, PacketType.CONTROL):
        pkt = plain.a.seal(plain.pa, b"in the clear", ptype)[0]
        assert pair.b.receive(pkt, SOURCE_A).drop == "bad_header"
    assert pair.b.drops == {"bad_header": 3}
