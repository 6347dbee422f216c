"""helper/netwatch.py against the real kernel: a NetWatch in a throwaway namespace, links and
addresses changed there with ``ip``.

The watcher must report a change to the outer path promptly even right after a burst of
events it ignores (a tunnel coming up makes dozens: its TUN link, addresses, routes, IPv6
link-local setup), and must not report changes to the engine's own ``ts-`` links.
"""

from __future__ import annotations

import subprocess

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

