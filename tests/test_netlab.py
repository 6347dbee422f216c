"""The namespace lab itself: it builds what it promises and removes all of it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import netlab
import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netlab.unavailable() is not None, reason=str(netlab.unavailable())),
]


def _host_link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for a reaper that is not us."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _netns_pids(ns: str) -> list[str]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return done.stdout.split()


def _received(ping_output: str) -> int:
    m = re.search(r"(\d+) received", ping_output)
    assert m, ping_output
    return int(m.group(1))


def test_lab_creates_and_then_removes_everything() -> None:
    with netlab.Lab() as lab:
        a, b = lab.ns("a"), lab.ns("b")
        a_if, b_if = lab.link("a", b, a_addr=["198.18.5.1/24", "fd00:5eed:5::1/64"],
                              b_addr="198.18.5.2/24", mtu=1400)
        lab.nft(a, "table inet t { chain c { type filter hook input priority 0; accept; }; }")
        sleeper = lab.popen(a, "sleep", "300")
        holder = netlab.hold_tun(lab, b, "ts-lab", persist=True)
        daemon = int(lab.run(b, "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 </dev/null & "
                             "echo $!").stdout)

        assert {a, b} <= set(os.listdir("/run/netns"))
        addrs = json.loads(lab.run(a, "ip", "-j", "addr", "show", "dev", a_if).stdout)[0]
        assert addrs["mtu"] == 1400 and "UP" in addrs["flags"]
        assert {(i["local"], i["prefixlen"]) for i in addrs["addr_info"]} >= {
            ("198.18.5.1", 24), ("fd00:5eed:5::1", 64)}
        assert "ts-lab" in lab.run(b, "ip", "link", "show").stdout
        assert not {a_if, b_if} & _host_link_names()  # veth ends never touch the host

    assert not {a, b} & set(os.listdir("/run/netns"))
    assert sleeper.returncode is not None and holder.returncode is not None
    deadline = time.monotonic() + 5
    while not _gone(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(daemon), "a process that left the lab's process group survived cleanup"
    assert not any(n.startswith(lab.prefix) for n in _host_link_names())
    assert lab.cleanup_problems == []


def test_cleanup_copes_with_things_already_gone() -> None:
    lab = netlab.Lab()
    gone = lab.ns("gone")
    proc = lab.popen(gone, "true")
    proc.wait(timeout=10)
    subprocess.run(["ip", "netns", "del", gone], check=True)
    assert lab.close() == []
    assert lab.close() == []  # twice is fine


def test_refuses_namespaces_it_did_not_create(lab: netlab.Lab) -> None:
    lab.ns("mine")
    with pytest.raises(ValueError, match="not a namespace of this lab"):
        lab.run("default", "true")
    with pytest.raises(ValueError, match="already has"):
        lab.ns("mine")


def test_run_kills_the_process_group_on_timeout(lab: netlab.Lab) -> None:
    ns = lab.ns("slow")
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run(ns, "sh", "-c", "sleep 30 & sleep 30", timeout=0.5)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5  # SIGKILLed processes take a moment to leave
    while _netns_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _netns_pids(ns) == [], "the background sleep of the timed-out command survived"


def test_failed_command_reports_its_stderr(lab: netlab.Lab) -> None:
    ns = lab.ns("x")
    with pytest.raises(netlab.LabError, match=r"stderr: .*nosuchdev"):
        lab.run(ns, "sh", "-c", "echo nosuchdev >&2; exit 3")


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_ping_across_the_router(lab: netlab.Lab, v6: bool) -> None:
    topo = netlab.two_hosts_with_router(lab, v6=v6)
    dst = topo.server_addr6 if v6 else topo.server_addr
    assert dst is not None
    out = lab.run(topo.client, "ping", "-c", "3", "-i", "0.05", "-W", "2", dst).stdout
    assert _received(out) == 3
    routes = json.loads(lab.run(topo.client, "ip", "-j", "route", "show", "default").stdout)
    assert routes[0]["gateway"] == topo.router_client_addr


def test_loss_rule_drops_some_pings(lab: netlab.Lab) -> None:
    topo = netlab.two_hosts_with_router(lab, loss_percent=30)
    sent = 40  # each ping crosses the rule twice: P(none lost) = 0.49**40, about 4e-13
    out = lab.run(topo.client, "ping", "-q", "-c", str(sent), "-i", "0.01", "-W", "1",
                  topo.server_addr, check=False, timeout=30).stdout
    assert 0 < _received(out) < sent
    rules = lab.run(topo.router, "nft", "list", "ruleset").stdout
    assert int(re.search(r"counter packets (\d+)", rules).group(1)) > 0  # type: ignore[union-attr]


_UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5555))
s.settimeout(10)
print("ready", flush=True)
data, (host, port) = s.recvfrom(100)
print("from", host, flush=True)
"""

_UDP_SEND = """
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hi", (sys.argv[1], 5555))
"""


@pytest.mark.parametrize("masquerade", [True, False], ids=["masquerade", "routed"])
def test_masquerade_rewrites_the_source(lab: netlab.Lab, masquerade: bool) -> None:
    topo = netlab.two_hosts_with_router(lab, masquerade=masquerade)
    sink = lab.python_popen(topo.server, _UDP_SINK, topo.server_addr,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(sink, "ready")
    lab.python(topo.client, _UDP_SEND, topo.server_addr)
    seen = netlab.wait_for_line(sink, "from").split()[1]
    assert seen == (topo.router_server_addr if masquerade else topo.client_addr)
    server_routes = lab.run(topo.server, "ip", "route").stdout
    assert ("198.18.1.0/24" in server_routes) is not masquerade


def test_sweep_removes_what_a_lab_left(lab: netlab.Lab) -> None:
    # A lab that crashed before its cleanup: its namespace is still there.
    orphan = netlab.Lab()
    ns = orphan.ns("orphan")
    proc = orphan.popen(ns, "sh", "-c", "echo ready; exec sleep 300", stdout=subprocess.PIPE)
    netlab.wait_for_line(proc, "ready")  # inside the namespace by now
    assert ns in netlab.sweep(orphan.prefix)
    assert ns not in os.listdir("/run/netns")
    deadline = time.monotonic() + 5
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL
    assert orphan.close() == []
