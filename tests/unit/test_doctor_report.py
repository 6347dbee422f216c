"""core/doctor.py without a helper: the report's wording and exit rule, and how a refused user
is told apart from one whose session predates being added to the group (the group database
is the real one; the session's groups are given)."""

from __future__ import annotations

import grp
import json
import os
import pwd

from core.doctor import FAIL, OK, SKIP, WARN, Check, Report, format_report, membership_check


def test_the_worst_status_decides() -> None:
    ok = Check("helper", "Helper", OK, "fine")
    warn = Check("mtu", "Path MTU", WARN, "small", "lower it", "office")
    fail = Check("endpoint", "Endpoint", FAIL, "no answer", "check the firewall", "office")
    skip = Check("clock", "Clock", SKIP, "not checked")
    assert Report((ok, skip)).worst == OK
    assert Report((ok, warn)).worst == WARN
    assert Report((warn, fail, ok)).worst == FAIL
    assert json.loads(Report((ok, fail)).to_json())["status"] == FAIL


def test_format_shows_what_to_do_only_where_something_is_wrong() -> None:
    report = Report((Check("helper", "Helper", OK, "answers", "nothing"),
                     Check("endpoint", "Endpoint", FAIL, "no answer", "check the firewall",
                           "office"),
                     Check("clock", "Clock", SKIP, "not checked")))
    assert format_report(report).splitlines() == [
        "[ok  ] Helper: answers",
        "[FAIL] Endpoint (office): no answer",
        "         what to do: check the firewall",
        "[skip] Clock: not checked",
        "",
        "doctor: 1 failed, 1 ok, 1 skipped",
    ]


def test_a_check_from_a_newer_helper_with_an_unknown_status_counts_as_failed() -> None:
    c = Check.from_dict({"id": "x", "title": "X", "status": "weird", "found": "?"})
    assert c.status == FAIL and c.todo == "" and c.profile == ""


def _user_and_groups() -> tuple[int, int, int]:
    """(uid, a gid the user is in by the database, a gid it is not in)."""
    uid = os.geteuid()
    pw = pwd.getpwuid(uid)
    member = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    outsider = next(g.gr_gid for g in grp.getgrall() if g.gr_gid not in member)
    return uid, pw.pw_gid, outsider


def test_not_in_the_group() -> None:
    uid, _, outsider = _user_and_groups()
    c = membership_check(outsider, uid=uid, session_groups=[])
    name = grp.getgrgid(outsider).gr_name
    assert c.status == FAIL and f"is not in group {name!r}" in c.found
    assert f"sudo usermod -aG {name} {pwd.getpwuid(uid).pw_name}" in c.todo


def test_added_after_the_session_began() -> None:
    uid, member, _ = _user_and_groups()
    c = membership_check(member, uid=uid, session_groups=[])  # the database says yes
    assert "this session started before that" in c.found
    assert c.todo.startswith("log out and in again")


def test_in_the_group_and_still_refused() -> None:
    uid, member, _ = _user_and_groups()
    c = membership_check(member, uid=uid, session_groups=[member])
    assert "still refuses" in c.found and "journalctl -u tunseal-helper" in c.todo
