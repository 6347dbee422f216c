"""The tunnel on a real path: what tests/net/test_path.py and test_gateway.py build and measure.

Two real helpers on the namespace lab's client -- router -- server topology, with the router
made hostile on demand (random loss, masquerade, a NAT port change, a lower MTU, ICMP errors),
and traffic whose progress the test can watch while it changes the path under it:

- :func:`path_pair`: like ``tunnellab.tunnel_pair`` (same profiles, keys made by the helpers,
  key-leak check at the end) on a topology built with loss and masquerade, and with extra
  profile fields (``rekey_seconds``, ``keepalive``...).
- :class:`Stream`: a TCP transfer running in the background, deterministic bytes hashed on both
  ends, the receiver reporting its byte count every 0.2 s (so a stall is measurable).
- :class:`Pinger`: ``ping -i 0.2`` with the arrival time of every answer.
- :class:`Router`: the router namespace's nftables table and links, changed mid-test.

Importable as ``pathlab`` from the test files next to it.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netlab
import tunnellab
from tunnellab import Spec, TunnelPair

from core.profile import Profile

POLL = 0.1
"""Seconds between two looks at a status or a log while waiting."""


# --- a tunnel on a hostile path -------------------------------------------------------------


class PathPair(TunnelPair):
    """A :class:`tunnellab.TunnelPair` whose profiles carry ``extra`` fields on both ends."""

    def __init__(self, lab: netlab.Lab, topo: netlab.Topology, spec: Spec, workdir: Path,
                 extra: dict[str, Any]):
        super().__init__(lab, topo, spec, workdir)
        self.extra = extra

    def profile(self, end: tunnellab.End, *, public_key: str = "") -> Profile:
        base = super().profile(end, public_key=public_key)
        return base.replace(**self.extra) if self.extra else base


@contextlib.contextmanager
def path_pair(lab: netlab.Lab, spec: Spec, *, loss_percent: int = 0, masquerade: bool = False,
              extra: dict[str, Any] | None = None, up_timeout: float = 30.0,
              before_up: Callable[[PathPair], None] | None = None) -> Iterator[PathPair]:
    """A tunnel up across ``two_hosts_with_router(loss_percent=, masquerade=)``; on the way
    out the profiles are removed, the helpers stopped, the key-leak check run and the work
    directory deleted, whatever happened (the lab fixture removes the namespaces).
    ``before_up`` runs once the profiles exist, before either end is brought up."""
    topo = netlab.two_hosts_with_router(lab, loss_percent=loss_percent, masquerade=masquerade)
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-path-"))
    pair = PathPair(lab, topo, spec, workdir, extra or {})
    try:
        pair.start_helpers()
        pair.build()
        if before_up is not None:
            before_up(pair)
        pair.up(timeout=up_timeout)
        try:
            yield pair
        except BaseException:
            for end in pair.ends:
                print(f"--- {end.role} helper log (without debug lines) ---\n"
                      + log_tail(end.helper.log()))
            raise
        pair.teardown()
        pair.watch.check(expect_keys=spec.sealed)
    finally:
        for end in pair.ends:
            with contextlib.suppress(Exception):
                end.helper.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def log_tail(text: str, lines: int = 60) -> str:
    """The last ``lines`` lines of a helper log above DEBUG (status polls are chatty)."""
    kept = [line for line in text.splitlines() if not line.startswith("DEBUG ")]
    return "\n".join(kept[-lines:])


def wait_for(what: str, check: Callable[[], Any], timeout: float, *,
             context: Callable[[], object] | None = None) -> Any:
    """Poll ``check`` every POLL seconds until it returns something truthy (returned), at most
    ``timeout`` seconds; AssertionError naming ``what`` (and ``context()``) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            shown = context() if context is not None else ""
            raise AssertionError(f"{what}: not within {timeout} s. {shown}")
        time.sleep(POLL)


def peer_status(end: tunnellab.End) -> dict[str, Any]:
    """The one peer of ``end``'s tunnel, from ``tunseal --json status NAME``."""
    st = end.cli_json("status", end.name)["tunnels"][0]
    peers: list[dict[str, Any]] = st["peers"]
    assert len(peers) == 1, st
    return peers[0]


# --- the router, changed mid-test -----------------------------------------------------------


class Router:
    """The router namespace of a :class:`netlab.Topology`: its links and an nftables table of
    our own (``inet pathlab``; netlab's ``inet netlab`` table with the loss and masquerade
    rules is left alone unless asked)."""

    TABLE = "pathlab"

    def __init__(self, lab: netlab.Lab, topo: netlab.Topology):
        self.lab = lab
        self.topo = topo
        self.ns = topo.router

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.ns, *cmd, check=check)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self.run("ip", "link", "set", "dev", ifname, "mtu", str(mtu))

    def forward_rule(self, rule: str) -> None:
        """(Re)create our table with one rule in a forward filter chain that runs before
        netlab's (priority filter - 10)."""
        self.lab.nft(self.ns, f"table inet {self.TABLE}\ndelete table inet {self.TABLE}\n"
                     f"table inet {self.TABLE} {{\n  chain fw {{ type filter hook forward "
                     f"priority filter - 10; policy accept; {rule}; }}\n}}\n")

    def clear(self) -> None:
        self.lab.nft(self.ns, f"table inet {self.TABLE}\ndelete table inet {self.TABLE}\n")

    def counter(self, table: str = TABLE) -> int:
        """Packets counted by the ``counter`` statements of ``table``: our forward rule's, or
        with ``"netlab"``, the random-loss rule's (the packets it dropped)."""
        out = self.run("nft", "-j", "list", "table", "inet", table).stdout
        return sum(int(expr["counter"]["packets"])
                   for item in json.loads(out)["nftables"]
                   for expr in item.get("rule", {}).get("expr", []) if "counter" in expr)

    def masquerade_ports(self, low: int, high: int) -> None:
        """Replace netlab's masquerade rule with one mapping sources to ports low-high, and
        forget every NAT mapping: the next packet of each flow leaves from a new port."""
        rs_if = self.topo.router_server_if
        self.lab.nft(self.ns, "flush chain inet netlab post\n"
                     f'add rule inet netlab post oifname "{rs_if}" meta l4proto udp '
                     f"masquerade to :{low}-{high}\n"
                     f'add rule inet netlab post oifname "{rs_if}" masquerade\n')
        self.run("conntrack", "-F", check=False)  # exit 1 with "0 flow entries" is fine

    def udp_mappings(self, port: int) -> list[str]:
        """Conntrack's UDP entries for destination ``port`` (one line each)."""
        out = self.run("conntrack", "-L", "-p", "udp", "--dport", str(port), check=False)
        return [line for line in out.stdout.splitlines() if "dport" in line]


# --- traffic whose progress is visible ------------------------------------------------------

_RECEIVER = r"""
import hashlib, json, socket, sys, threading, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
srv.settimeout(timeout)
print("ready", flush=True)
conn, peer = srv.accept()
conn.settimeout(timeout)
digest, total, buf, done = hashlib.sha256(), 0, bytearray(1 << 20), threading.Event()
out = threading.Lock()
def say(obj):
    # One write per line, under a lock: print() writes the text and the newline separately, so
    # the reporter's line could land inside the final one.
    with out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
def report():
    while not done.wait(0.2):
        say({"progress": total})
reporter = threading.Thread(target=report, daemon=True)
reporter.start()
while (n := conn.recv_into(buf)):
    digest.update(memoryview(buf)[:n])
    total += n
done.set()
reporter.join(5)
conn.close()
say({"sha256": digest.hexdigest(), "bytes": total, "peer": peer[0]})
"""

_SENDER = r"""
import hashlib, json, random, socket, sys, time
host, port, nbytes, seed, timeout, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
rng, digest, sent = random.Random(seed), hashlib.sha256(), 0
started = time.monotonic()
sock = socket.create_connection((host, port), timeout=timeout)
while sent < nbytes:
    if rate and (ahead := sent / rate - (time.monotonic() - started)) > 0:
        time.sleep(ahead)  # paced: at most `rate` bytes/s on average
    chunk = rng.randbytes(min(1 << 18, nbytes - sent))
    sock.sendall(chunk)
    digest.update(chunk)
    sent += len(chunk)
sock.shutdown(socket.SHUT_WR)
assert sock.recv(1) == b""
print(json.dumps({"sha256": digest.hexdigest(), "bytes": sent,
                  "seconds": time.monotonic() - started}), flush=True)
"""


class Lines:
    """Every stdout line of a process, with the monotonic time it arrived, read by a thread."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout: float) -> int:
        """Wait for the process and the reader, at most ``timeout`` s; the exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.proc.args[-6:]!r} still running after {timeout} s; "
                                 f"its last lines: {self.lines[-5:]}") from None
        self._thread.join(5)
        return code

    def json_lines(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, json.loads(s)) for t, s in self.lines if s.startswith("{")]


@dataclass
class Stream:
    """``nbytes`` of TCP from ``src_ns`` to ``dst``:``port`` (in ``dst_ns``), in the background,
    at most ``rate`` bytes/s on average (0: as fast as it goes).

    :meth:`received` is the receiver's byte count as last reported; :meth:`finish` waits for
    the end and returns (sender result, receiver result, expected sha256)."""

    lab: netlab.Lab
    src_ns: str
    dst_ns: str
    dst: str
    nbytes: int
    port: int = 5301
    timeout: float = 120.0
    rate: float = 0.0
    seed: int = field(default_factory=lambda: random.randrange(1 << 30))
    _rx: Lines | None = None
    _tx: Lines | None = None

    def start(self) -> Stream:
        rx = self.lab.python_popen(self.dst_ns, _RECEIVER, self.dst, str(self.port),
                                   str(self.timeout), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(rx, "ready")
        self._rx = Lines(rx)
        tx = self.lab.python_popen(self.src_ns, _SENDER, self.dst, str(self.port),
                                   str(self.nbytes), str(self.seed), str(self.timeout),
                                   str(self.rate), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self._tx = Lines(tx)
        return self

    def received(self) -> int:
        assert self._rx is not None
        reports = [d.get("progress", d.get("bytes", 0)) for _, d in self._rx.json_lines()]
        return int(reports[-1]) if reports else 0

    def progress(self) -> list[tuple[float, int]]:
        """(arrival time, bytes received so far) of every report."""
        assert self._rx is not None
        return [(t, int(d.get("progress", d.get("bytes", 0))))
                for t, d in self._rx.json_lines()]

    def longest_stall(self, since: float = 0.0) -> float:
        """The longest time after ``since`` during which the byte count did not move."""
        points = [(t, n) for t, n in self.progress() if t >= since]
        longest, last_t, last_n = 0.0, None, -1
        for t, n in points:
            if n != last_n:
                if last_t is not None:
                    longest = max(longest, t - last_t)
                last_t, last_n = t, n
        if last_t is not None and points:
            longest = max(longest, points[-1][0] - last_t)
        return longest

    def wait_received(self, nbytes: int, timeout: float) -> None:
        wait_for(f"{nbytes} bytes received", lambda: self.received() >= nbytes, timeout,
                 context=lambda: f"received {self.received()}")

    def finish(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        assert self._rx is not None and self._tx is not None
        for name, lines in (("sender", self._tx), ("receiver", self._rx)):
            code = lines.wait(self.timeout + 15)
            if code != 0:
                err = lines.proc.stderr.read() if lines.proc.stderr else ""
                raise AssertionError(f"the {name} failed ({code}): {err[-2000:]}")
        sent = self._tx.json_lines()[-1][1]
        got = self._rx.json_lines()[-1][1]
        return sent, got, tunnellab.expected_sha256(self.nbytes, self.seed)


def assert_stream(result: tuple[dict[str, Any], dict[str, Any], str], nbytes: int) -> None:
    sent, got, expected = result
    assert sent["bytes"] == got["bytes"] == nbytes, (sent, got)
    assert sent["sha256"] == got["sha256"] == expected


_PINGER = r"""
import json, os, select, socket, struct, sys, time
dst, interval, deadline = sys.argv[1], float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, seq, next_send = os.getpid() & 0xFFFF, 0, time.monotonic()

def checksum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF

print("ready", flush=True)
while (now := time.monotonic()) < deadline:
    if now >= next_send:
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"tunseal-pathlab!"
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        try:
            sock.sendto(body, (dst, 0))
        except OSError as e:  # keep pinging whatever happens, like a user would
            print(json.dumps({"send_error": e.errno, "seq": seq}), flush=True)
        seq, next_send = (seq + 1) & 0xFFFF, next_send + interval
        continue
    if not select.select([sock], [], [], next_send - now)[0]:
        continue
    data, (src, _) = sock.recvfrom(2048)
    ihl = (data[0] & 0x0F) * 4
    typ, code = data[ihl], data[ihl + 1]
    if typ == 0 and struct.unpack_from("!H", data, ihl + 4)[0] == ident:
        print(json.dumps({"reply": struct.unpack_from("!H", data, ihl + 6)[0]}), flush=True)
    elif typ == 3 and len(data) >= ihl + 8 + 28:
        inner = ihl + 8 + (data[ihl + 8] & 0x0F) * 4
        if struct.unpack_from("!H", data, inner + 4)[0] == ident:
            print(json.dumps({"unreachable": code, "from": src}), flush=True)
"""


class Pinger:
    """An ICMP echo every ``interval`` s from ``ns`` to ``dst``, in the background, whatever
    answers or errors come back (iputils ping slows down or stops sending on errors); the
    arrival time of every answer, and the ICMP unreachable errors it got instead."""

    def __init__(self, lab: netlab.Lab, ns: str, dst: str, *, interval: float = 0.2,
                 deadline: float = 120.0):
        proc = lab.python_popen(ns, _PINGER, dst, str(interval), str(deadline),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(proc, "ready")
        self.lines = Lines(proc)

    def answers(self, since: float = 0.0) -> list[float]:
        return [t for t, d in self.lines.json_lines() if t >= since and "reply" in d]

    def answered_since(self, since: float) -> bool:
        return bool(self.answers(since))

    def unreachable(self) -> list[dict[str, Any]]:
        """The ICMP destination-unreachable errors about our echoes (relayed by the tunnel)."""
        return [d for _, d in self.lines.json_lines() if "unreachable" in d]

    def stop(self) -> None:
        if self.lines.proc.poll() is None:
            self.lines.proc.terminate()
        with contextlib.suppress(AssertionError):
            self.lines.wait(5)


_UDP_PROBE = r"""
import errno, json, socket, struct, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
IP_RECVERR, MSG_ERRQUEUE = 11, 0x2000
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # soft errors (host unreachable) too
sock.connect((host, port))
sock.settimeout(0.5)
results, queued = [], []
for i in range(count):
    try:
        sock.send(i.to_bytes(4, "big") * 16)
        sock.recv(2048)
        results.append("answered")
    except socket.timeout:
        results.append("timeout")
    except OSError as e:
        results.append(errno.errorcode.get(e.errno, str(e.errno)))
    while True:
        try:
            _data, anc, _flags, _addr = sock.recvmsg(2048, 512, MSG_ERRQUEUE)
        except (BlockingIOError, socket.timeout, InterruptedError):
            break
        for _level, _kind, cdata in anc:
            err, origin, typ, code, _pad, info, _d = struct.unpack_from("=IBBBBII", cdata)
            offender = socket.inet_ntoa(cdata[20:24]) if len(cdata) >= 24 else ""
            queued.append({"errno": errno.errorcode.get(err, str(err)), "origin": origin,
                           "type": typ, "code": code, "offender": offender})
print(json.dumps({"results": results, "queued": queued}), flush=True)
"""


def udp_errors(lab: netlab.Lab, ns: str, dst: str, *, port: int = 9999,
               count: int = 4) -> dict[str, Any]:
    """Send ``count`` datagrams from a connected UDP socket (IP_RECVERR on) in ``ns`` to
    ``dst``:``port``, each followed by a 0.5 s wait for an answer: what each attempt came to
    (``answered``, ``timeout`` or an errno name such as ``EHOSTUNREACH``) and every ICMP error
    the socket's error queue held (origin 2 is ICMP; type, code, the reporting address)."""
    done = lab.python(ns, _UDP_PROBE, dst, str(port), str(count), timeout=30)
    result: dict[str, Any] = json.loads(done.stdout)
    return result
