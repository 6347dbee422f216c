"""Two real helpers and a real tunnel between them, across the namespace lab; traffic through it.

The world of every end-to-end tunnel test::

    client ns (helper C, profile c…) -- router ns -- server ns (helper S, profile s…)

:class:`TunnelPair` builds it the way a person would: profiles go in through ``tunseal import``,
keys are made by the helpers (``genkey``, ``genpsk``, ``setpeerkey``; a psk reaches the client in
an exported-with-secrets file that is imported there and deleted), tunnels come up with
``tunseal up``. Every CLI output and status reply is kept, with both helpers' logs, state
directories and every key the keyring held (:class:`SecretWatch`), so the pair can prove at the
end that no key material leaked anywhere.

Traffic: :func:`tcp_transfer` (deterministic pseudo-random bytes, sha256 on both ends),
:func:`udp_echo` (datagrams of many sizes up to the tunnel MTU, each echoed and compared),
:class:`Capture` (tcpdump on the server's outer interface, the packets read back from the pcap).

Importable as ``tunnellab`` from the test files next to it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers_proc
import netlab
from helpers_proc import HelperProcess

from core import noise
from core.constants import (
    DEFAULT_CIPHER,
    FIXED_HEADER_LEN,
    RAW_IP_PROTOCOL,
    TAG_LEN,
    Flag,
    PacketType,
)
from core.ipc import RequestError
from core.profile import Profile, ProfileSecrets, dumps, load
from helper.keystore import KeyringUnavailable, KeyStore

NO_GROUP = "no-such-group-tunseal"
"""The helpers' --group: it does not exist, so their sockets are root-only (tests run as root)."""
UP_TIMEOUT = 15.0
INNER4 = ("10.44.0.1", "10.44.0.2")
"""(server, client) inner IPv4 addresses."""
INNER6 = ("fd44:5eed::1", "fd44:5eed::2")
"""(server, client) inner IPv6 addresses (a /64 from the fd00::/8 ULA block)."""
MODES = ("plain", "psk", "rotating", "ephemeral", "ephemeral+psk")
"""The five security modes the tests cover; ``ephemeral+psk`` is Noise IKpsk2."""


@dataclass(frozen=True, slots=True)
class Spec:
    """What kind of tunnel to build."""

    mode: str = "ephemeral"
    cipher: str = DEFAULT_CIPHER
    transport: str = "udp"
    outer6: bool = False
    """The outer path is IPv6 (the client's endpoint is ``[addr]:port``)."""
    inner6: bool = False
    """The tunnel carries IPv6 too (fd44:5eed::/64 inside)."""
    persist: bool = False
    port: int = 51900
    rekey_messages: int | None = None
    """rotating mode: a new session after this many packets (the profile's default if None)."""

    @property
    def profile_mode(self) -> str:
        return self.mode.removesuffix("+psk")

    @property
    def has_psk(self) -> bool:
        return self.mode in ("psk", "rotating", "ephemeral+psk")

    @property
    def sealed(self) -> bool:
        return self.mode != "plain"

    @property
    def id(self) -> str:
        parts = [self.mode, self.cipher if self.sealed else "none", self.transport]
        parts += ["outer6"] if self.outer6 else []
        parts += ["inner6"] if self.inner6 else []
        return "-".join(parts)


def read_key(ref: str, *, tries: int = 3) -> bytes | None:
    """``KeyStore().get(ref)``, tried up to ``tries`` times: the throwaway gnome-keyring of
    tests/run.sh now and then answers a lookup of its default collection with a path that does
    not exist while other processes add and delete items (KeyringUnavailable wrapping
    ItemNotFoundException); the next lookup works."""
    for attempt in range(tries):
        try:
            return KeyStore().get(ref)
        except KeyringUnavailable:
            if attempt == tries - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


class SecretWatch:
    """Everything a test saw, and every key it knows of: :meth:`check` asserts that no key shows
    up in any transcript, helper log or file under a state directory."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.transcript: list[str] = []
        self.logs: list[Path] = []
        self.state_dirs: list[Path] = []
        self.payloads: list[bytes] = []
        """Inner packet contents that went through the tunnel: never logged either."""

    def note_keys(self, refs: list[str]) -> None:
        """Read ``refs`` from the keyring (as the helper stored them) and remember the keys."""
        for ref in refs:
            key = read_key(ref)
            if key is not None:
                self.keys[f"{ref}#{key.hex()[:8]}"] = key

    def findings(self) -> list[str]:
        texts = [("transcript", "\n".join(self.transcript))]
        texts += [(str(p), p.read_text(errors="replace")) for p in self.logs if p.exists()]
        blobs: list[tuple[str, bytes]] = []
        for d in self.state_dirs:
            for path in sorted(d.rglob("*")) if d.exists() else []:
                if path.is_file():
                    data = path.read_bytes()
                    blobs.append((str(path), data))
                    texts.append((str(path), data.decode(errors="replace")))
        found = []
        for ref, key in self.keys.items():
            for where, text in texts:
                for spelling in helpers_proc.spellings(key):
                    if spelling in text:
                        found.append(f"key {ref.split('#')[0]} as {spelling[:6]}... in {where}")
            for where, data in blobs:
                if key in data:
                    found.append(f"key {ref.split('#')[0]} as raw bytes in {where}")
        for payload in self.payloads:
            for where, text in texts:
                if payload.hex() in text or payload.decode(errors="replace") in text:
                    found.append(f"payload {payload[:8]!r}... in {where}")
        return found

    def check(self, *, expect_keys: bool = True) -> None:
        """Assert that nothing leaked; with ``expect_keys``, also that there were keys to look
        for (a check that knows no key proves nothing)."""
        assert self.keys or not expect_keys, "no key was ever read back from the keyring"
        found = self.findings()
        assert not found, "key material leaked:\n" + "\n".join(found)


@dataclass
class End:
    """One end of the tunnel: a namespace, its helper, its profile."""

    role: str
    ns: str
    helper: HelperProcess
    name: str
    watch: SecretWatch
    inner4: str
    inner6: str

    def cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        return helpers_proc.cli(self.helper.socket, *args, expect=expect,
                                transcript=self.watch.transcript)

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        return helpers_proc.cli_json(self.helper.socket, *args, expect=expect,
                                     transcript=self.watch.transcript)

    def status(self, *, cli: bool = True) -> dict[str, Any]:
        """This end's tunnel, as ``tunseal --json status NAME`` prints it; with ``cli=False``,
        the same reply straight from the socket (for polling loops: no process per poll)."""
        if cli:
            tunnels: list[dict[str, Any]] = self.cli_json("status", self.name)["tunnels"]
        else:
            with self.helper.client() as c:
                tunnels = c.call("status", name=self.name)["tunnels"]
            self.watch.transcript.append(json.dumps(tunnels))
        assert [t["name"] for t in tunnels] == [self.name], tunnels
        return tunnels[0]

    def drops(self, *, cli: bool = True) -> dict[str, int]:
        return dict(self.status(cli=cli)["drops"])

    def key_refs(self) -> list[str]:
        # The helper names a profile's keys itself (helper/keyrefs.py).
        return [f"profile:{self.name}:private", f"profile:{self.name}:psk"]


class TunnelPair:
    """Two helpers in the client and server namespaces of ``topo``; :meth:`build` makes the
    profiles and keys, :meth:`up` brings the tunnel up."""

    def __init__(self, lab: netlab.Lab, topo: netlab.Topology, spec: Spec, workdir: Path):
        self.lab = lab
        self.topo = topo
        self.spec = spec
        self.workdir = workdir
        self.watch = SecretWatch()
        tag = uuid.uuid4().hex[:8]
        self.server = self._end("server", topo.server, f"s{tag}", 0)
        self.client = self._end("client", topo.client, f"c{tag}", 1)

    def _end(self, role: str, ns: str, name: str, i: int) -> End:
        d = self.workdir / role
        d.mkdir()
        helper = HelperProcess(d, NO_GROUP, wrap=("ip", "netns", "exec", ns))
        self.watch.logs.append(helper.log_path)
        self.watch.state_dirs.append(helper.state_dir)
        return End(role, ns, helper, name, self.watch, INNER4[i], INNER6[i])

    @property
    def ends(self) -> tuple[End, End]:
        return self.server, self.client

    @property
    def endpoint(self) -> str:
        port = self.spec.port
        if self.spec.outer6:
            assert self.topo.server_addr6 is not None, "build the topology with v6=True"
            return f"[{self.topo.server_addr6}]:{port}"
        return f"{self.topo.server_addr}:{port}"

    @property
    def client_outer(self) -> str:
        """The client's outer address, the source of its tunnel packets."""
        addr = self.topo.client_addr6 if self.spec.outer6 else self.topo.client_addr
        assert addr is not None
        return addr

    @property
    def mtu(self) -> int:
        return 1408

    # --- building ------------------------------------------------------------------------------

    def start_helpers(self) -> None:
        for end in self.ends:
            end.helper.launch()
        for end in self.ends:
            end.helper.wait_ready()

    def profile(self, end: End, *, public_key: str = "") -> Profile:
        spec = self.spec
        other = self.client if end is self.server else self.server
        addresses = [f"{end.inner4}/24"]
        allowed = [f"{other.inner4}/32"]
        if spec.inner6:
            addresses.append(f"{end.inner6}/64")
            allowed.append(f"{other.inner6}/128")
        mode = spec.profile_mode
        rekey = {"rekey_messages": spec.rekey_messages} if spec.rekey_messages else {}
        return Profile(
            end.name, mode=mode, cipher=spec.cipher, persist=spec.persist, **rekey,
            addresses=tuple(addresses), allowed_ips=tuple(allowed),
            listen_port=spec.port if end is self.server else 0,
            endpoint="" if end is self.server else self.endpoint,
            transport=spec.transport,
            public_key=public_key or (placeholder_key() if mode == "ephemeral" else ""),
            private_key_ref=f"{end.name}.private" if mode == "ephemeral" else "",
            psk_ref=f"{end.name}.psk" if spec.has_psk else "",
        )

    def import_profile(self, end: End, profile: Profile,
                       secrets: ProfileSecrets | None = None) -> dict[str, Any]:
        """``tunseal import`` of a file written like an export; a file with secrets is 0600 and
        deleted right after the import."""
        fd, path = tempfile.mkstemp(prefix="import-", suffix=".tunseal", dir=self.workdir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(dumps(profile, secrets))
            result: dict[str, Any] = end.cli_json("import", "--replace", path)
        finally:
            os.unlink(path)
        return result

    def build(self) -> None:
        """Profiles and keys on both ends, the way the docs tell a person to make them."""
        server, client = self.ends
        self.import_profile(server, self.profile(server))
        secrets = None
        if self.spec.has_psk:
            server.cli("genpsk", server.name)
            secrets = ProfileSecrets(psk=self.exported_psk(server))
        self.import_profile(client, self.profile(client), secrets)
        if self.spec.profile_mode == "ephemeral":
            keys = {end.name: end.cli("genkey", end.name).stdout.strip() for end in self.ends}
            for end in self.ends:
                assert end.cli("pubkey", end.name).stdout.strip() == keys[end.name]
            server.cli("setpeerkey", server.name, keys[client.name])
            client.cli("setpeerkey", client.name, keys[server.name])
        self.note_keys()

    def exported_psk(self, end: End) -> bytes:
        """The psk of ``end``'s profile, through ``tunseal export --with-secrets -o FILE`` (the
        documented way to hand it to the peer); the file is deleted at once."""
        path = self.workdir / f"export-{end.name}.tunseal"
        done = helpers_proc.cli(end.helper.socket, "export", end.name, "--with-secrets", "-o",
                                str(path))  # not in the transcript: the user asked for the keys
        assert done.stdout.strip() == f"exported profile {end.name!r} to {path}"
        try:
            assert path.stat().st_mode & 0o777 == 0o600
            _profile, secrets = load(path)
        finally:
            path.unlink()
        assert secrets is not None and secrets.psk is not None
        return secrets.psk

    def note_keys(self) -> None:
        self.watch.note_keys([ref for end in self.ends for ref in end.key_refs()])

    def up(self, timeout: float = UP_TIMEOUT) -> None:
        """``tunseal up`` on the server, then the client; wait until both say up."""
        for end in self.ends:
            status = end.cli_json("up", end.name)["status"]
            assert status["state"] not in ("down", "error"), status
        self.wait_state("up", timeout=timeout)

    def wait_state(self, state: str, *, ends: tuple[End, ...] | None = None,
                   timeout: float = UP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(ends or self.ends)
        while pending:
            pending = [e for e in pending if e.status(cli=False)["state"] != state]
            if not pending:
                assert all(e.status()["state"] == state for e in ends or self.ends)
                return
            if time.monotonic() > deadline:
                shown = {e.role: e.status() for e in pending}
                logs = {e.role: "\n".join([line for line in e.helper.log().splitlines()
                                            if not line.startswith("DEBUG")][-30:])
                        for e in pending}
                raise AssertionError(f"not {state} after {timeout} s: {shown}\n{logs}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        """After a failure: remove what can still be removed, stop the helpers; never raises."""
        for end in self.ends:
            if end.helper.running():
                with contextlib.suppress(Exception), end.helper.client(timeout=5) as c:
                    c.call("remove_profile", name=end.name)
            end.helper.terminate()
        for end in self.ends:
            with contextlib.suppress(Exception):
                end.helper.stop()

    def teardown(self) -> None:
        """Remove the profiles (and with them their keys) and stop both helpers."""
        for end in self.ends:
            if end.helper.running():
                self.watch.note_keys(end.key_refs())
                with end.helper.client() as c:
                    try:
                        c.call("remove_profile", name=end.name)
                    except RequestError as e:
                        if e.code != "not_found":  # a test may have removed it itself
                            raise
                end.helper.terminate()
        problems = []
        for end in self.ends:
            try:
                end.helper.stop()
            except AssertionError as e:
                problems.append(f"{end.role}: {e}")
        assert not problems, problems


@contextlib.contextmanager
def tunnel_pair(lab: netlab.Lab, spec: Spec, *, build: bool = True,
                up: bool = True) -> Iterator[TunnelPair]:
    """A :class:`TunnelPair` on a fresh client -- router -- server topology; on the way out,
    the profiles are removed, the helpers stopped, the key-leak check run and the work directory
    deleted, whatever happened."""
    topo = netlab.two_hosts_with_router(lab, v6=spec.outer6)
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-net-"))
    pair = TunnelPair(lab, topo, spec, workdir)
    try:
        pair.start_helpers()
        if build:
            pair.build()
        if build and up:
            pair.up()
        yield pair
        pair.teardown()
        pair.watch.check(expect_keys=spec.sealed)
    finally:
        pair.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def placeholder_key() -> str:
    """A valid public key nobody holds the private key of, until ``setpeerkey`` replaces it."""
    return base64.b64encode(noise.public_key(noise.generate_private_key())).decode()


# --- traffic ---------------------------------------------------------------------------------

_TCP_RECEIVER = r"""
import hashlib, json, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
srv.settimeout(timeout)
print("ready", flush=True)
conn, peer = srv.accept()
conn.settimeout(timeout)
digest, total, buf = hashlib.sha256(), 0, bytearray(1 << 20)
while (n := conn.recv_into(buf)):
    digest.update(memoryview(buf)[:n])
    total += n
conn.close()
print(json.dumps({"sha256": digest.hexdigest(), "bytes": total, "peer": peer[0]}), flush=True)
"""

_TCP_SENDER = r"""
import hashlib, json, random, socket, sys, time
host, port, nbytes, seed, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5])
rng, digest, sent = random.Random(seed), hashlib.sha256(), 0
started = time.monotonic()
sock = socket.create_connection((host, port), timeout=timeout)
while sent < nbytes:
    chunk = rng.randbytes(min(1 << 18, nbytes - sent))
    sock.sendall(chunk)
    digest.update(chunk)
    sent += len(chunk)
sock.shutdown(socket.SHUT_WR)
assert sock.recv(1) == b""  # the receiver closes once it has read everything
print(json.dumps({"sha256": digest.hexdigest(), "bytes": sent,
                  "seconds": time.monotonic() - started}), flush=True)
"""


def expected_sha256(nbytes: int, seed: int) -> str:
    """What :func:`tcp_transfer`'s sender streams: ``random.Random(seed)``, 256 KiB at a time."""
    rng, digest, made = random.Random(seed), hashlib.sha256(), 0
    while made < nbytes:
        chunk = rng.randbytes(min(1 << 18, nbytes - made))
        digest.update(chunk)
        made += len(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Transfer:
    sent: dict[str, Any]
    received: dict[str, Any]
    expected: str

    @property
    def mbit_per_s(self) -> float:
        return float(self.sent["bytes"]) * 8 / 1e6 / max(float(self.sent["seconds"]), 1e-6)


def tcp_transfer(pair: TunnelPair, nbytes: int, *, v6: bool = False, port: int = 5201,
                 seed: int | None = None, timeout: float = 120.0) -> Transfer:
    """Stream ``nbytes`` from the client's inner address to the server's; both ends hash."""
    lab = pair.lab
    seed = random.randrange(1 << 30) if seed is None else seed
    dst = pair.server.inner6 if v6 else pair.server.inner4
    receiver = lab.python_popen(pair.topo.server, _TCP_RECEIVER, dst, str(port), str(timeout),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(receiver, "ready")
    sender = lab.python_popen(pair.topo.client, _TCP_SENDER, dst, str(port), str(nbytes),
                              str(seed), str(timeout),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = _json_result(sender, timeout + 10)
    received = _json_result(receiver, 10)
    return Transfer(sent, received, expected_sha256(nbytes, seed))


def _json_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"{proc.args[-6:]!r} did not finish: {out} {err}") from None
    assert proc.returncode == 0, (proc.returncode, out, err)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, (out, err)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def assert_transfer(t: Transfer, nbytes: int, pair: TunnelPair, *, v6: bool = False) -> None:
    assert t.sent["bytes"] == t.received["bytes"] == nbytes, (t.sent, t.received)
    assert t.sent["sha256"] == t.received["sha256"] == t.expected
    src = pair.client.inner6 if v6 else pair.client.inner4
    assert ipaddress.ip_address(t.received["peer"]) == ipaddress.ip_address(src)


_UDP_ECHO = r"""
import json, socket, sys
host, port, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.bind((host, port))
sock.settimeout(idle)
print("ready", flush=True)
seen = {}
while True:
    try:
        data, peer = sock.recvfrom(65535)
    except socket.timeout:
        break
    if data == b"stop":
        break
    key = data[:4].hex()
    seen[key] = seen.get(key, 0) + 1
    sock.sendto(data, peer)
print(json.dumps({"seen": seen}), flush=True)
"""

_UDP_CLIENT = r"""
import json, random, socket, sys
host, port, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sizes, marker = json.loads(sys.argv[4]), bytes.fromhex(sys.argv[5])
first, stop = int(sys.argv[6]), sys.argv[7] == "stop"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.connect((host, port))
sock.settimeout(2.0)
rng = random.Random(seed)
ok, lost, wrong, retries = 0, [], [], 0
for i, size in enumerate(sizes, first):
    payload = (i.to_bytes(4, "big") + marker + rng.randbytes(size))[:size]
    for attempt in range(3):
        sock.send(payload)
        try:
            for _ in range(10):  # skip late echoes of earlier retries, a bounded number
                if (echo := sock.recv(65535))[:4] == payload[:4]:
                    break
        except socket.timeout:
            retries += 1
            continue
        if echo == payload:
            ok += 1
        else:
            wrong.append(i)
        break
    else:
        lost.append(size)
if stop:
    sock.send(b"stop")
print(json.dumps({"ok": ok, "lost": lost, "wrong": wrong, "retries": retries}), flush=True)
"""

_STOP_ECHO = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
socket.socket(family, socket.SOCK_DGRAM).sendto(b"stop", (host, port))
"""


def echo_sizes(max_payload: int, count: int, seed: int = 7) -> list[int]:
    """``count`` datagram sizes from 4 bytes to ``max_payload``: both ends, then a spread."""
    rng = random.Random(seed)
    fixed = [4, 5, 64, 576, 1000, max_payload - 1, max_payload]
    spread = [rng.randint(4, max_payload) for _ in range(max(0, count - len(fixed)))]
    return (fixed + spread)[:count]


MARKER = b"tunseal-test-plaintext-marker-%%"
"""Every echoed datagram of 36 bytes or more carries this right after its 4-byte number: it
must be visible on the outer wire in plain mode only, and never in a log."""


class EchoServer:
    """A UDP echo server at the server's inner address that counts every datagram it gets by
    the datagram's 4-byte number (a packet delivered twice shows up as a count of 2)."""

    def __init__(self, pair: TunnelPair, *, v6: bool = False, port: int = 7007,
                 idle: float = 60.0):
        self.pair, self.port = pair, port
        self.host = pair.server.inner6 if v6 else pair.server.inner4
        self.proc = pair.lab.python_popen(pair.topo.server, _UDP_ECHO, self.host, str(port),
                                          str(idle), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(self.proc, "ready")

    def exchange(self, sizes: list[int], *, first: int = 0, stop: bool = True) -> dict[str, Any]:
        """From the client, send datagrams numbered ``first``, ``first + 1``, ... of ``sizes``
        one at a time, each waiting for its echo; returns what the client saw."""
        self.pair.watch.payloads.append(MARKER)
        client = self.pair.lab.python_popen(
            self.pair.topo.client, _UDP_CLIENT, self.host, str(self.port), "11",
            json.dumps(sizes), MARKER.hex(), str(first), "stop" if stop else "keep",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return _json_result(client, 120)

    def counts(self) -> dict[str, int]:
        """Stop the server; how often each datagram number arrived."""
        if self.proc.poll() is None:
            self.pair.lab.python(self.pair.topo.server, _STOP_ECHO, self.host, str(self.port))
        seen: dict[str, int] = _json_result(self.proc, 30)["seen"]
        return seen


def udp_echo(pair: TunnelPair, *, count: int = 100, v6: bool = False,
             port: int = 7007) -> tuple[dict[str, Any], dict[str, Any], list[int]]:
    """``count`` datagrams of varying sizes up to the largest that fits the tunnel MTU, from the
    client to an echo server at the server's inner address, one at a time. Returns (client
    result, server result, sizes)."""
    max_payload = pair.mtu - (40 if v6 else 20) - 8
    sizes = echo_sizes(max_payload, count)
    server = EchoServer(pair, v6=v6, port=port, idle=20)
    result = server.exchange(sizes)
    echoed = {"seen": server.counts()}
    return result, echoed, sizes


def assert_udp_echo(result: dict[str, Any], echoed: dict[str, Any], sizes: list[int]) -> None:
    assert result["lost"] == [] and result["wrong"] == [], result
    assert result["ok"] == len(sizes), result
    assert result["retries"] == 0, result
    assert len(echoed["seen"]) == len(sizes)
    assert set(echoed["seen"].values()) == {1}, "a datagram arrived twice"


# --- capturing the outer packets --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outer:
    """One captured outer packet: its source and destination and the Tunseal packet it carries
    (the UDP payload, or the raw IP payload)."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass
class Capture:
    """``tcpdump -w`` on the server's outer interface, for packets going to the server."""

    pair: TunnelPair
    proc: subprocess.Popen[str] | None = None
    path: Path = field(default_factory=Path)
    summary: str = ""

    def __enter__(self) -> Capture:
        pair = self.pair
        self.path = pair.workdir / f"capture-{uuid.uuid4().hex[:6]}.pcap"
        if pair.spec.transport == "raw":
            what = f"ip6 proto {RAW_IP_PROTOCOL}" if pair.spec.outer6 else \
                f"ip proto {RAW_IP_PROTOCOL}"
        else:
            what = f"udp dst port {pair.spec.port}"
        self.proc = pair.lab.popen(
            pair.topo.server, "tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0",
            "-i", pair.topo.server_if, "-w", str(self.path), what,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        netlab.wait_for_line(self.proc, "tcpdump: listening on")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        # tcpdump stops reading at SIGTERM: what it has not written yet is lost. On a busy
        # machine it lags, so wait (3 s at most) until the file has stopped growing.
        size, still, deadline = -1, 0, time.monotonic() + 3
        while still < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.path.stat().st_size if self.path.exists() else 0
            still, size = (still + 1, size) if now == size else (0, now)
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            raise AssertionError("tcpdump did not stop on SIGTERM") from None
        # tcpdump counts what arrives while it shuts down as "dropped by kernel" (keepalives and
        # probes keep coming), so its statistics say nothing; tests count what they need.
        self.summary = out

    def packets(self) -> list[Outer]:
        return read_pcap(self.path.read_bytes())

    def wait_until(self, enough: Callable[[list[Outer]], bool], timeout: float = 10.0) -> None:
        """While tcpdump runs, wait (bounded) until what it has written satisfies ``enough``:
        on a loaded machine it can lag behind the traffic for longer than __exit__'s "file
        stopped growing" wait, and what it has not written at SIGTERM is lost (seen: 30 of 40
        packets). A partly written last record is read again on the next try."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.path.exists() and enough(self.packets()):
                    return
            except (struct.error, IndexError, ValueError, AssertionError):
                pass  # tcpdump is in the middle of writing a record
            time.sleep(0.1)


def read_pcap(data: bytes) -> list[Outer]:
    """The IPv4/IPv6 packets of a classic pcap file of Ethernet frames (what tcpdump -w
    writes on a veth), as :class:`Outer`."""
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1, f"expected Ethernet frames, not link type {linktype}"
    out, off = [], 24
    while off + 16 <= len(data):
        caplen, wirelen = struct.unpack_from(endian + "II", data, off + 8)
        frame = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        assert caplen == wirelen, "truncated capture"
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        ip = frame[14:]
        if ethertype == 0x0800:
            ihl = (ip[0] & 0x0F) * 4
            proto, total = ip[9], struct.unpack_from("!H", ip, 2)[0]
            src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
            body = ip[ihl:total]
        elif ethertype == 0x86DD:
            proto, plen = ip[6], struct.unpack_from("!H", ip, 4)[0]
            src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
            body = ip[40:40 + plen]
        else:
            continue
        if proto == 17:
            sport, dport = struct.unpack_from("!HH", body)
            out += [Outer(src, sport, dst, dport, p) for p in split_gso(body[8:])]
        elif proto == RAW_IP_PROTOCOL:
            out.append(Outer(src, 0, dst, 0, body))
    return out


def split_gso(payload: bytes) -> list[bytes]:
    """The datagrams of a UDP GSO super-packet (veths pass them unsegmented, so tcpdump sees
    them whole): equal-sized segments, the last maybe shorter, each the size of the first
    Tunseal data packet, whose length its header gives."""
    if len(payload) < FIXED_HEADER_LEN or payload[0] & 0x0F not in _SEALABLE:
        return [payload]
    hlen, inner_len = payload[1] * 4, struct.unpack_from("!H", payload, 2)[0]
    flags = struct.unpack_from("!H", payload, 8)[0]
    seg = hlen + inner_len + (TAG_LEN if flags & Flag.ENCRYPTED else 0)
    if seg < FIXED_HEADER_LEN or seg >= len(payload):
        return [payload]
    return [payload[i:i + seg] for i in range(0, len(payload), seg)]


_SEALABLE = (PacketType.DATA, PacketType.KEEPALIVE, PacketType.CONTROL)


_SENDER = r"""
import json, socket, sys
transport, dst, dport, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
packets = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
if transport == "raw":
    sock = socket.socket(family, socket.SOCK_RAW, 253)
    for p in packets:
        sock.sendto(p, (dst, 0))
else:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", sport))
    for p in packets:
        sock.sendto(p, (dst, dport))
print(json.dumps({"sent": len(packets), "port": sock.getsockname()[1]}), flush=True)
"""


def send_outer(pair: TunnelPair, packets: list[bytes], *, sport: int = 0) -> dict[str, Any]:
    """Send ``packets`` (Tunseal packets) from the client namespace to the server's outer address
    and tunnel port, over the pair's transport, from UDP port ``sport`` (0: any)."""
    dst = pair.topo.server_addr6 if pair.spec.outer6 else pair.topo.server_addr
    assert dst is not None
    done = pair.lab.python(pair.topo.client, _SENDER, pair.spec.transport, dst,
                           str(pair.spec.port), str(sport),
                           input=json.dumps([p.hex() for p in packets]))
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ip_json(lab: netlab.Lab, ns: str, *args: str) -> list[dict[str, Any]]:
    """``ip -j ARGS`` in ``ns``, parsed."""
    out = lab.run(ns, "ip", "-j", *args).stdout
    parsed: list[dict[str, Any]] = json.loads(out or "[]")
    return parsed
