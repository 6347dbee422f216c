"""Fixtures for the GUI tests: the office lab (two real helpers and a real tunnel between two
namespaces, see officelab.py) and the real desktop client built against the laptop's helper."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import netlab
import pytest
from officelab import OfficeLab
from pytestqt.qtbot import QtBot

from core.errors import IPCError
from gui.app import App, build

WAIT = 15_000
"""Milliseconds any GUI wait may take before the test fails."""


@pytest.fixture(scope="session")
def world() -> Iterator[OfficeLab]:
    reason = netlab.unavailable()
    if reason:
        pytest.skip(reason)
    with OfficeLab() as lab:
        yield lab


@pytest.fixture
def office(world: OfficeLab) -> Iterator[str]:
    """The laptop's 'office' profile, freshly imported (keys included), and no other profile;
    everything is disconnected afterwards."""
    world.ensure_laptop_running()
    _only_profiles(world, [])
    world.laptop.call("import_profile", text=world.profile_text(), replace=True)
    yield "office"
    with contextlib.suppress(IPCError):
        for t in world.laptop.call("status")["tunnels"]:
            if t["state"] != "down":
                world.laptop.call("disconnect", name=t["name"])


@pytest.fixture
def no_profiles(world: OfficeLab) -> Iterator[None]:
    world.ensure_laptop_running()
    _only_profiles(world, [])
    yield
    with contextlib.suppress(IPCError):
        _only_profiles(world, [])


def _only_profiles(world: OfficeLab, keep: list[str]) -> None:
    for p in world.laptop.call("list_profiles")["profiles"]:
        name = p["tunnel"]["name"]
        if name not in keep:
            world.laptop.call("remove_profile", name=name)


@pytest.fixture
def gui(qtbot: QtBot, world: OfficeLab) -> Iterator[App]:
    """The desktop client, as tunseal-gui builds it, talking to the laptop's helper, shown and
    connected (file dialogs non-native, so the tests can drive them)."""
    app = build(str(world.laptop.socket), native_dialogs=False)
    qtbot.addWidget(app.window)
    app.start()
    qtbot.waitUntil(lambda: app.state.model.availability.ok, timeout=WAIT)
    yield app
    app.close()
