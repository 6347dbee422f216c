"""helper/netident.py's ``nm_primary()`` and helper/netwatch.py's ``NmWatch`` against a real
D-Bus peer on a real bus.

This machine has no system bus and no NetworkManager. Each test starts its own
``dbus-daemon`` (a private bus, its socket in a temporary directory) and points
``DBUS_SYSTEM_BUS_ADDRESS`` at it, which is how jeepney's ``open_dbus_connection(bus="SYSTEM")``
finds the system bus. The NetworkManager here is a small jeepney service (a thread) that owns
``org.freedesktop.NetworkManager`` and implements what the code asks for:
``org.freedesktop.DBus.Properties.Get`` of ``PrimaryConnection`` on
``/org/freedesktop/NetworkManager`` and of ``Uuid``/``Id`` on the active connection's object,
and the ``PropertiesChanged`` signal real NetworkManager emits on its main object.
"""

from __future__ import annotations

import os
import queue
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbusfake import DBusService
from jeepney import DBusAddress, HeaderFields, Message, new_error, new_method_return, new_signal

from core.trusted import NetworkIdentity
from helper import netident
from helper.netident import NM_BUS_NAME, NM_PATH, nm_primary
from helper.netwatch import NmWatch

WAIT = 10.0
"""Bound on every wait for the bus or a signal (they take milliseconds)."""
NM_IFACE = "org.freedesktop.NetworkManager"
ACTIVE_IFACE = "org.freedesktop.NetworkManager.Connection.Active"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
WIFI = "/org/freedesktop/NetworkManager/ActiveConnection/1"
WIRED = "/org/freedesktop/NetworkManager/ActiveConnection/2"
WIFI_UUID = "8B2F1C4E-5D6A-4B7C-9E0F-1A2B3C4D5E6F"
WIRED_UUID = "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>tunseal-test</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture
def system_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private dbus-daemon, made the "system bus" for jeepney; killed however the test ends."""
    if shutil.which("dbus-daemon") is None:
        pytest.fail("dbus-daemon is not installed (Debian: dbus-daemon)")
    d = Path(tempfile.mkdtemp(prefix="ts-nmbus-"))
    (d / "bus.conf").write_text(CONFIG.format(socket=d / "bus"))
    log = open(d / "daemon.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["dbus-daemon", f"--config-file={d / 'bus.conf'}", "--nofork",
                             "--print-address"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT)
        address = proc.stdout.readline().strip() if ready else ""
        assert address.startswith("unix:"), \
            f"dbus-daemon did not start: {(d / 'daemon.log').read_text()}"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class Raw:
    """A reply sent as it is (signature and body), not wrapped in a variant: a broken peer."""

    signature: str | None
    body: tuple[Any, ...]


class FakeNetworkManager(DBusService):
    """org.freedesktop.NetworkManager on the test bus: its properties, as a real peer.

    ``props[path][interface][name]`` is a ``(signature, value)`` variant, or a :class:`Raw`
    reply; a property it does not have gets the error real NetworkManager sends. With
    ``silent`` it reads calls and answers none (a hung NetworkManager); without ``serve`` no
    thread reads its connection (only then can :meth:`sync` wait for its own reply)."""

    def __init__(self, address: str, *, own: bool = True, silent: bool = False,
                 serve: bool = True):
        self.props: dict[str, dict[str, dict[str, Any]]] = {
            NM_PATH: {NM_IFACE: {"PrimaryConnection": ("o", WIFI), "State": ("u", 70)}},
            WIFI: {ACTIVE_IFACE: {"Uuid": ("s", WIFI_UUID), "Id": ("s", "Office Wi-Fi")}},
            WIRED: {ACTIVE_IFACE: {"Uuid": ("s", WIRED_UUID), "Id": ("s", "Wired 1")}},
        }
        self.silent = silent
        self.gets: list[tuple[str, str, str]] = []
        self._props_lock = threading.Lock()
        super().__init__(address, NM_BUS_NAME if own else None, serve=serve)

    def answer(self, msg: Message) -> Message | None:
        if self.silent:
            return None
        fields = msg.header.fields
        path, iface = fields.get(HeaderFields.path), fields.get(HeaderFields.interface)
        if iface != PROPS_IFACE or fields.get(HeaderFields.member) != "Get":
            return new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod")
        interface, name = msg.body
        with self._props_lock:
            self.gets.append((path, interface, name))
            value = self.props.get(path, {}).get(interface, {}).get(name)
        if value is None:
            known = path in self.props
            return new_error(msg, "org.freedesktop.DBus.Error."
                             + ("UnknownProperty" if known else "UnknownObject"),
                             "s", (f"no {name} on {path}",))
        if isinstance(value, Raw):
            return new_method_return(msg, value.signature, value.body)
        return new_method_return(msg, "v", (value,))

    def set(self, path: str, interface: str, name: str, value: Any) -> None:
        with self._props_lock:
            self.props.setdefault(path, {}).setdefault(interface, {})[name] = value

    def changed(self, **props: tuple[str, Any]) -> None:
        """Emit org.freedesktop.DBus.Properties.PropertiesChanged for the main object."""
        self.send(new_signal(DBusAddress(NM_PATH, interface=PROPS_IFACE), "PropertiesChanged",
                             "sa{sv}as", (NM_IFACE, props, [])))

    def sync(self) -> None:
        """A round trip to the bus: everything sent before it has been routed."""
        self.round_trip()


@pytest.fixture
def nm(system_bus: str) -> Iterator[FakeNetworkManager]:
    service = FakeNetworkManager(system_bus)
    try:
        yield service
    finally:
        service.close()


# --- nm_primary ---------------------------------------------------------------------------------


def test_nm_primary_reads_the_primary_connection(nm: FakeNetworkManager) -> None:
    assert nm_primary() == NetworkIdentity(nm_uuid=WIFI_UUID.lower(), nm_name="Office Wi-Fi",
                                           source="NetworkManager")
    assert (NM_PATH, NM_IFACE, "PrimaryConnection") in nm.gets
    assert {(WIFI, ACTIVE_IFACE, "Uuid"), (WIFI, ACTIVE_IFACE, "Id")} <= set(nm.gets)
    nm.set(NM_PATH, NM_IFACE, "PrimaryConnection", ("o", WIRED))
    assert nm_primary() == NetworkIdentity(nm_uuid=WIRED_UUID, nm_name="Wired 1",
                                           source="NetworkManager")


def test_no_primary_connection_is_offline(nm: FakeNetworkManager) -> None:
    nm.set(NM_PATH, NM_IFACE, "PrimaryConnection", ("o", "/"))
    identity = nm_primary()
    assert identity == NetworkIdentity() and not identity.online


def test_current_takes_the_network_from_networkmanager(nm: FakeNetworkManager,
                                                       tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n")
    sources = netident.Sources(proc_route=route, proc_arp=tmp_path / "arp",
                               resolv_conf=tmp_path / "resolv.conf", arp_probe=False)
    identity = netident.current(sources)
    assert identity.nm_uuid == WIFI_UUID.lower() and identity.online
    assert netident.current(netident.Sources(proc_route=route, use_nm=False,
                                             arp_probe=False)) == NetworkIdentity()


def test_without_networkmanager_on_the_bus_it_is_none(system_bus: str) -> None:
    other = FakeNetworkManager(system_bus, own=False)  # on the bus, but not NetworkManager
    try:
        assert nm_primary() is None
        assert other.gets == []  # nobody was asked: the name has no owner
    finally:
        other.close()


def test_without_a_system_bus_it_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    d = tempfile.mkdtemp(prefix="ts-nmbus-")
    try:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={d}/nobody-listens")
        assert nm_primary() is None
    finally:
        os.rmdir(d)


@pytest.mark.parametrize(("path", "interface", "name", "value"), [
    (NM_PATH, NM_IFACE, "PrimaryConnection", ("s", "not a path")),
    (NM_PATH, NM_IFACE, "PrimaryConnection", ("u", 7)),
    (NM_PATH, NM_IFACE, "PrimaryConnection", Raw("o", (WIFI,))),  # not in a variant
    (NM_PATH, NM_IFACE, "PrimaryConnection", Raw(None, ())),  # no value at all
    (NM_PATH, NM_IFACE, "PrimaryConnection", Raw("vv", (("o", WIFI), ("o", WIRED)))),
    (NM_PATH, NM_IFACE, "PrimaryConnection", ("o", "/org/freedesktop/NetworkManager/Gone")),
    (WIFI, ACTIVE_IFACE, "Uuid", ("u", 42)),
    (WIFI, ACTIVE_IFACE, "Uuid", ("as", [WIFI_UUID])),
    (WIFI, ACTIVE_IFACE, "Uuid", ("s", "")),  # would read as "offline"
    (WIFI, ACTIVE_IFACE, "Id", ("ay", b"Office Wi-Fi")),
    (WIFI, ACTIVE_IFACE, "Id", Raw("s", ("Office Wi-Fi",))),
    (WIFI, ACTIVE_IFACE, "Id", None),  # the property is missing: an UnknownProperty error
], ids=["path-as-string", "path-as-uint", "bare-path", "empty-reply", "two-values",
        "unknown-object", "uuid-as-uint", "uuid-as-array", "empty-uuid",
        "id-as-bytes", "bare-id",
        "no-id"])
def test_a_malformed_reply_gives_none(nm: FakeNetworkManager, path: str, interface: str,
                                      name: str, value: Any) -> None:
    if value is None:
        del nm.props[path][interface][name]
    else:
        nm.set(path, interface, name, value)
    assert nm_primary() is None
    # NetworkManager answers properly again: the same code reads it (nothing was left broken).
    nm.set(NM_PATH, NM_IFACE, "PrimaryConnection", ("o", WIRED))
    assert nm_primary() == NetworkIdentity(nm_uuid=WIRED_UUID, nm_name="Wired 1",
                                           source="NetworkManager")


def test_a_networkmanager_that_does_not_answer_gives_none(system_bus: str) -> None:
    hung = FakeNetworkManager(system_bus, silent=True)
    try:
        start = time.monotonic()
        assert nm_primary() is None
        assert time.monotonic() - start < netident.NM_TIMEOUT + WAIT  # bounded, not hanging
    finally:
        hung.close()


# --- NmWatch --------------------------------------------------------------------------------------


class Reports:
    def __init__(self) -> None:
        self.q: queue.Queue[str] = queue.Queue()

    def __call__(self, why: str) -> None:
        self.q.put(why)

    def next(self) -> str:
        try:
            return self.q.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the watcher reported nothing in {WAIT} s") from None


@pytest.fixture
def reports(system_bus: str) -> Iterator[tuple[NmWatch, Reports]]:
    got = Reports()
    watch = NmWatch(got)
    assert watch.start(), "NmWatch did not subscribe on the test system bus"
    try:
        yield watch, got
    finally:
        watch.stop()


def test_a_new_primary_connection_is_reported(reports: tuple[NmWatch, Reports],
                                              nm: FakeNetworkManager) -> None:
    _, got = reports
    assert got.next() == "NetworkManager started"  # the fake took the name after the watch
    first = nm_primary()
    assert first is not None and first.nm_name == "Office Wi-Fi"
    # A change the watcher does not care about, then the primary connection: the first report
    # is the second signal (signals from one sender arrive in order).
    nm.changed(WirelessEnabled=("b", False))
    nm.set(NM_PATH, NM_IFACE, "PrimaryConnection", ("o", WIRED))
    nm.changed(PrimaryConnection=("o", WIRED))
    assert got.next() == "NetworkManager: PrimaryConnection changed"
    assert nm_primary() == NetworkIdentity(nm_uuid=WIRED_UUID, nm_name="Wired 1",
                                           source="NetworkManager")
    nm.changed(State=("u", 20), Connectivity=("u", 1))
    assert got.next() == "NetworkManager: Connectivity, State changed"


def test_another_peer_cannot_fake_networkmanager_signals(reports: tuple[NmWatch, Reports],
                                                         system_bus: str) -> None:
    _, got = reports
    impostor = FakeNetworkManager(system_bus, own=False, serve=False)
    try:
        impostor.changed(PrimaryConnection=("o", WIRED))
        impostor.sync()  # the bus has routed (or dropped) it before NetworkManager starts
        nm = FakeNetworkManager(system_bus)
        try:
            assert got.next() == "NetworkManager started"
            nm.changed(State=("u", 70))
            assert got.next() == "NetworkManager: State changed"
        finally:
            nm.close()
        assert got.next() == "NetworkManager stopped"
        assert got.q.empty()
    finally:
        impostor.close()


def test_networkmanager_stopping_and_restarting_is_reported(
        reports: tuple[NmWatch, Reports], system_bus: str) -> None:
    _, got = reports
    for _ in range(2):
        nm = FakeNetworkManager(system_bus)
        try:
            assert got.next() == "NetworkManager started"
        finally:
            nm.close()
        assert got.next() == "NetworkManager stopped"


def test_without_a_system_bus_the_watch_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    d = tempfile.mkdtemp(prefix="ts-nmbus-")
    try:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={d}/nobody-listens")
        watch = NmWatch(Reports())
        assert watch.start() is False
        watch.stop()  # harmless when nothing runs
    finally:
        os.rmdir(d)


def test_stop_ends_the_watch_thread(reports: tuple[NmWatch, Reports]) -> None:
    watch, _ = reports
    thread = watch._thread
    assert thread is not None and thread.is_alive()
    watch.stop()
    assert not thread.is_alive()
