"""Enrolment in the helper: the gateway's invitations and registrar, and the laptop's join.

Gateway side. ``tunseal peer invite NAME`` issues an invitation (core/invitation.py): the text
goes to the admin, and the gateway keeps, in ``<config>.invitations.json`` next to its
configuration (0600, rewritten atomically), only what verifying needs: the invitation's ID,
peer name, allowed IPs, expiry, and the *public* half of the key its secret seeds. No secret of
any kind is stored: a copy of the file cannot forge an enrolment. An invitation is burnt in that
file (``state = "used"``, with the laptop's public key and its newest timestamp) before the peer
is registered, so a restart never revives it. :class:`GatewayRegistrar` answers ENROL packets
(core/enrol.py); registering a peer (configuration file, routes) runs on a worker thread, which
sends the reply itself.

Laptop side. :func:`enrol` runs the exchange over UDP from the helper's own namespace;
:func:`profile_for` makes the profile. The private key is generated here, in the helper, and
goes only into the keyring (helper/service.py ``join``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from core import invitation as invitation_format
from core.atomicfile import write_atomic
from core.enrol import Accepted, Attempt, Code, Enrolment, Verdict, reply_index
from core.errors import TunsealError
from core.invitation import Invitation
from core.ipc import Problem, RequestError
from core.profile import Profile
from helper import hostlookup, keyrefs
from helper.transport import mark_socket

log = logging.getLogger(__name__)

MAX_OPEN = 1024
"""Open invitations one gateway keeps at most (each is a few hundred bytes in the file)."""
JOIN_TIMEOUT = 15.0
JOIN_RETRY = 1.0


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Record:
    """One invitation as the gateway keeps it: nothing here is secret."""

    id: str
    name: str
    allowed_ips: tuple[str, ...]
    created: int
    expires: int
    verify_key: str
    state: str = "open"
    """open | used | withdrawn"""
    used_by: str = ""
    used_at: int = 0
    timestamp: str = ""
    """The newest TAI64N timestamp accepted for it (hex): a replayed ENROL is older."""


class InvitationStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                for item in raw.get("invitations", []):
                    item["allowed_ips"] = tuple(item.get("allowed_ips", ()))
                    rec = Record(**item)
                    self._records[rec.id] = rec
            except (OSError, ValueError, TypeError) as e:
                raise TunsealError(f"cannot read the invitations in {path}: {e}") from None

    def _save(self) -> None:
        data = {"format": 1, "invitations": [
            {**asdict(r), "allowed_ips": list(r.allowed_ips)} for r in self._records.values()]}
        write_atomic(self.path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)

    def issue(self, name: str, allowed_ips: tuple[str, ...], lifetime: int) -> tuple[Record, bytes]:
        """A new open invitation and its secret (returned once, never stored)."""
        now = int(self._clock())
        secret = invitation_format.new_secret()
        rec = Record(id=invitation_format.new_id().hex(), name=name, allowed_ips=allowed_ips,
                     created=now, expires=now + lifetime,
                     verify_key=_b64(invitation_format.verify_key(secret)))
        with self._lock:
            self._expire_old(now)
            if sum(r.state == "open" for r in self._records.values()) >= MAX_OPEN:
                raise TunsealError(f"{MAX_OPEN} invitations are open already; withdraw some")
            self._records[rec.id] = rec
            self._save()
        return rec, secret

    def _expire_old(self, now: int) -> None:
        """Forget open invitations expired a week ago (used ones stay: they prove a burn)."""
        for key, r in list(self._records.items()):
            if r.state == "open" and r.expires < now - 7 * 86400:
                del self._records[key]

    def get(self, inv_id: str) -> Record | None:
        with self._lock:
            return self._records.get(inv_id)

    def update(self, rec: Record) -> None:
        with self._lock:
            self._records[rec.id] = rec
            self._save()

    def open_for(self, name: str) -> list[Record]:
        with self._lock:
            return [r for r in self._records.values() if r.name == name and r.state == "open"]

    def withdraw(self, name: str) -> list[str]:
        """Withdraw every open invitation for peer ``name`` (revoke); their IDs."""
        with self._lock:
            ids = [r.id for r in self._records.values() if r.name == name and r.state == "open"]
            for i in ids:
                self._records[i] = replace(self._records[i], state="withdrawn")
            if ids:
                self._save()
        return ids

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records.values())


class GatewayLike(Protocol):
    @property
    def name(self) -> str: ...
    def enrol_peer(self, name: str, public_key: str, allowed_ips: tuple[str, ...]) -> None: ...
    def accepted_for(self, name: str, public_key: str) -> Accepted | None: ...


Send = Callable[[bytes, bytes], None]


class GatewayRegistrar:
    """core.enrol.Registrar for a running gateway: decides from the store, registers on a
    worker thread. Logs every verdict with the invitation ID and peer name, never a key."""

    def __init__(self, store: InvitationStore, gateway: GatewayLike, send: Send,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._gateway = gateway
        self._send = send
        self._clock = clock
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self.workers: list[threading.Thread] = []

    def _refuse(self, code: Code, what: str, detail: str = "") -> Verdict:
        log.warning("gateway %s: enrolment refused (%s): %s", self._gateway.name,
                    code.name.lower(), what)
        return Verdict(code, detail=detail)

    def decide(self, e: Enrolment) -> Verdict | None:
        inv_id = e.invitation_id.hex()
        rec = self._store.get(inv_id)
        if rec is None:
            return self._refuse(Code.UNKNOWN, f"invitation {inv_id} was never issued here")
        where = f"invitation {inv_id} for peer {rec.name!r}"
        if not e.proves(base64.b64decode(rec.verify_key)):
            return self._refuse(Code.BAD_SECRET, f"{where}: the request does not prove the "
                                "invitation's secret (an altered or forged invitation)")
        if rec.state == "withdrawn":
            return self._refuse(Code.UNKNOWN, f"{where} was withdrawn")
        public = _b64(e.public_key)
        if rec.state == "used":
            if rec.used_by != public:
                return self._refuse(Code.USED, f"{where} was already used, by another key")
            if e.timestamp.hex() <= rec.timestamp:
                return self._refuse(Code.REPLAY, f"{where}: a replayed or older enrolment")
            # The same laptop again (its first answer was lost): answer as the first time.
            self._store.update(replace(rec, timestamp=e.timestamp.hex()))
            accepted = self._gateway.accepted_for(rec.name, public)
            if accepted is None:
                return self._refuse(Code.FAILED, f"{where}: the peer is gone",
                                    "the peer this invitation made no longer exists")
            return Verdict(Code.ACCEPTED, accepted)
        if rec.expires <= self._clock():
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.expires))
            return self._refuse(Code.EXPIRED, f"{where} expired at {when}", f"at {when}")
        with self._lock:
            if inv_id in self._pending:
                return None  # the first request's worker answers; the laptop keeps waiting
            self._pending.add(inv_id)
        worker = threading.Thread(target=self._register, args=(e, rec), daemon=True,
                                  name=f"enrol-{inv_id}")
        self.workers = [w for w in self.workers if w.is_alive()] + [worker]
        worker.start()
        return None

    def _register(self, e: Enrolment, rec: Record) -> None:
        public = _b64(e.public_key)
        where = f"invitation {rec.id} for peer {rec.name!r}"
        try:
            # Burnt first, and on disk: whatever happens next, it is never good again.
            self._store.update(replace(rec, state="used", used_by=public,
                                       used_at=int(self._clock()), timestamp=e.timestamp.hex()))
            try:
                self._gateway.enrol_peer(rec.name, public, rec.allowed_ips)
                accepted = self._gateway.accepted_for(rec.name, public)
                if accepted is None:
                    raise TunsealError("the peer was not registered")
                verdict = Verdict(Code.ACCEPTED, accepted)
                log.info("gateway %s: %s used: peer %s registered (%s)", self._gateway.name,
                         where, rec.name, ", ".join(rec.allowed_ips))
            except TunsealError as err:
                verdict = self._refuse(Code.FAILED, f"{where}: {err}", str(err)[:200])
            self._send(e.answer(verdict), e.source)
        except Exception:
            log.exception("gateway %s: enrolment with %s failed", self._gateway.name, where)
        finally:
            with self._lock:
                self._pending.discard(rec.id)


# --- the laptop's side ----------------------------------------------------------------------


class JoinError(TunsealError):
    """Joining failed; ``code`` is the gateway's refusal (None: no valid answer at all)."""

    def __init__(self, message: str, code: Code | None = None):
        super().__init__(message)
        self.code = code


def enrol(inv: Invitation, static_private: bytes, *, timeout: float = JOIN_TIMEOUT,
          retry: float = JOIN_RETRY, through: Through | None = None) -> Accepted:
    """Enrol ``static_private``'s public key with the invitation's gateway over UDP; the
    gateway's settings, or JoinError saying why not. Every try is a new ENROL (new index,
    ephemeral key and timestamp); an answer to any of them counts. The socket carries the
    helper's mark, as a tunnel's do (a full tunnel's policy routing and the lockdown let such
    packets reach their endpoint outside any tunnel); ``through(address, port)`` opens the
    lockdown for the gateway's address while the exchange lasts."""
    try:
        addr = hostlookup.resolve(inv.host, inv.port)
    except hostlookup.HostLookupError as e:
        raise JoinError(f"cannot resolve the gateway's address {inv.host!r}: "
                        f"{e.reason}") from None
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    opened = through(addr[0], addr[1]) if through is not None else contextlib.nullcontext()
    with opened, socket.socket(family, socket.SOCK_DGRAM) as sock:
        mark_socket(sock)
        return _exchange(inv, static_private, sock, addr, timeout, retry)


def _exchange(inv: Invitation, static_private: bytes, sock: socket.socket, addr: Any,
              timeout: float, retry: float) -> Accepted:
    attempts: dict[int, Attempt] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        index = secrets.randbits(32) | 1
        attempt = Attempt(inv, static_private, local_index=index, now=time.time())
        attempts[index] = attempt
        try:
            sock.sendto(attempt.packet, addr)
        except OSError as e:
            raise JoinError(f"cannot send to the gateway at {inv.endpoint}: "
                            f"{e.strerror or e}") from None
        verdict = _await_reply(sock, attempts, min(deadline, time.monotonic() + retry))
        if verdict is None:
            continue
        if verdict.code != Code.ACCEPTED or verdict.accepted is None:
            raise JoinError(f"the gateway refused: {verdict.message}", verdict.code)
        return verdict.accepted
    raise JoinError(f"no answer from the gateway at {inv.endpoint} in {timeout:.0f} s: is it "
                    "reachable from here, and is the invitation for this gateway? (an "
                    "invitation whose gateway key was altered gets no answer at all)")


def _await_reply(sock: socket.socket, attempts: dict[int, Attempt],
                 until: float) -> Verdict | None:
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return None
        except OSError:  # ICMP port unreachable: keep trying until the deadline
            time.sleep(min(0.2, max(0.0, until - time.monotonic())))
            continue
        index = reply_index(data)
        attempt = attempts.get(index) if index is not None else None
        if attempt is None:
            continue
        try:
            return attempt.read_reply(data)
        except TunsealError as e:
            log.info("ignored an enrolment reply that did not authenticate: %s", e)
    return None


def profile_for(inv: Invitation, accepted: Accepted, name: str, private_key_ref: str) -> Profile:
    return Profile(
        name, mode="ephemeral", cipher=accepted.cipher, mtu=accepted.mtu,
        device_id=accepted.device_id, addresses=accepted.addresses, endpoint=inv.endpoint,
        transport=accepted.transport, public_key=_b64(inv.gateway_public),
        allowed_ips=accepted.routes, dns=accepted.dns, keepalive=accepted.keepalive,
        private_key_ref=private_key_ref)


def describe(inv: Invitation, now: float | None = None) -> dict[str, Any]:
    """What an invitation will create, for the CLI and the GUI to show before joining."""
    now = time.time() if now is None else now
    return {"gateway": inv.gateway, "endpoint": inv.endpoint, "address": inv.address,
            "gateway_public_key": _b64(inv.gateway_public), "invitation": inv.id_text,
            "expires": inv.expires, "expired": inv.expires <= now}


Through = Callable[[str, int], contextlib.AbstractContextManager[None]]


class JoinTarget(Protocol):
    """What :func:`join` needs of helper/service.py's Service."""

    def check_new_name(self, name: str) -> None: ...
    def store_joined(self, caller: Any, profile: Profile, private_key: bytes
                     ) -> dict[str, Any]: ...
    def join_key(self, invitation_id: str) -> bytes:
        """The key pair of a join with this invitation: the one an earlier, unfinished join
        kept, else a new one, kept (in the keyring) before anything is sent."""
        ...
    def forget_join_key(self, invitation_id: str) -> None: ...
    def outer_pass(self, invitation_id: str, address: str, port: int
                   ) -> contextlib.AbstractContextManager[None]:
        """Lets the join's packets to the gateway through a lockdown in force (a laptop whose
        kill switch is always on can still join), while inside."""
        ...


def join(service: JoinTarget, caller: Any, text: str, name: str | None) -> dict[str, Any]:
    """The ``join`` request: decode the invitation, make a key pair here, enrol, store."""
    try:
        inv = invitation_format.decode(text)
    except TunsealError as e:
        raise RequestError(str(e), code="bad_args") from None
    name = name or inv.gateway
    service.check_new_name(name)
    # Kept before the gateway sees it: the gateway burns the invitation for this key, so a
    # profile that cannot be stored afterwards (keyring or disk trouble, the name taken
    # meanwhile) must leave the key behind for the next try, which the gateway answers again.
    private = service.join_key(inv.id_text)
    log.info("uid %d: joining gateway %s at %s (invitation %s) as profile %r",
             getattr(caller, "uid", -1), inv.gateway, inv.endpoint, inv.id_text, name)
    try:
        accepted = enrol(inv, private, through=functools.partial(service.outer_pass,
                                                                 inv.id_text))
    except JoinError as e:
        log.warning("joining gateway %s (invitation %s) failed: %s", inv.gateway, inv.id_text,
                    e)
        if e.code is None:
            # Perhaps answered and the answer lost: the gateway may hold this key already.
            raise RequestError(str(e), code="unreachable") from None
        service.forget_join_key(inv.id_text)
        raise RequestError(str(e), code="refused",
                           details=(Problem("refusal", e.code.name.lower()),)) from None
    profile = profile_for(inv, accepted, name, keyrefs.profile_ref(name, "private"))
    try:
        result = service.store_joined(caller, profile, private)
    except TunsealError as e:
        log.warning("gateway %s accepted invitation %s but profile %r was not stored: %s",
                    inv.gateway, inv.id_text, name, e)
        raise RequestError(
            f"the gateway accepted this device, but the profile {name!r} could not be saved: "
            f"{e}. Run the same join again once that is fixed (or with another --name): this "
            "device's key was kept, and the gateway answers it again",
            code=e.code if isinstance(e, RequestError) else "storage") from None
    service.forget_join_key(inv.id_text)
    log.info("joined gateway %s as peer %s: profile %r, address %s", inv.gateway,
             accepted.peer_name, name, ", ".join(accepted.addresses))
    return {**result, "joined": describe(inv), "peer_name": accepted.peer_name}
