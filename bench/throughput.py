"""End-to-end throughput and latency: Tunseal in every mode beside the raw link, wireguard-go and
OpenVPN, all measured in one run between two throwaway network namespaces.

Each target is started, measured (``ping -c 20 -i 0.05``, then ``iperf3`` TCP for each stream
count) and torn down before the next, so the ratios compare runs made minutes apart on the same
machine. Run on demand, as root, never in the test suite::

    python -m bench.throughput [--seconds 10] [--streams 1,4] [--only NAME[,NAME]]
                               [--rounds N] [--router] [--mtu 1500] [--json FILE]

See bench/README.md for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fnmatch
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._netns import Lab, Topology, cpu_seconds, run, sweep_stale
from core.errors import HelperUnavailable
from core.ipcclient import Client

log = logging.getLogger("bench.throughput")

ROOT = Path(__file__).resolve().parents[1]

# Inner (tunnel) addresses, also from the RFC 2544 benchmarking block.
INNER_CLIENT = "198.19.0.1"
INNER_SERVER = "198.19.0.2"
IPERF_PORT = 5201
TUNSEAL_PORT = 51900
WG_PORT = 51820
OPENVPN_PORT = 1194
PROFILE = "bench"
# Ephemeral profiles must name a peer key to be imported; `tunseal setpeerkey` replaces this
# with the real one (from `tunseal genkey` on the other end) before the tunnel comes up.
PLACEHOLDER_KEY = base64.b64encode(bytes([9]) + bytes(31)).decode()
"""Any usable public key (the X25519 base point): replaced by the real one before the tunnel
comes up (an all-zero key is refused as a low-order point)."""

PING_COUNT = 20
PING_INTERVAL = "0.05"
START_TIMEOUT = 30.0
"""Seconds a helper, daemon or tunnel gets to become ready."""
REACH_TIMEOUT = 20.0
HELPER_STOP_TIMEOUT = 15.0
IPERF_GRACE = 30.0
"""Seconds an iperf3 client may run beyond its -t."""

REQUIRED_TOOLS = {
    "veth": ("iperf3", "ping", "ss", "timeout"),
    "tunseal": ("dbus-run-session", "gnome-keyring-daemon", "dbus-send"),
    "wireguard-go": ("wireguard-go", "wg"),
    "openvpn": ("openvpn", "openssl"),
}


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    kind: str
    """veth | tunseal | wireguard-go | openvpn"""
    mode: str = ""
    cipher: str = ""
    transport: str = "udp"


TARGETS = (
    Target("raw-veth", "veth"),
    Target("openvpn", "openvpn", cipher="aes-256-gcm"),
    Target("wireguard-go", "wireguard-go", cipher="chacha20-poly1305"),
    Target("tunseal-plain", "tunseal", "plain", "none"),
    # Each mode with the default cipher (aes-256-gcm); "tunseal-ephemeral" is the product's
    # default profile. The other ciphers and the raw-IP transport beside it.
    Target("tunseal-psk", "tunseal", "psk", "aes-256-gcm"),
    Target("tunseal-rotating", "tunseal", "rotating", "aes-256-gcm"),
    Target("tunseal-ephemeral", "tunseal", "ephemeral", "aes-256-gcm"),
    Target("tunseal-ephemeral-chacha20", "tunseal", "ephemeral", "chacha20-poly1305"),
    Target("tunseal-ephemeral-aes128", "tunseal", "ephemeral", "aes-128-gcm"),
    Target("tunseal-ephemeral-raw", "tunseal", "ephemeral", "aes-256-gcm", "raw"),
)
REFERENCES = {"raw": "raw-veth", "openvpn": "openvpn", "wg": "wireguard-go"}


@dataclass(slots=True)
class Bench:
    """One run's world: the lab, its topology, a private temp dir and the options."""

    lab: Lab
    topo: Topology
    workdir: Path
    seconds: int
    streams: tuple[int, ...]

    @property
    def lifetime(self) -> float:
        """Upper bound on any daemon's life (set-up, ping, every iperf3 run, teardown), with
        room for a slow, loaded machine: it only matters if this process dies without
        cleaning up."""
        return 300 + len(self.streams) * (self.seconds + IPERF_GRACE)

    def private_dir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))


@dataclass(slots=True)
class Link:
    """A running target, as the measurements see it."""

    server_addr: str
    """Where ping and iperf3 in the client namespace aim."""
    ifname: str
    """The client end's interface (for its MTU)."""
    pids: dict[str, int] = field(default_factory=dict)
    """The VPN's process on each end ("client", "server"), for CPU time."""
    details: dict[str, Any] = field(default_factory=dict)
    after: Callable[[], dict[str, Any]] | None = None
    """Called after the measurements, while still running: extra facts for the results."""


# --- the raw link ---------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_veth(b: Bench) -> Iterator[Link]:
    ifname = b.lab.run(b.topo.client, "ip", "-o", "route", "get", b.topo.server_addr).stdout
    yield Link(b.topo.server_addr, ifname.split(" dev ", 1)[1].split()[0])


# --- Tunseal --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Helper:
    socket: Path
    log: Path
    pid: int


def _is_helper(argv: list[str]) -> bool:
    return (bool(argv) and os.path.basename(argv[0]).startswith("python")
            and "helper.main" in argv)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def tunseal_helper(b: Bench, ns: str, side: str) -> Iterator[Helper]:
    """``helper.main`` in ``ns`` under keyring-session.sh, with its own keyring, state and
    socket; stopped with SIGTERM (it takes its tunnels down) when the block ends."""
    home = b.private_dir(f"tunseal-{side}")
    passfile = home / "keyring.pass"
    with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    sock, logfile = home / "run" / "helper.sock", home / "helper.log"
    env = dict(os.environ, TUNSEAL_KEYRING_DIR=str(home / "keyring"), PYTHONPATH=str(ROOT))
    cmd = [str(ROOT / "helper" / "keyring-session.sh"), str(passfile),
           sys.executable, "-m", "helper.main", "--socket", str(sock),
           "--state-dir", str(home / "state"), "--group", "root"]
    with open(logfile, "ab") as out:
        proc = b.lab.popen(ns, *cmd, lifetime=b.lifetime, stdout=out, stderr=subprocess.STDOUT,
                           cwd=ROOT, env=env)
    pid = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the {side} helper exited with {proc.returncode}:\n"
                                   f"{_tail(logfile)}")
            with contextlib.suppress(HelperUnavailable), Client(str(sock), timeout=5) as c:
                c.call("ping")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {side} helper was not ready after {START_TIMEOUT:.0f} s:"
                                   f"\n{_tail(logfile)}")
            time.sleep(0.2)
        pid = b.lab.wait_pid(ns, _is_helper, 5)
        yield Helper(sock, logfile, pid)
    finally:
        _stop_helper(b, proc, pid, side, logfile)


def _stop_helper(b: Bench, proc: subprocess.Popen[bytes], pid: int | None, side: str,
                 logfile: Path) -> None:
    """SIGTERM the helper alone first, so it takes its tunnel down while its keyring and bus
    still run; the session around it then ends, and with it timeout(1), whose exit status is
    the helper's."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(HELPER_STOP_TIMEOUT)
    code = b.lab.stop(proc)
    if pid is not None and code != 0:
        log.warning("the %s helper exited with %s; its log ends:\n%s", side, code,
                    _tail(logfile))


def tunseal_cli(h: Helper, *args: str) -> Any:
    """``python -m core.cli --json ...`` against a helper; its JSON answer."""
    done = run([sys.executable, "-m", "core.cli", "--socket", str(h.socket), "--json", *args],
               timeout=60, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tunseal {' '.join(args)}: exit {done.returncode}: "
                           f"{(done.stdout + done.stderr).strip()[-1500:]}\n"
                           f"helper log:\n{_tail(h.log)}")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def tunseal_profile(t: Target, *, local: str, remote: str, endpoint: str, psk: bytes | None,
                    listen: bool) -> str:
    lines = ["format = 1", "", "[tunnel]", f'name = "{PROFILE}"', f'mode = "{t.mode}"']
    if t.mode != "plain":
        lines.append(f'cipher = "{t.cipher}"')
    lines += ["", "[interface]", f'addresses = ["{local}/32"]']
    if listen:
        lines.append(f"listen_port = {TUNSEAL_PORT}")
    lines += ["", "[peer]", f'transport = "{t.transport}"', f'allowed_ips = ["{remote}/32"]']
    if endpoint:
        lines.append(f'endpoint = "{endpoint}"')
    if t.mode == "ephemeral":
        lines.append(f'public_key = "{PLACEHOLDER_KEY}"')
        lines += ["", "[keys]", f'private_key = "{PROFILE}.private"']
    elif psk is not None:
        lines += ["", "[keys]", f'psk = "{PROFILE}.psk"',
                  "", "[secrets]", f'psk = "{base64.b64encode(psk).decode()}"']
    return "\n".join(lines) + "\n"


def tunseal_state(h: Helper) -> dict[str, Any]:
    tunnels: list[dict[str, Any]] = tunseal_cli(h, "status", PROFILE)["tunnels"]
    return tunnels[0] if tunnels else {}


def wait_tunseal_state(h: Helper, side: str, want: str, timeout: float,
                       nudge: Callable[[], object] | None = None) -> None:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = tunseal_state(h)
        if status.get("state") == want:
            return
        if status.get("state") == "error":
            break
        if nudge is not None:
            nudge()
        time.sleep(0.2)
    raise RuntimeError(f"the {side} tunnel is {status.get('state')!r}, not {want!r} "
                       f"(error: {status.get('error') or 'none'}); helper log:\n{_tail(h.log)}")


@contextlib.contextmanager
def tunseal(b: Bench, t: Target) -> Iterator[Link]:
    topo = b.topo
    port = f":{TUNSEAL_PORT}" if t.transport == "udp" else ""
    psk = secrets.token_bytes(32) if t.mode in ("psk", "rotating") else None
    with tunseal_helper(b, topo.server, "server") as server, \
            tunseal_helper(b, topo.client, "client") as client:
        ends = ((server, INNER_SERVER, INNER_CLIENT, "", True),
                (client, INNER_CLIENT, INNER_SERVER, f"{topo.server_addr}{port}", False))
        for helper, local, remote, endpoint, listen in ends:
            path = helper.socket.parent.parent / "import.tunseal"
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(tunseal_profile(t, local=local, remote=remote, endpoint=endpoint,
                                        psk=psk, listen=listen))
            try:
                tunseal_cli(helper, "import", str(path))
            finally:
                path.unlink()  # it may hold the psk
        if t.mode == "ephemeral":
            server_key = tunseal_cli(server, "genkey", PROFILE)["public_key"]
            client_key = tunseal_cli(client, "genkey", PROFILE)["public_key"]
            tunseal_cli(server, "setpeerkey", PROFILE, client_key)
            tunseal_cli(client, "setpeerkey", PROFILE, server_key)
        tunseal_cli(server, "up", PROFILE)
        tunseal_cli(client, "up", PROFILE)
        wait_tunseal_state(client, "client", "up", START_TIMEOUT)
        # A responder has no sending key until the initiator's first data packet arrives.
        wait_tunseal_state(server, "server", "up", START_TIMEOUT,
                           nudge=lambda: ping_once(b, INNER_SERVER))
        status = tunseal_state(client)
        running = (status.get("mode"), status.get("cipher"), status.get("transport"))
        if running != (t.mode, t.cipher, t.transport):
            raise RuntimeError(f"asked for {(t.mode, t.cipher, t.transport)}, the tunnel runs "
                               f"{running}")

        def after() -> dict[str, Any]:
            return {"drops": {side: tunseal_state(h).get("drops", {})
                              for side, h in (("client", client), ("server", server))}}

        yield Link(INNER_SERVER, status["interface"],
                   pids={"client": client.pid, "server": server.pid},
                   details={"mode": t.mode, "cipher": status.get("cipher"),
                            "transport": status.get("transport")},
                   after=after)
        for h in (client, server):
            with contextlib.suppress(RuntimeError):
                tunseal_cli(h, "down", PROFILE)


# --- wireguard-go ---------------------------------------------------------------------------------


def _wg_ifname(side: str) -> str:
    # wireguard-go's control socket, /var/run/wireguard/<if>.sock, is shared by every namespace:
    # the name must be unique on the machine, not only in its namespace.
    return f"wgb{os.getpid():06x}{side[0]}"


@contextlib.contextmanager
def wireguard_go_end(b: Bench, ns: str, side: str, private: Path, peer_public: str,
                     local: str, remote: str, endpoint: str) -> Iterator[int]:
    ifname = _wg_ifname(side)
    logfile = b.private_dir(f"wg-{side}") / "wireguard-go.log"
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="error")
    with open(logfile, "ab") as out:
        proc = b.lab.popen(ns, "wireguard-go", "-f", ifname, lifetime=b.lifetime,
                           stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while b.lab.run(ns, "wg", "show", ifname, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go ({side}) did not start:\n{_tail(logfile)}")
            time.sleep(0.1)
        peer = ["peer", peer_public, "allowed-ips", f"{remote}/32"]
        if endpoint:
            peer += ["endpoint", endpoint]
        b.lab.run(ns, "wg", "set", ifname, "listen-port", str(WG_PORT),
                  "private-key", str(private), *peer)
        b.lab.run(ns, "ip", "addr", "add", local, "peer", f"{remote}/32", "dev", ifname)
        b.lab.run(ns, "ip", "link", "set", ifname, "up")
        yield b.lab.wait_pid(ns, lambda a: bool(a) and a[0].endswith("wireguard-go"), 5)
    finally:
        b.lab.stop(proc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/var/run/wireguard/{ifname}.sock")


@contextlib.contextmanager
def wireguard_go(b: Bench) -> Iterator[Link]:
    keys = {}
    for side in ("client", "server"):
        private = b.private_dir(f"wg-key-{side}") / "private.key"
        text = run(["wg", "genkey"]).stdout
        with open(os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        keys[side] = (private, run(["wg", "pubkey"], input=text).stdout.strip())
    topo = b.topo
    with wireguard_go_end(b, topo.server, "server", keys["server"][0], keys["client"][1],
                          INNER_SERVER, INNER_CLIENT, "") as server_pid, \
            wireguard_go_end(b, topo.client, "client", keys["client"][0], keys["server"][1],
                             INNER_CLIENT, INNER_SERVER,
                             f"{topo.server_addr}:{WG_PORT}") as client_pid:
        yield Link(INNER_SERVER, _wg_ifname("client"),
                   pids={"client": client_pid, "server": server_pid},
                   details={"cipher": "chacha20-poly1305"})


# --- OpenVPN --------------------------------------------------------------------------------------

OPENVPN_IF = "ovpnb0"


def self_signed(directory: Path, side: str) -> tuple[Path, Path, str]:
    """A fresh P-256 key and self-signed certificate; (cert, key, SHA-256 fingerprint)."""
    cert, key = directory / f"{side}.crt", directory / f"{side}.key"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", f"/CN=tunseal-bench-{side}", "-batch"])
    key.chmod(0o600)
    out = run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"]).stdout
    return cert, key, out.strip().split("=", 1)[1]


def openvpn_start(b: Bench, stack: contextlib.ExitStack, ns: str, side: str,
                  args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start one OpenVPN peer (stopped when ``stack`` closes); its process and log file."""
    logfile = b.private_dir(f"openvpn-{side}") / "openvpn.log"
    cmd = ["openvpn", "--dev", OPENVPN_IF, "--dev-type", "tun", "--proto", "udp",
           "--disable-dco", "--data-ciphers", "AES-256-GCM", "--verb", "3", *args]
    with open(logfile, "ab") as out:
        proc = b.lab.popen(ns, *cmd, lifetime=b.lifetime, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(b.lab.stop, proc)
    return proc, logfile


def openvpn_wait(b: Bench, ns: str, side: str, proc: subprocess.Popen[bytes],
                 logfile: Path) -> tuple[int, str]:
    """Wait until the peer is connected; its pid and the data channel cipher it reports."""
    deadline = time.monotonic() + START_TIMEOUT
    while "Initialization Sequence Completed" not in (text := logfile.read_text("utf-8",
                                                                                "replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"openvpn ({side}) did not connect:\n{_tail(logfile)}")
        time.sleep(0.2)
    m = re.search(r"Data Channel: cipher '([^']+)'", text)
    pid = b.lab.wait_pid(ns, lambda a: bool(a) and a[0].endswith("openvpn"), 5)
    return pid, m.group(1) if m else "unknown"


@contextlib.contextmanager
def openvpn(b: Bench) -> Iterator[Link]:
    certs = b.private_dir("openvpn-certs")
    s_cert, s_key, s_fp = self_signed(certs, "server")
    c_cert, c_key, c_fp = self_signed(certs, "client")
    topo = b.topo
    server_args = ["--tls-server", "--dh", "none", "--cert", str(s_cert), "--key", str(s_key),
                   "--peer-fingerprint", c_fp, "--local", topo.server_addr,
                   "--lport", str(OPENVPN_PORT), "--ifconfig", INNER_SERVER, INNER_CLIENT]
    client_args = ["--tls-client", "--cert", str(c_cert), "--key", str(c_key),
                   "--peer-fingerprint", s_fp, "--remote", topo.server_addr, str(OPENVPN_PORT),
                   "--nobind", "--ifconfig", INNER_CLIENT, INNER_SERVER]
    with contextlib.ExitStack() as stack:
        # Neither end reports itself connected before the TLS handshake: start both, then wait.
        server = openvpn_start(b, stack, topo.server, "server", server_args)
        client = openvpn_start(b, stack, topo.client, "client", client_args)
        server_pid, _ = openvpn_wait(b, topo.server, "server", *server)
        client_pid, cipher = openvpn_wait(b, topo.client, "client", *client)
        if cipher != "AES-256-GCM":
            raise RuntimeError(f"OpenVPN negotiated {cipher!r}, not AES-256-GCM")
        yield Link(INNER_SERVER, OPENVPN_IF, pids={"client": client_pid, "server": server_pid},
                   details={"cipher": cipher})


# --- measurements ---------------------------------------------------------------------------------


def start(b: Bench, t: Target) -> contextlib.AbstractContextManager[Link]:
    if t.kind == "veth":
        return raw_veth(b)
    if t.kind == "tunseal":
        return tunseal(b, t)
    if t.kind == "wireguard-go":
        return wireguard_go(b)
    if t.kind == "openvpn":
        return openvpn(b)
    raise ValueError(f"unknown target kind {t.kind!r}")


def ping_once(b: Bench, addr: str) -> bool:
    done = b.lab.run(b.topo.client, "ping", "-n", "-c", "1", "-W", "1", addr,
                     check=False, timeout=5)
    return done.returncode == 0


def wait_reachable(b: Bench, addr: str) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT
    while not ping_once(b, addr):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{addr} unreachable through the tunnel for {REACH_TIMEOUT:.0f} s")


def ping_rtt(b: Bench, addr: str) -> dict[str, float]:
    done = b.lab.run(b.topo.client, "ping", "-n", "-q", "-c", str(PING_COUNT),
                     "-i", PING_INTERVAL, "-W", "1", addr, check=False, timeout=30)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", done.stdout)
    loss = re.search(r"([\d.]+)% packet loss", done.stdout)
    if rtt is None or loss is None:
        raise RuntimeError(f"ping {addr}: {(done.stdout + done.stderr).strip()[-500:]}")
    low, avg, high, mdev = (float(x) for x in rtt.groups())
    return {"min_ms": low, "avg_ms": avg, "max_ms": high, "mdev_ms": mdev,
            "loss_percent": float(loss.group(1))}


@contextlib.contextmanager
def iperf_server(b: Bench) -> Iterator[None]:
    proc = b.lab.popen(b.topo.server, "iperf3", "-s", "-p", str(IPERF_PORT), lifetime=b.lifetime,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not b.lab.run(b.topo.server, "ss", "-Hltn", f"sport = :{IPERF_PORT}").stdout:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the iperf3 server did not start")
            time.sleep(0.1)
        yield
    finally:
        b.lab.stop(proc)


def iperf(b: Bench, link: Link, streams: int) -> dict[str, Any]:
    """One iperf3 TCP run from the client namespace, with the VPN processes' CPU time."""
    cpu_before = {side: cpu_seconds(pid) for side, pid in link.pids.items()}
    load = os.getloadavg()[0]
    done = b.lab.run(b.topo.client, "iperf3", "-c", link.server_addr, "-p", str(IPERF_PORT),
                     "-t", str(b.seconds), "-P", str(streams), "-J", "--connect-timeout", "5000",
                     check=False, timeout=b.seconds + IPERF_GRACE)
    cpu_after = {side: cpu_seconds(pid) for side, pid in link.pids.items()}
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 -P {streams}: {done.stderr.strip()[-500:]}") from None
    if "error" in doc:
        raise RuntimeError(f"iperf3 -P {streams}: {doc['error']}")
    received, sent = doc["end"]["sum_received"], doc["end"]["sum_sent"]
    gb = received["bytes"] / 1e9
    cpu = {side: round(after - before, 3) for side, before in cpu_before.items()
           if before is not None and (after := cpu_after[side]) is not None}
    return {
        "gbps": received["bits_per_second"] / 1e9,
        "bytes": received["bytes"],
        "retransmits": sent.get("retransmits"),
        "cpu_seconds": cpu,
        "cpu_s_per_gb": {side: round(s / gb, 3) for side, s in cpu.items()} if gb else {},
        "load_before": load,
        "iperf3_cpu_percent": doc["end"].get("cpu_utilization_percent", {}),
    }


def interface_mtu(b: Bench, ifname: str) -> int | None:
    done = b.lab.run(b.topo.client, "ip", "-j", "link", "show", "dev", ifname, check=False)
    with contextlib.suppress(ValueError, IndexError, KeyError):
        return int(json.loads(done.stdout)[0]["mtu"])
    return None


def measure(b: Bench, t: Target) -> dict[str, Any]:
    """Start ``t``, measure ping and every stream count, stop it; failures are recorded in the
    result ("error") so the other targets still run."""
    result: dict[str, Any] = {"name": t.name, "kind": t.kind, "mode": t.mode,
                              "cipher": t.cipher, "transport": t.transport,
                              "load_before": os.getloadavg()[0]}
    began = time.monotonic()
    try:
        with start(b, t) as link:
            result["details"] = link.details
            result["mtu"] = interface_mtu(b, link.ifname)
            wait_reachable(b, link.server_addr)
            result["ping"] = ping_rtt(b, link.server_addr)
            with iperf_server(b):
                result["tcp"] = {str(n): iperf(b, link, n) for n in b.streams}
            if link.after is not None:
                result.update(link.after())
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    if leftovers := b.lab.clear_namespaces():
        log.warning("%s left processes behind (killed): %s", t.name, leftovers)
        result["leftover_processes"] = leftovers
    result["load_after"] = os.getloadavg()[0]
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    return result


# --- the report -----------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: list[dict[str, Any]], targets: list[Target],
              streams: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per target: medians over rounds, and ratios to the reference targets of this run."""
    rows = []
    for t in targets:
        runs = [r for r in results if r["name"] == t.name]
        ok = [r for r in runs if "error" not in r]
        row: dict[str, Any] = {
            "name": t.name, "runs": len(runs), "failed": len(runs) - len(ok),
            "errors": [r["error"] for r in runs if "error" in r],
            "mtu": ok[0]["mtu"] if ok else None,
            "ping_avg_ms": _median([r["ping"]["avg_ms"] for r in ok]), "tcp": {},
        }
        for n in map(str, streams):
            tcp = [r["tcp"][n] for r in ok]
            row["tcp"][n] = {
                "gbps": _median([x["gbps"] for x in tcp]),
                "cpu_s_per_gb": {side: _median([x["cpu_s_per_gb"][side] for x in tcp
                                                if side in x["cpu_s_per_gb"]])
                                 for side in ("client", "server")
                                 if any(side in x["cpu_s_per_gb"] for x in tcp)},
                "load": _median([x["load_before"] for x in tcp]),
            }
        rows.append(row)
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        for n, tcp in row["tcp"].items():
            for key, ref_name in REFERENCES.items():
                ref = by_name.get(ref_name, {}).get("tcp", {}).get(n, {}).get("gbps")
                usable = ref and tcp["gbps"] is not None
                tcp[f"ratio_{key}"] = round(tcp["gbps"] / ref, 4) if usable else None
    return rows


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits + 1}f}" if 0 < abs(x) < 0.1 else f"{x:.{digits}f}"


def table(rows: list[dict[str, Any]], n: str) -> str:
    head = (f"{'name':<25} {'Gbit/s':>7} {'x raw':>7} {'x OpenVPN':>9} {'x wg-go':>8} "
            f"{'ping ms':>8} {'MTU':>5} {'CPU s/GB client/server':>22} {'load':>5}")
    lines = [head, "-" * len(head)]
    for row in rows:
        tcp = row["tcp"][n]
        if tcp["gbps"] is None:
            first = row["errors"][-1].splitlines()[0][:70]
            lines.append(f"{row['name']:<25} FAILED (see below): {first}")
            continue
        cpu = tcp["cpu_s_per_gb"]
        cpu_text = (f"{_num(cpu.get('client'))} / {_num(cpu.get('server'))}" if cpu else "-")
        lines.append(
            f"{row['name']:<25} {tcp['gbps']:>7.2f} {_num(tcp['ratio_raw'], 3):>7} "
            f"{_num(tcp['ratio_openvpn']):>9} {_num(tcp['ratio_wg']):>8} "
            f"{_num(row['ping_avg_ms'], 3):>8} {row['mtu'] or '-':>5} {cpu_text:>22} "
            f"{_num(tcp['load'], 1):>5}")
    return "\n".join(lines)


def report(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    topo = "client -- router -- server" if meta["router"] else "client -- server"
    out = [
        f"Tunseal throughput, {meta['date']}, tree {meta['commit']}",
        f"{meta['cpu']} x{meta['cpus']}, Linux {meta['kernel']}; veth {topo}, MTU {meta['mtu']}; "
        f"iperf3 TCP {meta['seconds']} s per run, {meta['rounds']} round(s), "
        f"medians shown; wall time {meta['wall_seconds']:.0f} s",
        "load average (1/5/15 min) at start {} , at end {}".format(
            *("/".join(f"{x:.2f}" for x in meta[k]) for k in ("load_start", "load_end"))),
    ]
    for n in map(str, meta["streams"]):
        out += ["", f"iperf3 -P {n}:", table(rows, n)]
    out += ["", "ratios: this row's Gbit/s over the reference's, same run and stream count; "
            "CPU: the VPN process on each end, seconds per GB received; load: 1-min load "
            "average as each iperf3 run began"]
    busiest = max([meta["load_start"][0], meta["load_end"][0],
                   *(tcp["load"] or 0 for row in rows for tcp in row["tcp"].values())])
    if busiest > (meta["cpus"] or 1):
        out.append(
            f"WARNING: the 1-min load average reached {busiest:.1f} on {meta['cpus']} CPUs: other "
            "work competed with these runs. Absolute Gbit/s are low, and CPU is shared per "
            "thread, which favours multi-threaded VPNs over single-threaded OpenVPN; compare "
            "CPU s/GB, or re-run on a quiet machine (see bench/README.md).")
    failed = [row for row in rows if row["failed"]]
    for row in failed:
        out.append(f"{row['name']}: {row['failed']} of {row['runs']} run(s) failed; last error:"
                   f"\n{row['errors'][-1]}")
    return "\n".join(out)


# --- running it -----------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = run(argv, check=False, timeout=10)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    return "unavailable"


def environment(args: argparse.Namespace, streams: tuple[int, ...]) -> dict[str, Any]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), cpu)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {tool: _first_line([tool, "--version"])
                     for tool in ("iperf3", "wireguard-go", "openvpn")},
        "router": args.router, "mtu": args.mtu, "seconds": args.seconds,
        "streams": list(streams), "rounds": args.rounds,
        "load_start": list(os.getloadavg()),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Tunseal end-to-end throughput beside the raw link, wireguard-go and OpenVPN, "
        "between two throwaway network namespaces (needs root). See bench/README.md.")
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 -t (default %(default)s)")
    ap.add_argument("--streams", default="1",
                    help="comma-separated iperf3 -P values, each a separate run (default 1; "
                    "try 1,4)")
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help="measure only these targets (shell patterns allowed, e.g. 'tunseal-*'); "
                    "ratios to a reference left out show as '-'")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every target this many times, in turn (default 1); the "
                    "table shows medians")
    ap.add_argument("--router", action="store_true",
                    help="put a forwarding router namespace between the two ends")
    ap.add_argument("--mtu", type=int, default=1500, help="veth MTU (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write every result as JSON to FILE")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        ap.error("--seconds must be 1-600")
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be 1-20")
    if not 1280 <= args.mtu <= 9000:
        ap.error("--mtu must be 1280-9000")
    try:
        args.streams = tuple(int(x) for x in args.streams.split(","))
    except ValueError:
        ap.error(f"--streams {args.streams!r}: expected numbers like 1,4")
    if not all(1 <= n <= 32 for n in args.streams):
        ap.error("--streams: each value must be 1-32")
    args.targets = list(TARGETS)
    if args.only:
        patterns = [p.strip() for p in args.only.split(",") if p.strip()]
        for p in patterns:
            if not any(fnmatch.fnmatchcase(t.name, p) for t in TARGETS):
                ap.error(f"--only: no target matches {p!r}; targets: "
                         f"{', '.join(t.name for t in TARGETS)}")
        args.targets = [t for t in TARGETS if any(fnmatch.fnmatchcase(t.name, p)
                                                  for p in patterns)]
    return args


def missing_tools(targets: list[Target]) -> list[str]:
    needed = set(REQUIRED_TOOLS["veth"])
    for t in targets:
        needed.update(REQUIRED_TOOLS[t.kind])
    return sorted(tool for tool in needed if shutil.which(tool) is None)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; raised in the main thread so every cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def run_all(args: argparse.Namespace, meta: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    total = len(args.targets) * args.rounds
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-bench-"))
    try:
        with Lab() as lab:
            topo = lab.topology(router=args.router, mtu=args.mtu)
            b = Bench(lab, topo, workdir, args.seconds, args.streams)
            for rnd in range(args.rounds):
                for t in args.targets:
                    print(f"[{len(results) + 1}/{total}] {t.name} (load {os.getloadavg()[0]:.2f})"
                          " ...", end=" ", file=sys.stderr, flush=True)
                    result = measure(b, t) | {"round": rnd}
                    results.append(result)
                    print(_progress(result), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _progress(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED after {result['wall_seconds']:.0f} s: {result['error'].splitlines()[0]}"
    rates = ", ".join(f"-P {n}: {r['gbps']:.2f} Gbit/s" for n, r in result["tcp"].items())
    return f"{rates}, ping {result['ping']['avg_ms']:.3f} ms ({result['wall_seconds']:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.list:
        print("\n".join(t.name for t in TARGETS))
        return 0
    if os.geteuid() != 0:
        print("bench.throughput: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if missing := missing_tools(args.targets):
        print(f"bench.throughput: missing {', '.join(missing)}; run "
              "'sudo bash installers/dev-deps.sh'", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    if stale := sweep_stale():
        print(f"removed namespaces left by an earlier run: {', '.join(stale)}", file=sys.stderr)
    meta = environment(args, args.streams)
    began = time.monotonic()
    try:
        results = run_all(args, meta)
    except (KeyboardInterrupt, Terminated) as e:
        why = f"{e}" if isinstance(e, Terminated) else "SIGINT"
        print(f"\n{why}: stopped; everything this run created has been removed",
              file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)
    meta["wall_seconds"] = round(time.monotonic() - began, 1)
    meta["load_end"] = list(os.getloadavg())
    rows = summarize(results, args.targets, args.streams)
    print(report(meta, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": rows, "results": results}, f, indent=2)
            f.write("\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
