"""core/ipc: the control-socket schema. Round trips, every refusal code, and a fuzz of decoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import IPCError
from core.ipc import (
    ERROR_CODES,
    MAX_LINE,
    OPS,
    ErrorInfo,
    Event,
    Problem,
    Reply,
    Request,
    RequestError,
    decode_incoming,
)

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def refused(raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        Request.decode(raw)
    assert info.value.code in ERROR_CODES
    return info.value


# --- round trips ----------------------------------------------------------------------------------

VALID_ARGS: dict[str, dict[str, Any]] = {
    "ping": {},
    "subscribe": {},
    "list_profiles": {"after": "office"},
    "get_profile": {"name": "office"},
    "add_profile": {"profile": {"format": 1, "tunnel": {"name": "office"}}},
    "update_profile": {"profile": {"format": 1}},
    "remove_profile": {"name": "office"},
    "import_profile": {"text": "format = 1\n", "replace": True},
    "export_profile": {"name": "office", "with_secrets": False},
    "genkey": {"name": "office"},
    "genpsk": {"name": "o.f-f_1"},
    "public_key": {"name": "office"},
    "set_peer_key": {"name": "office", "public_key": KEY},
    "connect": {"name": "office"},
    "disconnect": {"name": "office"},
    "status": {},
    "recent_log": {"name": "office"},
    "peer_add": {"name": "alice", "allowed_ips": ["10.213.0.7/32"]},
    "peer_remove": {"name": "alice"},
    "peer_list": {},
    "peer_show": {"name": "alice"},
    "peer_invite": {"name": "bob", "allowed_ips": ["10.213.0.8/32"], "expires": "24h"},
    "peer_revoke": {"name": "bob"},
    "join": {"invitation": "tunseal1:AAAA", "name": "office"},
    "lockdown": {"action": "on", "allow_lan": True},
    "network": {},
    "trust": {"name": "office", "entry": "gateway:52:54:00:12:34:56@office.example"},
    "untrust": {"name": "office", "current": True},
    "session_started": {},
    "diagnose": {"name": "office"},
}


def test_every_op_has_a_valid_example() -> None:
    assert set(VALID_ARGS) == set(OPS)


@pytest.mark.parametrize("op", sorted(VALID_ARGS))
def test_request_round_trip(op: str) -> None:
    request = Request(42, op, VALID_ARGS[op])
    raw = request.encode()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {"v": 1, "id": 42, "op": op, "args": VALID_ARGS[op]}
    assert Request.decode(raw) == request


def test_args_may_be_omitted_when_none_are_required() -> None:
    assert Request.decode(line({"v": 1, "id": 1, "op": "ping"})) == Request(1, "ping", {})


def test_status_with_a_name() -> None:
    assert Request.decode(Request(3, "status", {"name": "x"}).encode()).args == {"name": "x"}


def test_success_reply_round_trip() -> None:
    reply = Reply.success(7, {"profiles": [], "n": 1.5, "s": "é"})
    raw = reply.encode()
    assert raw.isascii()
    assert decode_incoming(raw) == reply
    assert Reply.decode(raw).raise_for_error() == {"profiles": [], "n": 1.5, "s": "é"}


def test_failure_reply_round_trip_with_details() -> None:
    error = RequestError(
        "tunnel.mtu: too small",
        code="invalid_profile",
        details=(Problem("tunnel.mtu", "too small"), Problem("", "general")),
    )
    raw = Reply.failure(9, error).encode()
    assert json.loads(raw)["error"] == {
        "code": "invalid_profile",
        "message": "tunnel.mtu: too small",
        "details": [{"field": "tunnel.mtu", "message": "too small"},
                    {"field": "", "message": "general"}],
    }
    reply = Reply.decode(raw)
    assert reply == Reply(9, False, error=error.info)
    with pytest.raises(RequestError) as info:
        reply.raise_for_error()
    assert (info.value.code, info.value.details, info.value.request_id) == (
        "invalid_profile", error.details, 9)


def test_failure_reply_without_an_id() -> None:
    raw = Reply.failure(None, ErrorInfo("bad_json", "not JSON")).encode()
    assert json.loads(raw) == {"v": 1, "id": None, "ok": False,
                               "error": {"code": "bad_json", "message": "not JSON"}}
    assert Reply.decode(raw).id is None


def test_event_round_trip() -> None:
    event = Event("profiles", {"change": "added", "name": "office"})
    raw = event.encode()
    assert json.loads(raw) == {"v": 1, "event": "profiles",
                               "data": {"change": "added", "name": "office"}}
    assert Event.decode(raw) == event
    with pytest.raises(IPCError):
        Event("nonsense", {}).encode()


def test_a_client_ignores_keys_a_newer_helper_adds() -> None:
    raw = line({"v": 1, "id": 1, "ok": True, "result": {}, "took_ms": 3})
    assert decode_incoming(raw) == Reply(1, True, result={})


# --- refusals, each with its code -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe{}\n", "bad_json"),
        (b"{not json}\n", "bad_json"),
        (b'{"v":1,"id":1,"op":"ping","args":{"x":NaN}}\n', "bad_json"),
        (b"[" * 100_000 + b"\n", "too_large"),
        (b"[" * 60_000 + b"\n", "bad_json"),  # nested too deeply
        (b"1" * 5000 + b"\n", "bad_json"),  # more digits than int() converts
        (b'{"v":1,"id":1,"op":"add_profile","args":{"profile":{"x":1e400}}}', "bad_json"),
        (b"[1, 2]\n", "bad_request"),
        (line({"id": 1, "op": "ping"}), "bad_version"),
        (line({"v": 2, "id": 1, "op": "ping"}), "bad_version"),
        (line({"v": True, "id": 1, "op": "ping"}), "bad_version"),
        (line({"v": 1, "op": "ping"}), "bad_request"),
        (line({"v": 1, "id": -1, "op": "ping"}), "bad_request"),
        (line({"v": 1, "id": True, "op": "ping"}), "bad_request"),
        (line({"v": 1, "id": 1.0, "op": "ping"}), "bad_request"),
        (line({"v": 1, "id": 1, "op": "ping", "extra": 1}), "bad_request"),
        (line({"v": 1, "id": 1, "op": 5}), "bad_request"),
        (line({"v": 1, "id": 1, "op": "format_disk"}), "unknown_op"),
        (line({"v": 1, "id": 1, "op": "ping", "args": []}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "ping", "args": {"x": 1}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "connect", "args": {}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "connect", "args": {"name": 3}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "connect", "args": {"name": "../etc/x"}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "connect", "args": {"name": ""}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "export_profile",
               "args": {"name": "a", "with_secrets": 1}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "add_profile", "args": {"profile": "text"}}), "bad_args"),
        (line({"v": 1, "id": 1, "op": "set_peer_key",
               "args": {"name": "a", "public_key": "short"}}), "bad_args"),
    ],
)
def test_refusals(raw: bytes, code: str) -> None:
    assert refused(raw).code == code


def test_refusal_keeps_the_request_id_when_it_is_known() -> None:
    assert refused(line({"v": 1, "id": 5, "op": "nope"})).request_id == 5
    assert refused(line({"v": 1, "id": 5, "op": "connect"})).request_id == 5
    assert refused(b"garbage").request_id is None


def test_line_limit_is_exact() -> None:
    pad = MAX_LINE - len(line({"v": 1, "id": 1, "op": "import_profile",
                               "args": {"text": ""}})) + 1
    fits = line({"v": 1, "id": 1, "op": "import_profile", "args": {"text": "x" * pad}})
    assert len(fits) == MAX_LINE + 1  # the newline is not counted
    assert Request.decode(fits).args["text"] == "x" * pad
    too_long = line({"v": 1, "id": 1, "op": "import_profile", "args": {"text": "x" * (pad + 1)}})
    assert refused(too_long).code == "too_large"


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(IPCError) as info:
        Request(1, "import_profile", {"text": "x" * MAX_LINE}).encode()
    assert info.value.code == "too_large"
    with pytest.raises(RequestError) as info:
        Request(1, "connect", {}).encode()
    assert info.value.code == "bad_args"
    with pytest.raises(RequestError) as info:
        Request(1, "reboot", {}).encode()
    assert info.value.code == "unknown_op"


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 1, "id": 1, "ok": True},
        {"v": 1, "id": None, "ok": True, "result": 1},
        {"v": 1, "id": 1, "ok": False, "error": "bad"},
        {"v": 1, "id": 1, "ok": False, "error": {"code": 1, "message": "m"}},
        {"v": 1, "id": 1, "ok": False, "error": {"code": "c", "message": "m", "details": [1]}},
        {"v": 1, "id": 1, "ok": "yes", "error": {"code": "c", "message": "m"}},
        {"v": 1, "event": "status", "data": []},
        {"v": 9, "event": "status", "data": {}},
    ],
)
def test_malformed_incoming_messages(obj: dict[str, Any]) -> None:
    with pytest.raises(RequestError):
        decode_incoming(line(obj))


# --- fuzz: arbitrary bytes never raise anything but IPCError --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), json_values),
        "id": st.one_of(st.integers(min_value=-2, max_value=2**60), json_values),
        "op": st.one_of(st.sampled_from(sorted(OPS)), json_values),
        "args": st.one_of(
            st.dictionaries(st.sampled_from(["name", "profile", "text", "with_secrets",
                                             "public_key", "replace", "x"]), json_values),
            json_values,
        ),
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_bytes(raw: bytes) -> None:
    for decode in (Request.decode, decode_incoming):
        try:
            decode(raw)
        except IPCError as e:
            assert e.code in ERROR_CODES


@settings(max_examples=400, deadline=None)
@given(request_like)
def test_fuzz_request_shaped(obj: dict[str, Any]) -> None:
    try:
        request = Request.decode(line(obj))
    except IPCError as e:
        assert e.code in ERROR_CODES
    else:
        assert request.op in OPS
        assert Request.decode(request.encode()) == request


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_incoming(obj: Any) -> None:
    try:
        decode_incoming(line(obj))
    except IPCError as e:
        assert e.code in ERROR_CODES


# --- finding 10: duplicate keys -----------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b'{"v":1,"id":1,"op":"ping","op":"status"}\n',
    b'{"v":1,"v":1,"id":1,"op":"ping"}\n',
    b'{"v":1,"id":1,"op":"connect","args":{"name":"a","name":"b"}}\n',
    b'{"v":1,"id":1,"op":"add_profile","args":{"profile":{"tunnel":{"name":"a","name":"b"}}}}\n',
])
def test_finding10_duplicate_json_keys_are_refused(raw: bytes) -> None:
    """{"op":"ping","op":"status"} used to run status: the last key won, so what a client (or a
    log, or a filter in between) read as one request was another to the helper."""
    error = refused(raw)
    assert error.code == "bad_json"
    assert "duplicate key" in error.message


def test_finding10_a_reply_with_duplicate_keys_is_refused_too() -> None:
    with pytest.raises(RequestError) as info:
        decode_incoming(b'{"v":1,"id":1,"ok":true,"ok":false,"result":{}}')
    assert info.value.code == "bad_json"


def test_list_profiles_after_must_be_a_name() -> None:
    assert refused(line({"v": 1, "id": 1, "op": "list_profiles",
                         "args": {"after": "../x"}})).code == "bad_args"
