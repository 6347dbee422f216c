"""The control-socket schema: every request, reply and event the helper and its clients exchange.

Both sides import this module, so the boundary between the unprivileged clients (CLI, GUI) and
the privileged helper is this file. docs/IPC.md is its prose description.

Framing: one JSON object per line, UTF-8, at most :data:`MAX_LINE` bytes before the newline.

- request ``{"v":1,"id":7,"op":"connect","args":{"name":"office"}}``
- reply ``{"v":1,"id":7,"ok":true,"result":{...}}`` or
  ``{"v":1,"id":7,"ok":false,"error":{"code":"not_found","message":"..."}}``
- event ``{"v":1,"event":"status","data":{...}}`` (only after ``subscribe``)

Decoding never trusts its input: anything malformed raises :class:`~core.errors.IPCError` whose
``code`` is one of :data:`ERROR_CODES`, and nothing else escapes (``tests/unit/test_ipc.py``
fuzzes that). This module is stdlib-only so the client runs on any Python 3.11.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from core import fields
from core.errors import IPCError

__all__ = [
    "ERROR_CODES",
    "EVENTS",
    "MAX_LINE",
    "OPS",
    "VERSION",
    "ErrorInfo",
    "Event",
    "Problem",
    "Reply",
    "Request",
    "RequestError",
    "decode_incoming",
]

VERSION: Final = 1
"""The ``v`` of every message. A peer refuses any other value (``bad_version``); see the
versioning rule in docs/IPC.md."""

MAX_LINE: Final = 64 * 1024
"""Bytes per message, not counting the newline. Bounds what a client can make the helper buffer."""

MAX_ID: Final = (1 << 53) - 1
"""Request ids are non-negative integers that survive a round trip through a JavaScript double."""

ERROR_CODES: Final = (
    "bad_json",  # not UTF-8 JSON
    "too_large",  # a line longer than MAX_LINE; the helper then closes the connection
    "bad_version",  # "v" is not VERSION
    "bad_request",  # JSON, but not shaped like a request (id, op, args missing or ill-typed)
    "unknown_op",
    "bad_args",  # an argument missing, unknown or of the wrong type
    "invalid_profile",  # error.details lists each problem as {"field", "message"}
    "not_found",  # no such profile or key
    "exists",  # add/import of a profile whose name is taken
    "keyring",  # the Secret Service failed
    "engine",  # the tunnel engine failed
    "storage",  # the helper could not read or write its profile directory
    "forbidden",  # the connecting user is not root and not in the helper's group
    "denied",  # allowed to use the helper, but not to do this (another user's profile, a port
    # below 1024 without root, a gateway change without root); the message says who may
    "busy",  # a per-user limit is reached (control connections); the message names it
    "refused",  # the helper will not do it (e.g. lockdown 'always' with no usable profile)
    "unreachable",  # join: no answer from the invitation's gateway
    "internal",  # a bug in the helper; its log has the traceback
)

EVENTS: Final = ("status", "log", "profiles", "lockdown")



@dataclass(frozen=True, slots=True)
class _Arg:
    kind: type
    required: bool = True


_NAME = _Arg(str)
OPS: Final[Mapping[str, Mapping[str, _Arg]]] = {
    "ping": {},
    "subscribe": {},
    "list_profiles": {"after": _Arg(str, required=False)},
    "get_profile": {"name": _NAME},
    "add_profile": {"profile": _Arg(dict)},
    "update_profile": {"profile": _Arg(dict)},
    "remove_profile": {"name": _NAME},
    "import_profile": {"text": _Arg(str), "replace": _Arg(bool, required=False)},
    "export_profile": {"name": _NAME, "with_secrets": _Arg(bool, required=False)},
    "genkey": {"name": _NAME},
    "genpsk": {"name": _NAME},
    "public_key": {"name": _NAME},
    "set_peer_key": {"name": _NAME, "public_key": _Arg(str)},
    "connect": {"name": _NAME},
    "disconnect": {"name": _NAME},
    "status": {"name": _Arg(str, required=False), "after": _Arg(str, required=False),
               "peers": _Arg(bool, required=False)},
    "recent_log": {"name": _Arg(str, required=False)},
    "peer_add": {"name": _NAME, "allowed_ips": _Arg(list, required=False),
                 "public_key": _Arg(str, required=False)},
    "peer_invite": {"name": _NAME, "allowed_ips": _Arg(list, required=False),
                    "expires": _Arg(str, required=False)},
    "peer_revoke": {"name": _NAME},
    "join": {"invitation": _Arg(str), "name": _Arg(str, required=False)},
    "peer_remove": {"name": _NAME},
    "peer_list": {"after": _Arg(str, required=False)},
    "peer_show": {"name": _NAME},
    "lockdown": {"action": _Arg(str), "allow_lan": _Arg(bool, required=False)},
    # autoconnect (helper/autoconnect.py, docs/PROFILE.md "Connecting by itself")
    "network": {},
    "trust": {"name": _NAME, "entry": _Arg(str, required=False),
              "current": _Arg(bool, required=False)},
    "untrust": {"name": _NAME, "entry": _Arg(str, required=False),
                "current": _Arg(bool, required=False)},
    "session_started": {},
    "diagnose": {"name": _Arg(str, required=False)},  # tunseal doctor (docs/DOCTOR.md)
}
"""Every operation and its arguments. Results are described in docs/IPC.md."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of an ``invalid_profile`` error: its field (``section.key``) and what is
    wrong with it."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The ``error`` object of a failed reply."""

    code: str
    message: str
    details: tuple[Problem, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = [{"field": p.field, "message": p.message} for p in self.details]
        return out


class RequestError(IPCError):
    """A request failed: raised by the helper's handlers and turned into an error reply, and
    raised by the client when a reply says ``"ok": false``. ``details`` lists the problems of an
    ``invalid_profile`` error; ``request_id`` is the id of the request when it is known."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        details: tuple[Problem, ...] = (),
        request_id: int | None = None,
    ):
        super().__init__(message, code=code)
        self.message = message
        self.details = details
        self.request_id = request_id

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(self.code, self.message, self.details)


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: ``op`` is one of :data:`OPS` and ``args`` match its arguments."""

    id: int
    op: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        _check_request(self.id, self.op, self.args)
        return _encode({"v": VERSION, "id": self.id, "op": self.op, "args": dict(self.args)})

    @classmethod
    def decode(cls, line: bytes) -> Request:
        """Parse and validate one request line. Raises :class:`RequestError` (with
        ``request_id`` set once the id is known) for anything the schema does not allow."""
        obj = _decode_object(line)
        request_id = obj.get("id")
        if not _is_id(request_id):
            request_id = None
        try:
            _check_version(obj)
            _check_keys(obj, required=("v", "id", "op"), optional=("args",), what="a request")
            if request_id is None:
                raise RequestError("id must be a non-negative integer", code="bad_request")
            op = obj["op"]
            args = obj.get("args", {})
            _check_request(request_id, op, args)
        except RequestError as e:
            e.request_id = request_id
            raise
        return cls(request_id, op, args)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the request with the same ``id``: ``result`` when ``ok``, else ``error``.
    ``id`` is None only when the request's id could not be read."""

    id: int | None
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None

    @classmethod
    def success(cls, request_id: int, result: Any) -> Reply:
        return cls(request_id, True, result=result)

    @classmethod
    def failure(cls, request_id: int | None, error: RequestError | ErrorInfo) -> Reply:
        info = error.info if isinstance(error, RequestError) else error
        return cls(request_id, False, error=info)

    def encode(self) -> bytes:
        msg: dict[str, Any] = {"v": VERSION, "id": self.id, "ok": self.ok}
        if self.ok:
            msg["result"] = self.result
        else:
            if self.error is None:
                raise IPCError("a failed reply needs an error", code="bad_request")
            msg["error"] = self.error.to_dict()
        return _encode(msg)

    @classmethod
    def decode(cls, line: bytes) -> Reply:
        message = decode_incoming(line)
        if not isinstance(message, Reply):
            raise RequestError("expected a reply, got an event", code="bad_request")
        return message

    def raise_for_error(self) -> Any:
        """The result, or :class:`RequestError` with the reply's code, message and details."""
        if self.ok:
            return self.result
        assert self.error is not None  # decode and failure() guarantee it
        raise RequestError(
            self.error.message,
            code=self.error.code,
            details=self.error.details,
            request_id=self.id,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """Something happened in the helper; sent to subscribed connections only."""

    event: str
    data: Mapping[str, Any]

    def encode(self) -> bytes:
        if self.event not in EVENTS:
            raise IPCError(f"unknown event {self.event!r}", code="bad_request")
        return _encode({"v": VERSION, "event": self.event, "data": dict(self.data)})

    @classmethod
    def decode(cls, line: bytes) -> Event:
        message = decode_incoming(line)
        if not isinstance(message, Event):
            raise RequestError("expected an event, got a reply", code="bad_request")
        return message


def decode_incoming(line: bytes) -> Reply | Event:
    """Parse one line a client receives from the helper: a reply or an event."""
    obj = _decode_object(line)
    _check_version(obj)
    if "event" in obj:
        _check_keys(obj, required=("v", "event", "data"), optional=None, what="an event")
        name, data = obj["event"], obj["data"]
        if not isinstance(name, str) or not isinstance(data, dict):
            raise RequestError("an event needs a string name and an object", code="bad_request")
        return Event(name, data)
    if obj.get("ok") is True:
        _check_keys(obj, required=("v", "id", "ok", "result"), optional=None, what="a reply")
        if not _is_id(obj["id"]):
            raise RequestError("a successful reply needs a request id", code="bad_request")
        return Reply(obj["id"], True, result=obj["result"])
    _check_keys(obj, required=("v", "id", "ok", "error"), optional=None, what="a reply")
    if obj["ok"] is not False or not (obj["id"] is None or _is_id(obj["id"])):
        raise RequestError("a reply needs ok true/false and an integer or null id",
                           code="bad_request")
    return Reply(obj["id"], False, error=_error_info(obj["error"]))


# --- internals ----------------------------------------------------------------------------------


def _encode(msg: dict[str, Any]) -> bytes:
    # ensure_ascii: any str (even one holding lone surrogates) encodes, and the line stays ASCII.
    try:
        text = json.dumps(msg, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise IPCError(f"message cannot be encoded as JSON: {e}", code="bad_request") from None
    data = text.encode("ascii")
    if len(data) > MAX_LINE:
        raise IPCError(
            f"message is {len(data)} bytes; the limit is {MAX_LINE} (64 KiB)", code="too_large"
        )
    return data + b"\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON, but no reply could carry it back
        raise ValueError(f"{text[:20]} is out of range")
    return value


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys, refusing duplicates: with ``{"op":"ping","op":"status"}`` the client
    and the helper could disagree about which one is meant."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {_short(key)}; a key may appear once per object")
        obj[key] = value
    return obj


def _decode_object(line: bytes) -> dict[str, Any]:
    if not isinstance(line, bytes | bytearray):
        raise RequestError("a message must be bytes", code="bad_json")
    if line.endswith(b"\n"):
        line = line[:-1]
    if len(line) > MAX_LINE:
        raise RequestError(
            f"message is longer than {MAX_LINE} bytes (64 KiB)", code="too_large"
        )
    try:
        text = bytes(line).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant,
                         parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as e:
        msg = f"not UTF-8 (invalid byte at offset {e.start})"
        raise RequestError(msg, code="bad_json") from None
    except RecursionError:
        raise RequestError("not JSON: nested too deeply", code="bad_json") from None
    except _DuplicateKey as e:
        raise RequestError(str(e), code="bad_json") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, int() digit limit
        raise RequestError(f"not JSON: {e}", code="bad_json") from None
    if not isinstance(obj, dict):
        raise RequestError("a message must be a JSON object", code="bad_request")
    return obj


def _check_version(obj: Mapping[str, Any]) -> None:
    v = obj.get("v")
    if type(v) is not int or v != VERSION:
        shown = repr(v) if type(v) is int else "missing or not an integer"
        raise RequestError(
            f"protocol version {shown[:40]} is not supported; this side speaks version {VERSION}",
            code="bad_version",
        )


def _check_keys(
    obj: Mapping[str, Any],
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] | None,
    what: str,
) -> None:
    """Required keys must be there; with ``optional=None`` any other key is ignored (a client
    accepts what a newer helper adds), otherwise only the optional ones may appear."""
    missing = [k for k in required if k not in obj]
    if missing:
        raise RequestError(f"{what} needs {', '.join(missing)}", code="bad_request")
    if optional is None:
        return
    unknown = sorted(k for k in obj if k not in required and k not in optional)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise RequestError(f"{what} has unknown key(s) {shown}", code="bad_request")


def _check_request(request_id: object, op: object, args: object) -> None:
    if not _is_id(request_id):
        raise RequestError("id must be a non-negative integer", code="bad_request")
    if not isinstance(op, str):
        raise RequestError("op must be a string", code="bad_request")
    spec = OPS.get(op)
    if spec is None:
        shown = repr(op) if len(op) <= 40 else repr(op[:37]) + "..."
        raise RequestError(
            f"unknown operation {shown}; known: {', '.join(sorted(OPS))}", code="unknown_op"
        )
    if not isinstance(args, Mapping):
        raise RequestError(f"{op}: args must be an object", code="bad_args")
    _check_args(op, spec, args)


def _check_args(op: str, spec: Mapping[str, _Arg], args: Mapping[Any, Any]) -> None:
    for key in args:
        if key not in spec:
            known = ", ".join(spec) or "none"
            shown = repr(key[:40]) if isinstance(key, str) else "a non-string key"
            raise RequestError(f"{op}: unknown argument {shown} (arguments: {known})",
                               code="bad_args")
    for key, arg in spec.items():
        if key not in args:
            if arg.required:
                raise RequestError(f"{op}: missing argument {key!r}", code="bad_args")
            continue
        value = args[key]
        # bool is an int and must not pass as one (nor the other way round).
        if type(value) is not arg.kind:
            raise RequestError(
                f"{op}: argument {key!r} must be {_KIND_NAMES[arg.kind]}", code="bad_args"
            )
        if isinstance(value, list):
            if len(value) > 256 or not all(isinstance(v, str) and len(v) <= 64 for v in value):
                raise RequestError(f"{op}: argument {key!r} must be a list of at most 256 "
                                   "short strings", code="bad_args")
            continue
        if not isinstance(value, str):
            continue
        # Names are checked here too, so that no request can name a path.
        if key in ("name", "after") and not fields.is_name(value):
            raise RequestError(
                f"{op}: {_short(value)} is not a profile name (1-32 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit)",
                code="bad_args",
            )
        if key == "public_key" and not fields.is_public_key_text(value):
            raise RequestError(
                f"{op}: {_short(value)} is not a public key (44 characters of base64)",
                code="bad_args",
            )


_KIND_NAMES = {str: "a string", bool: "true or false", dict: "an object", list: "a list"}


def _short(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."


def _is_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def _error_info(error: object) -> ErrorInfo:
    if not isinstance(error, dict):
        raise RequestError("a reply's error must be an object", code="bad_request")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise RequestError("a reply's error needs a string code and message", code="bad_request")
    details: list[Problem] = []
    raw = error.get("details", [])
    if not isinstance(raw, list):
        raise RequestError("a reply's error details must be a list", code="bad_request")
    for item in raw:
        if not isinstance(item, dict):
            raise RequestError("each error detail must be an object", code="bad_request")
        fld, msg = item.get("field"), item.get("message")
        if not isinstance(fld, str) or not isinstance(msg, str):
            raise RequestError("an error detail needs a string field and message",
                               code="bad_request")
        details.append(Problem(fld, msg))
    return ErrorInfo(code, message, tuple(details))
