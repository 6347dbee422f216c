"""The initiator repeats the keepalive that confirms a new session when nothing comes back
(the test_behind_nat_with_loss flake of issue 9): two real Endpoints back to back on a fake
clock, the wire losing exactly the packets a test names."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from protocol_helpers import Pair, make_pair, ptype_of

from core.constants import KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME, REKEY_TIMEOUT, PacketType


def keepalives(log: list[tuple[str, bytes]], side: str) -> int:
    return sum(1 for s, p in log if s == side and ptype_of(p) == PacketType.KEEPALIVE)


def run(pair: Pair, seconds: float, lose: Callable[[bytes], bool] | None = None) -> None:
    for _ in range(int(seconds / 0.25)):
        pair.clock.advance(0.25)
        pair.tick(lose=lose)


@pytest.mark.parametrize("mode", ["psk", "rotating", "ephemeral"])
def test_a_lost_confirming_keepalive_is_repeated(mode: str) -> None:
    pair = make_pair(mode)
    first = [True]

    def lose_first_keepalive(pkt: bytes) -> bool:
        if ptype_of(pkt) == PacketType.KEEPALIVE and first[0]:
            first[0] = False
            return True
        return False

    # An idle client starts its tunnel: initiation, response, confirming keepalive (lost).
    pair.deliver(pair.a, [pair.pa.begin_handshake()], lose=lose_first_keepalive)
    assert pair.pa.state == "up" and pair.pb.state == "waiting"
    run(pair, REKEY_TIMEOUT - 0.5)
    assert pair.pb.state == "waiting"  # nothing repeated too early
    run(pair, 1.0)
    assert pair.pb.state == "up", "the responder never got a confirmation"
    assert pair.established()


def test_repeats_stop_after_two_and_when_anything_came_back() -> None:
    pair = make_pair("ephemeral")
    lose_all_keepalives = lambda p: ptype_of(p) == PacketType.KEEPALIVE  # noqa: E731
    pair.deliver(pair.a, [pair.pa.begin_handshake()], lose=lose_all_keepalives)
    run(pair, REKEY_AFTER_TIME - 10, lose=lose_all_keepalives)
    assert keepalives(pair.wire_log, "a") == 3  # the confirmation and two repeats, no more

    # Once the responder has sent anything with the session, no repeat at all.
    pair = make_pair("ephemeral")
    pair.deliver(pair.a, [pair.pa.begin_handshake()])
    pair.b_to_a(b"hello a")
    run(pair, KEEPALIVE_TIMEOUT - 1)  # (then a passive keepalive would answer the data)
    assert keepalives(pair.wire_log, "a") == 1
