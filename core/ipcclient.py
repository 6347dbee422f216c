"""A small synchronous client of the helper's control socket, for the CLI and the GUI.

    with Client() as client:
        client.call("connect", name="office")
        for event in client.subscribe():
            ...

A :class:`Client` is one connection and is not thread-safe: give each thread its own (the GUI
uses one for calls and one for its subscription). Stdlib-only, like :mod:`core.ipc`.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import grp
import os
import socket
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Final

from core.errors import HelperUnavailable, IPCError
from core.ipc import MAX_LINE, Event, Reply, Request, RequestError, decode_incoming

__all__ = [
    "DEFAULT_SOCKET",
    "Client",
    "all_pages",
    "all_statuses",
    "call",
    "gateway_peers",
    "list_all_profiles",
    "socket_path",
    "tunnel_status",
]

DEFAULT_SOCKET: Final = "/run/tunseal/helper.sock"
SOCKET_ENV: Final = "TUNSEAL_SOCKET"

NOT_RUNNING: Final = (
    "the Tunseal helper is not running: start it with 'systemctl start tunseal-helper' "
    "(or 'sudo tunseal-helper')"
)
NOT_ALLOWED: Final = (
    "you are not allowed to use the Tunseal helper: ask an administrator to add you to the "
    "{group!r} group, then log in again"
)
ROOT_ONLY: Final = (
    "you are not allowed to use the Tunseal helper: its socket is open to root only (the "
    "helper found no group to let in); ask an administrator to create the group it names in "
    "its log and restart it"
)
PAGES_MAX: Final = 10_000
"""Pages of a paged reply followed at most: a helper that never says "no more" is a bug,
and the client must not loop on it forever."""
CLOSED: Final = "the Tunseal helper closed the connection (did it stop or restart?)"


def socket_path(path: str | None = None) -> str:
    """``path``, else $TUNSEAL_SOCKET, else :data:`DEFAULT_SOCKET`."""
    return path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class Client:
    """One connection to the helper, opened on first use.

    ``timeout`` bounds each :meth:`call` (seconds, None = wait forever). Errors:
    :class:`~core.errors.HelperUnavailable` (code ``unavailable`` or ``forbidden``) when the
    helper cannot be reached or refuses this user; :class:`~core.ipc.RequestError` (an
    :class:`~core.errors.IPCError`) with the helper's code, message and details when a request
    fails."""

    def __init__(self, path: str | None = None, *, timeout: float | None = 30.0):
        self.path = socket_path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._events: collections.deque[Event] = collections.deque()
        self._next_id = 1
        self._closed = False
        """close() was called: a read that fails now ends quietly instead of raising."""

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise _unavailable(e, self.path) from None
        self._sock = sock
        self._closed = False
        self._buffer.clear()  # nothing from an earlier connection carries over
        self._events.clear()

    def close(self) -> None:
        """Close the connection. Safe from another thread: a blocked :meth:`events` or
        :meth:`next_event` then ends (returns None) instead of raising. A later :meth:`call`
        opens a new connection (without the subscription)."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # already disconnected: just close
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- requests -----------------------------------------------------------------------------

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result. Events that arrive meanwhile (after
        ``subscribe``) are kept for :meth:`events`."""
        request = Request(self._next_id, op, args)
        self._next_id += 1
        line = request.encode()  # validates op and args: a bad call fails here, not remotely
        self.connect()
        self._send(line)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline)
            if message is None and self._closed:
                raise HelperUnavailable(f"the connection closed during {op!r}",
                                        code="unavailable")
            if message is None:
                raise IPCError(
                    f"the helper did not answer {op!r} within {self.timeout} s", code="timeout"
                )
            if isinstance(message, Event):
                self._events.append(message)
            elif message.id in (request.id, None):
                return _result(message)
            # else: the late answer to an earlier request that timed out; skip it.

    def subscribe(self, timeout: float | None = None) -> Iterator[Event]:
        """Ask for events and iterate over them (see :meth:`events`)."""
        self.call("subscribe")
        return self.events(timeout)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events, as they arrive. With ``timeout``, the iteration ends after that many seconds
        without an event; without, it ends only when the connection fails (raising
        :class:`~core.errors.HelperUnavailable`) or is closed with :meth:`close`."""
        while True:
            event = self.next_event(timeout)
            if event is None:
                return
            yield event

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None if none arrives within ``timeout`` seconds (None = wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            message = self._receive(deadline)
            if message is None:
                return None
            if isinstance(message, Event):
                return message
            # A reply with no request waiting: a late answer; nothing wants it.
        return self._events.popleft()

    # --- framing ------------------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        sock = self._require()
        try:
            sock.sendall(line)
        except OSError as e:
            # The helper may have refused us and closed: its reply explains why.
            if self._buffer or self._pending_reply(sock):
                return
            self.close()
            raise _unavailable(e, self.path) from None

    def _pending_reply(self, sock: socket.socket) -> bool:
        try:
            sock.settimeout(0.5)
            data = sock.recv(MAX_LINE + 1)
        except OSError:
            return False
        self._buffer += data
        return bool(data)

    def _receive(self, deadline: float | None) -> Reply | Event | None:
        """The next message, or None at the deadline or once :meth:`close` was called."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                self.close()
                raise IPCError("the helper sent a message over 64 KiB", code="too_large")
            sock = self._sock
            if sock is None:
                self._gone(None)
                return None
            # At or past the deadline, one non-blocking read still takes what has arrived.
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                sock.settimeout(remaining)
                data = sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return None
            except OSError as e:
                self._gone(e)
                return None
            if not data:
                self._gone(None)
                return None
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return decode_incoming(line)

    def _gone(self, error: OSError | None) -> None:
        """The connection ended: quietly if we closed it, else HelperUnavailable."""
        if self._closed:
            return
        self.close()
        reason = CLOSED if error is None else f"{CLOSED}: {error.strerror or error}"
        raise HelperUnavailable(reason, code="unavailable")

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise HelperUnavailable(CLOSED, code="unavailable")
        return self._sock


def all_pages(client: Client, op: str, key: str, **fixed: Any) -> list[dict[str, Any]]:
    """Every entry of a paged operation (``list_profiles``, ``status`` without a name or with
    ``peers``, ``peer_list``): one reply holds at most 64 KiB, so the helper answers in pages,
    each naming in ``next`` where the following one starts. ``fixed``: the op's other
    arguments, the same on every page."""
    return _follow(client, op, key, fixed)[1]


def _follow(client: Client, op: str, key: str,
            fixed: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The first page, and every entry under ``key`` of all the pages."""
    entries: list[Any] = []
    args: dict[str, Any] = dict(fixed)
    first: dict[str, Any] | None = None
    for _ in range(PAGES_MAX):
        page = client.call(op, **args)
        first = page if first is None else first
        entries.extend(page.get(key, []))
        after = page.get("next")
        if not isinstance(after, str) or not after:
            return first, entries
        args = {**fixed, "after": after}
    raise IPCError(f"the helper sent more than {PAGES_MAX} pages for {op!r}", code="internal")


def tunnel_status(client: Client, name: str, *, peers: bool = False) -> dict[str, Any]:
    """The status of tunnel ``name``; with ``peers``, with every one of its peers (a
    gateway's status lists them only when it has few: core.status.PEERS_INLINE), following
    the pages."""
    if not peers:
        tunnels: list[dict[str, Any]] = client.call("status", name=name)["tunnels"]
        return tunnels[0]
    pages = all_pages(client, "status", "tunnels", name=name, peers=True)
    return {**pages[-1], "peers": [p for t in pages for p in t.get("peers", [])]}


def gateway_peers(client: Client) -> dict[str, Any]:
    """``peer_list`` with every peer, following its pages (the first carries the gateway's
    name, public key and open invitations)."""
    first, peers = _follow(client, "peer_list", "peers", {})
    return {**first, "peers": peers, "next": None}


def list_all_profiles(client: Client) -> list[dict[str, Any]]:
    """Every profile, following ``list_profiles``'s pages."""
    return all_pages(client, "list_profiles", "profiles")


def all_statuses(client: Client) -> list[dict[str, Any]]:
    """Every profile's and running tunnel's status, following ``status``'s pages."""
    return all_pages(client, "status", "tunnels")


def call(op: str, path: str | None = None, **args: Any) -> Any:
    """One request on a fresh connection."""
    with Client(path) as client:
        return client.call(op, **args)


def _result(reply: Reply) -> Any:
    try:
        return reply.raise_for_error()
    except RequestError as e:
        if e.code == "forbidden":
            raise HelperUnavailable(e.message, code="forbidden") from None
        raise


def _unavailable(e: OSError, path: str) -> HelperUnavailable:
    if e.errno in (errno.EACCES, errno.EPERM):
        return HelperUnavailable(f"{_not_allowed(path)} (socket {path})", code="forbidden")
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return HelperUnavailable(f"{NOT_RUNNING} (no helper at {path})", code="unavailable")
    return HelperUnavailable(
        f"cannot reach the Tunseal helper at {path}: {e.strerror or e}", code="unavailable"
    )


def _not_allowed(path: str) -> str:
    """The refusal, naming the group the helper really lets in: the socket file's group (the
    helper sets it to its --group, or root when that group does not exist)."""
    try:
        st = os.stat(path)
    except OSError:
        return NOT_ALLOWED.format(group="tunseal")  # cannot even look: the default group
    if not st.st_mode & 0o060:
        return ROOT_ONLY
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return NOT_ALLOWED.format(group=group)
