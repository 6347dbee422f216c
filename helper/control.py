"""The helper's control socket: a Unix stream socket speaking the :mod:`core.ipc` schema.

Who may connect is decided twice: the socket file is 0660 and owned by the configured group (0600
root-only when that group does not exist), and each connection's SO_PEERCRED is checked before a
single byte is read from it: root or a member of the group may act; anyone else gets one
``forbidden`` error and is disconnected.

Each connection is served by its own task; requests on one connection are answered in order, and
the handlers run in worker threads so a slow keyring or engine call never stalls other clients.
A user other than root may hold at most :data:`CONNECTIONS_PER_UID` connections at once; one
more gets a ``busy`` error and is disconnected.

Events are broadcast to subscribed connections through a bounded queue per subscriber, whose
socket buffer is kept small: a subscriber that stops reading until its queue is full is
disconnected (counted and logged), and what was queued for it is freed; nobody else waits for it.
It may subscribe again and ask for the current state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from core.errors import IPCError
from core.ipc import MAX_LINE, Event, Reply, Request, RequestError
from helper.service import Caller, Service

log = logging.getLogger(__name__)

QUEUE_LIMIT: Final = 256
"""Events queued for a subscriber that is not reading before it is disconnected."""
WRITE_BUFFER_HIGH: Final = 16 * 1024
"""Bytes a subscriber's transport may hold before its pump waits: the queue holds references
to lines shared by all subscribers, but a transport buffer is a copy per connection."""
CONNECTIONS_PER_UID: Final = 16
"""Open connections one user (other than root) may have: the GUI needs two, the CLI one."""
LOG_MESSAGE_LIMIT: Final = 4096
"""Characters of a log message forwarded as an event (keeps every event far below MAX_LINE)."""
REFUSAL_WRITE_TIMEOUT: Final = 2.0

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
TRIM_DELAY: Final = 1.0
"""Seconds after the last dropped subscriber before the freed heap is handed back."""


class ControlServer:
    """Serves ``service`` on the Unix socket at ``path``. ``group`` names the group whose members
    may use the helper (None or a missing group: root only)."""

    def __init__(self, *, path: Path, group: str | None, service: Service,
                 queue_limit: int = QUEUE_LIMIT, connections_per_uid: int = CONNECTIONS_PER_UID):
        self.path = path
        self.group = group
        self._service = service
        self._queue_limit = queue_limit
        self._connections_per_uid = connections_per_uid
        self._connections: collections.Counter[int] = collections.Counter()
        self.dropped_subscribers = 0
        """Subscribers disconnected because they did not read their events."""
        self._trim: asyncio.TimerHandle | None = None
        self._gid: int | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[_Subscriber] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inode: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gid = _group_id(self.group)
        sock = self._bind()
        self._server = await asyncio.start_unix_server(self._accept, sock=sock, limit=MAX_LINE)
        log.info("listening on %s (%s)", self.path, self._who_may_connect())

    async def close(self) -> None:
        """Stop accepting, disconnect every client and remove the socket file."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._remove_socket_file()
        self._loop = None

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a umask that leaves no moment at which others could connect.
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(self.path))
        finally:
            os.umask(old)
        if self._gid is not None:
            os.chown(self.path, 0, self._gid)
            os.chmod(self.path, 0o660)
        self._inode = os.stat(self.path).st_ino
        sock.setblocking(False)
        return sock

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise IPCError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)  # left behind by a helper that died
            return
        finally:
            probe.close()
        raise IPCError(f"another helper is already listening on {self.path}")

    def _remove_socket_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _who_may_connect(self) -> str:
        if self._gid is None:
            return "root only, mode 0600"
        return f"root and group {self.group!r}, mode 0660"

    # --- events ---------------------------------------------------------------------------------

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every subscriber. Callable from any thread; never blocks."""
        loop = self._loop
        if loop is None or not self._subscribers:
            return
        try:
            line = Event(event, data).encode()  # a snapshot, taken in the caller's thread
        except IPCError:
            return  # cannot be encoded (oversize): nobody can receive it
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: shutting down
            loop.call_soon_threadsafe(self._broadcast, line)

    def _broadcast(self, line: bytes) -> None:
        for subscriber in list(self._subscribers):  # offer() may drop one
            subscriber.offer(line)

    def log_handler(self, level: int = logging.INFO) -> logging.Handler:
        """A handler that forwards log records to subscribers as ``log`` events."""
        return _EventLogHandler(self, level)

    # --- connections ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        subscription: list[_Subscriber] = []  # filled by _serve, emptied here whatever happens
        counted: int | None = None
        try:
            pid, uid, gid = _peer_credentials(writer)
            if not await asyncio.to_thread(self._allowed, uid, gid):
                await self._refuse(writer, pid, uid)
                return
            if uid != 0 and self._connections[uid] >= self._connections_per_uid:
                await self._refuse_busy(writer, pid, uid)
                return
            self._connections[uid] += 1
            counted = uid
            log.debug("client connected: uid %d pid %d", uid, pid)
            await self._serve(reader, writer, Caller(uid=uid, pid=pid), subscription)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            if counted is not None:
                self._connections[counted] -= 1
                if self._connections[counted] <= 0:
                    del self._connections[counted]
            for subscriber in subscription:
                self._unsubscribe(subscriber)
            writer.close()
            self._tasks.discard(task)

    def _subscribe(self, writer: asyncio.StreamWriter, caller: Caller) -> _Subscriber:
        subscriber = _Subscriber(writer, caller, self._queue_limit, self._drop)
        self._subscribers.add(subscriber)
        return subscriber

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)
        subscriber.stop()

    def _drop(self, subscriber: _Subscriber) -> None:
        """``subscriber`` did not read until its queue filled: disconnect it (its task then
        ends and unsubscribes) and free what was queued for it."""
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        missed = subscriber.stop()
        self.dropped_subscribers += 1
        log.warning("disconnected a subscriber (uid %d, pid %d) that stopped reading: it missed "
                    "%d events (its queue holds %d); %d dropped so far", subscriber.caller.uid,
                    subscriber.caller.pid, missed, self._queue_limit, self.dropped_subscribers)
        if self._loop is not None:
            if self._trim is not None:
                self._trim.cancel()
            self._trim = self._loop.call_later(TRIM_DELAY, _release_free_memory)

    def _allowed(self, uid: int, gid: int) -> bool:
        if uid == 0:
            return True
        if self._gid is None:
            return False
        if gid == self._gid:
            return True
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return False
        return self._gid in os.getgrouplist(user.pw_name, user.pw_gid)

    async def _refuse(self, writer: asyncio.StreamWriter, pid: int, uid: int) -> None:
        log.warning("refused uid %d (pid %d): not root and not in group %r", uid, pid, self.group)
        group = self.group if self._gid is not None else "root"
        message = (
            f"you are not allowed to use the Tunseal helper: uid {uid} is not in the {group!r} "
            "group; ask an administrator to add you to it, then log in again"
        )
        writer.write(Reply.failure(None, RequestError(message, code="forbidden")).encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.drain(), REFUSAL_WRITE_TIMEOUT)

    async def _refuse_busy(self, writer: asyncio.StreamWriter, pid: int, uid: int) -> None:
        log.warning("refused uid %d (pid %d): it already has %d connections", uid, pid,
                    self._connections_per_uid)
        message = (
            f"uid {uid} already has {self._connections_per_uid} connections to the Tunseal "
            "helper, the most one user may have; close other tunseal commands or windows of "
            "yours, then try again"
        )
        writer.write(Reply.failure(None, RequestError(message, code="busy")).encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.drain(), REFUSAL_WRITE_TIMEOUT)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
        subscription: list[_Subscriber],
    ) -> None:
        """Answer requests until the client closes. A ``subscribe`` adds the connection's
        subscriber to ``subscription``."""
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                error = RequestError(
                    f"message longer than {MAX_LINE} bytes (64 KiB); closing the connection",
                    code="too_large",
                )
                await _send(writer, Reply.failure(None, error).encode())
                return
            except asyncio.IncompleteReadError:
                return  # EOF (a partial last line is ignored)
            if not line.strip():
                continue
            try:
                request = Request.decode(line)
            except RequestError as e:
                await _send(writer, Reply.failure(e.request_id, e).encode())
                continue
            if request.op == "subscribe":
                if not subscription:
                    subscription.append(self._subscribe(writer, caller))
                await _send(writer, Reply.success(request.id, {}).encode())
                continue
            await _send(writer, await self._answer(request, caller))

    async def _answer(self, request: Request, caller: Caller) -> bytes:
        try:
            result = await asyncio.to_thread(self._service.handle, request, caller)
            return Reply.success(request.id, result).encode()
        except RequestError as e:
            return Reply.failure(request.id, e).encode()
        except IPCError as e:  # the result does not fit in a message
            return Reply.failure(request.id, RequestError(str(e), code=e.code)).encode()
        except Exception:
            log.exception("request %r failed", request.op)
            error = RequestError(
                f"{request.op} failed inside the helper (a bug); its log has the details",
                code="internal",
            )
            return Reply.failure(request.id, error).encode()


async def _send(writer: asyncio.StreamWriter, line: bytes) -> None:
    writer.write(line)
    await writer.drain()


class _Subscriber:
    """One subscribed connection's outgoing events: a bounded queue drained by its own task.
    A full queue calls ``overflow`` (the server disconnects the subscriber)."""

    def __init__(self, writer: asyncio.StreamWriter, caller: Caller, limit: int,
                 overflow: Callable[[_Subscriber], None]):
        self.caller = caller
        self._writer = writer
        self._limit = limit
        self._overflow = overflow
        self._queue: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._task = asyncio.get_running_loop().create_task(self._pump())

    def offer(self, line: bytes) -> None:
        if len(self._queue) >= self._limit:
            self._overflow(self)
            return
        self._queue.append(line)
        self._ready.set()

    def stop(self) -> int:
        """End the pump and the connection; returns how many events it never got."""
        missed = len(self._queue) + 1
        self._queue.clear()
        self._task.cancel()
        self._writer.transport.abort()  # frees the transport's buffer now, not at a drain
        return missed

    async def _pump(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    self._writer.write(self._queue.popleft())
                    await self._writer.drain()  # a slow reader stalls only this task


class _EventLogHandler(logging.Handler):
    """Forwards log records as ``log`` events: time, level, tunnel (the ``extra`` the engine
    passes) and message. The helper never logs key material, so there is nothing to filter."""

    def __init__(self, server: ControlServer, level: int):
        super().__init__(level)
        self._server = server
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return  # a record logged while forwarding another: would recurse
        self._local.busy = True
        try:
            tunnel = getattr(record, "tunnel", "")
            self._server.publish("log", {
                "time": record.created,
                "level": record.levelname,
                "tunnel": tunnel if isinstance(tunnel, str) else str(tunnel),
                "message": record.getMessage()[:LOG_MESSAGE_LIMIT],
            })
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


def _release_free_memory() -> None:
    """Hand freed heap pages back to the system. The buffers of many dropped subscribers are
    freed, but glibc keeps such pages mapped (they are not at the top of the heap), so without
    this the helper's RSS stays at its peak for good. Not glibc: nothing to do."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int]:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _group_id(group: str | None) -> int | None:
    if not group:
        log.warning("no group configured: the control socket is root-only (mode 0600)")
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning(
            "group %r does not exist: the control socket is root-only (mode 0600); create the "
            "group (groupadd %s) and restart the helper to let its members connect", group, group
        )
        return None
