"""helper.dns: every backend, the file one for real on /etc/resolv.conf in a private mount
namespace (a temp file bind-mounted over it, so the machine's own file is never touched)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import netlab
import pytest
import resolvedlab

from helper import dns

ORIGINAL = b"# the host's own\nnameserver 192.0.2.53\nsearch lan.example\noptions edns0 trust-ad\n"
REAL_RESOLV_CONF = Path("/etc/resolv.conf")


def _in_private_mount_ns(lab: netlab.Lab, fake: Path, code: str, *args: str) -> dict:
    """Run ``code`` (with ``args`` in sys.argv[1:]) in a lab namespace and a private mount
    namespace where ``fake`` is bind-mounted over /etc/resolv.conf; ``code`` prints one JSON
    object, returned here."""
    ns = lab.ns("dns")
    script = ("import json, os, signal, subprocess, sys\nfrom pathlib import Path\n"
              "from helper import dns, netdev\nfrom helper.records import Records\n"
              + textwrap.dedent(code))
    done = lab.run(ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(fake),
                   sys.executable, "-c", script, *args, env=netlab.python_env(), timeout=60)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def fake_resolv_conf(tmp_path: Path) -> Path:
    fake = tmp_path / "resolv.conf"
    fake.write_bytes(ORIGINAL)
    fake.chmod(0o640)
    return fake


@pytest.fixture
def real_resolv_conf_untouched() -> Iterator[None]:
    before = REAL_RESOLV_CONF.read_bytes(), os.lstat(REAL_RESOLV_CONF)
    yield
    after = REAL_RESOLV_CONF.read_bytes(), os.lstat(REAL_RESOLV_CONF)
    assert after[0] == before[0] and after[1].st_ino == before[1].st_ino


@pytest.mark.netns
@pytest.mark.usefixtures("real_resolv_conf_untouched")
def test_file_backend_rewrites_and_restores_exactly(
    lab: netlab.Lab, fake_resolv_conf: Path
) -> None:
    seen = _in_private_mount_ns(lab, fake_resolv_conf, """
        conf = Path("/etc/resolv.conf")
        rec = dns.apply("ts-dns", ["10.77.0.1", "fd77::1"], ["corp.example", "~."],
                        backend=dns.Backend.FILE)
        during = conf.read_text()
        dns.restore(rec)
        dns.restore(rec)  # idempotent
        print(json.dumps({"rec": rec, "during": during}))
    """)
    assert seen["during"].splitlines()[1:] == [
        "nameserver 10.77.0.1", "nameserver fd77::1", "search corp.example",
        "options edns0 trust-ad",
    ]
    assert seen["rec"]["backend"] == "file" and seen["rec"]["path"] == "/etc/resolv.conf"
    assert fake_resolv_conf.read_bytes() == ORIGINAL
    assert stat.S_IMODE(fake_resolv_conf.stat().st_mode) == 0o640


_APPLY_THEN_HANG = """
import sys, time
from pathlib import Path
from helper import dns
from helper.records import Records
dns.apply("ts-dns", ["10.77.0.1"], ["corp.example"], records=Records(Path(sys.argv[1])),
          backend=dns.Backend.FILE)
print("applied", flush=True)
time.sleep(60)
"""

_CLEANUP = """
import json, sys
from pathlib import Path
from helper import dns, netdev
from helper.records import Records
print(json.dumps(Records(Path(sys.argv[1])).cleanup_stale(netdev, dns)))
"""


@pytest.mark.netns
@pytest.mark.usefixtures("real_resolv_conf_untouched")
def test_file_backend_is_restored_after_sigkill(
    lab: netlab.Lab, fake_resolv_conf: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    seen = _in_private_mount_ns(lab, fake_resolv_conf, """
        apply_code, cleanup_code, state = sys.argv[1:]
        applier = subprocess.Popen([sys.executable, "-c", apply_code, state],
                                   stdout=subprocess.PIPE, text=True)
        assert applier.stdout.readline() == "applied\\n"
        during = Path("/etc/resolv.conf").read_text()
        applier.send_signal(signal.SIGKILL)
        applier.wait(timeout=10)
        after_kill = Path("/etc/resolv.conf").read_text()
        cleaner = subprocess.run([sys.executable, "-c", cleanup_code, state],
                                 capture_output=True, text=True, timeout=30, check=True)
        print(json.dumps({"during": during, "after_kill": after_kill,
                          "done": json.loads(cleaner.stdout)}))
    """, _APPLY_THEN_HANG, _CLEANUP, str(state))
    assert "nameserver 10.77.0.1" in seen["during"]
    assert seen["after_kill"] == seen["during"]  # the crash left our DNS in place...
    assert seen["done"] == ["restored DNS of ts-dns (file)"]
    assert fake_resolv_conf.read_bytes() == ORIGINAL  # ...and cleanup put the original back
    assert list((state / "run").iterdir()) == []


# --- the file backend's other shapes (a temp path, so the rename path is used) ---------------


def test_symlinked_resolv_conf_comes_back_as_the_same_symlink(tmp_path: Path) -> None:
    target = tmp_path / "managed.conf"
    target.write_bytes(ORIGINAL)
    conf = tmp_path / "resolv.conf"
    conf.symlink_to("managed.conf")
    rec = dns.apply("ts-x", ["10.77.0.1"], [], backend=dns.Backend.FILE, resolv_conf=conf)
    assert not conf.is_symlink() and "nameserver 10.77.0.1" in conf.read_text()
    assert target.read_bytes() == ORIGINAL  # the managed file itself is never written
    dns.restore(rec)
    assert conf.is_symlink() and os.readlink(conf) == "managed.conf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["managed.conf", "resolv.conf"]


def test_servers_only_keeps_search_out_and_search_only_keeps_servers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(ORIGINAL)
    rec = dns.apply("ts-x", [], ["corp.example"], backend=dns.Backend.FILE, resolv_conf=conf)
    assert conf.read_text().splitlines()[1:] == [
        "nameserver 192.0.2.53", "search corp.example", "options edns0 trust-ad"]
    dns.restore(rec)
    assert conf.read_bytes() == ORIGINAL


def test_applying_over_our_own_file_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(ORIGINAL)
    rec = dns.apply("ts-a", ["10.77.0.1"], [], backend=dns.Backend.FILE, resolv_conf=conf)
    ours = conf.read_bytes()
    with pytest.raises(dns.DnsConfigError, match="already holds Tunseal's DNS settings"):
        dns.apply("ts-b", ["10.88.0.1"], [], backend=dns.Backend.FILE, resolv_conf=conf)
    assert conf.read_bytes() == ours
    dns.restore(rec)
    assert conf.read_bytes() == ORIGINAL


def test_missing_resolv_conf_is_missing_again(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    rec = dns.apply("ts-x", ["10.77.0.1"], [], backend=dns.Backend.FILE, resolv_conf=conf)
    assert conf.exists()
    dns.restore(rec)
    assert not conf.exists()


def test_a_file_rewritten_by_someone_else_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(ORIGINAL)
    rec = dns.apply("ts-x", ["10.77.0.1"], [], backend=dns.Backend.FILE, resolv_conf=conf)
    conf.write_bytes(b"nameserver 192.0.2.99\n")  # a DHCP client renewed its lease meanwhile
    dns.restore(rec)
    assert conf.read_bytes() == b"nameserver 192.0.2.99\n"
    assert "changed by another program" in caplog.text


def test_a_half_written_file_counts_as_ours(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(ORIGINAL)
    rec = dns.apply("ts-x", ["10.77.0.1"], [], backend=dns.Backend.FILE, resolv_conf=conf)
    conf.write_bytes(base64.b64decode(rec["written"])[:20])  # a crash mid in-place write
    dns.restore(rec)
    assert conf.read_bytes() == ORIGINAL


@pytest.mark.parametrize("bad", ["corp.example\nnameserver 203.0.113.66", "a b", "", "x" * 300])
def test_domains_that_could_inject_lines_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(dns.DnsConfigError, match="is not a domain name"):
        dns.apply("ts-x", ["10.77.0.1"], [bad], backend=dns.Backend.FILE,
                  resolv_conf=tmp_path / "r")
    with pytest.raises(dns.DnsConfigError, match="is not an IP address"):
        dns.apply("ts-x", ["10.77.0.1\n"], [], backend=dns.Backend.FILE,
                  resolv_conf=tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --- resolvconf --------------------------------------------------------------------------------
# resolvconf is not installed on the test machines, and installing it would take over the
# machine's /etc/resolv.conf. So these tests put a stand-in program first on PATH that records
# its command line and stdin, and check the exact calls Tunseal makes. The code under test runs
# unchanged in a child process; only the external program is a stand-in.

_STUB = """#!/bin/sh
# shell builtins only: PATH holds nothing but the stubs
printf '%s\\n' "${{0##*/}} $*" >> "{log}"
if [ "${{0##*/}} $1" = "resolvconf -a" ]; then
    while IFS= read -r line; do printf '  | %s\\n' "$line" >> "{log}"; done
fi
exit 0
"""


def _stubs(tmp_path: Path, *names: str) -> tuple[dict[str, str], Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text(_STUB.format(log=log))
        (bin_dir / name).chmod(0o755)
    env = netlab.python_env(PATH=str(bin_dir), DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/none")
    return env, log


def _child(env: dict[str, str], code: str, *args: str) -> str:
    script = "import json, sys\nfrom pathlib import Path\nfrom helper import dns\n" + code
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_resolvconf_backend_adds_and_deletes_an_interface_record(tmp_path: Path) -> None:
    env, log = _stubs(tmp_path, "resolvconf")
    out = _child(env, """
rec = dns.apply("ts-office", ["10.77.0.1"], ["corp.example", "~."],
                backend=dns.Backend.RESOLVCONF)
dns.restore(rec)
print(json.dumps(rec))
""")
    assert json.loads(out)["name"] == "tun.ts-office"
    assert log.read_text().splitlines() == [
        "resolvconf -a tun.ts-office",
        "  | nameserver 10.77.0.1",
        "  | search corp.example",
        "resolvconf -d tun.ts-office -f",
    ]


@pytest.mark.parametrize(("programs", "expected"), [((), "file"), (("resolvconf",), "resolvconf")])
def test_detect_backend_without_resolved(
    tmp_path: Path, programs: tuple[str, ...], expected: str
) -> None:
    env, _ = _stubs(tmp_path, *programs)
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")  # points at resolved, but no bus: not resolved
    out = _child(env, "print(dns.detect_backend(Path(sys.argv[1])).value)", str(conf))
    assert out == expected


# --- systemd-resolved, for real ------------------------------------------------------------------
# The daemon from Debian's package on a throwaway system bus in a lab namespace (resolvedlab),
# a TUN link held open there, and the code under test in a child process on that "machine".

IF = "tsdns0"

_KEEP = """
import json, sys
from helper import dns
servers, domains, full = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "full"
active = dns.start(sys.argv[4], servers, domains, full_tunnel=full)
def show():
    st = active.status()
    return {"backend": st.backend, "servers": list(st.servers), "domains": list(st.domains),
            "default_route": st.default_route, "reapplied": active.keeper.reapplied,
            "monitoring": active.keeper.monitoring}
print("started " + json.dumps(show()), flush=True)
for line in sys.stdin:
    print("status " + json.dumps(show()), flush=True)
active.close()
print("closed", flush=True)
"""


class Kept:
    """A child process on the resolved machine that holds ``dns.start(...)`` until closed."""

    def __init__(self, r: resolvedlab.Resolved, servers: list[str], domains: list[str], *,
                 full: bool = False) -> None:
        self.proc = subprocess.Popen(
            [*r.wrap, sys.executable, "-c", _KEEP, json.dumps(servers), json.dumps(domains),
             "full" if full else "split", IF],
            env=r.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.started = json.loads(netlab.wait_for_line(self.proc, "started", timeout=30)[8:])

    def status(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return dict(json.loads(netlab.wait_for_line(self.proc, "status", timeout=30)[7:]))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        netlab.wait_for_line(self.proc, "closed", timeout=30)
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture
def resolved_link(lab: netlab.Lab) -> Iterator[resolvedlab.Resolved]:
    ns = lab.ns("dns")
    netlab.hold_tun(lab, ns, IF)
    lab.run(ns, "ip", "link", "set", IF, "up")
    lab.run(ns, "ip", "addr", "add", "10.77.0.2/24", "dev", IF)
    with resolvedlab.Resolved(lab, ns) as r:
        yield r


def _link(r: resolvedlab.Resolved) -> dict[str, object]:
    """What resolvectl (not our code) says of the link."""
    out = r.link_status(IF)
    servers = domains = ""
    for line in out.splitlines():
        if "DNS Servers:" in line:
            servers = line.split(":", 1)[1].strip()
        if "DNS Domain:" in line:
            domains = line.split(":", 1)[1].strip()
    return {"servers": servers, "domains": domains, "default_route": "+DefaultRoute" in out}


def _wait_link(r: resolvedlab.Resolved, want: dict[str, object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (got := _link(r)) != want:
        assert time.monotonic() < deadline, f"link is {got}, not {want}:\n{r.log()[-3000:]}"
        time.sleep(0.1)


SPLIT = {"servers": "10.77.0.1 fd77::1", "domains": "corp.example ~lab.example",
         "default_route": False}
FULL = {"servers": "10.77.0.1", "domains": "corp.example ~.", "default_route": True}
NOTHING = {"servers": "", "domains": "", "default_route": False}


@pytest.mark.netns
def test_resolved_split_tunnel_sets_reads_back_and_reverts(
    resolved_link: resolvedlab.Resolved,
) -> None:
    r = resolved_link
    kept = Kept(r, ["10.77.0.1", "fd77::1"], ["corp.example", "~lab.example"])
    assert kept.started == {"backend": "resolved", "servers": ["10.77.0.1", "fd77::1"],
                            "domains": ["corp.example", "~lab.example"],
                            "default_route": False,  # resolved's choice: a route-only domain
                            "reapplied": 0, "monitoring": True}
    assert _link(r) == SPLIT
    kept.close()
    assert _link(r) == NOTHING


@pytest.mark.netns
def test_resolved_full_tunnel_takes_every_name(resolved_link: resolvedlab.Resolved) -> None:
    r = resolved_link
    kept = Kept(r, ["10.77.0.1"], ["corp.example"], full=True)
    assert kept.started["domains"] == ["corp.example", "~."]
    assert kept.started["default_route"] is True
    assert _link(r) == FULL
    kept.close()
    assert _link(r) == NOTHING


@pytest.mark.netns
@pytest.mark.parametrize("reset", [
    ("revert", IF),  # what NetworkManager or networkd does to a link it resets
    ("domain", IF, "cafe.example"),  # domains alone: resolved sends no signal for this one
    ("default-route", IF, "no"),
    ("dns", IF, "192.0.2.53"),
    ("busctl", "org.freedesktop.resolve1.Link", "SetDomains", "a(sb)", "1", "cafe.example",
     "false"),  # the same through the link's own object
])
def test_resolved_keeper_puts_back_what_another_client_changed(
    resolved_link: resolvedlab.Resolved, reset: tuple[str, ...]
) -> None:
    r = resolved_link
    kept = Kept(r, ["10.77.0.1"], ["corp.example"], full=True)
    if reset[0] == "busctl":
        busctl = ("busctl", f"--address={r.address}", "call", "org.freedesktop.resolve1")
        ifindex = r.run("cat", f"/sys/class/net/{IF}/ifindex").stdout.strip()
        path = r.run(*busctl, "/org/freedesktop/resolve1", "org.freedesktop.resolve1.Manager",
                     "GetLink", "i", ifindex).stdout.split()[1].strip('"')  # o "/org/..."
        r.run(*busctl, path, *reset[1:])
    else:
        r.resolvectl(*reset)
    _wait_link(r, FULL)
    assert kept.status()["reapplied"] == 1
    kept.close()
    assert _link(r) == NOTHING


@pytest.mark.netns
def test_resolved_restart_is_noticed_and_the_settings_come_back(
    resolved_link: resolvedlab.Resolved,
) -> None:
    r = resolved_link
    kept = Kept(r, ["10.77.0.1"], ["corp.example"], full=True)
    # A restart with its saved state: resolved restores the link itself; nothing to redo.
    r.stop_daemon()
    r.start_daemon()
    _wait_link(r, FULL)
    # A restart with a fresh /run: the link comes back bare, and the keeper refills it.
    r.stop_daemon(forget=True)
    r.start_daemon()
    _wait_link(r, FULL)
    deadline = time.monotonic() + 20
    while (st := kept.status())["servers"] != ["10.77.0.1"]:  # read back just after the link
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert st["reapplied"] == 1, st
    kept.close()
    assert _link(r) == NOTHING


@pytest.mark.netns
def test_detect_backend_sees_resolved_on_the_bus(resolved_link: resolvedlab.Resolved) -> None:
    r = resolved_link
    code = "from helper import dns; print(dns.detect_backend().value)"
    assert r.run(sys.executable, "-c", code).stdout.strip() == "resolved"
    r.stop_daemon()  # /etc/resolv.conf still points at the stub, but nobody answers
    assert r.run(sys.executable, "-c", code).stdout.strip() == "file"


_APPLY_RESOLVED_THEN_HANG = """
import sys, time
from pathlib import Path
from helper import dns
from helper.records import Records
dns.start(sys.argv[2], ["10.77.0.1"], ["corp.example"], full_tunnel=True,
          records=Records(Path(sys.argv[1])))
print("applied", flush=True)
time.sleep(60)
"""


@pytest.mark.netns
def test_resolved_settings_are_reverted_after_sigkill(
    resolved_link: resolvedlab.Resolved, tmp_path: Path
) -> None:
    r = resolved_link
    state = tmp_path / "state"
    applier = subprocess.Popen([*r.wrap, sys.executable, "-c", _APPLY_RESOLVED_THEN_HANG,
                                str(state), IF], env=r.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    netlab.wait_for_line(applier, "applied", timeout=30)
    applier.kill()
    applier.wait(timeout=10)
    assert _link(r) == FULL  # the crash left our DNS on the link (it is still there)...
    done = r.run(sys.executable, "-c", _CLEANUP, str(state))
    assert json.loads(done.stdout) == [f"restored DNS of {IF} (resolved)"]
    assert _link(r) == NOTHING  # ...and the next start's cleanup reverted it
    assert list((state / "run").iterdir()) == []


_NETWORK_MANAGER = """
import sys
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
conn = open_dbus_connection(bus="SYSTEM")
reply = conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.NetworkManager"),
                                timeout=10)
assert reply.body == (1,), reply.body  # the primary owner
print("owned", flush=True)
sys.stdin.readline()
"""


@pytest.mark.netns
def test_without_a_monitor_the_keeper_follows_resolved_and_networkmanager(
    lab: netlab.Lab,
) -> None:
    ns = lab.ns("dns")
    netlab.hold_tun(lab, ns, IF)
    lab.run(ns, "ip", "link", "set", IF, "up")
    # A bus that refuses root a monitor (some distributions' policies do), and lets a test
    # process be NetworkManager.
    policy = ('<deny send_destination="org.freedesktop.DBus" '
              'send_interface="org.freedesktop.DBus.Monitoring"/>'
              '<allow own="org.freedesktop.NetworkManager"/>')
    with resolvedlab.Resolved(lab, ns, extra_root_policy=policy) as r:
        kept = Kept(r, ["10.77.0.1"], ["corp.example"], full=True)
        assert kept.started["monitoring"] is False
        r.resolvectl("revert", IF)  # resolved signals that its server list changed
        _wait_link(r, FULL)
        assert kept.status()["reapplied"] == 1
        # Domains alone change without a signal; NetworkManager starting is the next look.
        r.resolvectl("domain", IF, "cafe.example")
        nm = subprocess.Popen([*r.wrap, sys.executable, "-c", _NETWORK_MANAGER], env=r.env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        try:
            netlab.wait_for_line(nm, "owned", timeout=30)
            _wait_link(r, FULL)
            assert kept.status()["reapplied"] == 2
        finally:
            nm.communicate("\n", timeout=30)
        kept.close()
        assert _link(r) == NOTHING


def test_the_networks_servers_are_known_while_the_file_holds_the_tunnels(tmp_path: Path) -> None:
    # The endpoint's name must be looked up again through these once the tunnel stops
    # answering: the file then names only the tunnel's servers (helper/hostlookup.py).
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(ORIGINAL + b"nameserver 2001:db8::53\n")
    record = dns._file_backup("ts-dns", conf, ["10.77.0.1"], [])
    assert dns.ActiveDns(record).network_servers() == ("192.0.2.53", "2001:db8::53")
    conf.unlink()
    assert dns.ActiveDns(dns._file_backup("ts-dns", conf, ["10.77.0.1"], [])
                         ).network_servers() == ()
    resolved_record = {"backend": dns.Backend.RESOLVED.value, "ifname": "ts-dns"}
    assert dns.ActiveDns(resolved_record).network_servers() == ()
