"""``tunseal bugreport -o FILE`` holds no secret: a real connected profile with a private key and
a psk in the Secret Service, a peer endpoint given by host name (resolved through the laptop
namespace's /etc/hosts), then the report is searched for every key, address and name in every
spelling a key or an address can take in text (base64 standard and URL-safe, padded or not,
hex either case; dotted and packed hex)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import netlab
import pytest
from helpers_proc import ROOT
from tunnellab import Spec, TunnelPair, read_key

pytestmark = [pytest.mark.keyring, pytest.mark.netns]

if os.geteuid() != 0:
    pytest.skip("builds namespaces: run as root", allow_module_level=True)

HOST = "vpn.secret-office.example"


def spellings(key: bytes) -> list[str]:
    std = base64.b64encode(key).decode()
    url = base64.urlsafe_b64encode(key).decode()
    return [std, std.rstrip("="), url, url.rstrip("="), key.hex(), key.hex().upper()]


def test_bugreport_redacts_keys_addresses_and_names(lab: netlab.Lab) -> None:
    topo = netlab.two_hosts_with_router(lab)
    etc = Path("/etc/netns") / topo.client
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{topo.server_addr} {HOST}\n")
    # The doctor's DNS check asks the laptop's nameserver: one in the lab (nothing answers).
    (etc / "resolv.conf").write_text(f"nameserver {topo.router_client_addr}\n")
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-bugreport-"))
    pair = TunnelPair(lab, topo, Spec(mode="ephemeral+psk"), workdir)
    try:
        pair.start_helpers()
        pair.build()
        server, client = pair.ends
        # The laptop's profile names the office by host name.
        profile = pair.profile(client, public_key=server.cli("pubkey", server.name).stdout.strip())
        pair.import_profile(client, profile.replace(endpoint=f"{HOST}:{pair.spec.port}",
                                                    dns_search=("corp.secret-office.example",)))
        pair.up()
        report = workdir / "report.txt"
        done = subprocess.run([sys.executable, "-m", "core.cli", "--socket",
                               str(client.helper.socket), "bugreport", "-o", str(report)],
                              cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
        assert report.stat().st_mode & 0o777 == 0o600
        text = report.read_text()

        # What a report is for is there.
        for section in ("== versions ==", "== status ==", "== profiles (no keys) ==",
                        "== recent log ==", "== doctor =="):
            assert section in text
        assert f"python: {sys.version.split()[0]}" in text
        assert "kernel: Linux" in text
        assert "[ok  ] Endpoint" in text  # the doctor ran, and the tunnel answers
        assert client.name in text and '"state": "up"' in text
        assert re.search(r"connected to \S+ \(<endpoint-\d+>\)", text), "the log is redacted"
        assert re.search(r'"endpoint": "<host-\d+>:51900"', text), "the profile is redacted"
        assert not re.search(r"(?<![0-9a-f:])([0-9a-f]{2}:){5}[0-9a-f]{2}", text.replace(
            "00:00:00:00:00:00", "").replace("ff:ff:ff:ff:ff:ff", "")), "a MAC address is left"

        # What must not be.
        private = read_key(f"profile:{client.name}:private")
        psk = read_key(f"profile:{client.name}:psk")
        assert private is not None and psk is not None
        keys = {"private key": private, "psk": psk,
                "the peer's public key": base64.b64decode(profile.public_key),
                "this end's public key":
                    base64.b64decode(client.cli("pubkey", client.name).stdout.strip())}
        for what, key in keys.items():
            for spelling in spellings(key):
                assert spelling not in text, f"{what} appears in the report as {spelling}"
        packed = socket.inet_aton(topo.server_addr)
        for spelling in (topo.server_addr, f"{topo.server_addr}:{pair.spec.port}",
                         packed.hex(), packed.hex().upper(), HOST, "secret-office",
                         socket.gethostname()):
            assert spelling.lower() not in text.lower(), f"{spelling!r} appears in the report"
        pair.teardown()
    finally:
        pair.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(etc, ignore_errors=True)
