"""helper/netwatch.py against the real kernel: a NetWatch in a throwaway namespace, links and
addresses changed there with ``ip``.

The watcher must report a change to the outer path promptly even right after a burst of
events it ignores (a tunnel coming up makes dozens: its TUN link, addresses, routes, IPv6
link-local setup), and must not report changes to the engine's own ``ts-`` links.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import netlab
import pytest

pytestmark = pytest.mark.netns

_WATCH = r"""
import sys, time
from helper.netwatch import NetWatch
w = NetWatch(lambda why: print("change", why, flush=True))
w.start()
time.sleep(0.3)
print("ready", flush=True)
sys.stdin.read()
w.stop()
"""


def test_an_address_change_is_reported_after_a_burst_of_own_link_events(
        lab: netlab.Lab) -> None:
    ns = lab.ns("host")
    outer, _ = lab.link(ns, lab.ns("other"), a_addr="198.18.9.2/24", b_addr="198.18.9.1/24")
    watch = lab.python_popen(ns, _WATCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(watch, "ready")
    # The engine's own links ("ts-" prefix) change a lot: none of it is a network change.
    script = ["link add ts-nw0 type veth peer name ts-nw1", "link set ts-nw0 up",
              "link set ts-nw1 up"]
    script += [f"addr add 10.99.{i}.1/24 dev ts-nw0" for i in range(20)]
    lab.run(ns, "ip", "-batch", "-", input="\n".join(script) + "\n")
    # Then the outer address moves: that must be reported within a second or two.
    lab.run(ns, "ip", "addr", "add", "198.18.9.3/24", "dev", outer)
    line = netlab.wait_for_line(watch, "change", timeout=3)
    assert "RTM_NEWADDR" in line or "RTM_NEWROUTE" in line, line
    out, _ = watch.communicate("", timeout=10)  # closing stdin stops the watcher
    assert "change" not in out, f"reported more than once for one burst: {out}"


def test_changes_to_own_links_alone_are_not_reported(lab: netlab.Lab) -> None:
    ns = lab.ns("host")
    watch = lab.python_popen(ns, _WATCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(watch, "ready")
    lab.run(ns, "ip", "-batch", "-", input="link add ts-nw0 type veth peer name ts-nw1\n"
            "link set ts-nw0 up\nlink set ts-nw1 up\naddr add 10.99.0.1/24 dev ts-nw0\n")
    with pytest.raises(AssertionError):
        netlab.wait_for_line(watch, "change", timeout=2)



def test_deleting_an_own_link_is_not_reported(lab: netlab.Lab) -> None:
    """A tunnel going down deletes its TUN link: the events name it, even though it is gone
    by the time they are read."""
    ns = lab.ns("host")
    lab.run(ns, "ip", "-batch", "-", input="link add ts-nw0 type veth peer name ts-nw1\n"
            "link set ts-nw0 up\nlink set ts-nw1 up\n")
    watch = lab.python_popen(ns, _WATCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(watch, "ready")
    lab.run(ns, "ip", "link", "del", "ts-nw0")
    with pytest.raises(AssertionError):
        netlab.wait_for_line(watch, "change", timeout=2)


_FILES = r"""
import sys, time
from helper.netwatch import FileWatch
w = FileWatch(lambda why: print("change", why, flush=True), files=(sys.argv[1],),
              dirs=(sys.argv[2],))
w.start()
time.sleep(0.3)
print("ready", flush=True)
sys.stdin.read()
w.stop()
"""


def test_file_watch_sees_writes_in_place_replacements_and_leases(tmp_path: Path) -> None:
    """resolv.conf written in place (a bind mount) and replaced by rename (a DHCP client),
    and a new lease file: each is reported once; other files in its directory are not."""
    resolv, leases = tmp_path / "resolv.conf", tmp_path / "leases"
    resolv.write_text("search a.example\n")
    leases.mkdir()
    watch = subprocess.Popen([sys.executable, "-c", _FILES, str(resolv), str(leases)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=netlab.python_env())
    try:
        netlab.wait_for_line(watch, "ready")
        with open(resolv, "w") as f:
            f.write("search b.example\n")
        assert str(resolv) in netlab.wait_for_line(watch, "change", timeout=3)
        (tmp_path / "resolv.conf.new").write_text("search c.example\n")
        time.sleep(1.5)  # not resolv.conf (yet): a report of it would be the next line
        os.rename(tmp_path / "resolv.conf.new", resolv)
        line = netlab.wait_for_line(watch, "change", timeout=3)
        assert line.strip() == f"change {resolv} changed", line
        with open(resolv, "w") as f:  # the new file is watched too
            f.write("search d.example\n")
        netlab.wait_for_line(watch, "change", timeout=3)
        (leases / "7").write_text("DOMAINNAME=e.example\n")
        assert "leases" in netlab.wait_for_line(watch, "change", timeout=3)
    finally:
        out, _ = watch.communicate("", timeout=10)
    assert "change" not in out, out


def test_a_link_going_down_and_up_is_reported_its_other_news_is_not(lab: netlab.Lab) -> None:
    """With no IPv6 and no default route on it, a link going down changes nothing but its
    state (and its connected route, which is no default route): that state is reported; an
    RTM_NEWLINK that changes no state (here: its MTU) is not."""
    ns = lab.ns("host")
    outer, _ = lab.link(ns, lab.ns("other"), a_addr="198.18.9.2/24", b_addr="198.18.9.1/24")
    lab.run(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{outer}.disable_ipv6=1")
    watch = lab.python_popen(ns, _WATCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(watch, "ready")
    lab.run(ns, "ip", "link", "set", outer, "mtu", "1400")
    time.sleep(1.5)  # a report of it would be the next line
    lab.run(ns, "ip", "link", "set", outer, "down")
    line = netlab.wait_for_line(watch, "change", timeout=3)
    assert f"RTM_NEWLINK of {outer}" in line, line
    lab.run(ns, "ip", "link", "set", outer, "up")
    assert f"RTM_NEWLINK of {outer}" in netlab.wait_for_line(watch, "change", timeout=3)
    out, _ = watch.communicate("", timeout=10)
    assert "change" not in out, out
