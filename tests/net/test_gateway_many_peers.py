"""A gateway with 1,000 registered peers answers ``status`` and ``peer list`` (docs/IPC.md):
its status counts the peers instead of listing them, so it (and the status event sent every
second) stays far below the control protocol's 64 KiB; ``status NAME --peers`` and ``peer
list`` follow the helper's pages and show every peer. The peers are written into the
gateway's file before it starts (as bench/gateway.py registers its generated keys); none of
them connects, so the gateway's namespace needs no links."""

from __future__ import annotations

import base64
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import helpers_proc
import netlab
import pytest
from gatewaylab import GatewayHelper

from core import gateway as gwconf
from core import noise
from core.ipc import MAX_LINE, Reply
from core.status import PEERS_INLINE

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

N_PEERS = 1000


def _config(path: Path, name: str) -> list[str]:
    """The gateway's file with N_PEERS peers; their names, in order."""
    path.write_text("\n".join([
        "format = 1", "", "[gateway]", f'name = "{name}"', 'addresses = ["10.78.0.1/16"]',
        'mode = "ephemeral"', "listen_port = 51990", 'public_endpoint = "198.18.100.1:51990"',
        f'private_key = "{name}-gateway.private"']) + "\n")
    gw = gwconf.load(path)
    peers = tuple(gwconf.GatewayPeer(
        name=f"hs{i:04d}",
        public_key=base64.b64encode(noise.public_key(noise.generate_private_key())).decode(),
        device_id=1000 + i, allowed_ips=(f"10.78.{100 + i // 250}.{1 + i % 250}/32",))
        for i in range(N_PEERS))
    gwconf.save(gwconf.from_dict(gwconf.to_dict(replace(gw, peers=peers))), path)
    return [p.name for p in peers]


def test_status_and_peer_list_with_1000_peers(lab: netlab.Lab) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-gwmany-"))
    name = f"gm{uuid.uuid4().hex[:6]}"
    ns = lab.ns("gw")
    names = _config(workdir / "gateway.toml", name)
    (workdir / "gw").mkdir()
    gateway = GatewayHelper(workdir / "gw", workdir / "gateway.toml",
                            wrap=("ip", "netns", "exec", ns))
    try:
        gateway.launch()
        gateway.wait_ready()
        sock = gateway.socket
        st = helpers_proc.cli_json(sock, "status", name)["tunnels"][0]
        assert (st["state"], st["peer_count"], st["peers_up"], st["peers"]) == (
            "up", N_PEERS, 0, []), {k: v for k, v in st.items() if k != "peers"}
        human = helpers_proc.cli(sock, "status", name).stdout
        assert f"peers      {N_PEERS} (0 up)" in human and f"status {name} --peers" in human

        every = helpers_proc.cli(sock, "status").stdout  # every tunnel: the gateway is one
        assert f"{name}: up" in every, every

        full = helpers_proc.cli_json(sock, "status", name, "--peers")["tunnels"][0]
        assert [p["name"] for p in full["peers"]] == names
        assert full["peers"][7]["allowed_ips"] == ["10.78.100.8/32"]
        listed = helpers_proc.cli(sock, "status", name, "--peers").stdout
        assert all(f"  {n} " in listed for n in names)

        listing = helpers_proc.cli_json(sock, "peer", "list")
        assert [p["name"] for p in listing["peers"]] == names
        assert listing["gateway"] == name and listing["public_key"]
        human_list = helpers_proc.cli(sock, "peer", "list").stdout
        assert all(f"  {n} " in human_list for n in names)

        with gateway.client() as c:
            # One page is one reply: well under the limit, and says where the next starts.
            page = c.call("status", name=name, peers=True)
            assert 0 < len(page["tunnels"][0]["peers"]) < N_PEERS and page["next"]
            assert len(Reply.success(1, page).encode()) <= MAX_LINE
            # The status event, once a second, fits too (it was dropped as too large).
            events = c.subscribe(timeout=10)
            seen = next(e for e in events if e.event == "status" and e.data["name"] == name)
            assert (seen.data["peer_count"], seen.data["peers"]) == (N_PEERS, [])
            assert N_PEERS > PEERS_INLINE
    finally:
        gateway.stop()
        shutil.rmtree(workdir, ignore_errors=True)
