"""helper.keystore against a real Secret Service, and helper/keyring-session.sh end to end.

Run through tests/run.sh, which gives pytest a private D-Bus session with an unlocked
gnome-keyring. The launcher tests start their own sessions and daemons.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import SecretService, chainer, fail, null

from helper.keystore import SERVICE, KeyInvalid, KeyringUnavailable, KeyStore

pytestmark = pytest.mark.keyring

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "helper" / "keyring-session.sh"


@pytest.fixture
def store() -> KeyStore:
    backend = keyring.get_keyring()
    assert type(backend) is SecretService.Keyring, (
        f"keyring chose {backend!r}, not the Secret Service: run these tests through tests/run.sh"
    )
    return KeyStore()


@pytest.fixture
def ref(store: KeyStore) -> Iterator[str]:
    name = f"test/{uuid.uuid4().hex}.private"
    yield name
    store.delete(name)


@pytest.fixture
def backend_restored() -> Iterator[None]:
    saved = keyring.get_keyring()
    yield
    keyring.core.init_backend()  # also clears the limit a test may have set for the chainer
    keyring.set_keyring(saved)


def test_the_backend_is_the_real_secret_service(store: KeyStore) -> None:
    assert type(keyring.get_keyring()) is SecretService.Keyring
    backend = "keyring.backends.SecretService.Keyring"
    assert repr(store) == f"KeyStore(service='tunseal', backend={backend!r})"


def test_put_get_delete_round_trip(store: KeyStore, ref: str) -> None:
    assert store.get(ref) is None
    first, second = os.urandom(32), os.urandom(32)
    store.put(ref, first)
    assert store.get(ref) == first
    assert KeyStore().get(ref) == first  # a new connection, the same item
    store.put(ref, second)
    assert store.get(ref) == second
    store.delete(ref)
    assert store.get(ref) is None
    store.delete(ref)  # deleting a missing key is fine


def test_items_are_service_tunseal_username_ref_value_base64(store: KeyStore, ref: str) -> None:
    secret = os.urandom(32)
    store.put(ref, secret)
    shown = subprocess.run(
        ["secret-tool", "lookup", "service", SERVICE, "username", ref],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert shown == base64.b64encode(secret).decode()


@pytest.mark.parametrize(
    "bad", ["", "x" * 129, "office private", "office;psk", "ofﬁce", "a\n", "tab\t", None, 5]
)
def test_refs_outside_the_pattern_are_refused(store: KeyStore, bad: object) -> None:
    with pytest.raises(KeyInvalid, match="not a key ref"):
        store.get(bad)  # type: ignore[arg-type]
    with pytest.raises(KeyInvalid, match="not a key ref"):
        store.put(bad, bytes(32))  # type: ignore[arg-type]
    with pytest.raises(KeyInvalid, match="not a key ref"):
        store.delete(bad)  # type: ignore[arg-type]


def test_the_longest_ref_and_every_allowed_character_work(store: KeyStore) -> None:
    for name in ("a" * 128, "Az09._/-" + uuid.uuid4().hex):
        store.put(name, bytes(32))
        assert store.get(name) == bytes(32)
        store.delete(name)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), bytearray(32), "x" * 32, None])
def test_keys_that_are_not_32_bytes_are_refused(store: KeyStore, ref: str, bad: object) -> None:
    with pytest.raises(KeyInvalid, match="exactly 32 bytes"):
        store.put(ref, bad)  # type: ignore[arg-type]
    assert store.get(ref) is None


@pytest.mark.parametrize("stored", ["not base64!", base64.b64encode(bytes(16)).decode(), ""])
def test_an_item_that_is_not_a_key_is_reported_not_returned(
    store: KeyStore, ref: str, stored: str
) -> None:
    keyring.set_password(SERVICE, ref, stored)  # as another tool might have written it
    with pytest.raises(KeyInvalid, match="secret-tool clear") as e:
        store.get(ref)
    if stored:
        assert stored not in str(e.value)


def test_the_fail_backend_is_refused(backend_restored: None) -> None:
    keyring.set_keyring(fail.Keyring())
    with pytest.raises(KeyringUnavailable, match="gnome-keyring") as e:
        KeyStore()
    assert "no Secret Service is reachable" in str(e.value)


def test_the_null_backend_is_refused(backend_restored: None) -> None:
    keyring.set_keyring(null.Keyring())
    with pytest.raises(KeyringUnavailable, match="no Secret Service is reachable"):
        KeyStore()


def test_a_chainer_with_nothing_to_chain_is_refused(backend_restored: None) -> None:
    keyring.core.init_backend(limit=lambda backend: False)  # no backend passes
    empty = chainer.ChainerBackend()
    assert list(empty.backends) == []
    keyring.set_keyring(empty)
    with pytest.raises(KeyringUnavailable, match="no Secret Service is reachable"):
        KeyStore()


class PlaintextFileKeyring(KeyringBackend):
    """A backend that keeps passwords in a plain file, like keyrings.alt's PlaintextKeyring."""

    priority = 1

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def get_password(self, service: str, username: str) -> str | None:
        for line in self.path.read_text().splitlines():
            if line.startswith(f"{service} {username} "):
                return line.split(" ", 2)[2]
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        with self.path.open("a") as f:
            f.write(f"{service} {username} {password}\n")

    def delete_password(self, service: str, username: str) -> None:
        raise NotImplementedError


def test_a_plaintext_backend_is_refused_and_never_written(
    backend_restored: None, tmp_path: Path
) -> None:
    plain = PlaintextFileKeyring(tmp_path / "keys.txt")
    plain.path.write_text("")
    keyring.set_keyring(plain)
    with pytest.raises(KeyringUnavailable, match="not an encrypted store") as e:
        KeyStore()
    assert "PlaintextFileKeyring" in str(e.value)
    assert plain.path.read_text() == ""


def test_secrets_never_reach_repr_logs_or_errors(
    store: KeyStore, ref: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = os.urandom(32)
    forms = [base64.b64encode(secret).decode(), secret.hex(), repr(secret)]
    messages = []
    with caplog.at_level(logging.DEBUG):
        store.put(ref, secret)
        assert store.get(ref) == secret
        for bad in (secret[:31], secret + b"!"):
            with pytest.raises(KeyInvalid) as e:
                store.put(ref, bad)
            messages.append(str(e.value))
        store.delete(ref)
    assert f"stored key {ref!r}" in caplog.text  # the log shows which ref, so it was captured
    shown = caplog.text + repr(store) + str(store) + "".join(messages)
    for form in forms:
        assert form not in shown


# --- helper/keyring-session.sh: the launcher the systemd unit runs ------------------------------

CHILD = """
import base64, os, signal, subprocess, sys, time
from helper.keystore import KeyStore, KeyringUnavailable
action, ref = sys.argv[1], sys.argv[2]

def secrets_pid():
    out = subprocess.run(
        ["dbus-send", "--session", "--print-reply=literal", "--dest=org.freedesktop.DBus",
         "/org/freedesktop/DBus", "org.freedesktop.DBus.GetConnectionUnixProcessID",
         "string:org.freedesktop.secrets"], capture_output=True, text=True, timeout=10)
    return int(out.stdout.split()[1]) if out.returncode == 0 else None

try:
    store = KeyStore()
except KeyringUnavailable as e:
    print("unavailable:", e)
    sys.exit(3)
if action in ("put", "crash"):
    store.put(ref, base64.b64decode(sys.stdin.read()))
if action == "crash":
    first = secrets_pid()
    os.kill(first, signal.SIGKILL)
    for _ in range(100):  # bounded: until the bus has dropped the dead daemon's name
        if secrets_pid() != first:
            break
        time.sleep(0.05)
    print("killed:", first)
print("key:", base64.b64encode(store.get(ref) or b"").decode())
if action == "crash":
    print("now:", secrets_pid())
"""


def run_session(
    passfile: Path, data: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TUNSEAL_KEYRING_DIR=str(data), PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["bash", str(LAUNCHER), str(passfile), sys.executable, "-c", CHILD, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def processes_with_home(home: Path) -> list[int]:
    """Live processes whose environment has HOME=home (a daemon the launcher left behind)."""
    found = []
    needle = f"HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until_gone(home: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while (left := processes_with_home(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def write_password(path: Path, password: str) -> Path:
    path.write_text(password)
    path.chmod(0o600)
    return path


def test_launcher_keeps_keys_across_restarts_and_refuses_a_wrong_password(
    store: KeyStore, tmp_path: Path
) -> None:
    passfile = write_password(tmp_path / "keyring.pass", base64.b64encode(os.urandom(24)).decode())
    data = tmp_path / "keyring"
    ref = f"launcher/{uuid.uuid4().hex}.psk"
    secret = os.urandom(32)
    encoded = base64.b64encode(secret).decode()

    first = run_session(passfile, data, "put", ref, stdin=encoded)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"key: {encoded}" in first.stdout
    assert wait_until_gone(data) == []  # the daemon ended with its session
    assert store.get(ref) is None  # it was the session's own daemon, not the test runner's

    # Encrypted at rest, where the launcher said it would be.
    assert (data / "keyrings" / "login.keyring").is_file()
    assert os.stat(data).st_mode & 0o777 == 0o700
    for path in data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret not in content and encoded.encode() not in content, path

    again = run_session(passfile, data, "get", ref)  # a new daemon, the same data and password
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"key: {encoded}" in again.stdout
    assert wait_until_gone(data) == []

    wrong = write_password(tmp_path / "wrong.pass", "not the password")
    locked = run_session(wrong, data, "get", ref)
    assert locked.returncode == 3, locked.stdout + locked.stderr
    assert "unavailable: the keyring collection is locked" in locked.stdout
    assert encoded not in locked.stdout + locked.stderr
    assert wait_until_gone(data) == []


def test_launcher_brings_a_killed_daemon_back_unlocked(tmp_path: Path) -> None:
    """The keyring daemon dies (SIGKILL) under a running helper: the next KeyStore call gets the
    key back from a daemon the session's bus activated, unlocked, not a locked stock one."""
    passfile = write_password(tmp_path / "keyring.pass", base64.b64encode(os.urandom(24)).decode())
    data = tmp_path / "keyring"
    ref = f"launcher/{uuid.uuid4().hex}.psk"
    encoded = base64.b64encode(os.urandom(32)).decode()
    result = run_session(passfile, data, "crash", ref, stdin=encoded)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["key"] == encoded
    assert lines["now"] not in ("None", lines["killed"])  # a new daemon answered
    assert wait_until_gone(data) == []


@pytest.mark.parametrize(
    ("content", "file_mode", "complaint"),
    [("secret", 0o644, "readable by others"), ("", 0o600, "is empty")],
)
def test_launcher_refuses_a_password_file_that_protects_nothing(
    tmp_path: Path, content: str, file_mode: int, complaint: str
) -> None:
    passfile = tmp_path / "keyring.pass"
    passfile.write_text(content)
    passfile.chmod(file_mode)
    result = run_session(passfile, tmp_path / "keyring", "get", "x")
    assert result.returncode == 1
    assert complaint in result.stderr
    assert not (tmp_path / "keyring").exists()
