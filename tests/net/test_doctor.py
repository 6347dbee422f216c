"""``tunseal doctor`` against real helpers in namespaces: each check fails for its real cause and
says so (issue 13): the helper stopped, the user not in the group or added to it after the
session began, the endpoint blackholed with nft or its port closed, DNS broken, a conflicting
route, another VPN holding the default route, a path MTU below the tunnel's, and a clock behind
the newest handshake.

World: tests/net/tunnellab.py's client -- router -- server pair (profiles built with the CLI,
keys in the real Secret Service), plus a small DNS server in the router namespace that the
client's resolv.conf names (/etc/netns/<client>/resolv.conf, bind-mounted by ip netns exec).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netlab
import pytest
from helpers_proc import ROOT, HelperProcess
from tunnellab import Spec, TunnelPair

pytestmark = [pytest.mark.keyring, pytest.mark.netns]

if os.geteuid() != 0:
    pytest.skip("these tests build namespaces and users: run them as root",
                allow_module_level=True)

DNS_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    if len(data) >= 12:  # the query back with QR set, RCODE 5 (refused): a server is there
        s.sendto(data[:2] + struct.pack("!H", 0x8185) + data[4:], peer)
"""


def doctor(socket_path: Path | str, name: str | None = None, *,
           expect: int | None = None) -> dict[str, dict[str, str]]:
    """``tunseal --json doctor [NAME]``: the checks by id (the last of an id wins)."""
    argv = [sys.executable, "-m", "core.cli", "--json", "--socket", str(socket_path), "doctor"]
    done = subprocess.run([*argv, *([name] if name else [])], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    report = json.loads(done.stdout)
    if expect is not None:
        shown = [(c["id"], c["status"], c["found"]) for c in report["checks"]]
        assert done.returncode == expect, "\n".join(map(str, shown))
    assert done.returncode == (1 if report["status"] == "fail" else 0)
    return {c["id"]: c for c in report["checks"]}


def human(socket_path: Path | str, name: str) -> str:
    done = subprocess.run([sys.executable, "-m", "core.cli", "--socket", str(socket_path),
                           "doctor", name], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    return done.stdout


@contextlib.contextmanager
def doctor_pair(lab: netlab.Lab, spec: Spec | None = None) -> Iterator[TunnelPair]:
    """A built pair, the server listening and the client down; the client resolves through a
    DNS server in the router namespace."""
    topo = netlab.two_hosts_with_router(lab)
    etc = Path("/etc/netns") / topo.client
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {topo.router_client_addr}\n")
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-doctor-"))
    pair = TunnelPair(lab, topo, spec or Spec(mode="ephemeral+psk"), workdir)
    try:
        pair.dns = netlab_dns(lab, topo.router, topo.router_client_addr)  # type: ignore[attr-defined]
        pair.start_helpers()
        pair.build()
        pair.server.cli("up", pair.server.name)  # the office listens; the laptop is down
        yield pair
        pair.teardown()
    finally:
        pair.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(etc, ignore_errors=True)


def netlab_dns(lab: netlab.Lab, ns: str, addr: str) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = lab.python_popen(ns, DNS_SERVER, addr, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True)
    netlab.wait_for_line(proc, "ready")
    return proc


def test_a_healthy_pair_passes_every_check(lab: netlab.Lab) -> None:
    with doctor_pair(lab) as pair:
        c = pair.client
        checks = doctor(c.helper.socket, c.name, expect=0)
        for cid in ("helper", "keyring", "endpoint", "dns", "routes", "default_route", "ipv6",
                    "mtu"):
            assert checks[cid]["status"] == "ok", checks[cid]
        # A machine whose clock no time source keeps (this container's) gets a warning.
        assert checks["clock"]["status"] in ("ok", "warn"), checks["clock"]
        assert "completed a handshake in" in checks["endpoint"]["found"]
        assert f"{pair.topo.server_addr}:{pair.spec.port}" in checks["endpoint"]["found"]
        assert "backend file" in checks["dns"]["found"]
        assert pair.topo.router_client_addr in checks["dns"]["found"]
        # The probe was a real handshake: the server's helper completed it.
        assert pair.server.status()["last_handshake"] is not None
        # Connected: the doctor reads the live session instead of probing.
        pair.up()
        up = doctor(c.helper.socket, c.name, expect=0)
        assert "the tunnel is up, last handshake" in up["endpoint"]["found"]
        assert up["routes"]["status"] == "ok"
        # A name the helper has no profile for: the CLI's not-found status, as 'status' gives.
        argv = [sys.executable, "-m", "core.cli", "--socket", str(c.helper.socket), "doctor",
                "no-such-profile"]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 4, done.stdout + done.stderr
        assert "check the profile name with 'tunseal list'" in done.stdout


def test_a_blackholed_endpoint_fails_with_its_cause(lab: netlab.Lab) -> None:
    with doctor_pair(lab) as pair:
        lab.nft(pair.topo.router, "table inet doctor {\n  chain fw { type filter hook forward "
                f"priority filter; policy accept; udp dport {pair.spec.port} drop; }}\n}}\n")
        checks = doctor(pair.client.helper.socket, pair.client.name, expect=1)
        endpoint = checks["endpoint"]
        assert endpoint["status"] == "fail"
        assert endpoint["found"].startswith(
            f"no answer from {pair.topo.server_addr}:{pair.spec.port} to 3 handshake initiations")
        assert "firewall" in endpoint["found"]
        assert "a firewall on the way lets UDP" in endpoint["todo"]
        text = human(pair.client.helper.socket, pair.client.name)
        assert "[FAIL] Endpoint" in text and "what to do:" in text


def test_a_closed_port_is_named(lab: netlab.Lab) -> None:
    with doctor_pair(lab) as pair:
        c = pair.client
        profile = pair.profile(c).replace(endpoint=f"{pair.topo.server_addr}:{pair.spec.port + 1}")
        pair.import_profile(c, profile)
        c.cli("setpeerkey", c.name, pair.server.cli("pubkey", pair.server.name).stdout.strip())
        endpoint = doctor(c.helper.socket, c.name, expect=1)["endpoint"]
        assert "nothing listens on that port" in endpoint["found"], endpoint
        assert "check the port in the profile" in endpoint["todo"]


def test_broken_dns_fails(lab: netlab.Lab) -> None:
    with doctor_pair(lab) as pair:
        pair.dns.kill()  # type: ignore[attr-defined]
        pair.dns.wait(10)  # type: ignore[attr-defined]
        dns = doctor(pair.client.helper.socket, pair.client.name, expect=1)["dns"]
        assert dns["status"] == "fail"
        assert f"nameservers {pair.topo.router_client_addr}: none answers" in dns["found"]
        assert "names cannot be looked up" in dns["todo"]


def test_conflicting_route_other_vpn_and_small_path_mtu(lab: netlab.Lab) -> None:
    with doctor_pair(lab) as pair:
        c, topo = pair.client, pair.topo
        # The server's inner address (the client profile's allowed_ips) routed elsewhere.
        lab.run(topo.client, "ip", "route", "add", f"{pair.server.inner4}/32", "via",
                topo.router_client_addr)
        # Another VPN's TUN takes the default route (the office stays reachable directly).
        lab.run(topo.client, "ip", "route", "add", "198.18.2.0/24", "via",
                topo.router_client_addr)
        holder = netlab.hold_tun(lab, topo.client, "othervpn0")
        try:
            lab.run(topo.client, "ip", "link", "set", "othervpn0", "up")
            lab.run(topo.client, "ip", "route", "replace", "default", "dev", "othervpn0")
            # The link to the router carries less than the tunnel's packets need.
            lab.run(topo.client, "ip", "link", "set", topo.client_if, "mtu", "1300")
            checks = doctor(c.helper.socket, c.name, expect=1)
        finally:
            holder.kill()
            holder.wait(10)
        routes = checks["routes"]
        assert routes["status"] == "fail"
        assert f"another interface routes {pair.server.inner4}/32 via {topo.client_if}" \
            in routes["found"]
        default = checks["default_route"]
        assert default["status"] == "warn"
        assert "another VPN holds the default route: othervpn0 (tun, IPv4)" in default["found"]
        mtu = checks["mtu"]
        assert mtu["status"] == "warn"
        assert f"the path to {topo.server_addr} carries 1300 bytes" in mtu["found"]
        assert "set interface.mtu = " in mtu["todo"]
        assert checks["endpoint"]["status"] == "ok"  # the handshake itself still fits


def test_a_clock_behind_the_newest_handshake_fails(lab: netlab.Lab) -> None:
    with doctor_pair(lab) as pair:
        c = pair.client
        assert doctor(c.helper.socket, c.name)["clock"]["status"] in ("ok", "warn")
        state = c.helper.state_dir / "doctor.json"
        seen = json.loads(state.read_text())["newest_handshake"]
        assert abs(seen - time.time()) < 60
        # As after a clock that went back three days: the newest answered handshake lies ahead.
        state.write_text(json.dumps({"newest_handshake": time.time() + 3 * 86400 + 60}))
        clock = doctor(c.helper.socket, c.name, expect=1)["clock"]
        assert clock["status"] == "fail"
        assert clock["found"].startswith("the clock is 3 d 0 h behind the newest handshake")
        assert "timedatectl set-ntp true" in clock["todo"]


def test_helper_stopped(lab: netlab.Lab, tmp_path: Path) -> None:
    ns = lab.ns("doc")
    helper = HelperProcess(tmp_path, "no-such-group-tunseal", wrap=("ip", "netns", "exec", ns))
    helper.start()
    assert doctor(helper.socket)["helper"]["status"] == "ok"
    helper.proc.kill()  # type: ignore[union-attr]
    helper.proc.wait(15)  # type: ignore[union-attr]
    checks = doctor(helper.socket, expect=1)  # the socket file is left behind
    assert "exists but nobody listens on it" in checks["helper"]["found"]
    assert "systemctl start tunseal-helper" in checks["helper"]["todo"]
    assert {c["status"] for cid, c in checks.items() if cid != "helper"} == {"skip"}
    helper.socket.unlink()
    checks = doctor(helper.socket, expect=1)
    assert "the helper is not running" in checks["helper"]["found"]


# --- who may use the helper ---------------------------------------------------------------------


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _unused(prefix: str, database: str) -> str:
    for _ in range(100):
        name = f"{prefix}{random.randint(1000, 99999)}"
        if _sh("getent", database, name).returncode != 0:
            return name
    raise RuntimeError("no free name")


def as_user(user: str, socket_path: Path, *, groups: str) -> dict[str, Any]:
    """The doctor's helper check run as ``user`` with exactly the supplementary ``groups`` (a
    comma list, or "" for none): what a session started before or after a usermod has."""
    import pwd

    pw = pwd.getpwnam(user)
    code = ("import sys; from core.doctor import helper_check; c, cl = helper_check(sys.argv[1]);"
            " cl and cl.close(); import json; print(json.dumps(c.to_dict()))")
    group_args = [f"--groups={groups}"] if groups else ["--clear-groups"]
    done = subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", *group_args,
         "/usr/bin/python3", "-c", code, str(socket_path)],
        capture_output=True, text=True, timeout=60, cwd="/", check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_group_membership_and_a_session_older_than_it(lab: netlab.Lab) -> None:
    group, user = _unused("tsdg", "group"), _unused("tsdu", "passwd")
    tmp_path = Path(tempfile.mkdtemp(prefix="tunseal-doctor-users-"))
    assert _sh("groupadd", group).returncode == 0
    try:
        assert _sh("useradd", "-M", "-s", "/usr/sbin/nologin", user).returncode == 0
        try:
            tmp_path.chmod(0o755)
            ns = lab.ns("grp")
            helper = HelperProcess(tmp_path, group, wrap=("ip", "netns", "exec", ns))
            helper.start()
            try:
                helper.socket.parent.chmod(0o755)
                gid = str(__import__("grp").getgrnam(group).gr_gid)
                refused = as_user(user, helper.socket, groups="")
                assert refused["status"] == "fail"
                assert refused["found"] == f"{user} is not in group {group!r}, which the " \
                    "helper lets in"
                assert f"sudo usermod -aG {group} {user}" in refused["todo"]
                # Added to the group, but this session began before: the database says yes,
                # the process's groups say no.
                assert _sh("usermod", "-aG", group, user).returncode == 0
                stale = as_user(user, helper.socket, groups="")
                assert stale["status"] == "fail"
                assert "this session started before that" in stale["found"]
                assert stale["todo"].startswith("log out and in again")
                # A new session has the group.
                fresh = as_user(user, helper.socket, groups=gid)
                assert fresh["status"] == "ok", fresh
                assert f"{user} may use it" in fresh["found"]
            finally:
                helper.terminate()
                helper.stop()
        finally:
            _sh("userdel", user)
    finally:
        _sh("groupdel", group)
        shutil.rmtree(tmp_path, ignore_errors=True)
