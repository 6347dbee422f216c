"""Coverage-guided fuzzing of the offload code (atheris): what the receive path does with the
inner packets a peer sends, and what the transmit path does with the frames TUN hands over.

Not collected by pytest (the hypothesis tests in test_offload_fuzz.py and test_datapath_fuzz.py
run on every test run); this is for long runs:

    .venv/bin/python tests/unit/fuzz_offload.py -atheris_runs=1000000
    .venv/bin/python tests/unit/fuzz_offload.py --write-seeds corpus/ && \\
        .venv/bin/python tests/unit/fuzz_offload.py -max_total_time=600 corpus/

One input is a script for a Coalescer: a sequence of records ``[op][owner][len:2][bytes]``
(op bit 0: partial checksum, bit 1: a CONTINUATION, bit 2: flush after). The same bytes are
also read as one TUN frame (virtio header first) for ``segment``, ``seal_tso`` and
``frame_tso_plain``. Properties: nothing raises; every packet added or continued is written
(as one of a frame's segments) or counted dropped; every frame written asks the kernel only
for a checksum inside the packet and a GSO split that fits it.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

with atheris.instrument_imports(include=["helper.offload"]):
    from offload_checks import run_coalescer
    from protocol_helpers import keypair_pair

    from helper import offload

SENDER, _RECEIVER, _K1, _K2 = keypair_pair("chacha20-poly1305")
SCRATCH = bytearray(65536 + 64)
OUT = bytearray(65000 + 2048)


def run_tx(data: bytes) -> None:
    frame = memoryview(data)
    emitted: list[int] = []
    count = offload.segment(frame, lambda p, partial: emitted.append(len(p)), SCRATCH)
    assert count == len(emitted) and all(n <= max(len(data), 1) for n in emitted)
    offload.tso_segment_size(frame)
    sends: list[tuple[int, int]] = []

    def flush(end: int, seg: int) -> int:
        assert seg > 0 and end <= len(OUT)
        sends.append((end, seg))
        return 0

    for mtu in (1400, 576):
        off, _seg, count, _nbytes = offload.seal_tso(frame, SENDER, OUT, 0, SCRATCH, flush, mtu)
        assert count >= -1 and off <= len(OUT)
        off, _seg, count, _nbytes, _encap = offload.frame_tso_plain(frame, 7, 1, OUT, 0, flush,
                                                                   mtu)
        assert count >= -1 and off <= len(OUT)


def TestOneInput(data: bytes) -> None:
    run_coalescer(data)
    run_tx(data)


def seeds() -> list[bytes]:
    """Genuine inputs to start from: runs of TCP segments (IPv4 and IPv6), and TSO frames."""
    def tcp4(seq: int, payload: bytes, doff: int = 5, flags: int = 0x10) -> bytes:
        t = struct.pack("!HHIIBBHHH", 1, 2, seq, 7, doff << 4, flags, 100, 0, 0)
        t += bytes(max(0, doff * 4 - 20))
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t) + len(payload), 1, 0x4000,
                           64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + t + payload

    def tcp6(seq: int, payload: bytes, doff: int = 5) -> bytes:
        t = struct.pack("!HHIIBBHHH", 1, 2, seq, 7, doff << 4, 0x10, 100, 0, 0)
        t += bytes(max(0, doff * 4 - 20))
        return struct.pack("!IHBB16s16s", 0x60000000, len(t) + len(payload), 6, 64,
                           bytes(15) + b"\1", bytes(15) + b"\2") + t + payload

    def script(*records: tuple[int, int, bytes]) -> bytes:
        return b"".join(bytes([op, owner]) + struct.pack("!H", len(p)) + p
                        for op, owner, p in records)

    out = [
        script(*((1 | (2 if i else 0), 0, tcp4(1 + 100 * i, b"a" * 100)) for i in range(4))),
        script(*((1, i % 2, tcp6(1 + 50 * i, b"b" * 50, doff=8)) for i in range(3))),
        script((1, 0, tcp4(1, b"c" * 40, doff=0)), (3, 0, tcp4(41, b"d" * 40)[:21])),
    ]
    big = tcp4(1, bytes(range(256)) * 16)
    out.append(offload.VNET.pack(1, offload.GSO_TCPV4, 40, 1000, 20, 16) + big)
    big6 = tcp6(1, bytes(range(256)) * 16)
    out.append(offload.VNET.pack(1, offload.GSO_TCPV6, 60, 1000, 40, 16) + big6)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (out / f"seed-{i:03d}").write_bytes(seed)
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
