"""An office gateway and its peers on the namespace lab, for tests/net/test_gateway.py.

::

    p00 ... pNN (one helper each, its own keyring) --+
    flood (a load generator)                        --+-- switch (bridge br0) -- gw (gateway helper)
                                                                                   |
                                                                         lan (a server) --+

The gateway helper runs ``--gateway CONFIG`` with a configuration written as docs/GATEWAY.md
describes; peers are added the way an administrator does it (``tunseal peer add NAME -o FILE``
through the gateway's socket); each peer's helper runs under helper/keyring-session.sh with a
keyring of its own, as on a separate machine, and imports its file unchanged.

Importable as ``gatewaylab`` from the test files next to it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers_proc
import netlab
from helpers_proc import HelperProcess

ROOT = Path(__file__).resolve().parents[2]
KEYRING_SESSION = ROOT / "helper" / "keyring-session.sh"
NO_GROUP = "no-such-group-tunseal"
GW_OUTER = "198.18.100.1"
GW_LAN = "198.18.200.1"
LAN_SERVER = "198.18.200.2"
LAN_NET = "198.18.200.0/24"
INNER_NET = "10.77.0.0/24"
GW_INNER = "10.77.0.1"
FLOOD_ADDR = "198.18.100.250"
PORT = 51900


class GatewayHelper(HelperProcess):
    """A helper that also runs the gateway described by ``config``."""

    def __init__(self, workdir: Path, config: Path, *, wrap: tuple[str, ...]):
        super().__init__(workdir, NO_GROUP, wrap=wrap)
        self.config = config

    def command(self) -> list[str]:
        return [*super().command(), "--gateway", str(self.config)]

    def rss_kb(self) -> int:
        """The gateway process's resident set size (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")


class SessionHelper(HelperProcess):
    """A peer's helper under keyring-session.sh: its own D-Bus session and gnome-keyring, like
    a helper on another machine. Stopping signals the helper itself first (so it takes its
    tunnel down while its keyring still runs); the session ends with it."""

    def __init__(self, workdir: Path, ns: str):
        passfile = workdir / "keyring.pass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        env = netlab.python_env(TUNSEAL_KEYRING_DIR=str(workdir / "keyring"))
        super().__init__(workdir, NO_GROUP, env=env,
                         wrap=("ip", "netns", "exec", ns, "bash", str(KEYRING_SESSION),
                               str(passfile)))
        self.helper_pid: int | None = None

    def wait_ready(self) -> None:
        super().wait_ready()
        self.helper_pid = self.pid

    def terminate(self) -> None:
        if self.helper_pid is not None and self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.helper_pid, signal.SIGTERM)
        elif self.running():
            super().terminate()

    def stop(self) -> int | None:
        self.terminate()
        if self.proc is None:
            return None
        try:
            return self.proc.wait(helpers_proc.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # the lab kills whatever is left in the namespace
            self.proc.wait(5)
            raise AssertionError("a peer's helper ignored SIGTERM") from None


@dataclass
class Peer:
    name: str
    ns: str
    outer: str
    helper: SessionHelper
    inner: str = ""
    profile: str = ""
    """The profile name in the peer's helper (the gateway's name, from the file)."""

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        return helpers_proc.cli_json(self.helper.socket, *args, expect=expect)

    def status(self) -> dict[str, Any]:
        with self.helper.client() as c:
            tunnels: list[dict[str, Any]] = c.call("status", name=self.profile)["tunnels"]
        return tunnels[0]


@dataclass
class Office:
    """The world of a gateway test (see the module docstring)."""

    lab: netlab.Lab
    workdir: Path
    gw: str
    lan: str
    switch: str
    gw_lan_if: str
    config: Path
    gateway: GatewayHelper
    name: str
    peers: list[Peer] = field(default_factory=list)
    flood: str = ""

    def gw_cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        return helpers_proc.cli(self.gateway.socket, *args, expect=expect)

    def gw_cli_json(self, *args: str, expect: int = 0) -> Any:
        return helpers_proc.cli_json(self.gateway.socket, *args, expect=expect)

    def gw_status(self) -> dict[str, Any]:
        with self.gateway.client() as c:
            tunnels: list[dict[str, Any]] = c.call("status", name=self.name)["tunnels"]
        return tunnels[0]

    def drops(self) -> dict[str, int]:
        return dict(self.gw_status()["drops"])


def gateway_config(name: str, key_ref: str) -> str:
    """The gateway's configuration file, as docs/GATEWAY.md describes it (no peers yet: they
    are added with `tunseal peer add`, which rewrites this file)."""
    return f"""# Tunseal gateway configuration (docs/GATEWAY.md)
format = 1

[gateway]
name = "{name}"
addresses = ["{GW_INNER}/24"]
mode = "ephemeral"
listen_port = {PORT}
public_endpoint = "{GW_OUTER}:{PORT}"
lan = ["{LAN_NET}"]
private_key = "{key_ref}"
"""


def _bridge_port(lab: netlab.Lab, switch: str, ns: str, addr: str) -> str:
    """A veth from ``ns`` (address ``addr``/24) to the switch's bridge; the end in ``ns``."""
    inside, port = lab.link(ns, switch, a_addr=f"{addr}/24", b_addr=None)
    lab.run(switch, "ip", "link", "set", "dev", port, "master", "br0")
    return inside


@contextlib.contextmanager
def office(lab: netlab.Lab, n_peers: int, *, flood: bool = False,
           allowed_ips: dict[str, list[str]] | None = None) -> Iterator[Office]:
    """The gateway up with ``n_peers`` peers added (``allowed_ips``: the ``--allowed-ip``
    values of some of them, by name), each peer's tunnel up. Everything the test started is
    stopped on the way out (the lab removes the namespaces)."""
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-gw-"))
    name = f"gw{uuid.uuid4().hex[:6]}"
    switch, gw, lan = lab.ns("switch"), lab.ns("gw"), lab.ns("lan")
    lab.run(switch, "ip", "-batch", "-", input="link add br0 type bridge\nlink set br0 up\n")
    _bridge_port(lab, switch, gw, GW_OUTER)
    gw_lan_if, _ = lab.link(gw, lan, a_addr=f"{GW_LAN}/24", b_addr=f"{LAN_SERVER}/24")
    lab.route(lan, INNER_NET, GW_LAN)  # plain routing: the LAN sees the peers' addresses
    config = workdir / "gateway.toml"
    config.write_text(gateway_config(name, f"{name}-gateway.private"))
    (workdir / "gw").mkdir()
    gateway = GatewayHelper(workdir / "gw", config, wrap=("ip", "netns", "exec", gw))
    the_office = Office(lab, workdir, gw, lan, switch, gw_lan_if, config, gateway, name)
    try:
        for i in range(n_peers):
            pname = f"p{i:02d}"
            ns = lab.ns(pname)
            outer = f"198.18.100.{10 + i}"
            _bridge_port(lab, switch, ns, outer)
            (workdir / pname).mkdir()
            the_office.peers.append(Peer(pname, ns, outer, SessionHelper(workdir / pname, ns)))
        if flood:
            the_office.flood = lab.ns("flood")
            _bridge_port(lab, switch, the_office.flood, FLOOD_ADDR)
        helpers: list[HelperProcess] = [gateway, *(p.helper for p in the_office.peers)]
        for h in helpers:
            h.launch()
        for h in helpers:
            _wait_ready(h)
        for p in the_office.peers:
            add_peer(the_office, p, (allowed_ips or {}).get(p.name, []))
        for p in the_office.peers:
            p.cli_json("up", p.profile)
        for p in the_office.peers:
            wait_up(p)
        yield the_office
    except BaseException:
        print("--- gateway log ---\n" + _tail(gateway.log()))
        raise
    finally:
        for h in [*(p.helper for p in the_office.peers), gateway]:
            with contextlib.suppress(Exception):
                h.terminate()
        for h in [*(p.helper for p in the_office.peers), gateway]:
            with contextlib.suppress(Exception):
                h.stop()
        shutil.rmtree(workdir, ignore_errors=True)


READY_ROUNDS = 3
"""Thirteen helpers, each with its own D-Bus session and gnome-keyring, start at once: on a
loaded 2-core machine (load average 19 seen) the first can need more than helpers_proc's 20 s
to answer. A helper still starting gets this many rounds of that wait; one that exited fails
at once."""


def _wait_ready(h: HelperProcess) -> None:
    for attempt in range(READY_ROUNDS):
        try:
            h.wait_ready()
            return
        except AssertionError:
            if attempt == READY_ROUNDS - 1 or not h.running():
                raise


def add_peer(o: Office, p: Peer, allowed_ips: list[str] | None = None) -> None:
    """``tunseal peer add NAME [--allowed-ip CIDR]... -o FILE`` on the gateway, ``tunseal
    import FILE`` on the peer (the file is deleted at once: it holds the peer's private key)."""
    path = o.workdir / f"{p.name}.tunseal"
    extra = [arg for net in allowed_ips or () for arg in ("--allowed-ip", net)]
    done = o.gw_cli("peer", "add", p.name, *extra, "-o", str(path))
    assert f"added peer {p.name}" in done.stdout, done.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    try:
        imported = p.cli_json("import", str(path))
    finally:
        path.unlink()
    p.profile = imported["profile"]["tunnel"]["name"]
    p.inner = imported["profile"]["interface"]["addresses"][0].split("/")[0]


def wait_up(p: Peer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (state := p.status()["state"]) != "up":
        if time.monotonic() > deadline:
            raise AssertionError(f"peer {p.name} is {state!r}, not up, after {timeout} s:\n"
                                 + _tail(p.helper.log()))
        time.sleep(0.2)


def _tail(text: str, lines: int = 40) -> str:
    kept = [line for line in text.splitlines() if not line.startswith("DEBUG ")]
    return "\n".join(kept[-lines:])


# --- traffic from many peers ------------------------------------------------------------------

_UDP_SINK = r"""
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(float(sys.argv[3]))
print("ready", flush=True)
seen = []
try:
    while True:
        data, peer = sock.recvfrom(2048)
        if data == b"stop":
            break
        seen.append([peer[0], data.decode(errors="replace")])
except socket.timeout:
    pass
print(json.dumps(seen), flush=True)
"""

_UDP_SEND = r"""
import socket, sys, time
src, dst, port, payload, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((src, 0))
for _ in range(count):
    sock.sendto(payload.encode(), (dst, port))
    time.sleep(0.05)
"""


class UdpSink:
    """A UDP listener on the LAN server recording (source address, payload) of every datagram."""

    def __init__(self, o: Office, port: int = 7100, idle: float = 20.0):
        self.o, self.port = o, port
        self.proc = o.lab.python_popen(o.lan, _UDP_SINK, LAN_SERVER, str(port), str(idle),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        netlab.wait_for_line(self.proc, "ready")

    def send_from(self, p: Peer, src: str, payload: str, count: int = 5) -> None:
        self.o.lab.python(p.ns, _UDP_SEND, src, LAN_SERVER, str(self.port), payload,
                          str(count))

    def seen(self) -> list[tuple[str, str]]:
        self.o.lab.python(self.o.lan, "import socket,sys; socket.socket(socket.AF_INET, "
                          "socket.SOCK_DGRAM).sendto(b'stop', (sys.argv[1], int(sys.argv[2])))",
                          LAN_SERVER, str(self.port))
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return [(src, payload) for src, payload in json.loads(out.splitlines()[-1])]


# --- a flood of handshake initiations ---------------------------------------------------------

_FLOOD = r"""
import json, os, random, socket, struct, sys, time
from core import noise, wire
from core.constants import MAC_LEN, Option
from core.handshake import Identity, Initiator, Suite
gw, port, pub, cipher = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4]
total, seconds, sources = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
rng = random.Random(7)
suite = Suite("ephemeral", cipher, False)

def initiation():
    # Syntactically valid, MAC1 correct (it only needs the gateway's public key), from a
    # static key the gateway has never heard of: it costs the gateway a Diffie-Hellman.
    ident = Identity(static_private=noise.generate_private_key(), peer_public=pub)
    return Initiator(suite, ident, device_id=0, local_index=rng.getrandbits(32) | 1,
                     now=time.time()).packet

def bad_mac(packet):
    hlen = packet[1] * 4
    header = bytearray(packet[:hlen])
    o1 = wire.option_offset(header, Option.MAC1)
    header[o1:o1 + MAC_LEN] = bytes(b ^ 0x5A for b in header[o1:o1 + MAC_LEN])
    header[10:12] = b"\0\0"
    struct.pack_into("!H", header, 10, wire.internet_checksum(header))
    return bytes(header) + packet[hlen:]

valid = [initiation() for _ in range(300)]
kinds = {"valid_mac1": valid, "bad_mac1": [bad_mac(p) for p in valid[:100]],
         "garbage": [os.urandom(rng.randint(12, 300)) for _ in range(100)]}
order = ["valid_mac1", "valid_mac1", "bad_mac1", "garbage"]
socks = []
for _ in range(sources):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    socks.append(s)
sent = {k: 0 for k in kinds}
print("ready", flush=True)
start = time.monotonic()
for i in range(total):
    if (ahead := i * seconds / total - (time.monotonic() - start)) > 0:
        time.sleep(ahead)
    kind = order[i % len(order)]
    try:
        socks[i % sources].sendto(kinds[kind][i % len(kinds[kind])], (gw, port))
        sent[kind] += 1
    except BlockingIOError:
        pass
    for s in socks if i % 256 == 0 else ():
        try:
            while s.recv(2048):  # cookie replies and handshake refusals: read and forget
                pass
        except BlockingIOError:
            pass
print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}), flush=True)
"""


def flood(o: Office, *, total: int, seconds: float, sources: int = 16
          ) -> subprocess.Popen[str]:
    """Start sending ``total`` bogus initiations over ``seconds`` from the flood namespace
    (half with a correct MAC1 for keys the gateway does not know, a quarter with a broken
    MAC1, a quarter random bytes) from ``sources`` UDP ports; the process prints a JSON
    summary when done."""
    pub = base64.b64decode(o.gw_cli_json("peer", "list")["public_key"])
    cipher = o.gw_status()["cipher"]
    proc = o.lab.python_popen(o.flood, _FLOOD, GW_OUTER, str(PORT), pub.hex(), cipher,
                              str(total), str(seconds), str(sources),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(proc, "ready", timeout=30)
    return proc
