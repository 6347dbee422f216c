"""helper/transport.py: path errors reach the receive loop even when a send consumed them.

A real UDP transport in a namespace behind a router whose link MTU is 1280. The kernel keeps one
pending error per socket (sk_err): whichever call comes first, a send or a receive, takes it.
The data path reads the error queue only when a receive fails, so a send that took the error
must make the next receive fail instead (otherwise the path MTU is never lowered and every GSO
send fails locally from then on, a black hole).
"""

from __future__ import annotations

import json

import netlab
import pytest

pytestmark = pytest.mark.netns

_SCRIPT = r"""
import json, socket, time
from helper.transport import UdpTransport
t = UdpTransport(port=0)
t.enable_path_errors()
t.sock.setblocking(False)
dst = ("198.18.2.2", 51900)
seg = 1452  # 1480-byte datagrams: over the router's 1280
out = {"gso": t.gso}
t.send_segments(memoryview(bytes(seg * 8)), seg, dst)  # the router answers "frag needed"
time.sleep(0.3)
t.send_segments(memoryview(bytes(seg * 8)), seg, dst)  # this send takes the pending error
buf = bytearray(65536)
try:
    t.receive(buf)
    out["receive"] = "data"
except BlockingIOError:
    out["receive"] = "nothing"  # the error is lost to the receive loop
except OSError:
    out["receive"] = "error"
    out["mtus"] = [e.mtu for e in t.read_errors()]
print(json.dumps(out))
"""


def test_a_send_that_consumed_a_path_error_makes_the_next_receive_fail(lab: netlab.Lab) -> None:
    topo = netlab.two_hosts_with_router(lab)
    lab.run(topo.router, "ip", "link", "set", "dev", topo.router_server_if, "mtu", "1280")
    out = json.loads(lab.python(topo.client, _SCRIPT).stdout)
    assert out["gso"], "this kernel has no UDP GSO: the case under test cannot happen"
    assert out["receive"] == "error", out
    assert 1280 in out["mtus"], out
