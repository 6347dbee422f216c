"""The helper's request handlers: glue between validated requests and its three collaborators.

The profile store, the key store and the engine are passed in, so each handler is a few lines.
Errors are classified by where they come from: a :class:`~core.errors.TunsealError` out of the
key store is a ``keyring`` error, out of the engine an ``engine`` error, and profile problems are
``invalid_profile`` with one detail per field. No secret is ever put in a result, an event or a
log line, except the text ``export_profile`` returns when the caller asked for the secrets.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import pwd
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from core import noise
from core.constants import Mode
from core.errors import ProfileError, ProfileInvalid, TunsealError
from core.ipc import MAX_LINE, VERSION, Problem, Request, RequestError
from core.profile import (
    Profile,
    ProfileSecrets,
    dumps,
    loads,
    profile_from_dict,
    profile_to_dict,
)
from core.status import PeerStatus, TunnelStatus
from helper import enrolment, keyrefs
from helper.profilestore import ProfileNotFound

log = logging.getLogger(__name__)

_T = TypeVar("_T")

PRIVILEGED_PORTS = 1024
"""Ports below this are bound only for root's profiles: the helper binds as root, and a group
member must not be able to make it take a port the system reserves for its own services."""
PAGE_BYTES = MAX_LINE - 4096
"""Room for profiles in one ``list_profiles`` reply, leaving space for the envelope."""


class ProfileStoreLike(Protocol):
    def list(self) -> list[Profile]: ...
    def get(self, name: str) -> Profile: ...
    def exists(self, name: str) -> bool: ...
    def put(self, profile: Profile) -> None: ...
    def remove(self, name: str) -> None: ...
    def owner(self, name: str) -> int | None: ...
    def set_owner(self, name: str, uid: int) -> None: ...


class KeyStoreLike(Protocol):
    def get(self, ref: str) -> bytes | None: ...
    def put(self, ref: str, secret: bytes) -> None: ...
    def delete(self, ref: str) -> None: ...


class EngineLike(Protocol):
    def up(self, profile: Profile, secrets: ProfileSecrets) -> None: ...
    def down(self, name: str) -> None: ...
    def status(self, name: str) -> TunnelStatus: ...
    def peer_statuses(self, name: str) -> list[PeerStatus]: ...
    def running(self) -> list[str]: ...
    def forget(self, name: str) -> None: ...
    def release_lockdown(self, name: str) -> None: ...
    def let_through(self, name: str, address: str, port: int
                    ) -> contextlib.AbstractContextManager[None]: ...
    def reconcile_lockdown(self, keep: list[Profile]) -> None: ...
    def set_lockdown(self, on: bool, *, allow_lan: bool = False) -> dict[str, Any]: ...
    def lockdown_status(self) -> dict[str, Any]: ...


class GatewayLike(Protocol):
    @property
    def name(self) -> str: ...
    def key_refs(self) -> set[str]: ...
    def peer_add(self, name: str, allowed_ips: list[str] | None,
                 public_key: str | None = None) -> dict[str, Any]: ...
    def peer_remove(self, name: str) -> dict[str, Any]: ...
    def peer_invite(self, name: str, allowed_ips: list[str] | None,
                    expires: str | None) -> dict[str, Any]: ...
    def peer_revoke(self, name: str) -> dict[str, Any]: ...
    def peer_list(self) -> dict[str, Any]: ...
    def peer_show(self, name: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request (from SO_PEERCRED): what they may do, and the audit log."""

    uid: int
    pid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


HELPER = Caller(uid=0, pid=os.getpid())
"""The helper acting on its own (bringing persisting tunnels back at start)."""


class RecentLogLike(Protocol):
    def entries(self, tunnel: str | None = None) -> list[dict[str, Any]]: ...


Notify = Callable[[str, dict[str, Any]], None]


class Service:
    """Executes requests. Thread-safe: requests that change profiles, keys or tunnels run one
    at a time; reads run concurrently.

    Every handler takes the :class:`Caller` first. Who may do what: anyone allowed on the
    socket may list, read (without secrets), add and import profiles, connect, disconnect and
    ask for status; only a profile's owner (who added or imported it) or root may export its
    secrets, change it or its keys, replace it by an import, or remove it; only root may bind a
    port below 1024 or change the gateway's peers."""

    def __init__(
        self,
        *,
        profiles: ProfileStoreLike,
        keys: KeyStoreLike,
        engine: EngineLike,
        notify: Notify,
        gateway: GatewayLike | None = None,
        recent_log: RecentLogLike | None = None,
    ):
        self._profiles = profiles
        self._keys = keys
        self._engine = engine
        self._notify = notify
        self._gateway = gateway
        self._recent_log = recent_log
        self._lock = threading.RLock()
        self._handlers: dict[str, Callable[..., Any]] = {
            "ping": self.ping,
            "list_profiles": self.list_profiles,
            "get_profile": self.get_profile,
            "add_profile": self.add_profile,
            "update_profile": self.update_profile,
            "remove_profile": self.remove_profile,
            "import_profile": self.import_profile,
            "export_profile": self.export_profile,
            "genkey": self.genkey,
            "genpsk": self.genpsk,
            "public_key": self.public_key,
            "set_peer_key": self.set_peer_key,
            "connect": self.connect,
            "disconnect": self.disconnect,
            "status": self.status,
            "recent_log": self.recent_log,
            "peer_add": self.peer_add,
            "peer_remove": self.peer_remove,
            "peer_list": self.peer_list,
            "peer_show": self.peer_show,
            "peer_invite": self.peer_invite,
            "peer_revoke": self.peer_revoke,
            "join": self.join,
            "lockdown": self.lockdown,
            "diagnose": self.diagnose,
        }
        self._mutating = frozenset(self._handlers) - {
            "ping", "list_profiles", "get_profile", "export_profile", "public_key", "status",
            "peer_list", "peer_show", "recent_log", "diagnose",
            "join",  # takes the lock itself, after the network exchange (helper/enrolment.py)
        }

    def add_handler(self, op: str, handler: Callable[..., Any], *, mutating: bool) -> None:
        """Serve ``op`` (one of core.ipc.OPS) with ``handler(caller, **args)``: a module's
        own requests (helper/autoconnect.py registers its ops so)."""
        self._handlers[op] = handler
        if mutating:
            self._mutating = self._mutating | {op}

    def as_helper(self, op: str, **args: Any) -> Any:
        """Run ``op`` for the helper itself (autoconnect), one at a time with requests that
        change things, as restore() does."""
        with self._lock:
            return self._handlers[op](HELPER, **args)

    def handle(self, request: Request, caller: Caller) -> Any:
        """The result of ``request``, or :class:`~core.ipc.RequestError`."""
        handler = self._handlers.get(request.op)
        if handler is None:
            raise RequestError(f"{request.op!r} is not handled here", code="unknown_op")
        try:
            if request.op not in self._mutating:
                return handler(caller, **request.args)
            with self._lock:
                target = request.args.get("name", "")
                log.info("uid %d (pid %d): %s%s", caller.uid, caller.pid, request.op,
                         f" {target}" if target else "")
                return handler(caller, **request.args)
        except ProfileInvalid as e:
            raise _invalid(e.problems) from None
        except ProfileError as e:
            raise _invalid([e]) from None

    # --- gateway peers (helper started with --gateway) ---------------------------------------

    def _gw(self) -> GatewayLike:
        if self._gateway is None:
            raise RequestError("this helper runs no gateway; start it with "
                               "'tunseal-helper --gateway CONFIG'", code="not_found")
        return self._gateway

    def peer_add(self, caller: Caller, name: str, allowed_ips: list[str] | None = None,
                 public_key: str | None = None) -> dict[str, Any]:
        gw = self._gw()
        _require_root(caller, f"add a peer to gateway {gw.name!r} (it creates the peer's keys "
                      "and returns them)")
        result = gw.peer_add(name, allowed_ips, public_key)
        self._notify("profiles", {"change": "peer_added", "name": name})
        return result

    def peer_remove(self, caller: Caller, name: str) -> dict[str, Any]:
        gw = self._gw()
        _require_root(caller, f"remove a peer of gateway {gw.name!r}")
        result = gw.peer_remove(name)
        self._notify("profiles", {"change": "peer_removed", "name": name})
        return result

    def peer_invite(self, caller: Caller, name: str, allowed_ips: list[str] | None = None,
                    expires: str | None = None) -> dict[str, Any]:
        gw = self._gw()
        _require_root(caller, f"invite a peer to gateway {gw.name!r}")
        return gw.peer_invite(name, allowed_ips, expires)

    def peer_revoke(self, caller: Caller, name: str) -> dict[str, Any]:
        gw = self._gw()
        _require_root(caller, f"revoke a peer of gateway {gw.name!r}")
        result = gw.peer_revoke(name)
        self._notify("profiles", {"change": "peer_removed", "name": name})
        return result

    def join(self, caller: Caller, invitation: str, name: str | None = None) -> dict[str, Any]:
        """``tunseal join``: enrol with a gateway by an invitation, then store the profile
        with the key pair made here (helper/enrolment.py)."""
        return enrolment.join(self, caller, invitation, name)

    def store_joined(self, caller: Caller, profile: Profile, private_key: bytes
                     ) -> dict[str, Any]:
        """Store a profile made by ``join`` and its private key, as ``caller``'s."""
        with self._lock:
            new = self._admissible(caller, profile)
            self._refuse_existing(new.name)
            self._claim(caller, new.name)
            self._key_call(self._keys.put, new.private_key_ref, private_key)
            return self._put(new, "added")

    def join_key(self, invitation_id: str) -> bytes:
        ref = keyrefs.join_ref(invitation_id)
        kept = self._key_call(self._keys.get, ref)
        if kept is not None:
            return kept
        private = noise.generate_private_key()
        self._key_call(self._keys.put, ref, private)
        return private

    def outer_pass(self, invitation_id: str, address: str, port: int
                   ) -> contextlib.AbstractContextManager[None]:
        return self._engine.let_through(f"join:{invitation_id}", address, port)

    def forget_join_key(self, invitation_id: str) -> None:
        self._key_call(self._keys.delete, keyrefs.join_ref(invitation_id))

    def check_new_name(self, name: str) -> None:
        """Refuse a profile name that is taken or reserved, before anything is done for it."""
        self._refuse_reserved(name)
        self._refuse_existing(name)

    def peer_list(self, caller: Caller, after: str | None = None) -> dict[str, Any]:
        """One page of the gateway's peers, sorted by name, after ``after`` (paged like
        list_profiles); the open invitations come with the first page."""
        listing = self._gw().peer_list()
        rest = {k: v for k, v in listing.items() if k != "peers"}
        if after is not None:
            rest["invitations"] = []
        peers = sorted(listing["peers"], key=lambda p: str(p["name"]))
        page = _page("peers", [(str(p["name"]), functools.partial(dict, p)) for p in peers],
                     after, PAGE_BYTES - _size(rest))
        return {**rest, **page}

    def peer_show(self, caller: Caller, name: str) -> dict[str, Any]:
        return self._gw().peer_show(name)

    def restore(self) -> None:
        """Bring up every profile marked ``persist`` (the helper is starting). First the
        lockdown left by an earlier run is reconciled: kept for ``always`` and for the persisting
        profiles in lockdown (so it never lapses while they come back), removed otherwise."""
        persisting = [p for p in self._profiles.list() if p.persist]
        try:
            with self._lock:
                self._engine.reconcile_lockdown(persisting)
        except TunsealError as e:
            log.error("could not reconcile the lockdown: %s", e)
        for profile in persisting:
            try:
                with self._lock:
                    self.connect(HELPER, profile.name)
                log.info("brought up persisting tunnel %r", profile.name)
            except RequestError as e:
                log.error("could not bring up persisting tunnel %r: %s", profile.name, e.message)

    # --- profiles -------------------------------------------------------------------------------

    def ping(self, caller: Caller) -> dict[str, Any]:
        return {"version": VERSION, "pid": os.getpid()}

    def list_profiles(self, caller: Caller, after: str | None = None) -> dict[str, Any]:
        """One page of profiles, sorted by name, starting after ``after``: as many as fit in
        one reply. ``next`` names the last one when more follow (pass it as ``after``); a
        profile too large for any reply is named in ``omitted`` instead."""
        profiles = sorted(self._profiles.list(), key=lambda p: p.name)
        return _page("profiles", [(p.name, functools.partial(profile_to_dict, p))
                                  for p in profiles], after)

    def get_profile(self, caller: Caller, name: str) -> dict[str, Any]:
        return {"profile": profile_to_dict(self._get(name))}

    def add_profile(self, caller: Caller, profile: dict[str, Any]) -> dict[str, Any]:
        new = self._admissible(caller, profile_from_dict(profile))
        self._refuse_existing(new.name)
        self._claim(caller, new.name)
        return self._put(new, "added")

    def update_profile(self, caller: Caller, profile: dict[str, Any]) -> dict[str, Any]:
        new = self._admissible(caller, profile_from_dict(profile))
        self._get(new.name)
        self._require_owner(caller, new.name, "change it")
        return self._put(new, "updated")

    def remove_profile(self, caller: Caller, name: str) -> dict[str, Any]:
        self._refuse_reserved(name)
        if not self._exists(name):
            self._get(name)  # not_found
        # Not read first: a file this version no longer accepts (say, a low-order peer key)
        # must still be removable, and nothing below needs its contents.
        self._require_owner(caller, name, "remove it")
        if name in self._engine_call(self._engine.running):
            self._engine_call(self._engine.down, name)
        for ref in self._own_refs(name):
            self._key_call(self._keys.delete, ref)
        with _classified("storage"):
            self._profiles.remove(name)
        self._engine_call(self._engine.forget, name)
        self._notify("profiles", {"change": "removed", "name": name})
        return {}

    def import_profile(self, caller: Caller, text: str, replace: bool = False) -> dict[str, Any]:
        parsed, secrets = loads(text)
        profile = self._admissible(caller, parsed)
        existed = self._exists(profile.name)
        if existed and not replace:
            self._refuse_existing(profile.name)
        if existed:
            self._require_owner(caller, profile.name, "replace it")
        else:
            self._claim(caller, profile.name)
        stored = []
        if secrets is not None:
            for key, value, ref in (
                ("private_key", secrets.private_key, profile.private_key_ref),
                ("psk", secrets.psk, profile.psk_ref),
            ):
                if value is not None:
                    self._key_call(self._keys.put, ref, value)
                    stored.append(key)
        result = self._put(profile, "updated" if existed else "added")
        result["stored_secrets"] = stored
        return result

    def export_profile(self, caller: Caller, name: str,
                       with_secrets: bool = False) -> dict[str, Any]:
        profile = self._get(name)
        secrets = None
        if with_secrets:
            self._require_owner(caller, name, "export its secret keys")
            loaded = self._load_secrets(profile)
            if loaded.private_key is not None or loaded.psk is not None:
                secrets = loaded
            log.warning("profile %r exported with its secrets (uid %d)", name, caller.uid)
        return {"text": dumps(profile, secrets), "with_secrets": secrets is not None}

    def set_peer_key(self, caller: Caller, name: str, public_key: str) -> dict[str, Any]:
        profile = self._get(name)
        self._require_owner(caller, name, "change its peer key")
        return self._put(profile.replace(public_key=public_key), "updated")

    # --- keys -----------------------------------------------------------------------------------

    def genkey(self, caller: Caller, name: str) -> dict[str, Any]:
        profile = self._get(name)
        self._require_owner(caller, name, "give it a new key")
        ref = keyrefs.profile_ref(name, "private")
        private = noise.generate_private_key()
        self._key_call(self._keys.put, ref, private)
        result = self._put(profile.replace(private_key_ref=ref), "updated")
        result["public_key"] = _b64(noise.public_key(private))
        return result

    def genpsk(self, caller: Caller, name: str) -> dict[str, Any]:
        profile = self._get(name)
        self._require_owner(caller, name, "give it a new pre-shared key")
        ref = keyrefs.profile_ref(name, "psk")
        self._key_call(self._keys.put, ref, os.urandom(32))
        return self._put(profile.replace(psk_ref=ref), "updated")

    def public_key(self, caller: Caller, name: str) -> dict[str, Any]:
        profile = self._get(name)
        private = self._load_secrets(profile).private_key
        if private is None:
            raise _missing_key(profile, "private_key")
        return {"public_key": _b64(noise.public_key(private))}

    # --- key names from before the helper chose them ------------------------------------------

    def migrate_key_refs(self) -> list[str]:
        """Give every stored profile the helper's own key names (keyrefs), copying each key
        it had to its new name. A key named like one of the gateway's is not copied: that was
        a profile reaching into the gateway's keyring items. Old items are left in place (a
        gateway not running in this helper may still use them). Returns one line per change."""
        done: list[str] = []
        gateway_refs = self._gateway.key_refs() if self._gateway is not None else set()
        for profile in self._profiles.list():
            new = keyrefs.normalised(profile)
            if new == profile:
                continue
            try:
                for old, ref in ((profile.private_key_ref, new.private_key_ref),
                                 (profile.psk_ref, new.psk_ref)):
                    if old == ref:
                        continue
                    if old in gateway_refs:
                        done.append(f"profile {profile.name!r}: keys item {old!r} is the "
                                    "gateway's; not copied (generate or import a key)")
                        continue
                    value = self._keys.get(old)
                    if value is not None and self._keys.get(ref) is None:
                        self._keys.put(ref, value)
                    done.append(f"profile {profile.name!r}: key {old!r} is now {ref!r}")
                self._profiles.put(new)
            except TunsealError as e:
                log.error("profile %r keeps its old key names for now: %s", profile.name, e)
        for line in done:
            log.warning("key names: %s", line)
        return done

    # --- tunnels --------------------------------------------------------------------------------

    def connect(self, caller: Caller, name: str) -> dict[str, Any]:
        self._refuse_reserved(name)
        profile = self._get(name)
        if name not in self._engine_call(self._engine.running):
            secrets = self._load_secrets(profile)
            if Mode(profile.mode).uses_static_keys and secrets.private_key is None:
                raise _missing_key(profile, "private_key")
            if profile.psk_ref and secrets.psk is None and Mode(profile.mode).sealed:
                raise _missing_key(profile, "psk")
            self._engine_call(self._engine.up, profile, secrets)
        return {"status": self._status(name)}

    def disconnect(self, caller: Caller, name: str) -> dict[str, Any]:
        self._refuse_reserved(name)
        if name in self._engine_call(self._engine.running):
            self._engine_call(self._engine.down, name)
        else:
            self._get(name)  # not running: only a known profile is a valid target
            self._engine_call(self._engine.forget, name)  # a failed start's error, if any
            # Its lockdown may outlive it (a persist profile that failed to come back).
            self._engine_call(self._engine.release_lockdown, name)
        return {"status": self._status(name)}

    def lockdown(self, caller: Caller, action: str, allow_lan: bool = False) -> dict[str, Any]:
        """``tunseal lockdown on|off|status`` (docs/LOCKDOWN.md)."""
        if action == "status":
            return self._engine_call(self._engine.lockdown_status)
        if action == "off":
            return self._engine_call(self._engine.set_lockdown, False)
        if action != "on":
            raise RequestError(f"lockdown: {action!r} is not an action; use on, off or status",
                               code="bad_args")
        if not self._usable_profiles():
            raise RequestError(
                "refusing to turn lockdown 'always' on: no profile here can bring a tunnel up "
                "(none has an endpoint and its keys), so this machine would have no way out; "
                "import or finish a profile first ('tunseal import FILE')", code="refused")
        return self._engine_call(lambda: self._engine.set_lockdown(True, allow_lan=allow_lan))

    def _usable_profiles(self) -> list[str]:
        """Profiles that could bring a tunnel up: an endpoint, and every key they need."""
        out = []
        for profile in self._profiles.list():
            if not profile.endpoint:
                continue
            secrets = self._load_secrets(profile)
            if Mode(profile.mode).uses_static_keys and (secrets.private_key is None
                                               or not profile.public_key):
                continue
            if Mode(profile.mode).needs_psk and secrets.psk is None:
                continue
            out.append(profile.name)
        return out

    def status(self, caller: Caller, name: str | None = None,
               after: str | None = None, peers: bool = False) -> dict[str, Any]:
        """The named tunnel, or a page of every profile's and running tunnel's status (paged
        like list_profiles). With ``peers``, the named tunnel with a page of its peers after
        the peer ``after`` (a gateway's status lists at most PEERS_INLINE by itself)."""
        if peers and name is None:
            raise RequestError("status: 'peers' needs the tunnel's 'name'", code="bad_args")
        running = self._engine_call(self._engine.running)
        if name is not None:
            if name not in running:
                self._get(name)
            if not peers:
                return {"tunnels": [self._status(name)], "next": None, "omitted": []}
            st = {**self._status(name), "peers": []}
            entries = self._engine_call(self._engine.peer_statuses, name)
            page = _page("peers", [(p.name, p.to_dict) for p in entries], after,
                         PAGE_BYTES - _size(st))
            st["peers"] = page["peers"]
            return {"tunnels": [st], "next": page["next"], "omitted": page["omitted"]}
        names = sorted({p.name for p in self._profiles.list()} | set(running))
        return _page("tunnels", [(n, functools.partial(self._status, n)) for n in names], after)

    def recent_log(self, caller: Caller, name: str | None = None) -> dict[str, Any]:
        entries = self._recent_log.entries(name) if self._recent_log is not None else []
        return {"entries": entries}

    def diagnose(self, caller: Caller, name: str | None = None) -> dict[str, Any]:
        """tunseal doctor's privileged checks (helper/diagnose.py, docs/DOCTOR.md)."""
        from helper import diagnose

        return {"checks": diagnose.for_service(self._profiles, self._keys, self._engine, name)}

    # --- helpers --------------------------------------------------------------------------------

    def _status(self, name: str) -> dict[str, Any]:
        return self._engine_call(self._engine.status, name).to_dict()

    def _get(self, name: str) -> Profile:
        try:
            return self._profiles.get(name)
        except ProfileNotFound:
            raise RequestError(f"there is no profile {name!r}", code="not_found") from None

    def _exists(self, name: str) -> bool:
        return self._profiles.exists(name)

    def _reserved(self) -> frozenset[str]:
        return frozenset({self._gateway.name}) if self._gateway is not None else frozenset()

    def _refuse_reserved(self, name: str) -> None:
        if name in self._reserved():
            raise RequestError(
                f"{name!r} is this helper's gateway tunnel, not a profile: it is started and "
                "stopped with the helper (systemctl restart tunseal-helper); choose another "
                "name for a profile",
                code="denied",
            )

    def _admissible(self, caller: Caller, profile: Profile) -> Profile:
        """``profile`` as the helper will store it for ``caller``: its name not reserved, a
        privileged port only for root, and key refs named by the helper (keyrefs)."""
        self._refuse_reserved(profile.name)
        port = profile.listen_port
        if 0 < port < PRIVILEGED_PORTS and not caller.is_root:
            raise RequestError(
                f"profile {profile.name!r}: interface.listen_port {port} is below "
                f"{PRIVILEGED_PORTS}, and only root may make the helper bind such a port; "
                f"choose {PRIVILEGED_PORTS}-65535, or ask an administrator to add the profile",
                code="denied",
            )
        return keyrefs.normalised(profile)

    def _claim(self, caller: Caller, name: str) -> None:
        """Make ``caller`` the owner of the new profile ``name``, and make sure no key left
        under its names (by a profile of that name whose removal failed half-way) carries
        over to it. Those names are this profile's alone: no other profile has them, and a
        gateway's cannot be spelled so (keyrefs)."""
        for kind in keyrefs.KINDS:
            self._key_call(self._keys.delete, keyrefs.profile_ref(name, kind))
        with _classified("storage"):
            self._profiles.set_owner(name, caller.uid)

    def _require_owner(self, caller: Caller, name: str, action: str) -> None:
        if caller.is_root:
            return
        owner = self._profiles.owner(name)
        if owner == caller.uid:
            return
        who = _user(owner) if owner is not None else "root (it was stored before Tunseal " \
            "recorded owners)"
        only = _user(owner).split(" (")[0] if owner is not None else "root"
        raise RequestError(
            f"profile {name!r} belongs to {who}: only {only} or root may {action}; you may "
            "connect and disconnect it",
            code="denied",
        )

    def _own_refs(self, name: str) -> list[str]:
        """The keyring items removing profile ``name`` deletes: its own names (keyrefs),
        whether or not its [keys] still names them; never one the gateway uses (a gateway's
        names cannot be spelled like a profile's, but what is in use is not deleted)."""
        candidates = {keyrefs.profile_ref(name, kind) for kind in keyrefs.KINDS}
        if self._gateway is not None:
            candidates -= self._gateway.key_refs()
        return sorted(candidates)

    def _refuse_existing(self, name: str) -> None:
        if self._exists(name):
            raise RequestError(
                f"a profile named {name!r} already exists; remove it first or choose another name",
                code="exists",
            )

    def _put(self, profile: Profile, change: str) -> dict[str, Any]:
        with _classified("storage"):
            self._profiles.put(profile)
        self._notify("profiles", {"change": change, "name": profile.name})
        return {"profile": profile_to_dict(profile)}

    def _load_secrets(self, profile: Profile) -> ProfileSecrets:
        def load(ref: str) -> bytes | None:
            return self._key_call(self._keys.get, ref) if ref else None

        return ProfileSecrets(load(profile.private_key_ref), load(profile.psk_ref))

    def _key_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        with _classified("keyring"):
            return fn(*args)

    def _engine_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        with _classified("engine"):
            return fn(*args)


@contextmanager
def _classified(code: str) -> Iterator[None]:
    """Turn a collaborator's TunsealError into a RequestError with ``code``."""
    try:
        yield
    except RequestError:
        raise
    except ProfileInvalid as e:  # put() validates first
        raise _invalid(e.problems) from None
    except TunsealError as e:
        raise RequestError(str(e), code=code) from None


def _invalid(problems: list[ProfileError]) -> RequestError:
    details = tuple(Problem(p.field or "", p.reason) for p in problems)
    message = "; ".join(f"{d.field}: {d.message}" if d.field else d.message for d in details)
    return RequestError(message or "invalid profile", code="invalid_profile", details=details)


def _missing_key(profile: Profile, key: str) -> RequestError:
    ref = profile.private_key_ref if key == "private_key" else profile.psk_ref
    command = "genkey" if key == "private_key" else "genpsk"
    where = f"the keyring has no item {ref!r}" if ref else f"keys.{key} is not set"
    # details names the missing key, so a client can offer to generate it without parsing
    # the message.
    return RequestError(
        f"profile {profile.name!r} has no {key.replace('_', ' ')}: {where}; create one with "
        f"'tunseal {command} {profile.name}' or import it",
        code="not_found",
        details=(Problem(f"keys.{key}", where),),
    )


def _size(obj: object) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


def _page(key: str, items: list[tuple[str, Callable[[], dict[str, Any]]]],
          after: str | None, budget: int = PAGE_BYTES) -> dict[str, Any]:
    """``{key: [...], "next": ..., "omitted": [...]}``: the entries of ``items`` (sorted by
    name; each built only when reached) after ``after``, as many as fit in ``budget`` bytes
    (one reply's room, less what else the reply carries)."""
    page: list[dict[str, Any]] = []
    omitted: list[str] = []
    used = 0
    last = None
    for name, build in items:
        if after is not None and name <= after:
            continue
        entry = build()
        size = _size(entry) + 1
        if size > budget:
            omitted.append(name)
        elif used + size > budget:
            return {key: page, "next": last, "omitted": omitted}
        else:
            page.append(entry)
            used += size
        last = name
    return {key: page, "next": None, "omitted": omitted}


def _require_root(caller: Caller, action: str) -> None:
    if not caller.is_root:
        raise RequestError(f"only root may {action}; ask an administrator", code="denied")


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
