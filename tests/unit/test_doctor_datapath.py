"""The doctor's data-path check (helper/diagnose.py): which core the helper's tunnels run on,
as core/native.py chose it in this process and in a fresh one told TUNSEAL_NATIVE=0, and what
each kind of installation is told to do for the native core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import native
from core.doctor import OK, WARN
from helper.diagnose import DEB_LIBDIR, INSTALL_SH_LIBDIR, datapath_check

ROOT = Path(__file__).resolve().parents[2]


def test_the_core_this_process_chose_is_reported() -> None:
    check = datapath_check()
    assert check.id == "datapath" and check.title == "Data path"
    if native.module is not None:
        assert (check.status, check.todo) == (OK, "")
        assert check.found == f"native core ({native.module.__file__})"
    else:
        assert check.status == WARN
        assert check.found == f"pure Python (slower: {native.why_not})"


def test_a_helper_told_tunseal_native_0_says_so_and_how_to_undo_it() -> None:
    code = ("import json; from helper.diagnose import datapath_check; "
            "print(json.dumps(datapath_check().to_dict()))")
    env = dict(os.environ, TUNSEAL_NATIVE="0")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    check = json.loads(done.stdout)
    assert check["status"] == WARN
    assert check["found"] == "pure Python (slower: TUNSEAL_NATIVE=0)"
    assert "unset TUNSEAL_NATIVE" in check["todo"]


@pytest.mark.parametrize(("libdir", "told"), [
    (DEB_LIBDIR, "the tunseal package built for this machine's architecture"),
    (INSTALL_SH_LIBDIR, "run 'sudo bash installers/install.sh' again"),
    (ROOT, "'make native'"),
])
def test_each_installation_is_told_how_to_get_the_native_core(libdir: Path, told: str) -> None:
    check = datapath_check(None, "the native module is not built", libdir)
    assert check.status == WARN
    assert check.found == "pure Python (slower: the native module is not built)"
    assert told in check.todo
