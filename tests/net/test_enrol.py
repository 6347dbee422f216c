"""Enrolment end to end: a real gateway helper and laptop helpers (each in its own namespace,
with its own D-Bus session and gnome-keyring, as on separate machines; tests/net/gatewaylab.py).

The admin runs ``tunseal peer invite``; the laptop runs ``tunseal join`` with the text and is
connected, with traffic to the office LAN. The gateway's log, every file under its directory and
every item in its keyring are searched for the laptop's private key (and the invitation's
secret) in every spelling: never there. A used invitation (also after a gateway restart), an
expired one and an altered one are refused, each with its own message on the laptop and a log
line on the gateway; a damaged one never leaves the laptop. ``peer revoke`` cuts a live session
(measured: the last echo reply that came through after the revoke started).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gatewaylab
import helpers_proc
import netlab
import pytest
from gatewaylab import LAN_SERVER, Office, SessionHelper, office, wait_up
from pathlab import Pinger

from core import invitation as invitation_format
from core.profile import loads

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

REVOKE_LIMIT = 1.0


@dataclass
class Laptop:
    name: str
    ns: str
    helper: SessionHelper
    profile: str = ""

    def cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        return helpers_proc.cli(self.helper.socket, *args, expect=expect)

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        return helpers_proc.cli_json(self.helper.socket, *args, expect=expect)

    def status(self) -> dict[str, Any]:
        with self.helper.client() as c:
            tunnels: list[dict[str, Any]] = c.call("status", name=self.profile)["tunnels"]
        return tunnels[0]


@contextlib.contextmanager
def laptops(o: Office, names: list[str]) -> Iterator[list[Laptop]]:
    """Laptops on the office's switch (no default route), helpers started, stopped after."""
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-laptops-"))
    out: list[Laptop] = []
    try:
        for i, name in enumerate(names):
            ns = o.lab.ns(name)
            gatewaylab._bridge_port(o.lab, o.switch, ns, f"198.18.100.{60 + i}")
            (workdir / name).mkdir()
            out.append(Laptop(name, ns, SessionHelper(workdir / name, ns)))
        for lap in out:
            lap.helper.launch()
        for lap in out:
            gatewaylab._wait_ready(lap.helper)
        yield out
    except BaseException:
        for lap in out:
            print(f"--- {lap.name} log ---\n" + gatewaylab._tail(lap.helper.log()))
        raise
    finally:
        for lap in out:
            with contextlib.suppress(Exception):
                lap.helper.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def invite(o: Office, name: str, *extra: str) -> str:
    result = o.gw_cli_json("peer", "invite", name, *extra)
    text: str = result["invitation"]
    assert text.startswith("tunseal1:"), result
    return text


def refused(lap: Laptop, text: str, *, name: str = "office") -> str:
    done = lap.cli("join", text, "--name", name, expect=1)
    return done.stderr


def test_invite_join_refusals_and_revoke(lab: netlab.Lab) -> None:
    with office(lab, 0) as o, laptops(o, ["lapa", "lapb"]) as (a, b):
        text = check_invite_output(o)
        check_join_and_traffic(o, a, text)
        check_gateway_never_saw_the_private_key(o, a, text)
        check_reused_invitation_is_refused(o, b, text)
        check_expired_invitation_is_refused(o, b)
        check_altered_invitation_is_refused(o, a, b)
        check_revoke_cuts_the_live_session(o, a)
        check_restart_does_not_revive(o, b, text)


def check_invite_output(o: Office) -> str:
    human = o.gw_cli("peer", "invite", "alice", "--expires", "1h").stdout
    text = next(line for line in human.splitlines() if line.startswith("tunseal1:"))
    assert "good once" in human and "alice" in human, human
    assert "\u2588" in human or "\u2580" in human or "segno" in human, human  # the QR code
    inv = invitation_format.decode(text)
    assert (inv.gateway, inv.host, inv.port) == (o.name, gatewaylab.GW_OUTER, gatewaylab.PORT)
    assert inv.address == "10.77.0.2/32"
    assert 3500 < inv.expires - time.time() <= 3600
    # An open invitation holds its name and address: a second one gets the next address.
    other = invitation_format.decode(invite(o, "spare"))
    assert other.address == "10.77.0.3/32"
    listed = o.gw_cli_json("peer", "list")["invitations"]
    assert [(i["name"], i["state"]) for i in listed] == [("alice", "open"), ("spare", "open")]
    assert "invited" in o.gw_cli("peer", "list").stdout
    assert o.gw_cli_json("peer", "revoke", "spare")["withdrawn"] == [other.id_text]
    return text


def check_join_and_traffic(o: Office, a: Laptop, text: str) -> None:
    with o.gateway.client() as watcher:
        watcher.call("subscribe")
        started = time.monotonic()
        joined = a.cli_json("join", text)
        took = time.monotonic() - started
        # Whoever watches the gateway (a GUI, a script) hears of the new peer, as after
        # 'peer add'.
        added = next((e for e in watcher.events(timeout=5) if e.event == "profiles"
                      and e.data == {"change": "peer_added", "name": "alice"}), None)
        assert added is not None, "no peer_added event for the enrolled peer"
    a.profile = joined["profile"]["tunnel"]["name"]
    assert a.profile == o.name and joined["peer_name"] == "alice", joined
    assert joined["profile"]["interface"]["addresses"] == ["10.77.0.2/32"]
    listing = o.gw_cli_json("peer", "list")
    peer = next(p for p in listing["peers"] if p["name"] == "alice")
    assert peer["public_key"] == a.cli_json("pubkey", a.profile)["public_key"]
    print(f"join took {took:.2f} s (enrolment round trip + storing the profile)")
    a.cli_json("up", a.profile)
    wait_up(a)  # type: ignore[arg-type]
    a_ping = o.lab.run(a.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", LAN_SERVER)
    assert " 0% packet loss" in a_ping.stdout, a_ping.stdout


def _private_key(lap: Laptop) -> bytes:
    exported = lap.cli_json("export", lap.profile, "--with-secrets")
    _, secrets = loads(exported["text"])
    assert secrets is not None and secrets.private_key is not None
    return secrets.private_key


def _keyring_secrets() -> list[bytes]:
    """Every secret in the test session's keyring, which the gateway helper uses (the laptops
    have keyrings of their own, in their own sessions)."""
    import secretstorage

    conn = secretstorage.dbus_init()
    try:
        out = []
        for collection in secretstorage.get_all_collections(conn):
            collection.unlock()
            out += [item.get_secret() for item in collection.get_all_items()]
        return out
    finally:
        conn.close()


def check_gateway_never_saw_the_private_key(o: Office, a: Laptop, text: str) -> None:
    private = _private_key(a)
    secret = invitation_format.decode(text).secret
    spellings = [*helpers_proc.spellings(private), *helpers_proc.spellings(secret)]
    files = [p for p in o.workdir.rglob("*") if p.is_file() and not p.is_socket()]
    assert any(p.name.endswith(".invitations.json") for p in files), files
    assert o.gateway.log_path in files
    for path in files:
        data = path.read_bytes()
        assert private not in data and secret not in data, path
        content = data.decode("utf-8", errors="replace")
        for s in spellings:
            assert s not in content, (path, s)
    items = _keyring_secrets()
    assert items, "the gateway's keyring holds at least its own static key"
    for item in items:
        assert private not in item and secret not in item
        for s in spellings:
            assert s.encode() not in item
    print(f"searched {len(files)} gateway files and {len(items)} keyring items: no private key")


def check_reused_invitation_is_refused(o: Office, b: Laptop, text: str) -> None:
    err = refused(b, text)
    assert "already used by another device" in err, err
    assert "enrolment refused (used)" in o.gateway.log()
    assert b.cli_json("list")["profiles"] == []  # nothing half-made on the laptop


def check_expired_invitation_is_refused(o: Office, b: Laptop) -> None:
    text = invite(o, "bob", "--expires", "2s")
    time.sleep(2.5)
    err = refused(b, text)
    assert "has expired" in err, err
    assert "enrolment refused (expired)" in o.gateway.log()
    o.gw_cli_json("peer", "revoke", "bob")


def check_altered_invitation_is_refused(o: Office, a: Laptop, b: Laptop) -> None:
    text = invite(o, "carol")
    # A profile name that is taken is refused on the laptop, before the invitation is used.
    taken = a.cli("join", text, expect=1)
    assert "already exists" in taken.stderr, taken.stderr
    inv = invitation_format.decode(text)
    # A new secret with a correct checksum: what a deliberate alteration looks like.
    forged = invitation_format.encode(
        invitation_format.Invitation(**{**_fields(inv), "secret": bytes(16)}))
    err = refused(b, forged)
    assert "was altered" in err, err
    log = o.gateway.log()
    assert "enrolment refused (bad_secret)" in log
    # A character changed in transit: caught by the checksum, never sent.
    before = o.drops()
    broken = text[:20] + ("A" if text[20] != "A" else "B") + text[21:]
    done = b.cli("join", broken, expect=1)
    assert "damaged" in done.stderr, done.stderr
    assert o.drops() == before
    # The genuine invitation still works after the forged try: a forgery burns nothing.
    joined = b.cli_json("join", text, "--name", "office")
    b.profile = joined["profile"]["tunnel"]["name"]
    assert joined["peer_name"] == "carol"
    b.cli_json("up", b.profile)
    wait_up(b)  # type: ignore[arg-type]
    drops = o.drops()
    assert drops.get("enrol_refused", 0) >= 3, drops


def _fields(inv: invitation_format.Invitation) -> dict[str, Any]:
    return {k: getattr(inv, k) for k in ("gateway_public", "invitation_id", "secret", "expires",
                                         "host", "port", "gateway", "address")}


def check_revoke_cuts_the_live_session(o: Office, a: Laptop) -> None:
    pinger = Pinger(o.lab, a.ns, LAN_SERVER, interval=0.02, deadline=30)
    try:
        deadline = time.monotonic() + 10
        while not pinger.answered_since(time.monotonic() - 0.5):
            assert time.monotonic() < deadline, "no echo replies through the tunnel"
            time.sleep(0.1)
        before = o.drops().get("unknown_session", 0)
        started = time.monotonic()
        result = o.gw_cli_json("peer", "revoke", "alice")
        returned = time.monotonic()
        time.sleep(2.0)
    finally:
        pinger.stop()
    assert result["peer_removed"] is True
    answers = pinger.answers()
    last = max(answers)
    cut = last - started
    print(f"revoke: the CLI returned after {returned - started:.3f} s (the gateway's own work: "
          f"{result['seconds'] * 1000:.1f} ms); the last echo reply came through "
          f"{cut * 1000:.0f} ms after the revoke started")
    assert cut < REVOKE_LIMIT, cut
    assert o.drops().get("unknown_session", 0) > before  # the laptop's packets are refused
    assert "alice" not in [p["name"] for p in o.gw_cli_json("peer", "list")["peers"]]


def check_restart_does_not_revive(o: Office, b: Laptop, text: str) -> None:
    o.gateway.stop()
    o.gateway.start()
    err = refused(b, text, name="again")
    assert "already used by another device" in err, err


def test_peer_add_with_own_public_key(lab: netlab.Lab) -> None:
    """``peer add --public-key``: the gateway creates no private key; the profile it returns
    carries none, and the laptop's own key (made by ``genkey``) connects."""
    with office(lab, 0) as o, laptops(o, ["lapk"]) as (k,):
        # The laptop makes its key pair first, in a profile of the gateway's name.
        k.cli_json("import", str(_skeleton(o)))
        k.profile = o.name
        public = k.cli_json("genkey", k.profile)["public_key"]
        result = o.gw_cli_json("peer", "add", "kim", "--public-key", public)
        assert result["peer"]["public_key"] == public
        assert "[secrets]" not in result["profile"], result["profile"]
        path = o.workdir / "kim.tunseal"
        path.write_text(result["profile"])
        k.cli_json("import", str(path), "--replace")
        assert k.cli_json("pubkey", k.profile)["public_key"] == public
        k.cli_json("up", k.profile)
        wait_up(k)  # type: ignore[arg-type]
        pinged = o.lab.run(k.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", LAN_SERVER)
        assert " 0% packet loss" in pinged.stdout


def test_join_whose_profile_was_not_saved_runs_again(lab: netlab.Lab) -> None:
    """The gateway burns an invitation for the key of the first join that reaches it. If the
    laptop then cannot store the profile (here: the name was taken while the answer was on its
    way), the join fails saying so, and the same join run again enrols the same key, which the
    gateway answers again, instead of a new key that it refuses as 'already used'."""
    with office(lab, 0) as o, laptops(o, ["lapr"]) as (r,):
        text = invite(o, "rita")
        # The gateway's answers are dropped at the laptop until the clashing profile exists.
        table = "tsjoinhold"
        o.lab.run(r.ns, "nft", "-f", "-", input=(
            f"table inet {table} {{\n  chain input {{\n    type filter hook input priority 0\n"
            f"    udp sport {gatewaylab.PORT} drop\n  }}\n}}\n"))
        join = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "--socket", str(r.helper.socket), "join", text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=helpers_proc.ROOT)
        try:
            deadline = time.monotonic() + 10
            while "used: peer rita registered" not in o.gateway.log():
                assert time.monotonic() < deadline, "the gateway never registered rita"
                time.sleep(0.1)
            r.cli_json("import", str(_skeleton(o)))  # takes the name the join will want
            o.lab.run(r.ns, "nft", "delete", "table", "inet", table)
            _, err = join.communicate(timeout=30)
        finally:
            if join.poll() is None:
                join.kill()
                join.communicate()
        assert join.returncode == 1, err
        assert "the gateway accepted this device" in err and "could not be saved" in err, err
        assert "key was kept" in err, err

        joined = r.cli_json("join", text, "--name", "office2")
        r.profile = joined["profile"]["tunnel"]["name"]
        assert joined["peer_name"] == "rita", joined
        peer = next(p for p in o.gw_cli_json("peer", "list")["peers"] if p["name"] == "rita")
        assert peer["public_key"] == r.cli_json("pubkey", r.profile)["public_key"]
        r.cli_json("up", r.profile)
        wait_up(r)  # type: ignore[arg-type]
        pinged = o.lab.run(r.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", LAN_SERVER)
        assert " 0% packet loss" in pinged.stdout
        # Stored, the kept key is forgotten: one more join makes a new key, refused as used.
        assert "already used by another device" in refused(r, text, name="office3")


def test_join_through_an_always_on_kill_switch(lab: netlab.Lab) -> None:
    """A laptop whose lockdown is always on joins: the enrolment's packets (marked like a
    tunnel's) get through to the invitation's gateway while the join lasts, and only then."""
    with office(lab, 0) as o, laptops(o, ["lapl"]) as (k,):
        # 'always' needs a profile that can connect: one the admin made the old way.
        path = o.workdir / "older.tunseal"
        path.write_text(o.gw_cli_json("peer", "add", "lena-old")["profile"])
        k.cli_json("import", str(path))
        k.cli_json("lockdown", "on")
        try:
            text = invite(o, "lena")
            blocked = o.lab.run(k.ns, "ping", "-c", "1", "-W", "1", gatewaylab.GW_OUTER,
                                check=False)
            assert blocked.returncode != 0, "the lockdown let an unmarked packet out"
            joined = k.cli_json("join", text, "--name", "joined")
            k.profile = joined["profile"]["tunnel"]["name"]
            table = o.lab.run(k.ns, "nft", "list", "table", "inet", "tunseal_lockdown").stdout
            assert gatewaylab.GW_OUTER not in table, table  # the join's pass has ended
            k.cli_json("up", k.profile)
            wait_up(k)  # type: ignore[arg-type]
            pinged = o.lab.run(k.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", LAN_SERVER)
            assert " 0% packet loss" in pinged.stdout
            k.cli_json("down", k.profile)
        finally:
            k.cli_json("lockdown", "off")


def _skeleton(o: Office) -> Path:
    path = o.workdir / "skeleton.tunseal"
    path.write_text(f'format = 1\n[tunnel]\nname = "{o.name}"\n[interface]\n'
                    'addresses = ["10.77.0.250/32"]\n[peer]\n'
                    f'endpoint = "{gatewaylab.GW_OUTER}:{gatewaylab.PORT}"\n')
    return path


