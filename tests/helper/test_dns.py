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
from collections.abc import Iterator
from pathlib import Path

import netlab
import pytest

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


# --- resolved and resolvconf -----------------------------------------------------------------
# Neither program is installed on the test machines, and installing them would take over the
# machine's /etc/resolv.conf. So these tests put stand-in programs first on PATH that record
# their command line and stdin, and check the exact calls Tunseal makes. The code under test
# runs unchanged in a child process; only the external program is a stand-in.

_STUB = """#!/bin/sh
# shell builtins only: PATH holds nothing but the stubs
printf '%s\\n' "${{0##*/}} $*" >> "{log}"
if [ "${{0##*/}} $1" = "resolvconf -a" ]; then
    while IFS= read -r line; do printf '  | %s\\n' "$line" >> "{log}"; done
fi
if [ "${{0##*/}} $1" = "resolvectl status" ]; then exit {status_rc}; fi
exit 0
"""


def _stubs(tmp_path: Path, *names: str, status_rc: int = 0) -> tuple[dict[str, str], Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text(_STUB.format(log=log, status_rc=status_rc))
        (bin_dir / name).chmod(0o755)
    env = netlab.python_env(PATH=str(bin_dir))
    return env, log


def _child(env: dict[str, str], code: str, *args: str) -> str:
    script = "import json, sys\nfrom pathlib import Path\nfrom helper import dns\n" + code
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_resolved_backend_sets_and_reverts_the_link(tmp_path: Path) -> None:
    env, log = _stubs(tmp_path, "resolvectl")
    out = _child(env, """
rec = dns.apply("lo", ["10.77.0.1", "fd77::1"], ["corp.example", "~."],
                backend=dns.Backend.RESOLVED)
dns.restore(rec)
dns.restore({"backend": "resolved", "ifname": "ts-gone"})  # link gone: nothing to revert
print(json.dumps(rec))
""")
    assert json.loads(out) == {"backend": "resolved", "ifname": "lo"}
    assert log.read_text().splitlines() == [
        "resolvectl dns lo 10.77.0.1 fd77::1",
        "resolvectl domain lo corp.example ~.",
        "resolvectl revert lo",
    ]


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


@pytest.mark.parametrize(
    ("programs", "status_rc", "stub_resolver", "expected"),
    [
        ((), 0, True, "file"),
        (("resolvconf",), 0, False, "resolvconf"),
        (("resolvectl", "resolvconf"), 0, True, "resolved"),
        (("resolvectl", "resolvconf"), 0, False, "resolvconf"),  # resolved not in /etc/resolv.conf
        (("resolvectl", "resolvconf"), 1, True, "resolvconf"),  # resolved not running
        (("resolvectl",), 1, True, "file"),
    ],
)
def test_detect_backend(
    tmp_path: Path, programs: tuple[str, ...], status_rc: int, stub_resolver: bool, expected: str
) -> None:
    env, _ = _stubs(tmp_path, *programs, status_rc=status_rc)
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n" if stub_resolver else "nameserver 192.0.2.53\n")
    out = _child(env, "print(dns.detect_backend(Path(sys.argv[1])).value)", str(conf))
    assert out == expected
