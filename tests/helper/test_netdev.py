"""helper.netdev and helper.records on real TUN links, inside lab namespaces.

The code under test always runs *inside* the namespace (``lab.python``), as the helper does when
it is started with ``ip netns exec``; the assertions read the kernel's view with ``ip -j``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import netlab
import pytest

from helper import netdev

pytestmark = pytest.mark.netns


def _ip(lab: netlab.Lab, ns: str, *args: str) -> Any:
    return json.loads(lab.run(ns, "ip", "-j", *args).stdout or "[]")


def _routes(lab: netlab.Lab, ns: str, family: str, dev: str | None = None) -> dict[str, dict]:
    """Main-table routes by destination (``default`` for the default route)."""
    args = [family, "route", "show", "table", "main"] + (["dev", dev] if dev else [])
    return {r["dst"]: r for r in _ip(lab, ns, *args)}


def _netdev(lab: netlab.Lab, ns: str, code: str, *, check: bool = True) -> str:
    """Run ``code`` (with ``netdev`` and ``json`` imported) inside ``ns``; returns stdout."""
    done = lab.python(ns, "import json\nfrom helper import netdev\n" + code, check=check)
    return done.stdout + done.stderr


# --- names -------------------------------------------------------------------------------------


def test_ifname_for_short_names_read_plainly() -> None:
    assert netdev.ifname_for("office") == "ts-office"
    assert netdev.ifname_for("a23456789012") == "ts-a23456789012"  # exactly 15


def test_ifname_for_long_names_is_bounded_deterministic_and_distinct() -> None:
    a, b = netdev.ifname_for("office-berlin-2"), netdev.ifname_for("office-bern")
    assert a == netdev.ifname_for("office-berlin-2")
    assert len(a.encode()) <= 15 and len(b.encode()) <= 15
    assert a.startswith("ts-office") and a != b
    assert netdev.ifname_for("x" * 32) != netdev.ifname_for("x" * 31)
    assert "/" not in netdev.ifname_for("odd/name with space")


def test_expand_routes_splits_defaults_and_refuses_nonsense() -> None:
    nets = [str(n) for n in netdev.expand_routes(["0.0.0.0/0", "::/0", "10.0.0.0/8"])]
    assert nets == ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1", "10.0.0.0/8"]
    with pytest.raises(netdev.NetConfigError, match="not a network"):
        netdev.expand_routes(["10.0.0.1/8"])


# --- configure ---------------------------------------------------------------------------------


def test_configure_sets_addresses_mtu_and_routes(lab: netlab.Lab) -> None:
    ns = lab.ns("host")
    netlab.hold_tun(lab, ns, "ts-office")
    lab.run(ns, "sysctl", "-q", "-w", "net.ipv6.conf.ts-office.disable_ipv6=1")  # as some hosts
    code = """
kw = dict(addresses=["10.77.0.2/24", "fd77::2/64"], mtu=1380,
          routes=["10.77.0.0/24", "10.10.0.0/16", "fd77::/64", "fd10::/48"])
netdev.configure("ts-office", **kw)
netdev.configure("ts-office", **kw)   # idempotent
print(netdev.link_exists("ts-office"), netdev.link_exists("ts-none"), netdev.list_links("ts-"))
"""
    assert "True False ['ts-office']" in _netdev(lab, ns, code)

    link = _ip(lab, ns, "addr", "show", "dev", "ts-office")[0]
    assert link["mtu"] == 1380 and "UP" in link["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] == "global"}
    assert addrs == {("10.77.0.2", 24), ("fd77::2", 64)}

    v4, v6 = _routes(lab, ns, "-4", "ts-office"), _routes(lab, ns, "-6", "ts-office")
    assert v4["10.10.0.0/16"]["protocol"] == "77"
    assert v4["10.77.0.0/24"]["protocol"] == "kernel"  # implied by the address: not added again
    assert v6["fd10::/48"]["protocol"] == "77"
    assert v6["fd77::/64"]["protocol"] == "kernel"

    _netdev(lab, ns, 'netdev.remove_routes("ts-office", ["10.10.0.0/16", "fd10::/48", '
                     '"10.77.0.0/24"]); netdev.remove_routes("ts-office", ["10.10.0.0/16"])')
    assert set(_routes(lab, ns, "-4", "ts-office")) == {"10.77.0.0/24"}
    assert set(_routes(lab, ns, "-6", "ts-office")) - {"fe80::/64"} == {"fd77::/64"}


def test_finding4_set_mtu_puts_back_what_an_mtu_change_took(lab: netlab.Lab) -> None:
    """Issue 9 finding 4: below MTU 1280 the kernel deletes a link's IPv6 addresses and routes
    and does not restore them when the MTU rises; netdev.set_mtu with the tunnel's addresses
    and routes puts them back, and refuses to go below 1280 itself while they hold IPv6."""
    ns = lab.ns("mtu6")
    netlab.hold_tun(lab, ns, "ts-mtu6")
    kw = 'addresses=["10.77.0.2/24", "fd77::2/64"], routes=["fd10::/48", "10.10.0.0/16"]'
    _netdev(lab, ns, f"netdev.configure('ts-mtu6', mtu=1380, {kw})")
    lab.run(ns, "ip", "link", "set", "dev", "ts-mtu6", "mtu", "1200")  # someone else did it
    lab.run(ns, "ip", "link", "set", "dev", "ts-mtu6", "mtu", "1300")

    def v6() -> tuple[set[str], set[str]]:
        link = _ip(lab, ns, "-6", "addr", "show", "dev", "ts-mtu6")
        addrs = {a["local"] for li in link for a in li["addr_info"] if a["scope"] == "global"}
        return addrs, set(_routes(lab, ns, "-6", "ts-mtu6")) - {"fe80::/64"}

    assert v6() == (set(), set())  # what the kernel does, and why this test exists
    out = _netdev(lab, ns, f"netdev.set_mtu('ts-mtu6', 1340, {kw})\n"
                           f"netdev.set_mtu('ts-mtu6', 1200, {kw})", check=False)
    assert "IPv6 needs an MTU of at least 1280, not 1200" in out
    assert _ip(lab, ns, "link", "show", "dev", "ts-mtu6")[0]["mtu"] == 1340
    assert v6() == ({"fd77::2"}, {"fd77::/64", "fd10::/48"})
    assert "10.10.0.0/16" in _routes(lab, ns, "-4", "ts-mtu6")


def test_default_route_is_split_and_the_endpoint_stays_outside(lab: netlab.Lab) -> None:
    topo = netlab.two_hosts_with_router(lab, v6=True)
    netlab.hold_tun(lab, topo.client, "ts-full")
    code = f"""
pins = [netdev.endpoint_pin(a) for a in ("{topo.server_addr}", "{topo.server_addr6}")]
for pin in pins:
    netdev.add_host_route(pin)
netdev.configure("ts-full", addresses=["10.77.0.2/32", "fd77::2/128"], mtu=1380,
                 routes=["0.0.0.0/0", "::/0"])
print(json.dumps(pins))
"""
    pins = json.loads(_netdev(lab, topo.client, code))
    assert pins[0] == {"dst": topo.server_addr, "gateway": topo.router_client_addr,
                       "oif": topo.client_if}

    v4, v6 = _routes(lab, topo.client, "-4"), _routes(lab, topo.client, "-6")
    assert v4["0.0.0.0/1"]["dev"] == v4["128.0.0.0/1"]["dev"] == "ts-full"
    assert v6["::/1"]["dev"] == v6["8000::/1"]["dev"] == "ts-full"
    assert v4["default"]["gateway"] == topo.router_client_addr  # the system's, untouched
    assert v4[topo.server_addr]["protocol"] == "77"

    def dev_for(dst: str) -> str:
        return str(_ip(lab, topo.client, "route", "get", dst)[0]["dev"])

    assert dev_for("198.19.255.1") == "ts-full"  # everything else goes into the tunnel
    assert dev_for(topo.server_addr) == topo.client_if  # the endpoint does not
    assert dev_for(str(topo.server_addr6)) == topo.client_if
    ping = lab.run(topo.client, "ping", "-c", "1", "-W", "2", topo.server_addr, check=False)
    assert ping.returncode == 0, ping.stdout

    code = f"""
netdev.remove_routes("ts-full", ["0.0.0.0/0", "::/0"])
print([netdev.remove_host_route(p) for p in {pins!r}], netdev.remove_host_route({pins[0]!r}))
"""
    assert "[True, True] False" in _netdev(lab, topo.client, code)
    v4 = _routes(lab, topo.client, "-4")
    assert "0.0.0.0/1" not in v4 and topo.server_addr not in v4 and "default" in v4


def test_errors_say_what_to_do(lab: netlab.Lab) -> None:
    topo = netlab.two_hosts_with_router(lab)
    netlab.hold_tun(lab, topo.client, "ts-err")
    code = """
def attempt(f, *a, **kw):
    try:
        f(*a, **kw)
    except netdev.NetConfigError as e:
        print("ERR", e)
attempt(netdev.configure, "ts-gone", addresses=[], mtu=1380, routes=[])
attempt(netdev.configure, "ts-err", addresses=["fd77::2/64"], mtu=1200, routes=[])
attempt(netdev.configure, "ts-err", addresses=[], mtu=1380, routes=["198.18.1.0/24"])
attempt(netdev.configure, "ts-err", addresses=["10.1.2.3/33"], mtu=1380, routes=[])
attempt(netdev.set_mtu, "ts-err", 70000)
attempt(netdev.endpoint_pin, "vpn.example")
"""
    out = _netdev(lab, topo.client, code)
    assert "no link 'ts-gone' in this network namespace" in out
    assert "IPv6 needs an MTU of at least 1280, not 1200" in out
    assert "a route to 198.18.1.0/24 already exists" in out
    assert "address '10.1.2.3/33' is not like" in out
    assert "refuses MTU 70000" in out
    assert "not an IP address; resolve it first" in out
    assert "Traceback" not in out


def test_delete_link_is_idempotent(lab: netlab.Lab) -> None:
    ns = lab.ns("del")
    lab.run(ns, "ip", "tuntap", "add", "dev", "ts-stale", "mode", "tun")
    out = _netdev(lab, ns, 'print(netdev.delete_link("ts-stale"), netdev.delete_link("ts-stale"))')
    assert "True False" in out
    assert _ip(lab, ns, "link", "show", "type", "tun") == []


# --- records: a crash, then cleanup --------------------------------------------------------------

_CRASHING_HELPER = """
import fcntl, os, struct, sys, time
from pathlib import Path
from helper import netdev
from helper.records import Records

ifname, endpoint, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
records = Records(state)
records.note_link(ifname, "crashy")                 # noted before the link exists
fd = os.open("/dev/net/tun", os.O_RDWR)             # what the engine does
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", ifname.encode(), 0x0001 | 0x1000))
fcntl.ioctl(fd, 0x400454CB, 1)                      # TUNSETPERSIST: outlives the process
pin = netdev.endpoint_pin(endpoint)
records.note_host_route(ifname, pin)
netdev.add_host_route(pin)
netdev.configure(ifname, addresses=["10.77.0.2/24"], mtu=1380, routes=["0.0.0.0/0"])
print("ready", flush=True)
time.sleep(60)
"""

_CLEANUP = """
import json, sys
from pathlib import Path
from helper import dns, netdev
from helper.records import Records
records = Records(Path(sys.argv[1]))
print(json.dumps({"stale": [r.ifname for r in records.stale()],
                  "done": records.cleanup_stale(netdev, dns)}))
"""


def test_cleanup_after_sigkill_removes_link_and_routes(lab: netlab.Lab, tmp_path: Path) -> None:
    topo = netlab.two_hosts_with_router(lab)
    ns = topo.client
    lab.run(ns, "ip", "tuntap", "add", "dev", "ts-other", "mode", "tun")  # not ours: no record
    crashy = lab.python_popen(ns, _CRASHING_HELPER, "ts-crashy", topo.server_addr, str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(crashy, "ready", timeout=20)

    alive = json.loads(lab.python(ns, _CLEANUP, str(tmp_path)).stdout)
    assert alive == {"stale": [], "done": []}  # the owner lives: nothing is stale
    assert "ts-crashy" in _routes(lab, ns, "-4")["0.0.0.0/1"]["dev"]

    crashy.send_signal(signal.SIGKILL)
    crashy.wait(timeout=10)
    assert netdev.ifname_for("crashy") == "ts-crashy"
    assert _ip(lab, ns, "link", "show", "dev", "ts-crashy")  # the crash left the link behind
    assert topo.server_addr in _routes(lab, ns, "-4")  # and the pin

    after = json.loads(lab.python(ns, _CLEANUP, str(tmp_path)).stdout)
    assert after["stale"] == ["ts-crashy"]
    assert after["done"] == [
        f"removed route {topo.server_addr} via {topo.router_client_addr} dev {topo.client_if}",
        "deleted link ts-crashy (profile 'crashy')",
    ]
    links = {link["ifname"] for link in _ip(lab, ns, "link", "show")}
    assert "ts-crashy" not in links and "ts-other" in links
    v4 = _routes(lab, ns, "-4")
    assert topo.server_addr not in v4 and "0.0.0.0/1" not in v4 and "default" in v4
    assert list((tmp_path / "run").iterdir()) == []

    again = json.loads(lab.python(ns, _CLEANUP, str(tmp_path)).stdout)
    assert again == {"stale": [], "done": []}  # idempotent


def test_cleanup_never_deletes_a_link_it_only_noted_dns_for(
    lab: netlab.Lab, tmp_path: Path
) -> None:
    ns = lab.ns("dnsonly")
    lab.run(ns, "ip", "tuntap", "add", "dev", "ts-keep", "mode", "tun")
    # A process that noted only a DNS change for the link, then ended: its record is stale.
    lab.python(ns, "import sys; from pathlib import Path; from helper.records import Records; "
               "Records(Path(sys.argv[1])).note_dns('ts-keep', {'backend': 'resolved', "
               "'ifname': 'ts-gone-anyway'})", str(tmp_path))
    done = json.loads(lab.python(ns, _CLEANUP, str(tmp_path)).stdout)
    assert done == {"stale": ["ts-keep"], "done": ["restored DNS of ts-keep (resolved)"]}
    assert _ip(lab, ns, "link", "show", "dev", "ts-keep")


def test_records_round_trip_and_forget(tmp_path: Path) -> None:
    from helper.records import Records

    records = Records(tmp_path)
    records.note_link("ts-a", "a")
    records.note_dns("ts-a", {"backend": "resolved", "ifname": "ts-a"})
    records.note_host_route("ts-a", {"dst": "192.0.2.1", "gateway": None, "oif": "eth0"})
    records.note_host_route("ts-a", {"dst": "192.0.2.1", "gateway": None, "oif": "eth0"})
    rec = records.get("ts-a")
    assert rec is not None and rec.profile == "a" and rec.owns_link and len(rec.host_routes) == 1
    assert rec.dns == {"backend": "resolved", "ifname": "ts-a"} and rec.owner_alive()
    assert records.stale() == []
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["ts-a.json"]  # no temp left
    records.forget("ts-a")
    records.forget("ts-a")
    assert records.all() == []
    with pytest.raises(ValueError):
        records.note_link("../evil", None)
