"""The office gateway under load: handshakes per second it completes, and aggregate TCP
throughput with many peers at once, with the gateway helper's memory and CPU time.

Run on demand, as root, never in the test suite::

    python -m bench.gateway [--peers 10] [--seconds 10] [--handshake-seconds 5]
                            [--handshake-keys 128] [--json [FILE]] [-v]

The world (throwaway namespaces ``tsb<pid>-*``, see bench/_netns.py)::

    p00 ... p09 (a helper each) --+
    load (handshake generator)  --+-- switch (bridge) -- gw (gateway helper) -- lan (iperf3 -s)

Every helper runs under helper/keyring-session.sh with a keyring of its own. The gateway's
configuration registers ``--handshake-keys`` peers whose private keys only the generator
holds; the ``--peers`` iperf3 peers are added with ``tunseal peer add NAME -o FILE``, imported
on their own helper and brought up, as docs/GATEWAY.md tells an administrator. See
bench/README.md ("Gateway") for what each number means.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import platform
import secrets
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._netns import Lab, cpu_seconds, run, sweep_stale
from bench.throughput import Helper, tunseal_cli
from core import noise, wire
from core.constants import Option
from core.errors import HelperUnavailable, TunsealError
from core.handshake import Identity, Initiator, Suite, open_cookie_reply
from core.ipcclient import Client

log = logging.getLogger("bench.gateway")

ROOT = Path(__file__).resolve().parents[1]
KEYRING_SESSION = ROOT / "helper" / "keyring-session.sh"
GW_OUTER, LOAD_ADDR = "198.18.100.1", "198.18.100.250"
GW_LAN, LAN_SERVER = "198.18.200.1", "198.18.200.2"
PORT = 51900
IPERF_BASE_PORT = 5201
NAME = "office"
START_TIMEOUT = 60.0
"""Seconds the helpers (started together, each with its keyring) get to answer."""
UP_TIMEOUT = 30.0
LIFETIME = 900.0
"""Upper bound on any process this run starts (timeout(1)), should the run itself be killed."""
RETRY_AFTER = 1.0
"""The generator resends an initiation nobody answered after this long."""


# --- the world ----------------------------------------------------------------------------------


@dataclass
class World:
    lab: Lab
    workdir: Path
    switch: str
    gw: str
    lan: str
    load: str
    peers: list[str]


def _switch_port(lab: Lab, switch: str, ns: str, addr: str) -> None:
    port = f"s-{ns.rsplit('-', 1)[1]}"[:15]
    lab.run(ns, "ip", "link", "add", "v-sw", "type", "veth", "peer", "name", port,
            "netns", switch)
    lab.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", "v-sw")
    lab.run(ns, "ip", "link", "set", "v-sw", "up")
    lab.run(switch, "ip", "link", "set", port, "master", "br0", "up")


def build(lab: Lab, n_peers: int, workdir: Path) -> World:
    switch, gw, lan, load = lab.ns("switch"), lab.ns("gw"), lab.ns("lan"), lab.ns("load")
    lab.run(switch, "ip", "link", "add", "br0", "type", "bridge")
    lab.run(switch, "ip", "link", "set", "br0", "up")
    _switch_port(lab, switch, gw, GW_OUTER)
    _switch_port(lab, switch, load, LOAD_ADDR)
    lab.veth(gw, lan, f"{GW_LAN}/24", f"{LAN_SERVER}/24", 1500)
    lab.run(lan, "ip", "route", "add", "10.77.0.0/16", "via", GW_LAN)
    peers = []
    for i in range(n_peers):
        ns = lab.ns(f"p{i:02d}")
        _switch_port(lab, switch, ns, f"198.18.100.{10 + i}")
        peers.append(ns)
    return World(lab, workdir, switch, gw, lan, load, peers)


def gateway_config(keys: list[bytes]) -> str:
    """The gateway's file (docs/GATEWAY.md): the generator's keys as registered peers."""
    lines = ["format = 1", "", "[gateway]", f'name = "{NAME}"', 'addresses = ["10.77.0.1/16"]',
             'mode = "ephemeral"', f"listen_port = {PORT}",
             f'public_endpoint = "{GW_OUTER}:{PORT}"', 'lan = ["198.18.200.0/24"]',
             'private_key = "bench-gateway.private"']
    for i, key in enumerate(keys):
        public = base64.b64encode(noise.public_key(key)).decode()
        lines += ["", "[[peer]]", f'name = "hs{i:04d}"', f'public_key = "{public}"',
                  f"device_id = {1000 + i}",
                  f'allowed_ips = ["10.77.{100 + i // 250}.{1 + i % 250}/32"]']
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def helper(lab: Lab, ns: str, home: Path, *extra: str) -> Iterator[Helper]:
    """``helper.main`` in ``ns`` under keyring-session.sh with its own keyring; SIGTERM to the
    helper itself when the block ends (it takes its tunnels down), then to the session."""
    home.mkdir(parents=True)
    passfile = home / "keyring.pass"
    with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    sock, logfile = home / "run" / "helper.sock", home / "helper.log"
    env = dict(os.environ, TUNSEAL_KEYRING_DIR=str(home / "keyring"), PYTHONPATH=str(ROOT))
    with open(logfile, "ab") as out:
        proc = lab.popen(ns, str(KEYRING_SESSION), str(passfile), sys.executable, "-m",
                         "helper.main", "--socket", str(sock), "--state-dir",
                         str(home / "state"), "--group", "root", *extra, lifetime=LIFETIME,
                         stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    pid = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while pid is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the helper in {ns} did not start:\n{_tail(logfile)}")
            with contextlib.suppress(HelperUnavailable), Client(str(sock), timeout=5) as c:
                pid = int(c.call("ping")["pid"])
            time.sleep(0.2)
        yield Helper(sock, logfile, pid)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        lab.stop(proc)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text if not line.startswith("DEBUG")][-lines:])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def gateway_status(gw: Helper) -> dict[str, Any]:
    tunnels: list[dict[str, Any]] = tunseal_cli(gw, "status", NAME)["tunnels"]
    return tunnels[0]


def add_peer(w: World, gw: Helper, peer: Helper, name: str) -> None:
    """``tunseal peer add`` on the gateway, ``import`` and ``up`` on the peer."""
    path = w.workdir / f"{name}.tunseal"
    tunseal_cli(gw, "peer", "add", name, "-o", str(path))
    try:
        tunseal_cli(peer, "import", str(path))
    finally:
        path.unlink()
    tunseal_cli(peer, "up", NAME)


def wait_up(peer: Helper) -> None:
    deadline = time.monotonic() + UP_TIMEOUT
    while (state := tunseal_cli(peer, "status", NAME)["tunnels"][0]["state"]) != "up":
        if time.monotonic() > deadline:
            raise RuntimeError(f"a peer is {state!r} after {UP_TIMEOUT:.0f} s:\n"
                               f"{_tail(peer.log)}")
        time.sleep(0.2)


# --- throughput: every peer at once -------------------------------------------------------------


def throughput(w: World, gw: Helper, seconds: int) -> dict[str, Any]:
    servers = [w.lab.popen(w.lan, "iperf3", "-s", "-1", "-p", str(IPERF_BASE_PORT + i),
                           lifetime=seconds + 120, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) for i in range(len(w.peers))]
    deadline = time.monotonic() + 20
    while len(run(["ip", "netns", "exec", w.lan, "ss", "-Hltn"]).stdout.splitlines()) < len(
            servers):
        if time.monotonic() > deadline:
            raise RuntimeError("the iperf3 servers did not start")
        time.sleep(0.1)
    cpu0, load0 = cpu_seconds(gw.pid), os.getloadavg()[0]
    clients = [w.lab.popen(ns, "iperf3", "-c", LAN_SERVER, "-p", str(IPERF_BASE_PORT + i),
                           "-t", str(seconds), "-J", "--connect-timeout", "5000",
                           lifetime=seconds + 60, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
               for i, ns in enumerate(w.peers)]
    rates = []
    for proc in clients:
        out, err = proc.communicate(timeout=seconds + 60)
        doc = json.loads(out or "{}")
        if "error" in doc or "end" not in doc:
            raise RuntimeError(f"iperf3: {doc.get('error') or err.strip()[-300:]}")
        rates.append(doc["end"]["sum_received"]["bits_per_second"] / 1e6)
    cpu1 = cpu_seconds(gw.pid)
    for proc in servers:
        w.lab.stop(proc, grace=2)
    return {"aggregate_mbps": round(sum(rates), 1), "per_peer_mbps": [round(r, 1) for r in rates],
            "seconds": seconds, "gateway_cpu_s": round((cpu1 or 0) - (cpu0 or 0), 2),
            "load_before": load0}


# --- handshakes: a closed-loop generator with registered keys ----------------------------------


def loadgen(gw_addr: str, port: int, gw_public: bytes, cipher: str, keys: list[bytes],
            seconds: float) -> dict[str, Any]:
    """Keep one initiation in flight per key (each from its own UDP port, as each would be a
    separate peer), answer cookie replies with MAC2 as a real peer does, resend what nobody
    answered after RETRY_AFTER; count completed handshakes (responses) per second."""
    suite = Suite("ephemeral", cipher, False)
    cookie_key = Identity().cookie_key_for(gw_public)
    sel = selectors.DefaultSelector()
    state: list[dict[str, Any]] = []
    for i, key in enumerate(keys):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        state.append({"sock": s, "ident": Identity(static_private=key, peer_public=gw_public),
                      "cookie": None, "init": None, "sent": 0.0})
    counts = {"sent": 0, "responses": 0, "cookies": 0, "timeouts": 0}

    def send(i: int, now: float) -> None:
        st = state[i]
        st["init"] = Initiator(suite, st["ident"], device_id=0, local_index=i + 1,
                               now=time.time(), cookie=st["cookie"])
        st["sent"] = now
        with contextlib.suppress(BlockingIOError):
            st["sock"].sendto(st["init"].packet, (gw_addr, port))
            counts["sent"] += 1

    start = time.monotonic()
    for i in range(len(keys)):
        send(i, start)
    deadline = start + seconds
    while (now := time.monotonic()) < deadline:
        for sk, _ in sel.select(0.05):
            i = sk.data
            while True:
                try:
                    pkt = state[i]["sock"].recv(2048)
                except BlockingIOError:
                    break
                kind = pkt[0] & 0x0F if pkt else 0
                if kind == 3 and _receiver_index(pkt) == i + 1:
                    counts["responses"] += 1
                elif kind == 4:
                    with contextlib.suppress(TunsealError):
                        state[i]["cookie"] = open_cookie_reply(pkt, cookie_key, state[i]["init"])
                        counts["cookies"] += 1
                else:
                    continue
                send(i, time.monotonic())
        for i, st in enumerate(state):
            if now - st["sent"] > RETRY_AFTER:
                counts["timeouts"] += 1
                send(i, now)
    elapsed = time.monotonic() - start
    return {**counts, "seconds": round(elapsed, 2),
            "handshakes_per_s": round(counts["responses"] / elapsed, 1)}


def _receiver_index(pkt: bytes) -> int:
    try:
        return int.from_bytes(wire.parse(pkt).require(Option.RECEIVER_INDEX), "big")
    except TunsealError:
        return -1


def _loadgen_main() -> None:
    """``python -m bench.gateway --loadgen``: the generator's side, inside its namespace
    (arguments and keys as JSON on stdin, the result as JSON on stdout)."""
    job = json.loads(sys.stdin.read())
    print(json.dumps(loadgen(job["gw"], job["port"], bytes.fromhex(job["public"]), job["cipher"],
                             [bytes.fromhex(k) for k in job["keys"]], job["seconds"])))


def handshakes(w: World, gw: Helper, keys: list[bytes], seconds: float) -> dict[str, Any]:
    listing = tunseal_cli(gw, "peer", "list")
    status = gateway_status(gw)
    job = {"gw": GW_OUTER, "port": PORT, "public": base64.b64decode(listing["public_key"]).hex(),
           "cipher": status["cipher"], "keys": [k.hex() for k in keys], "seconds": seconds}
    drops0, cpu0 = status["drops"], cpu_seconds(gw.pid)
    done = w.lab.run(w.load, sys.executable, "-m", "bench.gateway", "--loadgen",
                     input=json.dumps(job), timeout=seconds + 120,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
    cpu1 = cpu_seconds(gw.pid)
    result: dict[str, Any] = json.loads(done.stdout)
    drops = gateway_status(gw)["drops"]
    result["gateway_counters"] = {k: v - drops0.get(k, 0) for k, v in drops.items()
                                  if v != drops0.get(k, 0)}
    result["gateway_cpu_s"] = round((cpu1 or 0) - (cpu0 or 0), 2)
    return result


# --- the run ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    keys = [noise.generate_private_key() for _ in range(args.handshake_keys)]
    result: dict[str, Any] = {"meta": environment(args)}
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="tunseal-bench-gw-") as tmp:
        w = build(lab, args.peers, Path(tmp))
        config = w.workdir / "gateway.toml"
        config.write_text(gateway_config(keys))
        with contextlib.ExitStack() as stack:
            log.info("starting the gateway and %d peer helpers", args.peers)
            gw = stack.enter_context(helper(lab, w.gw, w.workdir / "gw", "--gateway",
                                            str(config)))
            peers = [stack.enter_context(helper(lab, ns, w.workdir / ns.rsplit("-", 1)[1]))
                     for ns in w.peers]
            for i, peer in enumerate(peers):
                add_peer(w, gw, peer, f"p{i:02d}")
            for peer in peers:
                wait_up(peer)
            rss = {"idle": round(rss_mib(gw.pid), 1)}
            log.info("iperf3 from %d peers at once for %d s", args.peers, args.seconds)
            result["throughput"] = throughput(w, gw, args.seconds)
            rss["after_throughput"] = round(rss_mib(gw.pid), 1)
            log.info("handshake generator: %d keys for %.0f s", len(keys),
                     args.handshake_seconds)
            result["handshakes"] = handshakes(w, gw, keys, args.handshake_seconds)
            rss["after_handshakes"] = round(rss_mib(gw.pid), 1)
            result["gateway_rss_mib"] = rss
    result["meta"]["load_end"] = list(os.getloadavg())
    return result


def environment(args: argparse.Namespace) -> dict[str, Any]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), cpu)
    commit = run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], check=False)
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit.stdout.strip(), "kernel": platform.release(), "cpu": cpu,
            "cpus": os.cpu_count(), "python": platform.python_version(), "peers": args.peers,
            "handshake_keys": args.handshake_keys, "seconds": args.seconds,
            "handshake_seconds": args.handshake_seconds, "load_start": list(os.getloadavg())}


def table(r: dict[str, Any]) -> str:
    m, t, h, rss = r["meta"], r["throughput"], r["handshakes"], r["gateway_rss_mib"]
    per = t["per_peer_mbps"]
    counters = ", ".join(f"{k} {v}" for k, v in sorted(h["gateway_counters"].items()))
    rows = [
        ("handshakes completed", f"{h['handshakes_per_s']:.0f} /s ({h['responses']} in "
                                 f"{h['seconds']:.1f} s, {m['handshake_keys']} keys)"),
        ("  cookie replies", f"{h['cookies'] / h['seconds']:.0f} /s"),
        ("  unanswered (resent)", f"{h['timeouts'] / h['seconds']:.0f} /s"),
        ("  gateway counters", counters or "-"),
        ("  gateway CPU", f"{h['gateway_cpu_s']:.1f} s in {h['seconds']:.1f} s"
                          + ("" if h["gateway_cpu_s"] >= 0.9 * h["seconds"] else
                             " (not saturated: the generator or the machine was the limit)")),
        (f"TCP, {len(per)} peers at once", f"{t['aggregate_mbps']:.0f} Mbit/s aggregate"),
        ("  per peer", f"min {min(per):.0f} / median {statistics.median(per):.0f} / "
                       f"max {max(per):.0f} Mbit/s"),
        ("  gateway CPU", f"{t['gateway_cpu_s']:.1f} s in {t['seconds']} s"),
        ("gateway RSS", f"{rss['idle']:.1f} MiB idle, {rss['after_throughput']:.1f} after "
                        f"iperf3, {rss['after_handshakes']:.1f} after the handshakes"),
    ]
    width = max(len(k) for k, _ in rows)
    head = (f"Tunseal gateway, {m['date']}, {m['commit']}, {m['cpus']} x {m['cpu']}, "
            f"load {m['load_start'][0]:.1f} -> {m['load_end'][0]:.1f}")
    return "\n".join([head, ""] + [f"{k:<{width}}  {v}" for k, v in rows])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=10, help="iperf3 peers (default %(default)s)")
    p.add_argument("--seconds", type=int, default=10, help="iperf3 -t (default %(default)s)")
    p.add_argument("--handshake-seconds", type=float, default=5.0,
                   help="how long the generator runs (default %(default)s)")
    p.add_argument("--handshake-keys", type=int, default=128,
                   help="registered keys the generator uses, each from its own UDP port "
                   "(default %(default)s)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the results as JSON (to FILE if given) instead of the table")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.peers <= 200 or not 1 <= args.handshake_keys <= 4000:
        p.error("--peers 1-200, --handshake-keys 1-4000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        _loadgen_main()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("bench.gateway: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if stale := sweep_stale():
        print(f"removed namespaces left by an earlier run: {', '.join(stale)}", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        result = bench(args)
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        print(f"bench.gateway: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json is None:
        print(table(result))
    elif args.json == "-":
        print(json.dumps(result, indent=2))
    else:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
