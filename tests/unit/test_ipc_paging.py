"""The paged reads' arguments in the schema (core/ipc.py): ``status`` ``peers`` is a bool and
needs ``name``; ``peer_list`` ``after`` is a name like every other ``after`` (no path, nothing
long: a request stays small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.ipc import Request, RequestError
from helper.profilestore import ProfileStore
from helper.service import HELPER, Service


def _line(op: str, **args: object) -> bytes:
    return json.dumps({"v": 1, "id": 1, "op": op, "args": args}).encode()


def test_the_paging_arguments_are_accepted() -> None:
    assert Request.decode(_line("status", name="office", peers=True, after="hs0417")).args == {
        "name": "office", "peers": True, "after": "hs0417"}
    assert Request.decode(_line("peer_list", after="p01")).args == {"after": "p01"}


@pytest.mark.parametrize("line", [
    _line("status", name="office", peers="yes"),
    _line("status", name="office", peers=1),
    _line("peer_list", after="../etc/passwd"),
    _line("peer_list", after="x" * 200),
    _line("peer_list", after=7),
])
def test_bad_paging_arguments_are_refused(line: bytes) -> None:
    with pytest.raises(RequestError) as e:
        Request.decode(line)
    assert e.value.code == "bad_args"


def test_status_peers_without_a_name_is_refused(tmp_path: Path) -> None:
    service = Service(profiles=ProfileStore(tmp_path), keys=None, engine=None,  # type: ignore[arg-type]
                      notify=lambda _event, _data: None)
    with pytest.raises(RequestError) as e:
        service.handle(Request(1, "status", {"peers": True}), HELPER)
    assert e.value.code == "bad_args" and "name" in e.value.message
