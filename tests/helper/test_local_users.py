"""What a local member of the helper's group must not be able to do (issue 9, findings 3, 7, 8,
9 and 10): a real ``tunseal-helper`` running a real gateway in a throwaway network namespace, the
real Secret Service (tests/run.sh), and real throwaway users created with useradd and driven
through runuser, so every refusal is decided by the helper from SO_PEERCRED.

Users: ``alice`` and ``mallory`` are members of a throwaway group; ``outsider`` is not.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import pwd
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netlab
import pytest
from helpers_proc import HelperProcess

from core import noise
from core.ipcclient import Client
from helper import netdev
from helper.keystore import KeyStore

pytestmark = [pytest.mark.keyring, pytest.mark.netns, pytest.mark.xdist_group("local-users")]

ROOT = Path(__file__).resolve().parents[2]
RUNUSER = "/usr/sbin/runuser"
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root, closed to others
GW_PORT = 51940
EVENT_TIMEOUT = 15.0

if os.geteuid() != 0:
    pytest.skip("these tests create users, groups and namespaces: run them as root",
                allow_module_level=True)


def _sh(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _unused(prefix: str, database: str) -> str:
    for _ in range(100):
        name = f"{prefix}{random.randint(1000, 99999)}"
        if _sh("getent", database, name).returncode != 0:
            return name
    raise RuntimeError(f"no free {prefix}NNNN name")


class GatewayHelper(HelperProcess):
    def __init__(self, workdir: Path, group: str, config: Path, *, wrap: tuple[str, ...]):
        super().__init__(workdir, group, wrap=wrap)
        self.config = config

    def command(self) -> list[str]:
        return [*super().command(), "--gateway", str(self.config)]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")


@dataclass
class World:
    group: str
    alice: str
    mallory: str
    outsider: str
    ns: str
    gateway: str
    gateway_ref: str
    helper: GatewayHelper

    @property
    def socket(self) -> str:
        return str(self.helper.socket)

    def root(self) -> Client:
        return self.helper.client(timeout=30)


GATEWAY_CONFIG = """format = 1

[gateway]
name = "{name}"
addresses = ["10.231.0.1/24"]
mode = "ephemeral"
listen_port = {port}
private_key = "{ref}"
"""


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    reason = netlab.unavailable()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as cleanup:
        lab = cleanup.enter_context(netlab.Lab())
        ns = lab.ns("users")
        group = _unused("tsl", "group")
        assert _sh("groupadd", group).returncode == 0
        cleanup.callback(_sh, "groupdel", group)
        users = []
        for extra in (["-G", group], ["-G", group], []):
            user = _unused("tsu", "passwd")
            made = _sh("useradd", "-M", "-s", "/usr/sbin/nologin", *extra, user)
            assert made.returncode == 0, made.stderr
            cleanup.callback(_sh, "userdel", user)
            users.append(user)
        workdir = Path(tempfile.mkdtemp(prefix="tunseal-local-"))
        cleanup.callback(subprocess.run, ["rm", "-rf", "--one-file-system", str(workdir)],
                         check=False, timeout=30)
        workdir.chmod(0o755)  # the throwaway users must reach the socket
        gateway = f"gw{uuid.uuid4().hex[:6]}"
        ref = f"{gateway}.private"
        config = workdir / "gateway.toml"
        config.write_text(GATEWAY_CONFIG.format(name=gateway, port=GW_PORT, ref=ref))
        helper = GatewayHelper(workdir, group, config, wrap=("ip", "netns", "exec", ns))
        cleanup.callback(helper.stop)
        cleanup.callback(KeyStore().delete, ref)
        helper.start()
        yield World(group, users[0], users[1], users[2], ns, gateway, ref, helper)


@pytest.fixture
def names(world: World) -> Iterator[Callable[[], str]]:
    """Fresh profile names, each removed (as root, with its keys) after the test."""
    made: list[str] = []

    def new() -> str:
        made.append(f"lu{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    with world.root() as c:
        for name in made:
            with contextlib.suppress(Exception):
                c.call("remove_profile", name=name)


# --- acting as another user -----------------------------------------------------------------------

USER_SCRIPT = r"""
import json, sys
from core.errors import IPCError
from core.ipcclient import Client
path, calls = sys.argv[1], json.loads(sys.argv[2])
out = []
client = Client(path, timeout=20)
for op, args in calls:
    try:
        out.append({"ok": True, "result": client.call(op, **args)})
    except IPCError as e:
        out.append({"ok": False, "code": e.code, "message": str(e)})
client.close()
print(json.dumps(out))
"""


def as_user(world: World, user: str, *calls: tuple[str, dict[str, Any]],
            script: str = USER_SCRIPT) -> list[dict[str, Any]]:
    """Run ``calls`` on one connection as ``user``; one answer per call."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [RUNUSER, "-u", user, "--", SYSTEM_PYTHON, "-c", script, world.socket,
         json.dumps([list(c) for c in calls])],
        capture_output=True, text=True, timeout=120, cwd="/", env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


def one(world: World, user: str, op: str, **args: Any) -> dict[str, Any]:
    return as_user(world, user, (op, args))[0]


def denied(answer: dict[str, Any]) -> str:
    assert answer["ok"] is False, answer
    assert answer["code"] == "denied", answer
    message: str = answer["message"]
    return message


def uid_of(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


# --- profiles -------------------------------------------------------------------------------------

def psk_profile(name: str, *, psk: bytes | None = None, psk_ref: str | None = None,
                port: int = 52001) -> str:
    text = f"""format = 1

[tunnel]
name = "{name}"
mode = "psk"

[interface]
addresses = ["10.232.0.1/24"]
listen_port = {port}

[peer]
allowed_ips = ["10.232.0.2/32"]

[keys]
psk = "{psk_ref or name + '.psk'}"
"""
    if psk is not None:
        text += f'\n[secrets]\npsk = "{base64.b64encode(psk).decode()}"\n'
    return text


def ephemeral_profile(name: str, *, private_ref: str, private: bytes | None = None,
                      port: int = 52002) -> str:
    peer = base64.b64encode(noise.public_key(noise.generate_private_key())).decode()
    text = f"""format = 1

[tunnel]
name = "{name}"
mode = "ephemeral"

[interface]
addresses = ["10.233.0.1/24"]
listen_port = {port}

[peer]
public_key = "{peer}"
allowed_ips = ["10.233.0.2/32"]

[keys]
private_key = "{private_ref}"
"""
    if private is not None:
        text += f'\n[secrets]\nprivate_key = "{base64.b64encode(private).decode()}"\n'
    return text


def all_profiles(client: Client) -> list[dict[str, Any]]:
    """Every profile, following the pages of list_profiles by hand (bounded)."""
    out: list[dict[str, Any]] = []
    args: dict[str, Any] = {}
    for _ in range(100):
        page = client.call("list_profiles", **args)
        out += page["profiles"]
        if not page.get("next"):
            return out
        args = {"after": page["next"]}
    raise AssertionError("list_profiles never ended")


def gateway_key(world: World) -> bytes:
    key = KeyStore().get(world.gateway_ref)
    assert key is not None, "the gateway has no key in the keyring"
    return key


def gateway_is_up(world: World) -> bool:
    with world.root() as c:
        state: str = c.call("status", name=world.gateway)["tunnels"][0]["state"]
    return state == "up"


def spellings(key: bytes) -> list[str]:
    std = base64.b64encode(key).decode()
    return [std, std.rstrip("="), key.hex()]


# === finding 3: a profile cannot reach the gateway's keys or tunnel ===============================


def test_finding3_a_profile_naming_the_gateways_key_never_exports_it(
        world: World, names: Callable[[], str]) -> None:
    before = gateway_key(world)
    name = names()
    answers = as_user(
        world, world.mallory,
        ("import_profile", {"text": ephemeral_profile(name, private_ref=world.gateway_ref)}),
        ("export_profile", {"name": name, "with_secrets": True}),
        ("public_key", {"name": name}),
    )
    imported, exported, public = answers
    assert imported["ok"], imported
    assert imported["result"]["profile"]["keys"] == {"private_key": f"profile:{name}:private"}
    assert exported["ok"] and exported["result"]["with_secrets"] is False
    assert not any(s in exported["result"]["text"] for s in spellings(before))
    assert public["ok"] is False and public["code"] == "not_found"
    assert gateway_key(world) == before


def test_finding3_genkey_import_and_remove_leave_the_gateways_key_alone(
        world: World, names: Callable[[], str]) -> None:
    before = gateway_key(world)
    planted = noise.generate_private_key()
    name, other = names(), names()
    answers = as_user(
        world, world.mallory,
        ("import_profile", {"text": ephemeral_profile(name, private_ref=world.gateway_ref)}),
        ("genkey", {"name": name}),
        ("import_profile", {"text": ephemeral_profile(other, private_ref=world.gateway_ref,
                                                      private=planted, port=52003)}),
        ("remove_profile", {"name": name}),
        ("remove_profile", {"name": other}),
    )
    assert all(a["ok"] for a in answers), answers
    assert answers[1]["result"]["profile"]["keys"]["private_key"] == f"profile:{name}:private"
    assert answers[2]["result"]["stored_secrets"] == ["private_key"]
    assert gateway_key(world) == before
    keys = KeyStore()
    assert keys.get(f"profile:{name}:private") is None  # removing deleted the profile's own
    assert keys.get(f"profile:{other}:private") is None
    assert gateway_is_up(world)


def test_finding3_the_gateways_name_is_not_a_profile_name(world: World) -> None:
    down, imported, up = as_user(
        world, world.mallory,
        ("disconnect", {"name": world.gateway}),
        ("import_profile", {"text": psk_profile(world.gateway)}),
        ("connect", {"name": world.gateway}),
    )
    for answer in (down, imported, up):
        assert "gateway tunnel" in denied(answer)
    assert gateway_is_up(world)
    with world.root() as c:  # not even root turns it into a profile
        assert world.gateway not in [p["tunnel"]["name"] for p in all_profiles(c)]


def test_finding3_stored_profiles_get_the_helpers_key_names_at_start(
        world: World, names: Callable[[], str]) -> None:
    """Profiles stored before the helper named keys itself: each key moves to the helper's
    name, except one that names the gateway's item, which is not copied."""
    ordinary, grabbing = names(), names()
    psk = os.urandom(32)
    keys = KeyStore()
    old_ref = f"{ordinary}.psk"
    keys.put(old_ref, psk)
    store = world.helper.state_dir / "profiles"
    (store / f"{ordinary}.tunseal").write_text(psk_profile(ordinary))
    (store / f"{grabbing}.tunseal").write_text(
        ephemeral_profile(grabbing, private_ref=world.gateway_ref))
    try:
        world.helper.stop()
        world.helper.start()
        with world.root() as c:
            first = c.call("get_profile", name=ordinary)["profile"]
            second = c.call("get_profile", name=grabbing)["profile"]
        assert first["keys"] == {"psk": f"profile:{ordinary}:psk"}
        assert keys.get(f"profile:{ordinary}:psk") == psk
        assert second["keys"] == {"private_key": f"profile:{grabbing}:private"}
        assert keys.get(f"profile:{grabbing}:private") is None
        assert "is the gateway's; not copied" in world.helper.log()
        # Profiles stored before owners were recorded are root's.
        assert "belongs to root" in denied(
            one(world, world.mallory, "export_profile", name=ordinary, with_secrets=True))
    finally:
        keys.delete(old_ref)


# === finding 7: only the owner (or root) reads secrets, changes or removes a profile ==============


def test_finding7_only_the_owner_or_root_may_read_secrets_change_or_remove(
        world: World, names: Callable[[], str]) -> None:
    name = names()
    psk = os.urandom(32)
    peer = base64.b64encode(noise.public_key(noise.generate_private_key())).decode()
    owned = one(world, world.alice, "import_profile", text=psk_profile(name, psk=psk))
    assert owned["ok"], owned
    with world.root() as c:
        profile = c.call("get_profile", name=name)["profile"]
    changed = json.loads(json.dumps(profile))
    changed["interface"]["listen_port"] = 52099

    attempts = as_user(
        world, world.mallory,
        ("export_profile", {"name": name, "with_secrets": True}),
        ("update_profile", {"profile": changed}),
        ("set_peer_key", {"name": name, "public_key": peer}),
        ("genkey", {"name": name}),
        ("genpsk", {"name": name}),
        ("import_profile", {"text": psk_profile(name, psk=os.urandom(32)), "replace": True}),
        ("remove_profile", {"name": name}),
    )
    for answer in attempts:
        message = denied(answer)
        assert f"belongs to {world.alice} (uid {uid_of(world.alice)})" in message
        assert f"only {world.alice} or root may" in message
    assert KeyStore().get(f"profile:{name}:psk") == psk  # nothing was replaced

    # What every member may still do: list, read without secrets, connect and disconnect.
    listed, plain, up, down = as_user(
        world, world.mallory,
        ("list_profiles", {}),
        ("export_profile", {"name": name}),
        ("connect", {"name": name}),
        ("disconnect", {"name": name}),
    )
    assert name in [p["tunnel"]["name"] for p in listed["result"]["profiles"]]
    assert plain["ok"] and "[secrets]" not in plain["result"]["text"]
    assert up["ok"], up
    assert down["ok"] and down["result"]["status"]["state"] == "down"

    mine = one(world, world.alice, "export_profile", name=name, with_secrets=True)
    assert mine["ok"] and base64.b64encode(psk).decode() in mine["result"]["text"]
    with world.root() as c:
        assert c.call("export_profile", name=name, with_secrets=True)["with_secrets"] is True
    assert one(world, world.alice, "remove_profile", name=name)["ok"]
    assert KeyStore().get(f"profile:{name}:psk") is None


def test_finding7_gateway_peers_are_roots_to_change(world: World) -> None:
    added = one(world, world.mallory, "peer_add", name="intruder")
    assert "only root may add a peer" in denied(added)
    assert one(world, world.mallory, "peer_list")["ok"]


# === finding 8: colliding interface names =========================================================


def _links(world: World) -> set[str]:
    done = _sh("ip", "netns", "exec", world.ns, "ip", "-o", "link", "show")
    return {line.split(": ")[1].split("@")[0] for line in done.stdout.splitlines()}


def test_finding8_colliding_names_get_their_own_links(world: World) -> None:
    """``engine-73166`` and ``engineering-vpn`` both map to ts-engine-73166: the second used to
    fail, and its stop() deleted the first one's link and crash record."""
    first, second = "engine-73166", "engineering-vpn"
    assert netdev.ifname_for(first) == netdev.ifname_for(second)
    records = world.helper.state_dir / "run"
    with world.root() as c:
        try:
            c.call("import_profile", text=psk_profile(first, psk=os.urandom(32), port=52011))
            c.call("import_profile", text=psk_profile(second, psk=os.urandom(32), port=52012))
            a = c.call("connect", name=first)["status"]
            b = c.call("connect", name=second)["status"]
            assert a["interface"] != b["interface"]
            assert {a["interface"], b["interface"]} <= _links(world)
            assert (records / f"{a['interface']}.json").exists()
            c.call("disconnect", name=second)
            assert a["interface"] in _links(world)
            assert (records / f"{a['interface']}.json").exists()
            assert c.call("status", name=first)["tunnels"][0]["state"] != "down"
        finally:
            for name in (first, second):
                with contextlib.suppress(Exception):
                    c.call("remove_profile", name=name)


def test_finding8_a_link_the_tunnel_did_not_create_is_left_alone(
        world: World, names: Callable[[], str]) -> None:
    name = names()
    squatter = netdev.ifname_for(name)
    made = _sh("ip", "netns", "exec", world.ns, "ip", "tuntap", "add", "dev", squatter,
               "mode", "tun")
    assert made.returncode == 0, made.stderr
    try:
        with world.root() as c:
            c.call("import_profile", text=psk_profile(name, psk=os.urandom(32), port=52013))
            status = c.call("connect", name=name)["status"]
            assert status["interface"] != squatter
            c.call("disconnect", name=name)
        assert squatter in _links(world)
        assert status["interface"] not in _links(world)
    finally:
        _sh("ip", "netns", "exec", world.ns, "ip", "link", "del", squatter)


# === finding 9: limits ============================================================================


def test_finding9_ports_below_1024_need_root(world: World, names: Callable[[], str]) -> None:
    name = names()
    refused = one(world, world.mallory, "import_profile",
                  text=psk_profile(name, psk=os.urandom(32), port=53))
    assert "only root may make the helper bind such a port" in denied(refused)
    assert one(world, world.mallory, "get_profile", name=name)["code"] == "not_found"
    with world.root() as c:
        stored = c.call("import_profile", text=psk_profile(name, port=853))
    assert stored["profile"]["interface"]["listen_port"] == 853


CONNECTIONS_SCRIPT = r"""
import json, socket, sys
path, n = sys.argv[1], json.loads(sys.argv[2])[0][1]["n"]
def ping(s):
    try:
        s.sendall(b'{"v":1,"id":1,"op":"ping"}\n')
    except BrokenPipeError:  # refused and closed before we asked: its reply says why
        pass
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(path); held.append(s)
answers = [ping(s)["ok"] for s in held]
extra = socket.socket(socket.AF_UNIX); extra.settimeout(20); extra.connect(path)
over = ping(extra)
held.pop().close()
again = None
for _ in range(100):  # the helper notices the close asynchronously
    s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(path)
    again = ping(s)
    s.close()
    if again["ok"]:
        break
    import time; time.sleep(0.05)
print(json.dumps([{"held": answers, "over": over, "again": again}]))
"""


def test_finding9_connections_per_user_are_capped(world: World) -> None:
    from helper.control import CONNECTIONS_PER_UID

    result = as_user(world, world.mallory, ("", {"n": CONNECTIONS_PER_UID}),
                     script=CONNECTIONS_SCRIPT)[0]
    assert result["held"] == [True] * CONNECTIONS_PER_UID
    over = result["over"]
    assert over["ok"] is False and over["id"] is None
    assert over["error"]["code"] == "busy"
    assert f"already has {CONNECTIONS_PER_UID} connections" in over["error"]["message"]
    assert result["again"]["ok"] is True
    assert one(world, world.alice, "ping")["ok"]  # another member is not affected


def test_finding9_list_profiles_pages_past_64_kib(world: World, names: Callable[[], str]) -> None:
    """Enough profiles that one reply could not hold them: each page fits, the CLI and the
    client follow the pages, and nothing is lost or repeated."""
    made = []
    with world.root() as c:
        for i in range(24):
            name = names()
            profile = {"format": 1, "tunnel": {"name": name},
                       "interface": {"addresses": [f"10.240.{i}.1/24"], "listen_port": 53000 + i},
                       "peer": {"allowed_ips": [f"10.{i}.{j}.0/24" for j in range(200)]}}
            c.call("add_profile", profile=profile)
            made.append(name)
        first = c.call("list_profiles")
        assert first["next"] is not None
        everything = [p["tunnel"]["name"] for p in all_profiles(c)]
    assert set(made) <= set(everything)
    assert len(everything) == len(set(everything)) and everything == sorted(everything)
    listed = as_user(world, world.mallory, ("list_profiles", {}))[0]["result"]
    assert listed["next"] is not None
    cli = subprocess.run([sys.executable, "-m", "core.cli", "--socket", world.socket,
                          "--json", "list"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=False)
    assert cli.returncode == 0, cli.stderr
    assert set(made) <= {p["tunnel"]["name"] for p in json.loads(cli.stdout)["profiles"]}


def test_finding9_status_of_every_tunnel_pages_too(world: World,
                                                   names: Callable[[], str]) -> None:
    """A status reply lists every profile; enough of them used to push it past 64 KiB as
    well (then the GUI and `tunseal list` failed for every member)."""
    made = []
    with world.root() as c:
        for i in range(260):
            name = names()
            c.call("add_profile", profile={
                "format": 1, "tunnel": {"name": name},
                "interface": {"addresses": [f"10.{241 + i // 200}.{i % 200}.1/24"],
                              "listen_port": 40000 + i}})
            made.append(name)
        first = c.call("status")
        assert first["next"] is not None
        seen: list[str] = []
        args: dict[str, Any] = {}
        for _ in range(100):
            page = c.call("status", **args)
            seen += [t["name"] for t in page["tunnels"]]
            if not page["next"]:
                break
            args = {"after": page["next"]}
    assert set(made) | {world.gateway} <= set(seen)
    assert len(seen) == len(set(seen))
    cli = subprocess.run([sys.executable, "-m", "core.cli", "--socket", world.socket,
                          "--json", "list"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=False)
    assert cli.returncode == 0, cli.stderr
    assert set(made) <= set(json.loads(cli.stdout)["states"])


# === finding 10 ===================================================================================


def test_finding10_not_allowed_names_the_helpers_real_group(world: World) -> None:
    answer = one(world, world.outsider, "ping")
    assert answer["ok"] is False and answer["code"] == "forbidden"
    assert f"add you to the {world.group!r} group" in answer["message"]
    assert "'tunseal' group" not in answer["message"]


def test_finding10_duplicate_keys_are_refused_by_the_helper(world: World) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(EVENT_TIMEOUT)
        s.connect(world.socket)
        s.sendall(b'{"v":1,"id":3,"op":"ping","op":"status"}\n')
        reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is False and reply["error"]["code"] == "bad_json"
    assert "duplicate key 'op'" in reply["error"]["message"]


def test_finding10_low_order_peer_keys_are_refused(world: World, names: Callable[[], str]) -> None:
    name = names()
    zero = base64.b64encode(bytes(32)).decode()
    with world.root() as c:
        c.call("import_profile", text=ephemeral_profile(name, private_ref="x", port=52021))
        with pytest.raises(Exception) as info:
            c.call("set_peer_key", name=name, public_key=zero)
        assert getattr(info.value, "code", "") == "invalid_profile"
        assert "low-order point" in str(info.value)


def test_finding10_a_stored_profile_with_a_low_order_key_can_still_be_removed(
        world: World, names: Callable[[], str]) -> None:
    """Written before such keys were refused: it no longer reads as a profile, but its owner
    (root, for a file without a recorded owner) can still remove it."""
    name = names()
    zero = base64.b64encode(bytes(32)).decode()
    text = ephemeral_profile(name, private_ref="x", port=52022)
    text = text.replace(text.split('public_key = "')[1].split('"')[0], zero)
    path = world.helper.state_dir / "profiles" / f"{name}.tunseal"
    path.write_text(text)
    assert "low-order point" in denied_or(one(world, world.mallory, "get_profile", name=name))
    assert "belongs to root" in denied(one(world, world.mallory, "remove_profile", name=name))
    with world.root() as c:
        assert c.call("remove_profile", name=name) == {}
    assert not path.exists()


def denied_or(answer: dict[str, Any]) -> str:
    assert answer["ok"] is False, answer
    message: str = answer["message"]
    return message


def test_finding10_a_tunnel_that_fails_to_start_says_why(
        world: World, names: Callable[[], str]) -> None:
    name = names()
    with world.root() as c:
        c.call("import_profile", text=psk_profile(name, psk=os.urandom(32), port=GW_PORT))
        with pytest.raises(Exception) as info:
            c.call("connect", name=name)
        assert getattr(info.value, "code", "") == "engine"
        status = c.call("status", name=name)["tunnels"][0]
        assert status["state"] == "error"
        assert "already listens on UDP port" in status["error"]
        assert c.call("disconnect", name=name)["status"]["state"] == "down"
        assert c.call("status", name=name)["tunnels"][0]["error"] == ""


def test_finding10_subscribers_that_never_read_are_dropped_and_freed(
        world: World, names: Callable[[], str]) -> None:
    """200 subscribers that never read used to keep ~7 MB in the helper for good."""
    import socket

    name = names()
    with world.root() as c:
        c.call("import_profile", text=psk_profile(name))
        profile = c.call("get_profile", name=name)["profile"]
        lazies = []
        try:
            for _ in range(200):  # one at a time: the listen backlog is smaller than 200
                s = socket.socket(socket.AF_UNIX)
                lazies.append(s)
                s.settimeout(EVENT_TIMEOUT)
                s.connect(world.socket)
                s.sendall(b'{"v":1,"id":1,"op":"subscribe"}\n')
                assert b'"ok":true' in s.recv(4096)
            before = world.helper.rss_kb()
            for i in range(600):
                profile["interface"]["listen_port"] = 30000 + i
                c.call("update_profile", profile=profile)
            deadline = time.monotonic() + 30
            dropped = 0
            while dropped < 200 and time.monotonic() < deadline:
                dropped = world.helper.log().count("disconnected a subscriber")
                time.sleep(0.2)
            # What was queued for them is freed and handed back (after a short delay).
            deadline = time.monotonic() + 15
            while (after := world.helper.rss_kb()) - before >= 3 * 1024:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            for s in lazies:
                s.close()
    print(f"RSS before {before} KiB, after {after} KiB; {dropped} subscribers dropped")
    assert dropped >= 200
    assert after - before < 3 * 1024, (before, after)
    assert c.call("ping")["version"] == 1


def test_group_is_real(world: World) -> None:
    """The fixture's own sanity: the two members really are members, the outsider is not."""
    members = grp.getgrnam(world.group).gr_mem
    assert world.alice in members and world.mallory in members
    assert world.outsider not in members
