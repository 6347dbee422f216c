"""Issue 9, finding 2, end to end: an on-path attacker in the router namespace, two real
helpers in ``psk`` mode (Noise NNpsk0, where both ends hold the same key and nothing else).

The attacker is a small UDP program in the router namespace; an nft ``redirect`` rule hands it
every packet the client sends to the server's tunnel port, and conntrack makes its answers
look as if they came from the server. It either sends each packet straight back (a
reflector) or keeps it (a recorder, whose catch it later sends to the server from its own
address). The client must never come up with itself; the server must never move its peer's
endpoint to the attacker because of an initiation, nor answer, after a restart, an
initiation it had answered before it.
"""

from __future__ import annotations

import json
import subprocess
import time

import netlab
import pytest
from tunnellab import Capture, EchoServer, Spec, TunnelPair, echo_sizes, send_outer, tunnel_pair

from core.constants import PacketType

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

INIT = 0x10 | PacketType.HANDSHAKE_INIT
RESP = 0x10 | PacketType.HANDSHAKE_RESP
TIMEOUT = 30.0

_ATTACKER = r"""
import socket, sys
port, mode, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("ready", flush=True)
with open(log, "a") as f:
    while True:
        data, addr = s.recvfrom(65535)
        f.write(data.hex() + "\n")
        f.flush()
        if mode == "reflect":
            s.sendto(data, addr)
"""

_SEND_FROM_ROUTER = r"""
import json, socket, sys, time
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for h in json.load(sys.stdin):
    s.sendto(bytes.fromhex(h), (dst, port))
# Up to 20 s for the first answer (a loaded machine), then 3 s more for anything after it.
got, deadline = [], time.monotonic() + 20.0
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        got.append(s.recv(65535).hex())
    except socket.timeout:
        break
    if len(got) == 1:
        deadline = time.monotonic() + 3.0
print(json.dumps({"port": s.getsockname()[1], "got": got}), flush=True)
"""


class Attacker:
    """The program in the router namespace and the nft rule that feeds it the client's
    packets to the server's tunnel port."""

    def __init__(self, pair: TunnelPair, mode: str, port: int) -> None:
        self.pair, self.lab, self.router = pair, pair.lab, pair.topo.router
        self.log = pair.workdir / f"attacker-{mode}-{port}.log"
        self.log.touch()
        self.proc = self.lab.python_popen(self.router, _ATTACKER, str(port), mode,
                                          str(self.log), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        netlab.wait_for_line(self.proc, "ready")
        self.lab.nft(self.router, (
            "table ip reflect {\n  chain pre { type nat hook prerouting priority dstnat; "
            f"policy accept; ip saddr {pair.topo.client_addr} udp dport {pair.spec.port} "
            f"redirect to :{port}; }}\n}}\n"))

    def packets(self) -> list[bytes]:
        return [bytes.fromhex(line) for line in self.log.read_text().split()]

    def wait_for(self, what: str, ok: object, timeout: float = TIMEOUT) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not ok(self.packets()):  # type: ignore[operator]
            assert time.monotonic() < deadline, f"the attacker never saw {what}"
            time.sleep(0.1)
        return self.packets()

    def stop(self) -> None:
        """Remove the rule and end the program. Flows the rule already redirected stay so in
        conntrack: the client gets a fresh source port (down, up) before it needs the path."""
        self.lab.run(self.router, "nft", "delete", "table", "ip", "reflect")
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_drop(pair: TunnelPair, reason: str, count: int) -> dict[str, int]:
    deadline = time.monotonic() + TIMEOUT
    while (drops := pair.client.drops(cli=False)).get(reason, 0) < count:
        assert time.monotonic() < deadline, f"client drops {drops}, wanted {count} {reason}"
        time.sleep(0.1)
    return drops


def reconnect_client(pair: TunnelPair) -> None:
    pair.client.cli("down", pair.client.name)
    assert pair.client.cli_json("up", pair.client.name)["status"]["state"] != "error"


def test_finding2_reflected_initiation_does_not_bring_the_client_up(lab: netlab.Lab) -> None:
    """Issue 9, finding 2: every initiation the client sends comes straight back to it, as if
    from the server. Before the fix the client answered itself, completed a session with
    itself and showed `up`; now it refuses each one (`handshake_reflected`), and once the
    path is honest again it comes up with the real server."""
    with tunnel_pair(lab, Spec(mode="psk"), up=False) as pair:
        reflector = Attacker(pair, "reflect", 51999)
        for end in pair.ends:
            assert end.cli_json("up", end.name)["status"]["state"] != "error"
        # The first attempt and the retry 5 s later, both reflected and both refused. (Before
        # the fix the client answered the first: a response, then sealed packets, came by.)
        seen = reflector.wait_for("two initiations, or an answer",
                                  lambda p: len(p) >= 2 or any(x[0] != INIT for x in p))
        assert {p[0] for p in seen} == {INIT}, (
            f"the client answered its own initiation and is {pair.client.status()['state']}")
        wait_drop(pair, "handshake_reflected", 2)
        client = pair.client.status()
        assert client["state"] != "up", client
        assert client["last_handshake"] is None and client["rx_bytes"] == 0, client
        assert client["peers"][0]["state"] != "up", client
        assert pair.server.status()["last_handshake"] is None  # nothing got past the router
        reflector.stop()

        # An honest path: the same two helpers come up and carry traffic.
        reconnect_client(pair)
        pair.wait_state("up")
        echo = EchoServer(pair)
        assert echo.exchange(echo_sizes(1000, 5))["ok"] == 5


def test_finding2_an_initiation_from_elsewhere_does_not_move_the_servers_endpoint(
        lab: netlab.Lab) -> None:
    """Issue 9, finding 2: the attacker keeps an initiation the client sent (the server never
    saw it, so its timestamp is new) and sends it to the server from its own address. The
    server may answer it (it cannot tell), but it must not move its peer's endpoint there: only
    an authenticated transport packet of a confirmed session does that."""
    with tunnel_pair(lab, Spec(mode="psk")) as pair:
        echo = EchoServer(pair, idle=120)
        assert echo.exchange(echo_sizes(1000, 3), stop=False)["ok"] == 3
        endpoint = pair.server.status()["endpoint"]
        assert endpoint.startswith(f"{pair.topo.client_addr}:"), endpoint

        recorder = Attacker(pair, "record", 51998)
        reconnect_client(pair)  # a fresh initiation, which only the attacker gets
        caught = recorder.wait_for("an initiation", lambda p: any(x[0] == INIT for x in p))
        init = next(p for p in caught if p[0] == INIT)
        before = pair.server.status()["last_handshake"]
        done = lab.python(pair.topo.router, _SEND_FROM_ROUTER, pair.topo.router_server_addr,
                          pair.topo.server_addr, str(pair.spec.port),
                          input=json.dumps([init.hex()]), timeout=60)
        sent = json.loads(done.stdout)
        # The server answered the attacker: the initiation really was accepted...
        kinds = [bytes.fromhex(h)[0] for h in sent["got"]]
        assert kinds[:1] == [RESP], sent
        assert pair.server.status()["last_handshake"] != before
        # ...and its peer's endpoint stayed where the authenticated traffic came from.
        for _ in range(10):
            status = pair.server.status(cli=False)
            assert status["endpoint"] == endpoint, (
                f"the server now sends its peer's traffic to the attacker at "
                f"{pair.topo.router_server_addr}:{sent['port']}: {status['endpoint']}")
            time.sleep(0.1)
        assert kinds == [RESP], f"the server sent the attacker more than a response: {kinds}"
        recorder.stop()

        reconnect_client(pair)
        pair.wait_state("up")
        assert echo.exchange(echo_sizes(1000, 3), first=3)["ok"] == 3
        assert set(echo.counts().values()) == {1}
        moved = pair.server.status()["endpoint"]
        assert moved.startswith(f"{pair.topo.client_addr}:") and moved != endpoint, moved



@pytest.mark.parametrize("mode", ["psk", "ephemeral"])
def test_finding2_initiation_replayed_after_the_server_crashed_is_refused(
        lab: netlab.Lab, mode: str) -> None:
    """Issue 9, finding 2: the server never initiates, so only the timestamps it accepted
    stop a replayed initiation, and they used to live in memory only. Initiations captured on
    the way to the server, the server's helper killed (SIGKILL: nothing is saved on the way
    down) and started again: sent once more, every one is refused as a replay, not answered."""
    with tunnel_pair(lab, Spec(mode=mode), up=False) as pair:
        with Capture(pair) as capture:
            pair.up()
            time.sleep(1.0)  # the memory is written at the next timer tick (250 ms)
        inits = [p.payload for p in capture.packets() if p.payload[0] == INIT]
        assert inits, "no handshake initiation captured"

        pair.server.helper.kill()
        pair.server.helper.start()
        assert pair.server.cli_json("up", pair.server.name)["status"]["state"] != "error"
        send_outer(pair, inits)
        deadline = time.monotonic() + TIMEOUT
        while (drops := pair.server.drops(cli=False)).get("handshake_replay", 0) < len(inits):
            assert pair.server.status(cli=False)["last_handshake"] is None, (
                f"the restarted server answered a replayed initiation (drops {drops})")
            assert time.monotonic() < deadline, f"server drops {drops}"
            time.sleep(0.1)
        time.sleep(0.5)
        assert pair.server.drops().get("handshake_replay", 0) == len(inits)
        assert pair.server.status()["last_handshake"] is None
        # What the restarted helper remembered it read from its state directory.
        state = pair.server.helper.state_dir / "handshakes" / f"{pair.server.name}.json"
        assert json.loads(state.read_text())["peers"][pair.server.name]["newest"]
