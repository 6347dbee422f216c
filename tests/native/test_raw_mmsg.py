"""The raw-IP transport batched by the native core (native/src/mmsg.rs), for real: raw sockets
(IP protocol 253) over loopback in a throwaway namespace.

- The transport: what one ``sendmmsg`` sends is what the pure path's send per datagram sends,
  and the runs one ``recvmmsg`` yields, cut back into datagrams, are what the pure path's
  receive per datagram yields (payload, source, outer ECN field), IPv4 (header stripped, IP
  options included) and IPv6, for hostile sizes from 0 bytes to 60,000.
- The receive loop: hostile batches (rx_differential's recipes) over raw IP on the native core
  give the same frames and the same drops, reason by reason, as the pure-Python loop given the
  same runs as GRO batches over UDP; nothing ends the loop (no ``internal_error``).
"""

from __future__ import annotations

import json
import os

import netlab
import pytest

from core import native

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        native.built is not None and not hasattr(native.built, "RawRx")
        and os.environ.get("TUNSEAL_REQUIRE_NATIVE") != "1",
        reason="the native module predates the raw-IP batching (RawRx): rebuild it"),
]

_TRANSPORT = r"""
import os; os.environ.pop("TUNSEAL_NATIVE", None)  # make test-pure: native is under test here
import json, random, socket, sys
from helper.transport import RawTransport
v6 = sys.argv[1] == "6"
fam, host = (socket.AF_INET6, "::1") if v6 else (socket.AF_INET, "127.0.0.1")
nat = RawTransport(family=fam)
assert nat._rx is not None, "the native raw batching is not in use"
pure = RawTransport(family=fam)
pure._rx = None  # the pure path's receive: one datagram per system call
tx = RawTransport(family=fam)
opt = RawTransport(family=fam)
if not v6:  # IPv4 options (NOP NOP NOP EOL): a 24-byte header for the receiver to strip
    opt.sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"\x01\x01\x01\x00")
for t in (nat, pure):
    t.sock.setblocking(False)
rnd = random.Random(1103)
sizes = [0, 1, 2, 11, 12, 27, 28, 43, 44, 45, 100, 1400, 1452, 1500, 9000, 60000]
expected = []
for i in range(160):
    ecn = rnd.choice([0, 0, 1, 2, 3])
    n = rnd.choice(sizes)
    how = rnd.choice(["one", "one", "batch", "batch", "batch", "options"])
    if how == "batch" and 0 < n <= 9000:
        k = rnd.randint(2, min(64, 65000 // n))
        last = rnd.randint(1, n)
        data = [bytes([rnd.randrange(256)]) * n for _ in range(k - 1)]
        data.append(bytes([rnd.randrange(256)]) * last)
        tx.send_segments(memoryview(b"".join(data)), n, (host, 0), ecn)
    else:
        data = [bytes(rnd.randrange(256) for _ in range(min(n, 64))) + bytes(max(0, n - 64))]
        (opt if how == "options" else tx).send(data[0], (host, 0), ecn)
    expected += [(d.hex(), ecn) for d in data]

def drain(t):
    got, runs, buf = [], [], bytearray(65536 + 4096)
    while True:
        try:
            n, seg, addr = t.receive(buf)
        except BlockingIOError:
            return got, runs
        seg = seg if 0 < seg <= n else max(n, 1)
        parts = [bytes(buf[o:min(o + seg, n)]) for o in range(0, n, seg)] or [b""]
        runs.append(len(parts))
        got += [(p.hex(), t.rx_ecn, list(addr)) for p in parts]

ours, runs = drain(nat)
theirs, _ = drain(pure)
print(json.dumps({"native": ours, "pure": theirs, "runs": runs,
                  "expected": [[d, e, [host, 0]] for d, e in expected]}))
"""


@pytest.mark.parametrize("family", ["4", "6"])
def test_batched_transport_sends_and_receives_what_the_pure_path_does(
        lab: netlab.Lab, family: str) -> None:
    ns = lab.ns("raw")
    out = json.loads(lab.python(ns, _TRANSPORT, family, timeout=60).stdout)
    expected = [tuple(x) for x in out["expected"]]
    pure = [tuple(x) for x in out["pure"]]
    native = [tuple(x) for x in out["native"]]
    # The pure receive sees what was asked for: so the native sendmmsg sent the same bytes
    # with the same ECN field as the per-datagram sends.
    assert len(pure) == len(expected) and pure == expected
    assert native == pure
    runs = out["runs"]
    assert sum(runs) == len(expected) and max(runs) > 1, "nothing was received in a run"


_DATAPATH = r"""
import os; os.environ.pop("TUNSEAL_NATIVE", None)  # make test-pure: native is under test here
import os, socket, sys, threading, time
import helper
root = os.path.dirname(os.path.dirname(os.path.abspath(helper.__file__)))
sys.path[:0] = [os.path.join(root, "tests", "unit"), os.path.join(root, "tests", "native")]
from hypothesis import HealthCheck, given, settings, strategies as st
import rxrig
from test_rx_differential import build_native, build_python, frames, realise, recipes
from core import native
from helper.datapath import DataPath
from helper.transport import RawTransport

mode, vnet, peers = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])


class RawRig:
    # A native UDP rig's endpoint (its sessions made by real handshakes) and TUN stand-in,
    # received from a raw socket instead. Each batch is queued whole before the loop starts,
    # so it meets one recvmmsg, as a GRO batch meets one recvmsg.
    def __init__(self):
        self.rig = build_native(mode, vnet, peers)
        self.rig.datapath.stop.set()
        self.rig.thread.join(5)
        self.transport = RawTransport(family=socket.AF_INET)
        dp = self.rig.datapath
        saved, native.module = native.module, native.built
        try:
            self.dp = DataPath(self.rig.endpoint, dp.tun, self.transport, dp.routes,
                               threading.RLock(), one_peer=peers == 1)
        finally:
            native.module = saved
        assert self.dp.native is not None
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
        self.looped = 0  # packets the native loop across batches opened (rx_loop_raw)

    def run(self, datagrams):
        before = self.rig.drops()
        for d in datagrams:
            self.sender.sendto(d, ("127.0.0.1", 0))
        # The sentinel goes as ECT(1): never part of the batch's last run (another ECN field),
        # and an ECT(1) outer mark changes no Not-ECT inner packet.
        self.sender.sendmsg([self.rig.sentinel()], [(0, 1, (1).to_bytes(4, "little"))], 0,
                            ("127.0.0.1", 0))
        time.sleep(0.01)
        self.dp.stop.clear()
        self.rig.thread = threading.Thread(target=self.dp.run_rx, daemon=True)
        self.rig.thread.start()
        got = self.rig.read_until_sentinel()
        self.dp.stop.set()
        self.rig.thread.join(5)
        assert not self.rig.thread.is_alive()
        assert self.dp.rx_native is not None
        self.looped += self.dp.rx_native.looped
        after = self.rig.drops()
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return rxrig.Outcome(got, {k: v for k, v in grown.items() if v})


def runs(datagrams):
    # How the native raw transport cuts a batch from one source and ECN field (mmsg.rs push).
    out = []
    for d in datagrams:
        r = out[-1] if out else None
        if (r and len(d) and len(d) <= len(r[0]) and len(r[-1]) == len(r[0])
                and sum(map(len, r)) + len(d) <= 65536):
            r.append(d)
        else:
            out.append([d])
    return out


raw = RawRig()
py = build_python(mode, vnet, peers)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def agree(data):
    ops, cut = data.draw(recipes(len(raw.rig.far)))
    got = raw.run(realise(raw.rig, ops, cut))
    assert "internal_error" not in got.drops, got.drops
    want_frames, want_drops = [], {}
    for run in runs(realise(py, ops, cut)):
        o = py.run(run)
        want_frames += frames(o)
        for k, v in o.drops.items():
            want_drops[k] = want_drops.get(k, 0) + v
    assert got.drops == want_drops, (got.drops, want_drops)
    assert frames(got) == want_frames


try:
    agree()
    # A client tunnel (one peer, sealed) takes the loop that stays native across batches:
    # the verdicts above were its own, not only the per-batch path's.
    print("looped", raw.looped)
    assert peers != 1 or raw.looped > 0, "the native loop across batches was never used"
    print("agreed")
finally:
    py.close()
"""


@pytest.mark.parametrize("config", ["ephemeral 1 1", "psk 1 1", "ephemeral 0 1",
                                    "ephemeral 1 2"],
                         ids=["ephemeral-vnet", "psk-vnet", "ephemeral-novnet", "gateway"])
def test_hostile_raw_batches_get_the_pure_paths_verdicts(lab: netlab.Lab, config: str) -> None:
    ns = lab.ns("rawdp")
    out = lab.python(ns, _DATAPATH, *config.split(), timeout=240)
    assert out.stdout.strip().endswith("agreed"), out.stdout[-2000:] + out.stderr[-2000:]
