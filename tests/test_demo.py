"""``python -m tools.demo up|down`` for real: two namespaces, two helpers with their own Secret
Services, a tunnel from this namespace, a page fetched through it, and nothing left afterwards.

Each test runs the demo under its own ``TUNSEAL_DEMO_PREFIX``, so its namespaces, links, socket,
group, state and addresses never meet a developer's running demo (prefix ``tunseal``).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import netlab
import pytest

from helper.netdev import ifname_for
from tools import demo as demo_mod

pytestmark = [pytest.mark.netns, pytest.mark.keyring, pytest.mark.xdist_group("demo")]

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 180.0


def _skip_reason() -> str | None:
    reason = netlab.unavailable()
    if reason:
        return reason
    missing = [t for t in demo_mod.REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"the demo needs {', '.join(missing)} (installers/dev-deps.sh installs them)"
    return None


@pytest.fixture
def demo() -> Iterator[demo_mod.Demo]:
    """A demo instance with a unique prefix; whatever a test leaves, ``down`` removes."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"tst{uuid.uuid4().hex[:6]}"
    os.environ[demo_mod.PREFIX_ENV] = prefix
    try:
        d = demo_mod.Demo.from_env()
    finally:
        del os.environ[demo_mod.PREFIX_ENV]
    try:
        yield d
    finally:
        run_demo(d, "down")


def run_demo(d: demo_mod.Demo, command: str) -> subprocess.CompletedProcess[str]:
    env = netlab.python_env(**{demo_mod.PREFIX_ENV: d.prefix})
    return subprocess.run([sys.executable, "-m", "tools.demo", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def cli_json(d: demo_mod.Demo, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "--json", "--socket", str(d.socket), *args],
        cwd=ROOT, env=netlab.python_env(), capture_output=True, text=True, timeout=30,
        check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def fetch(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return str(response.read().decode())


def leftovers(d: demo_mod.Demo) -> list[str]:
    """Everything of this demo instance that still exists."""
    found: list[str] = []
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    found += [f"namespace {ns}" for ns in (d.netns, d.lan_netns) if ns in netns]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                      check=True).stdout)
    tun = ifname_for(d.profile)
    found += [f"link {link['ifname']}" for link in links
              if link["ifname"].startswith(d.prefix) or link["ifname"] == tun]
    found += [f"process {pid}" for pid in demo_mod._marked_pids(d)]
    for path in (d.state_dir, d.socket, d.socket.parent):
        if path.exists():
            found.append(f"path {path}")
    with contextlib.suppress(KeyError):
        grp.getgrnam(d.group)
        found.append(f"group {d.group}")
    found += [f"route {r}" for r in demo_routes(d)]
    return found


def demo_routes(d: demo_mod.Demo) -> list[str]:
    """This machine's routes into the demo's tunnel and office networks (any type)."""
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "table", "all"],
                                       capture_output=True, text=True, check=True).stdout)
    nets = {str(d.tunnel_net), str(d.lan_net)}
    return [f"{r.get('type', 'unicast')} {r['dst']} dev {r.get('dev', '-')}" for r in routes
            if r.get("dst") in nets]


def route_get(host: str) -> subprocess.CompletedProcess[str]:
    """The kernel's decision for a packet to ``host`` (nothing is sent)."""
    return subprocess.run(["ip", "-j", "route", "get", host], capture_output=True, text=True,
                          timeout=10, check=False)


def test_up_fetches_the_office_page_through_the_tunnel_and_down_removes_everything(
    demo: demo_mod.Demo,
) -> None:
    done = run_demo(demo, "up")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "The demo tunnel works" in done.stdout
    assert f"{demo.profile}: up" in done.stdout  # the `tunseal status` it prints
    assert "make demo-stop" in done.stdout

    # The page, fetched here, really goes through the tunnel's link.
    status = cli_json(demo, "status", demo.profile)["tunnels"]
    assert isinstance(status, list)
    (tunnel,) = status
    assert tunnel["state"] == "up" and tunnel["mode"] == "ephemeral", tunnel
    route = json.loads(subprocess.run(["ip", "-j", "route", "get", demo.web_host],
                                      capture_output=True, text=True, check=True).stdout)
    assert route[0]["dev"] == tunnel["interface"]
    assert demo_mod.PAGE_TEXT in fetch(demo.web_url)

    # The helpers made the keys: the profile names keyring items and holds no secret.
    profile = cli_json(demo, "show", demo.profile)
    assert profile["public_key"]
    text = json.dumps(profile)
    assert "secrets" not in text

    # The socket is the group's; the group exists while the demo runs.
    st = demo.socket.stat()
    assert st.st_gid == grp.getgrnam(demo.group).gr_gid and st.st_mode & 0o777 == 0o660
    assert (demo.password_file.stat().st_mode & 0o777) == 0o600

    again = run_demo(demo, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout

    gone = run_demo(demo, "down")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "The Tunseal demo is gone." in gone.stdout
    assert leftovers(demo) == []

    twice = run_demo(demo, "down")
    assert twice.returncode == 0 and "nothing to remove" in twice.stdout, twice.stdout


def test_down_cleans_up_after_helpers_were_killed(demo: demo_mod.Demo) -> None:
    done = run_demo(demo, "up")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("here-helper", "office-helper", "web"):
        record = json.loads((demo.state_dir / "pids" / f"{name}.pid").read_text())
        os.kill(record.get("helper_pid", record["pid"]), signal.SIGKILL)

    # The demo never leaks: with its helper killed (the TUN link gone with it), the office's
    # addresses are unreachable here instead of following this machine's default route.
    # (Asked of the kernel with `ip route get`: no packet is sent to find out.)
    tun = ifname_for(demo.profile)
    deadline = time.monotonic() + 10
    while subprocess.run(["ip", "link", "show", tun], capture_output=True,
                         check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{tun} outlived its helper"
        time.sleep(0.1)
    assert sorted(demo_routes(demo)) == sorted(
        f"unreachable {net} dev -" for net in (demo.tunnel_net, demo.lan_net))
    for host in (demo.web_host, demo.gateway, demo.host(demo.tunnel_net, 1)):
        decision = route_get(host)
        assert decision.returncode != 0 and decision.stdout == "", (host, decision.stdout)
        assert "no route to host" in decision.stderr.lower(), (host, decision.stderr)

    # `up` notices the broken demo, cleans it and builds a new one.
    rebuilt = run_demo(demo, "up")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "only partly running" in rebuilt.stdout

    # Kill the launchers too (keyring daemons and D-Bus sessions are left to the mark).
    for name in ("here-helper", "office-helper"):
        record = json.loads((demo.state_dir / "pids" / f"{name}.pid").read_text())
        os.kill(record["pid"], signal.SIGKILL)
        os.kill(record["helper_pid"], signal.SIGKILL)
    gone = run_demo(demo, "down")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert leftovers(demo) == []


def test_a_bad_prefix_is_refused_with_a_clear_message() -> None:
    env = netlab.python_env(**{demo_mod.PREFIX_ENV: "Not-OK"})
    done = subprocess.run([sys.executable, "-m", "tools.demo", "up"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("tunseal demo: TUNSEAL_DEMO_PREFIX='Not-OK': use a lowercase")


def test_the_default_names_are_the_documented_ones() -> None:
    d = demo_mod.Demo(demo_mod.DEFAULT_PREFIX, 0)
    assert (d.netns, d.lan_netns, d.group, d.profile) == (
        "tunseal-office", "tunseal-lan", "tunseal", "office")
    assert str(d.socket) == "/run/tunseal/helper.sock"
    assert (str(d.underlay), str(d.tunnel_net), str(d.lan_net)) == (
        "198.18.0.0/30", "10.213.0.0/24", "10.213.1.0/24")
    assert d.web_url == "http://10.213.1.2/"


_CRASHED_HELPER = r"""
import os, signal, sys
from pathlib import Path
from helper import dns
from helper.records import Records
state, resolv, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
records = Records(state)
if kind == "file":  # what Tunnel.start does for a profile with DNS, on a host without resolved
    dns.apply("ts-crashed", ["10.213.1.53"], ["office.example"], backend=dns.Backend.FILE,
              records=records, resolv_conf=resolv)
else:  # a backup this helper version cannot undo
    records.note_dns("ts-crashed", {"backend": "from-the-future", "ifname": "ts-crashed"})
print("applied", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_with_dns(d: demo_mod.Demo, resolv: Path, kind: str = "file") -> None:
    """A helper with the demo's state directory rewrites ``resolv`` (a throwaway file standing
    in for /etc/resolv.conf: this machine's own is never touched), records the backup as every
    helper does, and is killed."""
    state = d.state_dir / "here"
    state.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", _CRASHED_HELPER, str(state), str(resolv), kind],
                          cwd=ROOT, env=netlab.python_env(), capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == -signal.SIGKILL and "applied" in done.stdout, done.stderr


def test_finding10_demo_stop_after_a_helper_crash_restores_dns(demo: demo_mod.Demo,
                                                                tmp_path: Path) -> None:
    """Issue 9 finding 10: `demo-stop` after a helper crash deleted the DNS backup with the
    demo's state and left resolv.conf rewritten. It must restore from the crash records first."""
    resolv = tmp_path / "resolv.conf"
    original = "nameserver 192.0.2.1\nsearch home.example\n"
    resolv.write_text(original)
    crash_with_dns(demo, resolv)
    assert "nameserver 10.213.1.53" in resolv.read_text()  # the crash left it rewritten

    gone = run_demo(demo, "down")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "undoing what it left: restored DNS of ts-crashed (file)" in gone.stdout, gone.stdout
    assert resolv.read_text() == original
    assert leftovers(demo) == []


def test_finding10_demo_stop_keeps_a_record_it_cannot_undo(demo: demo_mod.Demo,
                                                           tmp_path: Path) -> None:
    crash_with_dns(demo, tmp_path / "resolv.conf", kind="unknown")
    kept = run_demo(demo, "down")
    assert kept.returncode == 1, kept.stdout + kept.stderr
    assert "unknown DNS backup kind 'from-the-future'" in kept.stderr, kept.stderr
    assert f"{demo.state_dir} is kept" in kept.stderr
    record = demo.state_dir / "here" / "run" / "ts-crashed.json"
    assert record.exists()
    record.unlink()  # the administrator dealt with it by hand
    again = run_demo(demo, "down")
    assert again.returncode == 0, again.stdout + again.stderr
    assert leftovers(demo) == []
