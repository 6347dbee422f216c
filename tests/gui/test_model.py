"""gui.model, gui.format and gui.profile_form: the window's logic without a window."""

from __future__ import annotations

import dataclasses

import pytest

from core.errors import ProfileInvalid
from core.profile import Profile
from gui import format as fmt
from gui.graph import time_span, time_step
from gui.model import (
    Availability,
    LogBook,
    LogEntry,
    Model,
    RateHistory,
    TrayState,
    duplicate_name,
    guidance,
)
from gui.profile_form import field_of, form_from_profile, parse_form

PROFILE = {"format": 1, "tunnel": {"name": "office", "mode": "psk"},
           "interface": {"addresses": ["10.77.0.2/24"]},
           "peer": {"endpoint": "vpn.example.com", "allowed_ips": ["10.0.0.0/8"]},
           "keys": {"psk": "office.psk"}}


def status(name: str, state: str, **extra: object) -> dict[str, object]:
    return {"name": name, "state": state, **extra}


def test_tray_state_follows_the_most_important_tunnel() -> None:
    m = Model()
    assert m.tray_state() is TrayState.PROBLEM  # no helper yet
    m.availability = Availability(True)
    assert m.tray_state() is TrayState.DISCONNECTED
    m.apply_status(status("a", "handshaking"), 1.0)
    assert m.tray_state() is TrayState.CONNECTING
    m.apply_status(status("b", "up"), 1.0)
    assert m.tray_state() is TrayState.CONNECTED
    m.apply_status(status("c", "error", error="no route"), 1.0)
    assert m.tray_state() is TrayState.PROBLEM


def test_history_and_plain_mode() -> None:
    m = Model()
    m.set_profiles([PROFILE, {**PROFILE, "tunnel": {"name": "lab", "mode": "plain"},
                              "keys": {}}])
    assert sorted(m.profiles) == ["lab", "office"]
    assert m.is_unsafe("lab") and not m.is_unsafe("office")
    m.apply_status(status("office", "up", rx_rate=10.0, tx_rate=5.0, mode="psk"), 100.0)
    m.apply_status(status("office", "up", rx_rate=20.0, tx_rate=1.0, mode="psk"), 101.0)
    m.apply_status(status("office", "down"), 102.0)
    assert m.histories["office"].points() == [(100.0, 10.0, 5.0), (101.0, 20.0, 1.0),
                                              (102.0, 0.0, 0.0)]
    assert m.active() == [] and m.state("nosuch") == "down"


def test_rate_history_keeps_the_window() -> None:
    h = RateHistory(seconds=10)
    for t in range(30):
        h.add(float(t), float(t), 0.0)
    assert h.points()[0][0] == 18.0 and len(h) == 12  # one point just outside the window
    assert h.peak() == 29.0
    h.add(5.0, 1.0, 1.0)  # the clock went back
    assert h.points() == [(5.0, 1.0, 1.0)]


def test_log_filters() -> None:
    book = LogBook(limit=3)
    for entry in [LogEntry(1, "DEBUG", "office", "keepalive"),
                  LogEntry(2, "INFO", "office", "tunnel office up"),
                  LogEntry(3, "INFO", "", "uid 0: connect office"),
                  LogEntry(4, "ERROR", "lab", "no route")]:
        book.add(entry)
    assert len(book) == 3  # the oldest went
    assert [e.time for e in book.filtered(tunnel="office")] == [2]
    assert [e.time for e in book.filtered(tunnel="office", helper_too=True)] == [2, 3]
    assert [e.time for e in book.filtered(tunnel=None, min_level="ERROR")] == [4]
    assert [e.time for e in book.filtered(tunnel=None, text="CONNECT")] == [3]


def test_duplicate_names_stay_valid() -> None:
    assert duplicate_name("office", ["office"]) == "office-copy"
    assert duplicate_name("office", ["office", "office-copy"]) == "office-copy2"
    long = "x" * 32
    assert duplicate_name(long, [long]) == "x" * 27 + "-copy"


def test_guidance_says_what_to_do() -> None:
    headline, advice, command = guidance(Availability(False, "unavailable", "..."))
    assert "not running" in headline and command == "sudo systemctl start tunseal-helper"
    headline, advice, command = guidance(Availability(False, "forbidden", "..."))
    assert "not allowed" in headline and "tunseal" in command and "log in again" in advice


def test_units() -> None:
    assert fmt.human_rate(1536) == "1.5 KiB/s"
    assert [fmt.short_rate(t) for t in fmt.axis_ticks(9.5e6)] == [
        "0 B/s", "2.5 MiB/s", "5 MiB/s", "7.5 MiB/s", "10 MiB/s"]
    assert fmt.axis_ticks(0) == [0, 250, 500, 750, 1000]
    assert fmt.axis_ticks(3e9)[-1] == 3 * 1024**3
    assert fmt.time_axis_label(0) == "now" and fmt.time_axis_label(120) == "-2 min"
    assert fmt.state_text("up") == "Connected"


def test_graph_span_grows_with_history() -> None:
    assert time_span([], 100.0, 300.0) == 60.0
    assert time_span([(0.0, 0, 0)], 100.0, 300.0) == 120.0
    assert time_span([(0.0, 0, 0)], 1000.0, 300.0) == 300.0
    assert time_step(60.0) == 10.0 and time_step(300.0) == 60.0
    # Narrow: fewer lines, so the labels (60 px) keep apart.
    assert time_step(300.0, 600, 60) == 60.0
    assert time_step(300.0, 300, 60) == 120.0
    assert time_step(300.0, 100, 60) == 300.0


def test_every_profile_field_survives_the_editor_form() -> None:
    # A field the form does not carry would be silently reset by every save in the editor
    # (lockdown and allow_lan once were): every field set away from its default comes back.
    profile = Profile("lab", mode="rotating", cipher="chacha20-poly1305", mtu=1300,
                      device_id=7, persist=True, autoconnect="untrusted",
                      trusted_networks=("gateway:02:00:00:00:00:01@office.example",),
                      lockdown="always", allow_lan=True, rekey_seconds=300,
                      rekey_messages=1000, addresses=("10.77.0.2/24",), listen_port=51999,
                      dns=("10.0.0.53",), dns_search=("~corp.example",),
                      endpoint="vpn.example.com:51901", transport="raw",
                      public_key="", allowed_ips=("0.0.0.0/0",), keepalive=25,
                      psk_ref="lab.psk")
    defaults = Profile("lab", addresses=("10.77.0.2/24",))
    unset = [f.name for f in dataclasses.fields(Profile)
             if f.name not in ("name", "addresses", "public_key", "private_key_ref")
             and getattr(profile, f.name) == getattr(defaults, f.name)]
    assert unset == [], f"set these away from their defaults in this test: {unset}"
    assert parse_form(form_from_profile(profile)) == profile


def test_form_round_trip_and_problems_by_field() -> None:
    profile = Profile("office", mode="psk", addresses=("10.77.0.2/24",),
                      endpoint="vpn.example.com", allowed_ips=("10.0.0.0/8", "10.1.0.0/16"),
                      psk_ref="office.psk")
    values = form_from_profile(profile)
    assert values["peer.allowed_ips"] == "10.0.0.0/8, 10.1.0.0/16"
    assert parse_form(values) == profile
    values.update({"peer.endpoint": "vpn.example.com:99999", "tunnel.mtu": "big",
                   "interface.addresses": "10.77.0.2/24, 10.77.0.300/24"})
    with pytest.raises(ProfileInvalid) as caught:
        parse_form(values)
    problems = {field_of(p.field): p.reason for p in caught.value.problems}
    assert problems["tunnel.mtu"] == "'big' is not a whole number"
    assert "99999 is out of range" in problems["peer.endpoint"]
    assert "10.77.0.300" in problems["interface.addresses"]


def test_a_new_profile_gets_keyring_item_names() -> None:
    p = parse_form({"tunnel.name": "home", "tunnel.mode": "ephemeral",
                    "interface.addresses": "10.1.0.2/24",
                    "peer.public_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                    "peer.endpoint": "home.example.org"})
    assert p.private_key_ref == "home.private" and p.psk_ref == ""
