"""gui/helper_client.py against the laptop's real helper: its lifecycle at the edges."""

from __future__ import annotations

from conftest import WAIT
from officelab import OfficeLab
from pytestqt.qtbot import QtBot

from gui.helper_client import HelperClient


def test_a_subscription_that_lands_after_close_is_ignored(qtbot: QtBot,
                                                          world: OfficeLab) -> None:
    """The event reader subscribes, but its queued "subscribed" signal reaches the GUI thread
    only after the window closed the client (seen in CI: it then queued a call on the closed
    pool, and Qt reported "cannot schedule new futures after shutdown")."""
    client = HelperClient(str(world.laptop.socket))
    seen: list[bool] = []
    client.available.connect(lambda ok, _code, _msg: seen.append(ok))
    client.start()
    client.close()  # before the reader's signal was delivered
    client._on_subscribed()  # what that late signal runs, made certain
    qtbot.wait(200)
    assert seen == []


def test_the_client_subscribes_and_closes(qtbot: QtBot, world: OfficeLab) -> None:
    client = HelperClient(str(world.laptop.socket))
    seen: list[bool] = []
    client.available.connect(lambda ok, _code, _msg: seen.append(ok))
    client.start()
    qtbot.waitUntil(lambda: seen == [True], timeout=WAIT)
    client.close()
    client.retry()  # after close: nothing happens
    qtbot.wait(200)
    assert seen == [True]
