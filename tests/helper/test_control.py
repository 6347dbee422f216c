"""The helper's control plane end to end: a real ``tunseal-helper`` process, real users and groups,
the real Secret Service (run through tests/run.sh), the real CLI.

Every test runs as root; throwaway users and the group are created here and deleted afterwards,
and every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import random
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netlab
import pytest
from helpers_proc import HelperProcess

from core import noise
from core.ipc import Event
from core.ipcclient import Client
from helper.keystore import KeyStore

pytestmark = [pytest.mark.keyring, pytest.mark.xdist_group("helper-control")]

ROOT = Path(__file__).resolve().parents[2]
RUNUSER = "/usr/sbin/runuser"
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root, closed to others
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
EVENT_TIMEOUT = 10.0

if os.geteuid() != 0:
    pytest.skip("the control-plane tests create users and groups: run them as root",
                allow_module_level=True)


# --- the world: a group, two users, a helper ------------------------------------------------------


def _sh(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _unused_name(prefix: str, exists: Callable[[str], bool]) -> str:
    for _ in range(100):
        name = f"{prefix}{random.randint(1000, 99999)}"
        if not exists(name):
            return name
    raise RuntimeError(f"no free {prefix}NNNN name")


def _group_exists(name: str) -> bool:
    return _sh("getent", "group", name).returncode == 0


def _user_exists(name: str) -> bool:
    return _sh("getent", "passwd", name).returncode == 0


@dataclass
class World:
    group: str
    gid: int
    outsider: str
    member: str
    workdir: Path
    helper: HelperProcess
    transcript: list[str] = field(default_factory=list)
    """Everything the CLI printed and every event seen, for the key-leak checks."""

    @property
    def socket(self) -> str:
        return str(self.helper.socket)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with contextlib.ExitStack() as cleanup:
        group = _unused_name("tsg", _group_exists)
        assert _sh("groupadd", group).returncode == 0
        cleanup.callback(_sh, "groupdel", group)
        users = []
        for extra in ([], ["-G", group]):
            user = _unused_name("ts", _user_exists)
            made = _sh("useradd", "-M", "-s", "/usr/sbin/nologin", *extra, user)
            assert made.returncode == 0, made.stderr
            cleanup.callback(_sh, "userdel", user)
            users.append(user)
        workdir = Path(tempfile.mkdtemp(prefix="tunseal-control-"))
        cleanup.callback(_rmtree, workdir)
        workdir.chmod(0o755)  # the throwaway users must reach the socket
        helper = HelperProcess(workdir, group)
        cleanup.callback(helper.stop)
        helper.start()
        yield World(group, grp.getgrnam(group).gr_gid, users[0], users[1], workdir, helper)


def _rmtree(path: Path) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=30)


@pytest.fixture
def name(world: World) -> Iterator[str]:
    """A fresh profile name, removed (with its keys) after the test."""
    profile = f"ctl{uuid.uuid4().hex[:8]}"
    yield profile
    with world.helper.client() as c, contextlib.suppress(Exception):
        c.call("remove_profile", name=profile)


# --- running things as other users, and speaking the protocol by hand ----------------------------

USER_SCRIPT = r"""
import json, socket, sys
from core.errors import IPCError
from core.ipcclient import Client
path, mode = sys.argv[1], sys.argv[2]
if mode == "silent":  # connect, send nothing, print what the helper says
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(path)
    except OSError as e:
        print(json.dumps({"connect_error": e.errno})); sys.exit()
    data = s.recv(65536)
    print(json.dumps({"received": data.decode(), "eof_after": s.recv(10) == b""}))
    sys.exit()
try:
    print(json.dumps({"ok": True, "result": Client(path, timeout=10).call(mode)}))
except IPCError as e:
    print(json.dumps({"ok": False, "code": e.code, "message": str(e),
                      "type": type(e).__name__}))
"""


def run_as(user: str, socket_path: str, mode: str = "ping") -> dict[str, Any]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [RUNUSER, "-u", user, "--", SYSTEM_PYTHON, "-c", USER_SCRIPT, socket_path, mode],
        capture_output=True, text=True, timeout=30, cwd="/", env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class RawConnection:
    """The protocol by hand: write any bytes, read reply lines."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(EVENT_TIMEOUT)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> dict[str, Any] | None:
        """The next line as JSON, or None at end of stream."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def exchange(self, data: bytes) -> dict[str, Any]:
        self.send(data)
        reply = self.read()
        assert reply is not None, "the helper closed the connection"
        return reply

    def close(self) -> None:
        self.sock.close()


def wait_event(
    sub: Client, match: Callable[[Event], bool], transcript: list[str] | None = None
) -> Event:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        event = sub.next_event(left)
        if event is None:
            break
        if transcript is not None:
            transcript.append(json.dumps({"event": event.event, "data": event.data}))
        if match(event):
            return event
    raise AssertionError(f"no matching event within {EVENT_TIMEOUT} s")


def cli(world: World, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "core.cli", "--socket", world.socket, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    world.transcript += [done.stdout, done.stderr]
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
    return done


def cli_json(world: World, *args: str, expect: int = 0) -> Any:
    return json.loads(cli(world, "--json", *args, expect=expect).stdout)


def psk_profile(name: str, psk: bytes | None = None) -> str:
    text = f"""format = 1

[tunnel]
name = "{name}"
mode = "psk"

[interface]
addresses = ["10.99.0.1/24"]
listen_port = 51999

[peer]
allowed_ips = ["10.99.0.2/32"]

[keys]
psk = "{name}.psk"
"""
    if psk is not None:
        text += f'\n[secrets]\npsk = "{base64.b64encode(psk).decode()}"\n'
    return text


def spellings(key: bytes) -> list[str]:
    """Every way a key could show up in text."""
    std = base64.b64encode(key).decode()
    url = base64.urlsafe_b64encode(key).decode()
    return [key.hex(), key.hex().upper(), std, std.rstrip("="), url, url.rstrip("="),
            repr(key)[2:-1]]


# --- who may connect ------------------------------------------------------------------------------


def test_socket_is_group_only(world: World) -> None:
    st = os.stat(world.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, world.gid)


def test_outsider_cannot_open_the_socket(world: World) -> None:
    answer = run_as(world.outsider, world.socket)
    assert answer["ok"] is False
    assert answer["code"] == "forbidden"
    assert answer["type"] == "HelperUnavailable"
    assert f"ask an administrator to add you to the {world.group!r} group" in answer["message"]


def test_outsider_is_refused_by_peer_credentials(world: World) -> None:
    """With the file mode opened up (a misconfiguration), SO_PEERCRED still keeps them out, and
    the refusal comes before the helper reads anything."""
    uid = int(_sh("id", "-u", world.outsider).stdout)
    os.chmod(world.socket, 0o666)
    try:
        answer = run_as(world.outsider, world.socket)
        silent = run_as(world.outsider, world.socket, "silent")
    finally:
        os.chmod(world.socket, 0o660)
    assert answer["ok"] is False and answer["code"] == "forbidden"
    assert answer["type"] == "HelperUnavailable"
    assert f"uid {uid} is not in the {world.group!r} group" in answer["message"]
    refusal = json.loads(silent["received"])
    assert refusal["ok"] is False and refusal["id"] is None
    assert refusal["error"]["code"] == "forbidden"
    assert silent["eof_after"] is True
    world.helper.wait_for_log(f"refused uid {uid}")


def test_group_member_is_allowed(world: World) -> None:
    answer = run_as(world.member, world.socket)
    assert answer["ok"] is True
    assert answer["result"]["version"] == 1
    assert run_as(world.member, world.socket, "list_profiles")["ok"] is True


# --- bad messages never disturb anyone else -------------------------------------------------------


def test_bad_messages_get_errors_and_other_clients_keep_their_events(
    world: World, name: str
) -> None:
    with world.helper.client() as sub, world.helper.client() as actor:
        sub.call("subscribe")
        bad = RawConnection(world.socket)
        try:
            cases = [
                (b"this is not json\n", "bad_json", None),
                (b"\xff\xfe\n", "bad_json", None),
                (b'{"v":1,"id":5,"op":"format_disk","args":{}}\n', "unknown_op", 5),
                (b'{"v":2,"id":6,"op":"ping","args":{}}\n', "bad_version", 6),
                (b'{"v":1,"id":7,"op":"connect","args":{"name":"../../etc"}}\n', "bad_args", 7),
                (b'{"v":1,"id":8,"op":"connect","args":{}}\n', "bad_args", 8),
                (b'{"v":1,"op":"ping"}\n', "bad_request", None),
                (b'{"v":1,"id":9,"op":"get_profile","args":{"name":"nosuch"}}\n',
                 "not_found", 9),
            ]
            for data, code, request_id in cases:
                reply = bad.exchange(data)
                assert reply["ok"] is False, data
                assert (reply["error"]["code"], reply["id"]) == (code, request_id), data
            # The same connection still works after all that.
            pong = bad.exchange(b'{"v":1,"id":10,"op":"ping"}\n')
            assert pong["ok"] is True and pong["id"] == 10
        finally:
            bad.close()

        huge = RawConnection(world.socket)
        try:
            huge.send(b'{"v":1,"id":1,"op":"ping","args":{"x":"' + b"x" * (70 * 1024) + b'"}}\n')
            reply = huge.read()
            assert reply is not None and reply["error"]["code"] == "too_large"
            assert huge.read() is None, "an oversize line closes that connection"
        finally:
            huge.close()

        actor.call("import_profile", text=psk_profile(name))
        event = wait_event(sub, lambda e: e.event == "profiles", world.transcript)
        assert event.data == {"change": "added", "name": name}
        assert actor.call("ping")["version"] == 1


def test_a_subscriber_that_never_reads_blocks_nobody(world: World, name: str) -> None:
    """A subscriber that stops reading is disconnected once its queue is full (the helper
    counts what it missed); everyone else keeps getting replies and every event."""
    updates = 1500
    with world.helper.client() as actor:
        actor.call("import_profile", text=psk_profile(name))
        profile = actor.call("get_profile", name=name)["profile"]
        lazy = RawConnection(world.socket)
        try:
            assert lazy.exchange(b'{"v":1,"id":1,"op":"subscribe"}\n')["ok"] is True
            with world.helper.client() as eager:
                eager.call("subscribe")
                mine = {"change": "updated", "name": name}
                seen = 0
                started = time.monotonic()
                for i in range(updates):
                    profile["interface"]["listen_port"] = 20000 + i
                    actor.call("update_profile", profile=profile)
                    while (event := eager.next_event(0)) is not None:  # keep up as we go
                        seen += event.data == mine
                elapsed = time.monotonic() - started
                while seen < updates:
                    event = wait_event(eager, lambda e: e.data == mine)
                    seen += 1
            assert elapsed < 120, f"{updates} updates took {elapsed:.0f} s"
            print(f"{updates} updates in {elapsed:.1f} s")
        finally:
            lazy.close()
    world.helper.wait_for_log("missed")
    missed = [line for line in world.helper.log().splitlines() if "missed" in line]
    assert any(int(line.split("missed ")[1].split()[0]) > 0 for line in missed), missed


def test_log_events_have_the_documented_shape(world: World, name: str) -> None:
    with world.helper.client() as sub, world.helper.client() as actor:
        sub.call("subscribe")
        actor.call("import_profile", text=psk_profile(name))
        event = wait_event(sub, lambda e: e.event == "log"
                           and f"saved profile {name!r}" in e.data["message"], world.transcript)
        assert set(event.data) == {"time", "level", "tunnel", "message"}
        assert event.data["level"] == "INFO"
        assert abs(event.data["time"] - time.time()) < 60


def test_closing_a_client_from_another_thread_ends_its_event_iteration(world: World) -> None:
    """How the GUI stops its subscription thread."""
    outcome: list[object] = []
    sub = world.helper.client()
    sub.call("subscribe")

    def listen() -> None:
        try:
            outcome.extend(sub.events())
            outcome.append("ended")
        except Exception as e:  # recorded for the assertion below
            outcome.append(e)

    thread = threading.Thread(target=listen)
    thread.start()
    time.sleep(0.3)
    sub.close()
    thread.join(EVENT_TIMEOUT)
    assert not thread.is_alive()
    assert outcome[-1] == "ended", outcome
    assert sub.call("ping")["version"] == 1  # a closed client reconnects on the next call
    sub.close()


# --- the CLI over the socket ----------------------------------------------------------------------


def test_cli_profile_lifecycle(world: World, name: str, tmp_path: Path) -> None:
    psk = os.urandom(32)
    source = tmp_path / "in.tunseal"
    source.write_text(psk_profile(name, psk))

    imported = cli_json(world, "import", str(source))
    assert imported["stored_secrets"] == ["psk"]
    assert imported["profile"]["keys"] == {"psk": f"profile:{name}:psk"}  # the helper's name
    assert KeyStore().get(f"profile:{name}:psk") == psk
    cli_json(world, "import", str(source), expect=1)  # exists
    assert cli_json(world, "import", "--replace", str(source))["stored_secrets"] == ["psk"]

    listed = cli_json(world, "list")
    assert name in [p["tunnel"]["name"] for p in listed["profiles"]]
    assert listed["states"][name] == "down"
    assert name in cli(world, "list").stdout

    shown = cli_json(world, "show", name)
    assert shown["profile"]["tunnel"]["mode"] == "psk"
    assert shown["public_key"] is None
    assert f'name = "{name}"' in cli(world, "show", name).stdout

    plain = cli(world, "export", name).stdout
    assert "[secrets]" not in plain and f'psk = "profile:{name}:psk"' in plain
    assert not any(s in plain for s in spellings(psk))
    out = tmp_path / "out.tunseal"
    cli(world, "export", name, "--with-secrets", "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert base64.b64encode(psk).decode() in out.read_text()

    peer = base64.b64encode(noise.public_key(noise.generate_private_key())).decode()
    cli(world, "setpeerkey", name, peer)
    assert cli_json(world, "show", name)["profile"]["peer"]["public_key"] == peer

    removed = cli_json(world, "remove", name)
    assert removed == {}
    assert KeyStore().get(f"profile:{name}:psk") is None
    cli_json(world, "show", name, expect=4)


def test_cli_invalid_profile_lists_each_problem(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tunseal"
    bad.write_text(psk_profile("broken").replace("mode = \"psk\"", "mode = \"fast\"\nmtu = 1")
                   .replace("10.99.0.1/24", "10.99.0.1/99"))
    error = cli_json(world, "import", str(bad), expect=1)["error"]
    assert error["code"] == "invalid_profile"
    fields = [d["field"] for d in error["details"]]
    assert {"tunnel.mode", "tunnel.mtu", "interface.addresses[0]"} <= set(fields), fields
    human = cli(world, "import", str(bad), expect=1).stderr
    assert "tunnel.mode:" in human and "tunnel.mtu:" in human


def test_cli_exit_codes(world: World, tmp_path: Path) -> None:
    cli(world, "frobnicate", expect=2)
    cli(world, "up", expect=2)
    assert cli_json(world, "show", "nosuch", expect=4)["error"]["code"] == "not_found"
    cli(world, "import", str(tmp_path / "missing.tunseal"), expect=4)
    gone = subprocess.run(
        [sys.executable, "-m", "core.cli", "--socket", str(tmp_path / "none.sock"), "list"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert gone.returncode == 3
    assert "the Tunseal helper is not running: start it with 'systemctl start tunseal-helper'" \
        in gone.stderr


def test_cli_status_of_a_profile_that_is_down(world: World, name: str) -> None:
    with world.helper.client() as c:
        c.call("import_profile", text=psk_profile(name))
    assert cli(world, "status", name).stdout.strip() == f"{name}: down"
    tunnels = cli_json(world, "status", name)["tunnels"]
    assert [(t["name"], t["state"]) for t in tunnels] == [(name, "down")]
    watched = cli(world, "status", name, "--watch", "--count", "3", "--interval", "0.1").stdout
    assert watched.count(f"{name}: down") == 3
    assert cli_json(world, "down", name)["status"]["state"] == "down"
    assert cli_json(world, "up", name, expect=4)["error"]["code"] == "not_found"  # no psk stored


def test_genkey_never_leaks_the_private_key(world: World, name: str) -> None:
    with world.helper.client() as sub, world.helper.client() as c:
        sub.call("subscribe")
        c.call("import_profile", text=psk_profile(name))
        public = cli(world, "genkey", name).stdout.strip()
        generated = cli_json(world, "genkey", name)  # a second key replaces the first
        assert generated["profile"]["keys"]["private_key"] == f"profile:{name}:private"
        cli(world, "genpsk", name)
        cli_json(world, "export", name)
        with_secrets = cli(world, "export", name, "--with-secrets").stdout
        wait_event(sub, lambda e: e.event == "log" and "exported" in e.data["message"],
                   world.transcript)
        while (event := sub.next_event(1.0)) is not None:
            world.transcript.append(json.dumps({"event": event.event, "data": event.data}))

    keys = KeyStore()
    private, psk = keys.get(f"profile:{name}:private"), keys.get(f"profile:{name}:psk")
    assert private is not None and psk is not None
    current = base64.b64encode(noise.public_key(private)).decode()
    assert generated["public_key"] == current != public
    assert cli(world, "pubkey", name).stdout.strip() == current
    # The explicit export carries both keys: the search below would find them if they leaked.
    assert all(base64.b64encode(k).decode() in with_secrets for k in (private, psk))
    world.transcript.remove(with_secrets)
    captured = "\n".join([*world.transcript, world.helper.log()])
    for key in (private, psk):
        for spelling in spellings(key):
            assert spelling not in captured


# --- start-up and shutdown ------------------------------------------------------------------------


def test_without_the_group_the_socket_is_root_only_and_sigterm_stops_cleanly() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-control-"))
    helper = HelperProcess(workdir, "no-such-group-tunseal")
    try:
        helper.start()
        assert stat.S_IMODE(os.stat(helper.socket).st_mode) == 0o600
        assert "group 'no-such-group-tunseal' does not exist" in helper.log()
        assert helper.stop() == 0
        assert not helper.socket.exists()
        assert "stopped" in helper.log()
    finally:
        helper.stop()
        _rmtree(workdir)


def test_the_helper_refuses_to_start_without_a_secret_service(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    helper = HelperProcess(tmp_path, "tunseal", env=env)
    command = [*helper.command()[:-1], "info"]  # no debug chatter from keyring's imports
    done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env, check=False)
    assert done.returncode != 0
    assert done.stderr.startswith("tunseal-helper: no Secret Service available: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not helper.socket.exists()


@pytest.mark.netns
def test_status_events_persist_and_shutdown(lab: netlab.Lab, tmp_path: Path) -> None:
    """The control plane around a real tunnel, in a throwaway namespace: the engine's status
    events reach subscribers, SIGTERM takes the device down, and a restarted helper brings a
    ``persist`` profile back up."""
    ns = lab.ns("helper")
    helper = HelperProcess(tmp_path, "no-such-group-tunseal", wrap=("ip", "netns", "exec", ns))
    name = f"pst{uuid.uuid4().hex[:4]}"
    profile = f"""format = 1
[tunnel]
name = "{name}"
mode = "plain"
persist = true
[interface]
addresses = ["10.98.0.1/24"]
listen_port = 51998
[peer]
allowed_ips = ["10.98.0.2/32"]
"""
    helper.start()
    try:
        with helper.client() as sub, helper.client() as c:
            sub.call("subscribe")
            c.call("import_profile", text=profile)
            status = c.call("connect", name=name)["status"]
            assert status["state"] not in ("down", "error"), status
            interface = status["interface"]
            event = wait_event(sub, lambda e: e.event == "status" and e.data["name"] == name)
            assert event.data["interface"] == interface and event.data["mode"] == "plain"
        shown = subprocess.run(
            [sys.executable, "-m", "core.cli", "--socket", str(helper.socket), "status", name],
            capture_output=True, text=True, timeout=30, cwd=ROOT, check=True).stdout
        assert "UNSAFE: no encryption" in shown and f"interface  {interface}, MTU" in shown
        assert interface in lab.run(ns, "ip", "-o", "link").stdout

        assert helper.stop() == 0
        assert interface not in lab.run(ns, "ip", "-o", "link").stdout

        helper.start()
        with helper.client() as c:
            # The restore runs beside the socket: the tunnel shows "connecting" from the moment
            # it is registered, before its TUN device exists, so wait for the device too.
            deadline = time.monotonic() + EVENT_TIMEOUT
            while ((back := c.call("status", name=name)["tunnels"][0])["state"] == "down"
                   or interface not in lab.run(ns, "ip", "-o", "link").stdout):
                assert back["state"] != "error", back
                assert time.monotonic() < deadline, f"the tunnel did not come back: {back}"
                time.sleep(0.1)
            assert c.call("disconnect", name=name)["status"]["state"] == "down"
            c.call("remove_profile", name=name)
        assert interface not in lab.run(ns, "ip", "-o", "link").stdout
    finally:
        helper.stop()
