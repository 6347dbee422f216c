"""Coverage-guided fuzzing of everything that reads packets from the network (atheris).

Not collected by pytest (the hypothesis fuzz tests in test_wire.py, test_session.py and
test_endpoint.py run on every test run); this is for long runs:

    .venv/bin/python tests/unit/fuzz_wire.py -atheris_runs=2000000
    .venv/bin/python tests/unit/fuzz_wire.py -max_total_time=600 corpus/

Each input goes to wire.parse, session.open_plain, session.open_data and Endpoint.receive of
an established pair in every mode. The properties are the suite's: parse returns a well-formed
Packet or raises WireError; open_* raise only errors carrying a drop reason; Endpoint.receive
never raises and counts every drop; a sealed mode accepts nothing but untouched genuine packets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

with atheris.instrument_imports(include=["core"]):  # only the code under test
    from protocol_helpers import SOURCE_A, Pair, establish, fix_checksum, lookup_of, make_pair

    from core import wire
    from core.constants import KNOWN_FLAGS, MAX_HEADER_LEN, Flag, PacketType
    from core.errors import TunsealError, WireError
    from core.session import open_data, open_plain

DROP_REASONS = {"bad_header", "unknown_session", "bad_tag", "replay", "too_old"}
MODES = [("plain", False), ("psk", True), ("rotating", True), ("ephemeral", True),
         ("ephemeral", False)]


def _target(mode: str, psk: bool) -> tuple[Pair, set[bytes]]:
    pair = make_pair(mode, psk=psk)
    establish(pair)
    genuine = {p for side, p in pair.wire_log if side == "a"}
    genuine.add(pair.a.seal(pair.pa, b"data " * 8)[0])
    genuine.add(pair.a.seal(pair.pa, b"", PacketType.KEEPALIVE)[0])
    return pair, genuine


TARGETS = [_target(*m) for m in MODES]
SEEDS = sorted({p for _, genuine in TARGETS for p in genuine})
"""Written to the corpus directory on request (``--write-seeds DIR``) to start a campaign."""


def check_parse(data: bytes) -> None:
    try:
        p = wire.parse(data)
    except WireError:
        return
    assert p.header + p.payload == data
    assert len(p.header) % 4 == 0 and 12 <= len(p.header) <= MAX_HEADER_LEN
    assert wire.checksum_ok(p.header) and not p.flags & ~KNOWN_FLAGS


def check_open(data: bytes) -> None:
    try:
        open_plain(data)
    except TunsealError as e:
        assert getattr(e, "reason", None) == "bad_header", repr(e)
    for pair, _ in TARGETS[1:]:
        try:
            open_data(data, lookup_of(*(kp for kp in (pair.pb.current, pair.pb.previous)
                                        if kp is not None)))
        except TunsealError as e:
            assert getattr(e, "reason", None) in DROP_REASONS, repr(e)


def check_receive(data: bytes) -> None:
    for (mode, _), (pair, genuine) in zip(MODES, TARGETS, strict=True):
        before = {k: v for k, v in pair.b.drops.items() if k != "cookie_sent"}
        r = pair.b.receive(data, SOURCE_A)
        after = {k: v for k, v in pair.b.drops.items() if k != "cookie_sent"}
        if r.drop is None:
            assert after == before
        else:
            assert after == {**before, r.drop: before.get(r.drop, 0) + 1}
        if r.inner is not None and mode != "plain":
            assert data in genuine
        if r.inner is not None:
            # CONTINUATION is the sender's hint that a TSO segment follows the previous one
            # (the data path's coalescer uses it); it passes through like CSUM_PARTIAL.
            assert not r.flags & ~(Flag.CSUM_PARTIAL | Flag.CONTINUATION | Flag.AUTHENTICATED
                                   | Flag.ENCRYPTED)


def TestOneInput(data: bytes) -> None:
    check_parse(data)
    check_open(data)
    check_receive(data)


def mutate_and_repair(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's own mutation, then, for every other input, a repaired header checksum:
    random edits almost never keep the checksum valid, and this lets them reach the option
    parser, the session lookup and the handshake code behind it."""
    out = atheris.Mutate(data, max_size)
    return fix_checksum(out) if seed & 1 else out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(SEEDS):
            (out / f"seed-{i:03d}").write_bytes(seed)
        return
    atheris.Setup(sys.argv, TestOneInput, custom_mutator=mutate_and_repair)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
