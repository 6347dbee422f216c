"""The installers: the Debian package built by installers/debian/build.sh, checked with the tools
Debian and systemd check such things with, then installed for real into a fresh Debian 12 root
made by debootstrap (dpkg -i, apt-get -f install, the commands, a tunnel, the demo, purge), and
installers/install.sh + uninstall.sh run in such a root too: without cargo (the pure-Python
data path), then again with the host's Rust toolchain bound into the root (the native core).

The package carries the native data-path core, built once for every test here (a release build
of native/ takes a minute or more) in a CARGO_TARGET_DIR of this session's own, never the tree's
native/target; without cargo the tests build the ``all`` package and skip the native checks,
unless TUNSEAL_REQUIRE_NATIVE=1.

The Debian root lives under /var/tmp and is deleted afterwards; every mount it needs is made in
a private mount namespace (``unshare -m``), so none is ever visible outside its command, and every
process whose root directory is that tree is killed before the tree is removed. Set
TUNSEAL_TEST_NO_CHROOT=1 to skip the (few minutes of) real installs.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.xdist_group("installers")]

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "installers" / "debian" / "build.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
MIRROR = os.environ.get("TUNSEAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = ROOT / "build" / "installer-tests"
"""debootstrap's downloaded .debs, kept between runs (build/ is ignored by git; make clean
removes it)."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCHERS = ("tunseal", "tunseal-helper", "tunseal-gui")
NATIVE_SO = "/usr/lib/tunseal/tunseal_native.abi3.so"
"""Where the package puts the native core: beside core/ and helper/, which import it."""
PURE_PYTHON_SAID = "installing the slower pure-Python data path"
PLAIN_PROFILE = """format = 1
[tunnel]
name = "smoke"
mode = "plain"
[interface]
addresses = ["10.99.0.1/24"]
listen_port = 51999
[peer]
allowed_ips = ["10.99.0.2/32"]
"""


def run(*cmd: str | Path, timeout: float = 120, check: bool = True, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=cwd, env=env)
    if check:
        assert done.returncode == 0, f"{cmd}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (installers/dev-deps.sh installs it)")
    return path


# --- the native core ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def native_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A CARGO_TARGET_DIR holding the release build of native/ (the command build.sh and
    install.sh run, so theirs find it done), or None without cargo.

    One for the whole run: it lives beside the xdist workers' own temporary directories, so a
    second worker's cargo waits on the first's lock on it and then finds the build done. Each
    worker holds a shared lock on it while it runs; the one that ends last (it gets the lock
    alone) removes it."""
    if shutil.which("cargo") is None:
        if os.environ.get("TUNSEAL_REQUIRE_NATIVE") == "1":
            pytest.fail("TUNSEAL_REQUIRE_NATIVE=1 but cargo is not installed")
        yield None
        return
    target = tmp_path_factory.getbasetemp().parent / "native-target"
    target.mkdir(exist_ok=True)
    with open(target.parent / "native-target.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            run("cargo", "build", "--quiet", "--release", "--locked", "--manifest-path",
                ROOT / "native/Cargo.toml", env=cargo_env(target), timeout=1200)
            yield target
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another worker still uses it: it removes it when it ends
            else:
                shutil.rmtree(target, ignore_errors=True)


def cargo_env(target: Path) -> dict[str, str]:
    """This environment with CARGO_TARGET_DIR, and rustup's and cargo's homes in the real home
    (tests/run.sh gives the tests a throwaway HOME, where rustup would find no toolchain)."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    for name, default in (("RUSTUP_HOME", home / ".rustup"), ("CARGO_HOME", home / ".cargo")):
        if name not in env and default.is_dir():
            env[name] = str(default)
    return env


def needs_native(target: Path | None) -> Path:
    if target is None:
        pytest.skip("cargo is not installed: the package is built without the native core")
    return target


def architecture() -> str:
    return run("dpkg", "--print-architecture").stdout.strip()


# --- the package ---------------------------------------------------------------------------------


def build_deb(out: Path, target: Path | None) -> subprocess.CompletedProcess[str]:
    """build.sh OUTDIR, with the session's native build, or --no-native without cargo."""
    if target is None:
        return run("bash", BUILD, "--no-native", out, timeout=300)
    return run("bash", BUILD, out, timeout=600, env=cargo_env(target))


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory, native_target: Path | None) -> Path:
    need("dpkg-deb")
    out = tmp_path_factory.mktemp("deb")
    done = build_deb(out, native_target)
    path = Path(done.stdout.strip().splitlines()[-1])
    arch = "all" if native_target is None else architecture()
    assert path == out / f"tunseal_{VERSION}_{arch}.deb" and path.is_file(), done.stdout
    return path


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("unpacked")
    run("dpkg-deb", "-x", deb, tree)
    run("dpkg-deb", "-e", deb, tree / "DEBIAN")
    return tree


def contents(deb: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode string, owner/group) from ``dpkg-deb --contents``."""
    table = {}
    for line in run("dpkg-deb", "--contents", deb).stdout.splitlines():
        fields = line.split(None, 5)
        mode, owner, path = fields[0], fields[1], fields[5].split(" -> ")[0]
        table[path.removeprefix(".").rstrip("/") or "/"] = (mode, owner)
    return table


def test_control_fields(deb: Path) -> None:
    def field(name: str) -> str:
        return run("dpkg-deb", "--field", deb, name).stdout.strip()

    assert field("Package") == "tunseal"
    assert field("Version") == VERSION
    native = NATIVE_SO in contents(deb)
    assert field("Architecture") == (architecture() if native else "all")
    depends = {d.split()[0] for d in field("Depends").split(", ")}
    assert {"python3", "python3-cryptography", "python3-pyroute2", "python3-keyring",
            "python3-secretstorage", "python3-jeepney", "python3-tomli-w", "python3-dnspython",
            "gnome-keyring",
            "dbus"} <= depends
    # The native core links libc and libgcc (dpkg-shlibdeps' words); the all package nothing.
    assert ({"libc6", "libgcc-s1"} <= depends) == native
    assert "setup-pypi-deps" in field("Description")


def test_file_list(deb: Path) -> None:
    table = contents(deb)
    expected = {
        "/usr/bin/tunseal", "/usr/bin/tunseal-helper", "/usr/bin/tunseal-gui",
        "/usr/lib/tunseal/setup-pypi-deps", "/usr/lib/tunseal/helper/keyring-session.sh",
        "/usr/lib/tunseal/core/cli.py", "/usr/lib/tunseal/helper/main.py",
        "/usr/lib/tunseal/gui/app.py",
        "/lib/systemd/system/tunseal-helper.service",
        "/usr/share/applications/org.tunseal.Tunseal.desktop",
        "/usr/share/metainfo/org.tunseal.Tunseal.metainfo.xml",
        "/usr/share/tunseal/autostart/tunseal-tray.desktop",
        "/usr/share/bash-completion/completions/tunseal",
        "/usr/share/zsh/vendor-completions/_tunseal",
        "/usr/share/fish/vendor_completions.d/tunseal.fish",
        "/usr/share/doc/tunseal/copyright", "/usr/share/doc/tunseal/changelog.gz",
        "/usr/share/doc/tunseal/KEYRING.md", "/usr/share/doc/tunseal/installing.md",
        "/usr/share/man/man1/tunseal.1.gz", "/usr/share/man/man8/tunseal-helper.8.gz",
    }
    if (ROOT / "resources" / "tunseal.svg").exists():
        expected.add("/usr/share/icons/hicolor/scalable/apps/tunseal.svg")
        expected.add("/usr/lib/tunseal/resources/tunseal.svg")
    assert expected <= set(table), sorted(expected - set(table))
    # Every module of the three packages, and nothing else of the source tree.
    for package in ("core", "helper", "gui"):
        for module in (ROOT / package).glob("*.py"):
            assert f"/usr/lib/tunseal/{package}/{module.name}" in table
    assert not [p for p in table if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in table if p.startswith(("/usr/lib/tunseal/tests", "/usr/lib/python"))]
    assert {owner for _, owner in table.values()} == {"root/root"}
    for path in ("/usr/bin/tunseal", "/usr/bin/tunseal-helper", "/usr/bin/tunseal-gui",
                 "/usr/lib/tunseal/setup-pypi-deps", "/usr/lib/tunseal/helper/keyring-session.sh"):
        assert table[path][0] == "-rwxr-xr-x", path
    assert table["/usr/lib/tunseal/core/cli.py"][0] == "-rw-r--r--"
    native = [p for p in table if "tunseal_native" in p]
    assert native == ([NATIVE_SO] if NATIVE_SO in table else [])
    if native:
        assert table[NATIVE_SO][0] == "-rw-r--r--"


def test_the_package_carries_the_native_core_for_this_architecture(
    unpacked: Path, native_target: Path | None,
) -> None:
    """Imported the way the launchers import (the private directory first on the path, Python
    isolated), by every CPython >= 3.11 here: one abi3 build serves them all."""
    needs_native(native_target)
    so = unpacked / NATIVE_SO.lstrip("/")
    assert so.is_file()
    machine = run("readelf", "-h", so).stdout
    assert {"amd64": "X86-64", "arm64": "AArch64"}.get(architecture(), "") in machine
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from core import native; "
            "print(native.describe(), native.module and native.module.__file__)")
    pythons = {"/usr/bin/python3", sys.executable}
    pyenv = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
    pythons |= {str(p) for p in pyenv.glob("3.1[1-9]*/bin/python3")}
    env = {k: v for k, v in os.environ.items() if k != "TUNSEAL_NATIVE"}
    for python in sorted(p for p in pythons if Path(p).exists()):
        done = run(python, "-I", "-c", code, unpacked / "usr/lib/tunseal", env=env)
        assert done.stdout.split() == ["native", "core", str(so)], (python, done.stdout)


def test_without_cargo_the_build_stops_unless_told_to_build_the_all_package(
    tmp_path: Path,
) -> None:
    if shutil.which("cargo", path=PATH) is not None:
        pytest.skip("cargo is installed system-wide: no PATH here lacks it")
    env = dict(os.environ, PATH=PATH)
    stopped = run("bash", BUILD, tmp_path / "stopped", env=env, check=False, timeout=300)
    assert stopped.returncode == 1, stopped
    assert "cargo (Rust) is missing" in stopped.stderr and "--no-native" in stopped.stderr
    assert not (tmp_path / "stopped").exists()

    done = run("bash", BUILD, "--no-native", tmp_path / "all", env=env, timeout=300)
    assert "warning: building without the native data-path core" in done.stderr
    deb = tmp_path / "all" / f"tunseal_{VERSION}_all.deb"
    assert Path(done.stdout.strip()) == deb
    assert run("dpkg-deb", "--field", deb, "Architecture").stdout.strip() == "all"
    assert not [p for p in contents(deb) if "tunseal_native" in p]


def test_launchers_run_isolated_from_the_private_directory(unpacked: Path) -> None:
    for program in LAUNCHERS:
        text = (unpacked / "usr/bin" / program).read_text()
        assert text.startswith("#!/usr/bin/python3 -I\n"), program
        assert f'PROGRAM = "{program}"' in text and 'LIBDIR = "/usr/lib/tunseal"' in text
        assert re.search(r"@[A-Z_]+@", text) is None  # every placeholder filled
        compile(text, program, "exec")


def test_the_build_is_reproducible(deb: Path, tmp_path: Path,
                                   native_target: Path | None) -> None:
    again = Path(build_deb(tmp_path, native_target).stdout.strip().splitlines()[-1])
    assert again.read_bytes() == deb.read_bytes()


def test_lintian_is_clean(deb: Path) -> None:
    need("lintian")
    done = run("lintian", "--fail-on", "none", deb, timeout=300)
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == [], done.stdout


def test_the_unit_verifies_and_is_hardened(unpacked: Path, tmp_path: Path) -> None:
    need("systemd-analyze")
    units = Path("/lib/systemd/system")
    if not (units / "sysinit.target").exists():
        pytest.skip("systemd's own units are not installed here (installers/dev-deps.sh)")
    # A root holding systemd's units and the package, so verify resolves every dependency.
    root = tmp_path / "root"
    shutil.copytree(units, root / "lib/systemd/system", symlinks=True)
    shutil.copytree(unpacked, root, symlinks=True, dirs_exist_ok=True)
    unit = "/lib/systemd/system/tunseal-helper.service"
    done = run("systemd-analyze", "verify", f"--root={root}", unit)
    assert done.stderr == "", done.stderr

    security = run("systemd-analyze", "security", "--offline=yes", f"--root={root}",
                   "tunseal-helper.service", check=False)
    level = re.search(r"Overall exposure level for tunseal-helper\.service: ([\d.]+)",
                      security.stdout)
    if level is not None:
        assert float(level.group(1)) <= 4.0, security.stdout

    text = (unpacked / unit.lstrip("/")).read_text()
    settings = {k: v for k, _, v in (line.partition("=") for line in text.splitlines())
                if v and not k.startswith("#")}
    assert settings["ExecStart"] == ("/usr/lib/tunseal/helper/keyring-session.sh "
                                     "/etc/tunseal/keyring.pass /usr/bin/tunseal-helper")
    assert settings["CapabilityBoundingSet"] == "CAP_NET_ADMIN CAP_NET_RAW CAP_CHOWN"
    # Ready once the control socket listens (sd_notify from helper/main.py, a child of the
    # keyring session: hence NotifyAccess=all).
    assert (settings["Type"], settings["NotifyAccess"]) == ("notify", "all")
    assert settings["ReadWritePaths"].split()[:2] == ["/var/lib/tunseal", "/run/tunseal"]
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "LockPersonality": "yes",
                       "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
                       "RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_INET AF_INET6",
                       "DeviceAllow": "/dev/net/tun rw"}.items():
        assert settings[key] == value, key


def test_desktop_entries_validate(unpacked: Path) -> None:
    validate = need("desktop-file-validate")
    menu = unpacked / "usr/share/applications/org.tunseal.Tunseal.desktop"
    tray = unpacked / "usr/share/tunseal/autostart/tunseal-tray.desktop"
    for entry in (menu, tray):
        done = run(validate, entry)
        assert done.stdout == "", done.stdout
    assert "Exec=tunseal-gui\n" in menu.read_text() and "Icon=tunseal\n" in menu.read_text()
    assert "Exec=tunseal-gui --hidden\n" in tray.read_text()


def test_appstream_metainfo_validates_and_names_the_desktop_file(unpacked: Path) -> None:
    appstreamcli = need("appstreamcli")
    from gui.app import DESKTOP_ID  # the Wayland app id the client sets

    metainfo = unpacked / f"usr/share/metainfo/{DESKTOP_ID}.metainfo.xml"
    done = run(appstreamcli, "validate", "--no-net", metainfo)
    assert "Validation was successful" in done.stdout, done.stdout
    assert not re.search(r"^[EW]: ", done.stdout, re.MULTILINE), done.stdout
    text = metainfo.read_text()
    assert f"<id>{DESKTOP_ID}</id>" in text
    assert f'<launchable type="desktop-id">{DESKTOP_ID}.desktop</launchable>' in text
    assert (unpacked / f"usr/share/applications/{DESKTOP_ID}.desktop").is_file()


def test_the_packaged_bash_completion_loads(unpacked: Path) -> None:
    script = unpacked / "usr/share/bash-completion/completions/tunseal"
    code = (f"source {script}; complete -p tunseal; COMP_WORDS=(tunseal doc); COMP_CWORD=1; "
            '_tunseal; echo "${COMPREPLY[@]}"')
    done = run("bash", "--norc", "-c", code)
    assert done.stdout.splitlines() == ["complete -F _tunseal tunseal", "doctor"]


def test_shell_scripts_pass_shellcheck(unpacked: Path) -> None:
    shellcheck = need("shellcheck")
    for script in ("postinst", "postrm", "prerm"):
        run("sh", "-n", unpacked / "DEBIAN" / script)
        run(shellcheck, "-s", "sh", unpacked / "DEBIAN" / script)
    run(shellcheck, "-s", "sh", unpacked / "usr/lib/tunseal/setup-pypi-deps")
    run(shellcheck, "-s", "sh", ROOT / "installers/common/system-setup.sh")
    installers = ROOT / "installers"
    run(shellcheck, "-x", "debian/build.sh", "install.sh", "uninstall.sh", cwd=installers)


def test_the_helper_runs_with_only_the_units_capabilities_and_no_writable_code(
    tmp_path: Path,
) -> None:
    """The unit's CapabilityBoundingSet and NoNewPrivileges (setpriv), MemoryDenyWriteExecute
    (the kernel's PR_SET_MDWE, the same rule) around the real launcher chain: keyring-session.sh,
    dbus, gnome-keyring and the helper, in a throwaway namespace. It must still chown its socket
    to a group root is not in, make and configure a TUN link, and keep a key."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("setpriv", "ip", "dbus-run-session", "gnome-keyring-daemon"):
        need(tool)
    unit = (ROOT / "installers/common/tunseal-helper.service.in").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.+)$", unit, re.M)
    assert caps is not None
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}"
                                   for c in caps.group(1).split())])
    password = tmp_path / "keyring.pass"
    password.write_text("capability-test\n")
    password.chmod(0o600)
    sock = tmp_path / "helper.sock"
    group = next((g for g in ("adm", "nogroup") if _group_exists(g)), None)
    if group is None:
        pytest.skip("no group 'adm' or 'nogroup' to hand the socket to")
    mdwe = ("import ctypes, os, sys\n"
            "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
            "    sys.exit('no PR_SET_MDWE: ' + os.strerror(ctypes.get_errno()))\n"
            "os.execvp(sys.argv[1], sys.argv[1:])\n")
    name = f"tscap{os.getpid():x}"
    run("ip", "netns", "add", name)
    env = dict(os.environ, TUNSEAL_KEYRING_DIR=str(tmp_path / "keyring"), PYTHONPATH=str(ROOT))
    helper = None
    try:
        # PR_GET_MDWE (66) fails on kernels before 6.3: test the capabilities alone there.
        wrap = ["/usr/bin/python3", "-c", mdwe] if _kernel_has_mdwe() else []
        cmd = ["ip", "netns", "exec", name, *wrap,
               "setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
               "bash", str(ROOT / "helper/keyring-session.sh"), str(password),
               sys.executable, "-m", "helper.main", "--socket", str(sock),
               "--state-dir", str(tmp_path / "state"), "--group", group]
        with open(tmp_path / "helper.log", "wb") as log:
            helper = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert helper.poll() is None, (tmp_path / "helper.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "helper.log").read_text()
            time.sleep(0.1)
        assert sock.stat().st_gid == grp.getgrnam(group).gr_gid  # CAP_CHOWN

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return run(sys.executable, "-m", "core.cli", "--socket", sock, *args, cwd=ROOT)

        (tmp_path / "cap.tunseal").write_text(PLAIN_PROFILE.replace("smoke", "cap"))
        cli("import", str(tmp_path / "cap.tunseal"))
        cli("up", "cap")
        assert "10.99.0.1/24" in run("ip", "-n", name, "-br", "addr", "show", "ts-cap").stdout
        cli("genkey", "cap")  # the keyring under the same rules
        cli("down", "cap")
        status = run("grep", "-E", "^Cap(Eff|Bnd):", f"/proc/{_helper_pid(sock)}/status").stdout
        assert status.split() == ["CapEff:", "0000000000003001", "CapBnd:", "0000000000003001"]
    finally:
        if helper is not None and helper.poll() is None:
            os.killpg(helper.pid, signal.SIGTERM)
            try:
                helper.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(helper.pid, signal.SIGKILL)
                helper.wait(5)
        for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", name, check=False)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _kernel_has_mdwe() -> bool:
    import ctypes

    return int(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0)) >= 0


def _helper_pid(sock: Path) -> int:
    from core.ipcclient import Client

    with Client(str(sock), timeout=10) as client:
        return int(client.call("ping")["pid"])


# --- a real Debian 12 ----------------------------------------------------------------------------


class DebianRoot:
    """A debootstrapped Debian 12 and a way to run scripts in it as root."""

    def __init__(self, path: Path):
        self.path = path

    def run(self, script: str, *, netns: str | None = None, timeout: float = 600,
            check: bool = True, binds: tuple[tuple[Path, str], ...] = (),
            ) -> subprocess.CompletedProcess[str]:
        """``binds``: (a directory of this machine, where it appears in the root), read-only,
        for this command only."""
        r = shlex.quote(str(self.path))
        # The root is a mount point of its own (ip netns needs one), then the API file systems.
        mounts = (f"mount --bind {r} {r} && "
                  f"mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && "
                  f"mount --rbind /dev {r}/dev && "
                  f"mount -t tmpfs tmpfs {r}/run && mount -t tmpfs tmpfs {r}/tmp")
        for source, inside in binds:
            (self.path / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
            there = shlex.quote(f"{self.path}/{inside.lstrip('/')}")
            mounts += (f" && mount --bind {shlex.quote(str(source))} {there}"
                       f" && mount -o remount,bind,ro {there}")
        inner = (f"exec chroot {r} env -i PATH={PATH} HOME=/root LC_ALL=C.UTF-8 "
                 "DEBIAN_FRONTEND=noninteractive PIP_CERT=/root/host-ca-bundle.crt "
                 "sh -euc \"$1\"")
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f"{mounts} && {inner}", "in-root", script]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert done.returncode == 0, (f"in the Debian root: {script}\n-> {done.returncode}\n"
                                          f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def kill_processes(self) -> None:
        """SIGKILL every process whose root directory is this tree (all of them started here)."""
        for _ in range(3):
            pids = []
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        if os.readlink(entry / "root") == str(self.path):
                            pids.append(int(entry.name))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def group_exists(self, name: str) -> bool:
        return any(line.split(":")[0] == name
                   for line in (self.path / "etc/group").read_text().splitlines())


@pytest.fixture(scope="module")
def debian_root() -> Iterator[DebianRoot]:
    if os.environ.get("TUNSEAL_TEST_NO_CHROOT"):
        pytest.skip("TUNSEAL_TEST_NO_CHROOT is set")
    if os.geteuid() != 0:
        pytest.skip("installing into a Debian root needs root")
    need("debootstrap")
    need("unshare")
    (CACHE / "debootstrap").mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="tunseal-debian-", dir="/var/tmp"))
    path.chmod(0o755)  # a root directory: apt's unprivileged _apt user must traverse it
    root = DebianRoot(path)
    try:
        failure = debootstrap(path)
        if failure:
            pytest.skip(f"debootstrap bookworm from {MIRROR} failed {DEBOOTSTRAP_TRIES} times "
                        f"(no mirror?): {failure}")
        # No service starts in the root; pip in it trusts what this machine trusts.
        policy = path / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt",
                    path / "root/host-ca-bundle.crt")
        root.run("apt-get update -qq")
        yield root
    finally:
        root.kill_processes()
        remove_tree(path)


DEBOOTSTRAP_TRIES = 3
DEBOOTSTRAP_TIMEOUT = 900.0
"""Seconds one debootstrap may take (a first run downloads ~40 MB)."""
DEBOOTSTRAP_BACKOFF = 20.0
"""Seconds before the second try, doubled before each further one. A slow or briefly failing
mirror made the whole chroot test skip once; the .deb cache keeps what each try fetched, so a
retry resumes rather than starts over."""


def debootstrap(path: Path, *, command: tuple[str, ...] = ("debootstrap",),
                pause: Callable[[float], None] = time.sleep) -> str:
    """Make a Debian 12 minbase root in ``path`` (empty), trying DEBOOTSTRAP_TRIES times with
    a growing pause between tries; "" when it worked, else the last failure's tail. A failed
    try's half-made tree is removed first (never through a mount: see remove_tree)."""
    failure = ""
    for attempt in range(DEBOOTSTRAP_TRIES):
        if attempt:
            remove_tree(path)
            path.mkdir(mode=0o755)
            pause(DEBOOTSTRAP_BACKOFF * 2 ** (attempt - 1))
        try:
            done = run(*command, "--variant=minbase", f"--cache-dir={CACHE / 'debootstrap'}",
                       "bookworm", path, MIRROR, timeout=DEBOOTSTRAP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            failure = f"try {attempt + 1} took longer than {DEBOOTSTRAP_TIMEOUT:.0f} s"
            continue
        if done.returncode == 0:
            return ""
        failure = f"try {attempt + 1}: {(done.stderr or done.stdout)[-600:]}"
    return failure


def remove_tree(path: Path) -> None:
    """rm -rf ``path``, refusing (a test failure) when anything is mounted inside it."""
    mounted = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if f" {path}/" in line or f" {path} " in line]
    if mounted:
        pytest.fail(f"refusing to delete {path}: something is mounted in it: {mounted}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=300)


def test_debootstrap_is_retried_with_backoff_before_the_test_skips(tmp_path: Path) -> None:
    """A stand-in debootstrap (a real script, no network) fails twice, leaving a half-made
    tree each time, then works: the third try runs in an empty directory after pauses of 20 s
    and 40 s; one that always fails gives up after three tries with its last words."""
    script = tmp_path / "flaky-debootstrap"
    script.write_text("#!/bin/sh\n"
                      f"n=$(cat {tmp_path}/count 2>/dev/null || echo 0); n=$((n + 1))\n"
                      f"echo $n > {tmp_path}/count\n"
                      'target=$4; ls -A "$target" > "$target.seen.$n"\n'
                      'touch "$target/half-made"\n'
                      '[ "$n" -ge "${WORKS_AT:-99}" ] || { echo "E: mirror timed out ($n)" >&2; '
                      "exit 1; }\n")
    script.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    pauses: list[float] = []
    os.environ["WORKS_AT"] = "3"
    try:
        assert debootstrap(root, command=(str(script),), pause=pauses.append) == ""
    finally:
        del os.environ["WORKS_AT"]
    assert pauses == [DEBOOTSTRAP_BACKOFF, 2 * DEBOOTSTRAP_BACKOFF]
    assert [(tmp_path / f"root.seen.{n}").read_text() for n in (1, 2, 3)] == ["", "", ""]
    assert (root / "half-made").exists()  # the successful try's tree is kept

    (tmp_path / "count").unlink()
    remove_tree(root)
    root.mkdir()
    pauses.clear()
    failure = debootstrap(root, command=(str(script),), pause=pauses.append)
    assert failure.startswith("try 3: E: mirror timed out (3)"), failure
    assert len(pauses) == DEBOOTSTRAP_TRIES - 1


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway network namespace: the root's tunnels and demo live there."""
    name = f"tsinst{os.getpid():x}"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


HELPER_SMOKE = """
cat > /root/{name}.tunseal <<'EOF'
{profile}EOF
setsid {session} /etc/tunseal/keyring.pass {helper} > /root/helper.log 2>&1 &
group=$!
for i in $(seq 150); do [ -S /run/tunseal/helper.sock ] && break; sleep 0.1; done
tunseal import /root/{name}.tunseal
tunseal up {name}
tunseal --json status {name} > /root/status.json
test -e /sys/class/net/ts-{name}
tunseal genkey {name} > /dev/null
tunseal down {name}
tunseal --json doctor > /root/doctor.json || true
kill -TERM "-$group"
for i in $(seq 100); do [ -S /run/tunseal/helper.sock ] || break; sleep 0.1; done
"""


def datapath(r: DebianRoot) -> dict[str, str]:
    """The doctor's Data path check from HELPER_SMOKE's run: the installed helper's core."""
    checks = json.loads((r.path / "root/doctor.json").read_text())["checks"]
    return next(c for c in checks if c["id"] == "datapath")


def test_the_package_installs_runs_and_purges_on_debian_12(
    debian_root: DebianRoot, deb: Path, netns: str,
) -> None:
    r = debian_root
    shutil.copy(deb, r.path / "root" / deb.name)
    # dpkg -i alone fails on the missing dependencies; apt-get -f install brings them.
    done = r.run(f"dpkg -i /root/{deb.name} || apt-get -f install -y -q")
    assert "Setting up tunseal" in done.stdout
    # Debian 12's cryptography is too old for the data path: postinst says what to run.
    assert "one more step" in done.stdout + done.stderr
    assert r.run("dpkg-query -W -f '${Status}' tunseal").stdout == "install ok installed"

    password = r.path / "etc/tunseal/keyring.pass"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600 and password.stat().st_size > 32
    assert stat.S_IMODE((r.path / "var/lib/tunseal/profiles").stat().st_mode) == 0o700
    assert r.group_exists("tunseal")
    assert (r.path / "etc/systemd/system/multi-user.target.wants/tunseal-helper.service"
            ).is_symlink()

    assert r.run("tunseal --help").stdout.startswith("usage: tunseal")
    refused = r.run("tunseal-helper --help", check=False)
    assert refused.returncode == 78, refused
    assert "setup-pypi-deps" in refused.stderr and "cryptography" in refused.stderr
    assert r.run("tunseal list", check=False).returncode == 3  # helper not running

    pip = r.run("/usr/lib/tunseal/setup-pypi-deps", check=False, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"PyPI is out of reach from the Debian root: {pip.stderr[-600:]}")
    r.run("/usr/lib/tunseal/setup-pypi-deps --check")

    # The installed helper with Debian's pyroute2, keyring and secretstorage: a TUN link, a key.
    r.run(HELPER_SMOKE.format(name="smoke", profile=PLAIN_PROFILE,
                              session="/usr/lib/tunseal/helper/keyring-session.sh",
                              helper="/usr/bin/tunseal-helper"),
          netns=netns, timeout=120)
    status = json.loads((r.path / "root/status.json").read_text())
    assert status["tunnels"][0]["state"] == "up", status
    core = datapath(r)
    if NATIVE_SO in contents(deb):  # the installed helper runs the packaged native core
        assert (core["status"], core["found"]) == ("ok", f"native core ({NATIVE_SO})"), core
    else:
        assert core["status"] == "warn" and "architecture" in core["todo"], core
    r.kill_processes()

    # The packaged demo: an ephemeral tunnel, a page fetched through it, then nothing left.
    if not (r.path / "usr/bin/ip").exists() and not (r.path / "sbin/ip").exists():
        r.run("apt-get install -y -q iproute2")
    demo = r.run("cd /usr/lib/tunseal && /usr/local/lib/tunseal/venv/bin/python3 -m tools.demo up"
                 " && /usr/local/lib/tunseal/venv/bin/python3 -m tools.demo down",
                 netns=netns, timeout=300)
    assert "The demo tunnel works" in demo.stdout and "The Tunseal demo is gone." in demo.stdout
    r.kill_processes()

    r.run("apt-get purge -y -q tunseal")
    assert not r.group_exists("tunseal")
    for gone in ("etc/tunseal", "usr/lib/tunseal", "usr/local/lib/tunseal",
                 "var/lib/tunseal/keyring", "lib/systemd/system/tunseal-helper.service",
                 "usr/bin/tunseal", "usr/share/applications/org.tunseal.Tunseal.desktop"):
        assert not (r.path / gone).exists(), gone
    assert (r.path / "var/lib/tunseal/profiles/smoke.tunseal").is_file()  # purge keeps profiles


def test_install_sh_and_uninstall_sh_on_debian_12(
    debian_root: DebianRoot, netns: str, native_target: Path | None,
) -> None:
    """Installed without cargo (the pure-Python data path, said so), then upgraded in place
    with this machine's Rust toolchain and crate cache bound into the root (cargo offline, the
    root's own gcc): the native core, which the installed helper loads; then uninstalled."""
    r = debian_root
    r.run("dpkg --purge tunseal >/dev/null 2>&1 || true; rm -rf /var/lib/tunseal; "
          "apt-get install -y -q --no-install-recommends python3 python3-venv gnome-keyring "
          "dbus iproute2")
    source = r.path / "root/src"
    shutil.rmtree(source, ignore_errors=True)
    for part in ("core", "helper", "gui", "tools", "native", "resources", "installers", "docs"):
        if (ROOT / part).exists():
            shutil.copytree(ROOT / part, source / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "target"))
    for f in ("pyproject.toml", "README.md"):
        if (ROOT / f).exists():
            shutil.copy(ROOT / f, source / f)

    assert r.run("command -v cargo", check=False).returncode != 0
    done = r.run("bash /root/src/installers/install.sh", timeout=900)
    assert "systemd is not running here" in done.stdout  # a chroot: told how to start it
    assert f"no cargo (Rust) here: {PURE_PYTHON_SAID}" in done.stdout
    assert "https://rustup.rs" in done.stdout
    assert "data path: pure-Python path (the native module is not built)" in done.stdout
    assert not (r.path / "opt/tunseal/lib/tunseal_native.abi3.so").exists()
    for path in ("opt/tunseal/venv/bin/python3", "opt/tunseal/lib/helper/main.py",
                 "usr/local/bin/tunseal", "usr/local/bin/tunseal-helper",
                 "usr/local/bin/tunseal-gui", "etc/systemd/system/tunseal-helper.service",
                 "usr/local/share/applications/org.tunseal.Tunseal.desktop",
                 "usr/local/share/metainfo/org.tunseal.Tunseal.metainfo.xml",
                 "usr/local/share/man/man1/tunseal.1.gz",
                 "usr/local/share/man/man8/tunseal-helper.8.gz",
                 "usr/local/share/man/man1/tunseal-gui.1.gz",
                 "usr/local/share/bash-completion/completions/tunseal",
                 "usr/local/share/zsh/site-functions/_tunseal",
                 "usr/local/share/fish/vendor_completions.d/tunseal.fish",
                 "opt/tunseal/share/autostart/tunseal-tray.desktop", "etc/tunseal/keyring.pass"):
        assert (r.path / path).exists(), path
    unit = (r.path / "etc/systemd/system/tunseal-helper.service").read_text()
    assert ("ExecStart=/opt/tunseal/lib/helper/keyring-session.sh /etc/tunseal/keyring.pass "
            "/usr/local/bin/tunseal-helper") in unit
    assert r.group_exists("tunseal")
    assert r.run("tunseal --help").stdout.startswith("usage: tunseal")
    assert r.run("tunseal-helper --help").stdout.startswith("usage: tunseal-helper")

    def smoke(name: str) -> None:
        r.run(HELPER_SMOKE.format(name=name, profile=PLAIN_PROFILE.replace("smoke", name),
                                  session="/opt/tunseal/lib/helper/keyring-session.sh",
                                  helper="/usr/local/bin/tunseal-helper"),
              netns=netns, timeout=120)

    smoke("smoke")
    r.kill_processes()
    core = datapath(r)
    assert core["status"] == "warn" and "installers/install.sh' again" in core["todo"], core

    if native_target is None:
        again = r.run("bash /root/src/installers/install.sh", timeout=900)  # upgrade in place
    else:
        again = install_with_cargo(r)
        assert "building the native data-path core with cargo" in again.stdout
        assert "data path: native core" in again.stdout, again.stdout
        so = r.path / "opt/tunseal/lib/tunseal_native.abi3.so"
        assert so.is_file()
        smoke("native")  # a second profile: the first is kept across the upgrade
        r.kill_processes()
        core = datapath(r)
        assert (core["status"], core["found"]) == (
            "ok", "native core (/opt/tunseal/lib/tunseal_native.abi3.so)"), core
    assert "created group" not in again.stdout

    r.run("bash /opt/tunseal/share/installer/uninstall.sh")
    for gone in ("opt/tunseal", "usr/local/bin/tunseal", "usr/local/bin/tunseal-helper",
                 "usr/local/bin/tunseal-gui", "etc/systemd/system/tunseal-helper.service",
                 "usr/local/share/applications/org.tunseal.Tunseal.desktop",
                 "usr/local/share/metainfo/org.tunseal.Tunseal.metainfo.xml",
                 "usr/local/share/man/man1/tunseal.1.gz",
                 "usr/local/share/bash-completion/completions/tunseal",
                 "usr/local/share/icons/hicolor/scalable/apps/tunseal.svg", "etc/tunseal",
                 "var/lib/tunseal/keyring"):
        assert not (r.path / gone).exists(), gone
    assert not r.group_exists("tunseal")
    assert (r.path / "var/lib/tunseal/profiles/smoke.tunseal").is_file()
    assert "nothing to do" in r.run("bash /root/src/installers/uninstall.sh").stdout


def install_with_cargo(r: DebianRoot) -> subprocess.CompletedProcess[str]:
    """install.sh in the root with this machine's Rust toolchain (its sysroot, read-only, at the
    same path) on the PATH and cargo's crate cache read-only in the root's CARGO_HOME, offline:
    the crates of native/Cargo.lock come from this machine, not crates.io. The linker and
    ring's C compiler are the root's own gcc."""
    env = cargo_env(Path(tempfile.gettempdir()))
    sysroot = run("rustc", "--print", "sysroot", env=env).stdout.strip()
    registry = Path(env.get("CARGO_HOME", Path.home() / ".cargo")) / "registry"
    r.run("apt-get install -y -q --no-install-recommends gcc libc6-dev", timeout=600)
    return r.run(f"PATH={sysroot}/bin:$PATH CARGO_HOME=/root/.cargo CARGO_NET_OFFLINE=true "
                 "bash /root/src/installers/install.sh", timeout=1200,
                 binds=((Path(sysroot), sysroot), (registry, "/root/.cargo/registry")))
