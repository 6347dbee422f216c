"""helper/service.py's handler table against the IPC schema (core/ipc.py), without a helper
process, a socket or root: every operation the schema allows has a handler that accepts exactly
its arguments, after the caller; only the reads skip the write lock."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from core.ipc import OPS, Request, RequestError
from helper.profilestore import ProfileStore
from helper.service import HELPER, Service

READS = {"ping", "list_profiles", "get_profile", "export_profile", "public_key", "status",
         "peer_list", "peer_show", "recent_log", "subscribe", "diagnose",
         "join"}  # join takes the lock itself, after its network exchange
AUTOCONNECT_OPS = {"network", "session_started", "trust", "untrust"}
"""Registered by helper/autoconnect.py (Service.add_handler) when the helper starts it."""


@pytest.fixture
def service(tmp_path: Path) -> Service:
    # The table is all that is tested here: the key store and engine are never reached.
    return Service(profiles=ProfileStore(tmp_path), keys=None, engine=None,  # type: ignore[arg-type]
                   notify=lambda _event, _data: None)


def test_every_handled_op_is_in_the_schema_and_only_subscribe_is_not_handled(
        service: Service) -> None:
    handled = set(service._handlers)
    assert handled <= set(OPS)
    # The control socket itself answers subscribe.
    assert set(OPS) - handled == {"subscribe"} | AUTOCONNECT_OPS


def test_each_handler_takes_the_caller_then_exactly_the_schemas_arguments(
        service: Service) -> None:
    for op, handler in service._handlers.items():
        params = list(inspect.signature(handler).parameters.values())
        assert params[0].name == "caller", op
        names = {p.name for p in params[1:]}
        assert names == set(OPS[op]), op
        for name, arg in OPS[op].items():
            has_default = inspect.signature(handler).parameters[name].default is not \
                inspect.Parameter.empty
            assert has_default == (not arg.required), (op, name)


def test_only_reads_skip_the_lock(service: Service) -> None:
    assert service._mutating == frozenset(service._handlers) - READS


def test_an_op_without_handler_is_refused(service: Service) -> None:
    with pytest.raises(RequestError) as e:
        service.handle(Request(id=1, op="subscribe"), HELPER)
    assert e.value.code == "unknown_op"


def test_a_read_runs_through_the_table(service: Service) -> None:
    assert service.handle(Request(id=1, op="list_profiles"), HELPER)["profiles"] == []
