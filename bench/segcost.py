"""Instructions per segment of the data path under callgrind: the deterministic measure of
what one TCP segment costs to send and to receive (wall clock on these shared machines swings
by 2x with load).

tx: the fused cut-and-seal of one 47-segment TSO frame (helper/offload.py ``seal_tso``, or the
native core's ``seal_tso``), N times. rx: the real receive loop (``DataPath.run_rx``) over N
GRO batches of that frame's 47 sealed datagrams, writing the coalesced frames to /dev/null.
Each figure is (instructions with N) - (instructions with N = 0, same set-up) over N x 47.

    PYTHONHASHSEED=0 python -m bench.segcost [--n 20] [--cipher aes-256-gcm]

runs both directions on both cores (the pure-Python one with TUNSEAL_NATIVE=0) under
``valgrind --tool=callgrind`` and prints the table. Needs valgrind; run on demand.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

SEGMENTS = 47
MSS = 1356
"""1408 (the default tunnel MTU) - 20 (IPv4) - 32 (TCP with timestamps)."""
ROOT = Path(__file__).resolve().parent.parent


def tso_frame() -> bytes:
    from helper import offload
    opts = b"\x01\x01\x08\x0a" + bytes(8)
    payload = bytes(range(256)) * (SEGMENTS * MSS // 256) + bytes(SEGMENTS * MSS % 256)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 7, 8 << 4, 0x18, 502, 0, 0) + opts
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6,
                     0, bytes([10, 1, 0, 1]), bytes([10, 1, 0, 9]))
    vnet = offload.VNET.pack(1, offload.GSO_TCPV4, 52, MSS, 20, 16)
    return vnet + ip + tcp + payload


def keypair(cipher: str, send: bytes, recv: bytes, initiator: bool) -> Any:
    from core.session import Keypair
    return Keypair(cipher=cipher, send_key=send, recv_key=recv, local_index=7, remote_index=7,
                   device_id=1, is_initiator=initiator, created=0.0)


def work_tx(cipher: str, n: int) -> None:
    from core import native
    from helper import offload
    kp = keypair(cipher, b"\1" * 32, b"\2" * 32, True)
    frame = tso_frame()
    out = bytearray(offload._GSO_BUDGET + 2048)
    scratch = bytearray(65536 + 64)

    def flush(end: int, seg: int) -> int:
        return 0

    mv = memoryview(frame)
    for _ in range(n):
        if kp.native is not None:
            native.module.seal_tso(kp.native, mv, out, 0, flush, 1408)
        else:
            offload.seal_tso(mv, kp, out, 0, scratch, flush, 1408)


class _Replay:
    """A transport that hands the receive loop prepared GRO batches, then stops it."""

    gso = gro = True
    kind = "udp"
    errors_pending = False

    def __init__(self, batches: list[bytes], seg: int, addr: tuple[str, int], stop: Any):
        self.batches = batches
        self.seg = seg
        self.addr = addr
        self.stop = stop
        self.r, self.w = socket.socketpair()
        self.w.send(b"x")  # always "readable": the loop never sleeps

    def fds(self) -> list[int]:
        return [self.r.fileno()]

    def set_blocking(self, flag: bool) -> None:
        pass

    def receive(self, buf: bytearray) -> tuple[int, int, tuple[str, int]]:
        if not self.batches:
            self.stop.set()
            raise BlockingIOError
        b = self.batches.pop()
        buf[:len(b)] = b
        return len(b), self.seg, self.addr

    def read_errors(self) -> list[Any]:
        return []


def work_rx(cipher: str, prepare: int, feed: int) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    import rxrig  # real handshakes between real Endpoints, in memory

    from helper import offload
    from helper.datapath import DataPath
    from helper.tun import Tun
    rig = rxrig.build("ephemeral", vnet=True, peers=1, cipher=cipher)
    rig.datapath.stop.set()
    rig.thread.join(5)
    far = rig.far[0]
    kp = far.peer.sending_keypair()
    assert kp is not None
    frame = memoryview(tso_frame())
    out = bytearray(offload._GSO_BUDGET + 2048)
    batches: list[bytes] = []
    sent: list[bytes] = []

    def flush(end: int, seg: int) -> int:
        sent.append(bytes(out[:end]))
        return 0

    from core import native
    for _ in range(prepare):
        sent.clear()
        if kp.native is not None:
            r = native.module.seal_tso(kp.native, frame, out, 0, flush, 1408)
            kp.send_counter = r[4] + r[2]
            off, seg = r[0], r[1]
        else:
            off, seg, _c, _b = offload.seal_tso(frame, kp, out, 0, bytearray(65600), flush,
                                                1408)
        flush(off, seg)
        batches.extend(sent)
    batches = batches[:feed * len(batches) // max(prepare, 1)]
    batches.reverse()
    peer = rig.endpoint.peers[0]
    addr = ("127.0.0.1", 9)
    peer.endpoint = addr
    devnull = os.open(os.devnull, os.O_WRONLY)
    stop = threading.Event()
    transport = _Replay(batches, 28 + 20 + 32 + MSS + 16, addr, stop)
    dp = DataPath(rig.endpoint, Tun(devnull, "segcost", True), transport,  # type: ignore[arg-type]
                  rig.datapath.routes, threading.RLock(), one_peer=True)
    dp.stop = stop
    dp.run_rx()
    drops = {k: v for k, v in rig.endpoint.drops.items() if v}
    assert not drops, drops


def callgrind(args: list[str], env: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-m", "bench.segcost", *args], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert m, "no totals in the callgrind output"
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--cipher", default="aes-256-gcm")
    ap.add_argument("--worker", choices=["tx", "rx"])
    ap.add_argument("--prepare", type=int, default=0)
    ap.add_argument("--feed", type=int, default=0)
    a = ap.parse_args()
    if a.worker == "tx":
        work_tx(a.cipher, a.feed)
        return
    if a.worker == "rx":
        work_rx(a.cipher, a.prepare, a.feed)
        return
    print(f"instructions per segment (callgrind, {a.cipher}, {SEGMENTS}-segment TSO frames, "
          f"N={a.n}, PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', 'unset')})")
    for core in ("python", "native"):
        env = dict(os.environ, TUNSEAL_NATIVE="0" if core == "python" else "1")
        row = []
        for direction in ("tx", "rx"):
            base = ["--worker", direction, "--cipher", a.cipher, "--prepare", str(a.n)]
            full = callgrind([*base, "--feed", str(a.n)], env)
            empty = callgrind([*base, "--feed", "0"], env)
            row.append((full - empty) / (a.n * SEGMENTS))
        print(f"  {core:7s} tx {row[0]:9,.0f}   rx {row[1]:9,.0f}")


if __name__ == "__main__":
    main()
