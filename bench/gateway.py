"""The office gateway under load: aggregate TCP throughput of many peers at once, alone and
among 1,000 registered peers, handshakes per second it completes, and the gateway helper's
memory and CPU time.

Run on demand, as root, never in the test suite::

    python -m bench.gateway [--peers 10] [--registered 1000] [--seconds 10]
                            [--handshake-seconds 5] [--handshake-keys 512] [--json [FILE]] [-v]

The world (throwaway namespaces ``tsb<pid>-*``, see bench/_netns.py)::

    p00 ... p09 (a helper each) --+
    load (handshake generator)  --+-- switch (bridge) -- gw (gateway helper) -- lan (iperf3 -s)

Every helper runs under helper/keyring-session.sh with a keyring of its own. The ``--peers``
iperf3 peers are added with ``tunseal peer add NAME -o FILE``, imported on their own helper and
brought up, as docs/GATEWAY.md tells an administrator, and measured with the gateway knowing
only them ("alone"). Then the gateway is restarted (same keyring, same static key) with
``--registered`` minus ``--peers`` more peers in its file, whose keys the bench generates and
only the generator holds; the generator completes one handshake (and a keepalive) for each,
so the gateway holds a live session per registered peer, and the same iperf3 peers are
measured again ("among"). The handshake rate is measured last, with ``--handshake-keys`` of
the generated keys. See bench/README.md ("Gateway") for what each number means.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import json
import logging
import os
import platform
import secrets
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench._netns import Lab, cpu_seconds, run, sweep_stale
from bench.throughput import Helper, tunseal_cli
from core import gateway as gwconf
from core import noise, session, wire
from core.constants import Option, PacketType
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
ESTABLISH_WINDOW = 64
"""Handshakes the generator keeps in flight while it gives every registered key a session."""
ESTABLISH_TIMEOUT = 120.0
IDLE_SECONDS = 3.0


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


def gateway_config() -> str:
    """The gateway's file (docs/GATEWAY.md), with no peers yet."""
    lines = ["format = 1", "", "[gateway]", f'name = "{NAME}"', 'addresses = ["10.77.0.1/16"]',
             'mode = "ephemeral"', f"listen_port = {PORT}",
             f'public_endpoint = "{GW_OUTER}:{PORT}"', 'lan = ["198.18.200.0/24"]',
             'private_key = "bench-gateway.private"']
    return "\n".join(lines) + "\n"


def register(config: Path, keys: list[bytes]) -> None:
    """Add the generator's keys to the gateway's file as peers (while it is stopped), as
    ``peer add --public-key`` would, but at once: names hs0000..., DeviceIDs from 1000,
    addresses from 10.77.100.1 (clear of what ``peer add`` hands out from 10.77.0.2)."""
    gw = gwconf.load(config)
    extra = tuple(gwconf.GatewayPeer(
        name=f"hs{i:04d}", public_key=base64.b64encode(noise.public_key(key)).decode(),
        device_id=1000 + i, allowed_ips=(f"10.77.{100 + i // 250}.{1 + i % 250}/32",))
        for i, key in enumerate(keys))
    gwconf.save(gwconf.from_dict(gwconf.to_dict(replace(gw, peers=(*gw.peers, *extra)))),
                config)


@contextlib.contextmanager
def helper(lab: Lab, ns: str, home: Path, *extra: str,
           profile: tuple[str, ...] = ()) -> Iterator[Helper]:
    """``helper.main`` in ``ns`` under keyring-session.sh with its own keyring (made on the
    first start in ``home``, reused by later ones); SIGTERM to the helper itself when the block
    ends (it takes its tunnels down), then to the session."""
    home.mkdir(parents=True, exist_ok=True)
    passfile = home / "keyring.pass"
    if not passfile.exists():
        with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    sock, logfile = home / "run" / "helper.sock", home / "helper.log"
    env = dict(os.environ, TUNSEAL_KEYRING_DIR=str(home / "keyring"), PYTHONPATH=str(ROOT))
    with open(logfile, "ab") as out:
        main = ("bench.gateway", "--profiled-helper", *profile) if profile else ("helper.main",)
        proc = lab.popen(ns, str(KEYRING_SESSION), str(passfile), sys.executable, "-m",
                         *main, "--socket", str(sock), "--state-dir",
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
        log.info("helper in %s answers (%.1f s)", ns, START_TIMEOUT - (deadline - time.monotonic()))
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
            seconds: float, establish: bool = False) -> dict[str, Any]:
    """Rate (``establish`` False): keep one initiation in flight per key (each from its own UDP
    port, as each would be a separate peer), answer cookie replies with MAC2 as a real peer
    does, resend what nobody answered after RETRY_AFTER; count completed handshakes
    (responses) per second for ``seconds``.

    ``establish``: give each key one session instead, ESTABLISH_WINDOW keys at a time: read
    the response, derive the keys and send a keepalive sealed with them, which confirms the
    session at the gateway (its peer's keypair becomes current); stop when every key has one
    or after ``seconds``."""
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
    counts = {"sent": 0, "responses": 0, "cookies": 0, "timeouts": 0, "established": 0}
    in_flight: set[int] = set()
    waiting = collections.deque(range(len(keys)))

    def send(i: int, now: float) -> None:
        st = state[i]
        st["init"] = Initiator(suite, st["ident"], device_id=0, local_index=i + 1,
                               now=time.time(), cookie=st["cookie"])
        st["sent"] = now
        in_flight.add(i)
        with contextlib.suppress(BlockingIOError):
            st["sock"].sendto(st["init"].packet, (gw_addr, port))
            counts["sent"] += 1

    def confirm(i: int, pkt: bytes) -> None:
        st = state[i]
        done = st["init"].consume_response(pkt)
        kp = session.Keypair(cipher=cipher, send_key=done.send_key, recv_key=done.recv_key,
                             local_index=done.local_index, remote_index=done.remote_index,
                             device_id=0, is_initiator=True, created=time.monotonic())
        st["sock"].sendto(bytes(kp.seal(b"", PacketType.KEEPALIVE)), (gw_addr, port))
        counts["established"] += 1
        in_flight.discard(i)

    start, cpu_start = time.monotonic(), time.process_time()
    for _ in range(min(ESTABLISH_WINDOW, len(keys)) if establish else len(keys)):
        send(waiting.popleft(), start)
    deadline = start + seconds
    next_scan = start + RETRY_AFTER / 4
    while (now := time.monotonic()) < deadline and in_flight:
        for sk, _ in sel.select(0.05):
            i = sk.data
            while True:
                try:
                    pkt = state[i]["sock"].recv(2048)
                except BlockingIOError:
                    break
                kind = pkt[0] & 0x0F if pkt else 0
                if i not in in_flight:
                    continue
                if kind == 3 and _receiver_index(pkt) == i + 1:
                    counts["responses"] += 1
                    if establish:
                        with contextlib.suppress(TunsealError):
                            confirm(i, pkt)
                        if i not in in_flight and waiting:
                            send(waiting.popleft(), time.monotonic())
                        continue
                elif kind == 4:
                    with contextlib.suppress(TunsealError):
                        state[i]["cookie"] = open_cookie_reply(pkt, cookie_key, state[i]["init"])
                        counts["cookies"] += 1
                else:
                    continue
                send(i, time.monotonic())
        if now >= next_scan:  # not every pass: that would cost the generator a core
            next_scan = now + RETRY_AFTER / 4
            for i in list(in_flight):
                if now - state[i]["sent"] > RETRY_AFTER:
                    counts["timeouts"] += 1
                    send(i, now)
    elapsed = time.monotonic() - start
    return {**counts, "seconds": round(elapsed, 2),
            "generator_cpu_s": round(time.process_time() - cpu_start, 2),
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
                             [bytes.fromhex(k) for k in job["keys"]], job["seconds"],
                             job["establish"])))


@dataclass(frozen=True)
class GatewayKeys:
    public: bytes
    cipher: str


def gateway_keys(gw: Helper) -> GatewayKeys:
    """What the generator needs to know of the gateway."""
    listing = tunseal_cli(gw, "peer", "list")
    return GatewayKeys(base64.b64decode(listing["public_key"]), gateway_status(gw)["cipher"])


def drops(gw: Helper) -> dict[str, int]:
    """The gateway's drop counters."""
    return dict(gateway_status(gw)["drops"])


def peer_states(gw: Helper, names: list[str]) -> dict[str, int]:
    """How many of the peers ``names`` are in each state, by ``peer_show`` one at a time."""
    states: collections.Counter[str] = collections.Counter()
    with Client(str(gw.socket), timeout=10) as c:
        for name in names:
            states[str(c.call("peer_show", name=name).get("state", "?"))] += 1
    return dict(states)


def handshakes(w: World, gw: Helper, gk: GatewayKeys, keys: list[bytes], seconds: float,
               establish: bool = False) -> dict[str, Any]:
    job = {"gw": GW_OUTER, "port": PORT, "public": gk.public.hex(), "cipher": gk.cipher,
           "keys": [k.hex() for k in keys], "seconds": seconds, "establish": establish}
    drops0, cpu0 = drops(gw), cpu_seconds(gw.pid)
    done = w.lab.run(w.load, sys.executable, "-m", "bench.gateway", "--loadgen",
                     input=json.dumps(job), timeout=seconds + 120,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
    cpu1 = cpu_seconds(gw.pid)
    result: dict[str, Any] = json.loads(done.stdout)
    drops1 = drops(gw)
    result["gateway_counters"] = {
        k: v - drops0.get(k, 0) for k, v in drops1.items() if v != drops0.get(k, 0)}
    result["gateway_cpu_s"] = round((cpu1 or 0) - (cpu0 or 0), 2)
    return result


# --- the run ------------------------------------------------------------------------------------


def reconnect(peers: list[Helper]) -> None:
    """The peers' sessions died with the gateway they were made with: connect again."""
    for peer in peers:
        tunseal_cli(peer, "down", NAME)
        tunseal_cli(peer, "up", NAME)
    for peer in peers:
        wait_up(peer)


def idle_cpu(gw: Helper, seconds: float = IDLE_SECONDS) -> float:
    """CPU seconds per second the gateway spends with nothing to carry (its timers, status)."""
    cpu0 = cpu_seconds(gw.pid)
    time.sleep(seconds)
    return round(((cpu_seconds(gw.pid) or 0) - (cpu0 or 0)) / seconds, 3)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    keys = [noise.generate_private_key() for _ in range(args.registered - args.peers)]
    result: dict[str, Any] = {"meta": environment(args), "alone": [], "among": []}
    rss: dict[str, float] = {}
    extra = ("--profile-out", args.profile) if args.profile else ()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="tunseal-bench-gw-") as tmp:
        w = build(lab, args.peers, Path(tmp))
        alone_cfg, among_cfg = w.workdir / "alone.toml", w.workdir / "among.toml"
        gw_home = w.workdir / "gw"
        alone_cfg.write_text(gateway_config())

        def gateway(config: Path) -> contextlib.AbstractContextManager[Helper]:
            return helper(lab, w.gw, gw_home, "--gateway", str(config), profile=extra)

        with contextlib.ExitStack() as stack:
            log.info("starting %d peer helpers and the gateway", args.peers)
            peers = [stack.enter_context(helper(lab, ns, w.workdir / ns.rsplit("-", 1)[1]))
                     for ns in w.peers]
            for r in range(args.rounds):
                with gateway(alone_cfg) as gw:
                    if r == 0:  # as an administrator adds them: the file gets the 10 peers
                        for i, peer in enumerate(peers):
                            add_peer(w, gw, peer, f"p{i:02d}")
                        for peer in peers:
                            wait_up(peer)
                        gk = gateway_keys(gw)
                        rss["alone_idle"] = rss_mib(gw.pid)
                        result["alone_idle_cpu"] = idle_cpu(gw)
                    else:
                        reconnect(peers)
                    log.info("round %d alone: iperf3 from %d peers for %d s", r + 1,
                             args.peers, args.seconds)
                    result["alone"].append(throughput(w, gw, args.seconds))
                    rss["alone_after_throughput"] = rss_mib(gw.pid)
                if r == 0:
                    log.info("registering %d more peers", len(keys))
                    shutil.copy(alone_cfg, among_cfg)
                    register(among_cfg, keys)
                started = time.monotonic()
                with gateway(among_cfg) as gw:
                    result["start_s"] = round(time.monotonic() - started, 1)
                    if r == 0:
                        rss["registered_idle"] = rss_mib(gw.pid)
                    reconnect(peers)
                    log.info("a session for each of the %d generated keys", len(keys))
                    result["sessions"] = handshakes(w, gw, gk, keys, ESTABLISH_TIMEOUT,
                                                    establish=True)
                    step = max(1, len(keys) // 50)
                    result["sessions"]["gateway_peer_states"] = peer_states(
                        gw, [f"hs{i:04d}" for i in range(0, len(keys), step)])
                    rss["sessions_idle"] = rss_mib(gw.pid)
                    if r == 0:
                        result["among_idle_cpu"] = idle_cpu(gw)
                    log.info("round %d among %d: iperf3 from the same %d peers", r + 1,
                             args.registered, args.peers)
                    result["among"].append(throughput(w, gw, args.seconds))
                    rss["among_after_throughput"] = rss_mib(gw.pid)
                    if r == args.rounds - 1:
                        log.info("handshake generator: %d keys for %.0f s",
                                 args.handshake_keys, args.handshake_seconds)
                        result["handshakes"] = handshakes(
                            w, gw, gk, keys[:args.handshake_keys], args.handshake_seconds)
                        rss["after_handshakes"] = rss_mib(gw.pid)
    alone = statistics.median(t["aggregate_mbps"] for t in result["alone"])
    among = statistics.median(t["aggregate_mbps"] for t in result["among"])
    result["ratio"] = round(among / max(alone, 1e-9), 3)
    result["round_ratios"] = [round(b["aggregate_mbps"] / max(a["aggregate_mbps"], 1e-9), 3)
                              for a, b in zip(result["alone"], result["among"], strict=True)]
    result["gateway_rss_mib"] = {k: round(v, 1) for k, v in rss.items()}
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
            "registered": args.registered, "handshake_keys": args.handshake_keys,
            "seconds": args.seconds,
            "handshake_seconds": args.handshake_seconds, "load_start": list(os.getloadavg())}


def cpu_per_gbit(runs: list[dict[str, Any]]) -> float:
    """The gateway's CPU seconds per Gbit it carried, over ``runs``."""
    gbit = sum(float(t["aggregate_mbps"]) * float(t["seconds"]) for t in runs) / 1000
    return sum(float(t["gateway_cpu_s"]) for t in runs) / max(gbit, 1e-9)


def table(r: dict[str, Any]) -> str:
    m, h, rss, est = r["meta"], r["handshakes"], r["gateway_rss_mib"], r["sessions"]
    a, b = r["alone"], r["among"]
    counters = ", ".join(f"{k} {v}" for k, v in sorted(h["gateway_counters"].items())) or "-"
    states = ", ".join(f"{v} {k}" for k, v in sorted(est["gateway_peer_states"].items()))

    def spread(runs: list[dict[str, Any]]) -> str:
        per = [x for t in runs for x in t["per_peer_mbps"]]
        return (" / ".join(f"{t['aggregate_mbps']:.0f}" for t in runs) + " Mbit/s (per peer "
                f"{min(per):.0f} / {statistics.median(per):.0f} / {max(per):.0f}), gateway "
                "CPU " + " / ".join(f"{t['gateway_cpu_s']:.1f}" for t in runs)
                + f" s in {runs[0]['seconds']} s")

    rows = [
        (f"TCP, {m['peers']} peers alone", spread(a)),
        (f"TCP, the same among {m['registered']}", spread(b)),
        ("  among / alone", f"{r['ratio']:.2f} (medians; rounds: "
                            + ", ".join(f"{x:.2f}" for x in r["round_ratios"]) + ")"),
        ("  gateway CPU per Gbit", f"{cpu_per_gbit(a):.3f} s alone, {cpu_per_gbit(b):.3f} s "
                                   "among (steadier than Mbit/s on a shared machine)"),
        ("gateway idle CPU", f"{r['alone_idle_cpu']:.3f} s/s with {m['peers']} peers, "
                             f"{r['among_idle_cpu']:.3f} with {m['registered']} and their "
                             "sessions"),
        ("gateway start", f"{r['start_s']:.1f} s with {m['registered']} peers in its file"),
        ("sessions made", f"{est['established']} in {est['seconds']:.1f} s; a sample of "
                          f"the gateway's peers: {states}"),
        ("handshakes completed", f"{h['handshakes_per_s']:.0f} /s ({h['responses']} in "
                                 f"{h['seconds']:.1f} s, {m['handshake_keys']} keys)"),
        ("  cookie replies", f"{h['cookies'] / h['seconds']:.0f} /s"),
        ("  unanswered (resent)", f"{h['timeouts'] / h['seconds']:.0f} /s"),
        ("  gateway counters", counters),
        ("  CPU", f"gateway {h['gateway_cpu_s']:.1f} s, generator "
                  f"{h['generator_cpu_s']:.1f} s in {h['seconds']:.1f} s"
                          + ("" if h["gateway_cpu_s"] >= 0.9 * h["seconds"] else
                             " (not saturated: the generator or the machine was the limit)")),
        (f"gateway RSS, {m['peers']} peers", f"{rss['alone_idle']:.1f} MiB idle, "
                                            f"{rss['alone_after_throughput']:.1f} after iperf3"),
        (f"gateway RSS, {m['registered']} peers", f"{rss['registered_idle']:.1f} MiB idle, "
         f"{rss['sessions_idle']:.1f} with a session each, {rss['among_after_throughput']:.1f} "
         f"after iperf3, {rss['after_handshakes']:.1f} after the handshakes"),
    ]
    width = max(len(k) for k, _ in rows)
    head = (f"Tunseal gateway, {m['date']}, {m['commit']}, {m['cpus']} x {m['cpu']}, "
            f"load {m['load_start'][0]:.1f} -> {m['load_end'][0]:.1f}")
    return "\n".join([head, ""] + [f"{k:<{width}}  {v}" for k, v in rows])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=10, help="iperf3 peers (default %(default)s)")
    p.add_argument("--registered", type=int, default=1000,
                   help="peers in the gateway's file for the second half, the iperf3 peers "
                   "included (default %(default)s)")
    p.add_argument("--seconds", type=int, default=10, help="iperf3 -t (default %(default)s)")
    p.add_argument("--handshake-seconds", type=float, default=5.0,
                   help="how long the generator runs (default %(default)s)")
    p.add_argument("--handshake-keys", type=int, default=512,
                   help="generated keys the handshake generator uses, each from its own UDP "
                   "port, so at most 20/s each (the per-source limit) (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2,
                   help="alone / among rounds, alternating (default %(default)s)")
    p.add_argument("--profile", metavar="FILE",
                   help="run the gateway under cProfile (every thread) and write the "
                   "statistics of its last start to FILE (pstats format)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the results as JSON (to FILE if given) instead of the table")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 10:
        p.error("--rounds 1-10")
    if not 1 <= args.peers <= 200 or not args.peers < args.registered <= gwconf.MAX_PEERS:
        p.error(f"--peers 1-200, --registered from --peers + 1 to {gwconf.MAX_PEERS}")
    if not 1 <= args.handshake_keys <= args.registered - args.peers:
        p.error("--handshake-keys: 1 to --registered minus --peers")
    return args


def _profiled_helper(argv: list[str]) -> int:
    """``python -m bench.gateway --profiled-helper --profile-out FILE HELPER-ARGS``:
    helper.main with cProfile in every thread (the receive loop, where handshakes are
    answered, is one), the merged statistics written to FILE when it exits."""
    import cProfile
    import pstats
    import threading

    out = argv[argv.index("--profile-out") + 1]
    rest = [a for i, a in enumerate(argv) if a != "--profile-out"
            and (i == 0 or argv[i - 1] != "--profile-out")]
    profiles: list[cProfile.Profile] = []

    def start_thread(*_: object) -> None:  # a new thread's first event: profile it
        sys.setprofile(None)
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()

    main_prof = cProfile.Profile()
    profiles.append(main_prof)
    threading.setprofile(start_thread)
    main_prof.enable()
    from helper import main as helper_main
    sys.argv = ["helper.main", *rest]
    try:
        code = helper_main.main()
    finally:
        main_prof.disable()
        stats = pstats.Stats(main_prof)
        for prof in profiles[1:]:
            with contextlib.suppress(TypeError, ValueError):
                stats.add(prof)
        stats.dump_stats(out)
    return int(code or 0)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--profiled-helper"]:
        return _profiled_helper(raw[1:])
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
