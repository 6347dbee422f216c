"""The helper's request handlers: glue between validated requests and its three collaborators.

The profile store, the key store and the engine are passed in, so each handler is a few lines.
Errors are classified by where they come from: a :class:`~core.errors.TunsealError` out of the
key store is a ``keyring`` error, out of the engine an ``engine`` error, and profile problems are
``invalid_profile`` with one detail per field. No secret is ever put in a result, an event or a
log line, except the text ``export_profile`` returns when the caller asked for the secrets.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from core import noise
from core.errors import ProfileError, ProfileInvalid, TunsealError
from core.ipc import VERSION, Problem, Request, RequestError
from core.profile import (
    Profile,
    ProfileSecrets,
    dumps,
    loads,
    profile_from_dict,
    profile_to_dict,
)
from core.status import TunnelStatus
from helper.profilestore import ProfileNotFound

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ProfileStoreLike(Protocol):
    def list(self) -> list[Profile]: ...
    def get(self, name: str) -> Profile: ...
    def exists(self, name: str) -> bool: ...
    def put(self, profile: Profile) -> None: ...
    def remove(self, name: str) -> None: ...


class KeyStoreLike(Protocol):
    def get(self, ref: str) -> bytes | None: ...
    def put(self, ref: str, secret: bytes) -> None: ...
    def delete(self, ref: str) -> None: ...


class EngineLike(Protocol):
    def up(self, profile: Profile, secrets: ProfileSecrets) -> None: ...
    def down(self, name: str) -> None: ...
    def status(self, name: str) -> TunnelStatus: ...
    def running(self) -> list[str]: ...


class GatewayLike(Protocol):
    def peer_add(self, name: str, allowed_ips: list[str] | None) -> dict[str, Any]: ...
    def peer_remove(self, name: str) -> dict[str, Any]: ...
    def peer_list(self) -> dict[str, Any]: ...
    def peer_show(self, name: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request (from SO_PEERCRED), for the audit log."""

    uid: int
    pid: int


class RecentLogLike(Protocol):
    def entries(self, tunnel: str | None = None) -> list[dict[str, Any]]: ...


Notify = Callable[[str, dict[str, Any]], None]


class Service:
    """Executes requests. Thread-safe: requests that change profiles, keys or tunnels run one
    at a time; reads run concurrently."""

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
        }
        self._mutating = frozenset(self._handlers) - {
            "ping", "list_profiles", "get_profile", "export_profile", "public_key", "status",
            "peer_list", "peer_show", "recent_log",
        }

    def handle(self, request: Request, caller: Caller) -> Any:
        """The result of ``request``, or :class:`~core.ipc.RequestError`."""
        handler = self._handlers.get(request.op)
        if handler is None:
            raise RequestError(f"{request.op!r} is not handled here", code="unknown_op")
        try:
            if request.op not in self._mutating:
                return handler(**request.args)
            with self._lock:
                target = request.args.get("name", "")
                log.info("uid %d (pid %d): %s%s", caller.uid, caller.pid, request.op,
                         f" {target}" if target else "")
                return handler(**request.args)
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

    def peer_add(self, name: str, allowed_ips: list[str] | None = None) -> dict[str, Any]:
        result = self._gw().peer_add(name, allowed_ips)
        self._notify("profiles", {"change": "peer_added", "name": name})
        return result

    def peer_remove(self, name: str) -> dict[str, Any]:
        result = self._gw().peer_remove(name)
        self._notify("profiles", {"change": "peer_removed", "name": name})
        return result

    def peer_list(self) -> dict[str, Any]:
        return self._gw().peer_list()

    def peer_show(self, name: str) -> dict[str, Any]:
        return self._gw().peer_show(name)

    def restore(self) -> None:
        """Bring up every profile marked ``persist`` (the helper is starting)."""
        for profile in self._profiles.list():
            if not profile.persist:
                continue
            try:
                with self._lock:
                    self.connect(profile.name)
                log.info("brought up persisting tunnel %r", profile.name)
            except RequestError as e:
                log.error("could not bring up persisting tunnel %r: %s", profile.name, e.message)

    # --- profiles -------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return {"version": VERSION, "pid": os.getpid()}

    def list_profiles(self) -> dict[str, Any]:
        profiles = sorted(self._profiles.list(), key=lambda p: p.name)
        return {"profiles": [profile_to_dict(p) for p in profiles]}

    def get_profile(self, name: str) -> dict[str, Any]:
        return {"profile": profile_to_dict(self._get(name))}

    def add_profile(self, profile: dict[str, Any]) -> dict[str, Any]:
        new = profile_from_dict(profile)
        self._refuse_existing(new.name)
        return self._put(new, "added")

    def update_profile(self, profile: dict[str, Any]) -> dict[str, Any]:
        new = profile_from_dict(profile)
        self._get(new.name)
        return self._put(new, "updated")

    def remove_profile(self, name: str) -> dict[str, Any]:
        profile = self._get(name)
        if name in self._engine_call(self._engine.running):
            self._engine_call(self._engine.down, name)
        others = [p for p in self._profiles.list() if p.name != name]
        in_use = {ref for p in others for ref in (p.private_key_ref, p.psk_ref)}
        for ref in (profile.private_key_ref, profile.psk_ref):
            if ref and ref not in in_use:
                self._key_call(self._keys.delete, ref)
        with _classified("storage"):
            self._profiles.remove(name)
        self._notify("profiles", {"change": "removed", "name": name})
        return {}

    def import_profile(self, text: str, replace: bool = False) -> dict[str, Any]:
        profile, secrets = loads(text)
        existed = self._exists(profile.name)
        if existed and not replace:
            self._refuse_existing(profile.name)
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

    def export_profile(self, name: str, with_secrets: bool = False) -> dict[str, Any]:
        profile = self._get(name)
        secrets = None
        if with_secrets:
            loaded = self._load_secrets(profile)
            if loaded.private_key is not None or loaded.psk is not None:
                secrets = loaded
            log.warning("profile %r exported with its secrets", name)
        return {"text": dumps(profile, secrets), "with_secrets": secrets is not None}

    def set_peer_key(self, name: str, public_key: str) -> dict[str, Any]:
        return self._put(self._get(name).replace(public_key=public_key), "updated")

    # --- keys -----------------------------------------------------------------------------------

    def genkey(self, name: str) -> dict[str, Any]:
        profile = self._get(name)
        ref = profile.private_key_ref or f"{name}.private"
        private = noise.generate_private_key()
        self._key_call(self._keys.put, ref, private)
        result = self._put(profile.replace(private_key_ref=ref), "updated")
        result["public_key"] = _b64(noise.public_key(private))
        return result

    def genpsk(self, name: str) -> dict[str, Any]:
        profile = self._get(name)
        ref = profile.psk_ref or f"{name}.psk"
        self._key_call(self._keys.put, ref, os.urandom(32))
        return self._put(profile.replace(psk_ref=ref), "updated")

    def public_key(self, name: str) -> dict[str, Any]:
        profile = self._get(name)
        private = self._load_secrets(profile).private_key
        if private is None:
            raise _missing_key(profile, "private_key")
        return {"public_key": _b64(noise.public_key(private))}

    # --- tunnels --------------------------------------------------------------------------------

    def connect(self, name: str) -> dict[str, Any]:
        profile = self._get(name)
        if name not in self._engine_call(self._engine.running):
            secrets = self._load_secrets(profile)
            if profile.mode == "ephemeral" and secrets.private_key is None:
                raise _missing_key(profile, "private_key")
            if profile.psk_ref and secrets.psk is None and profile.mode != "plain":
                raise _missing_key(profile, "psk")
            self._engine_call(self._engine.up, profile, secrets)
        return {"status": self._status(name)}

    def disconnect(self, name: str) -> dict[str, Any]:
        if name in self._engine_call(self._engine.running):
            self._engine_call(self._engine.down, name)
        else:
            self._get(name)  # not running: only a known profile is a valid target
        return {"status": self._status(name)}

    def status(self, name: str | None = None) -> dict[str, Any]:
        running = self._engine_call(self._engine.running)
        if name is not None:
            if name not in running:
                self._get(name)
            names = [name]
        else:
            names = sorted({p.name for p in self._profiles.list()} | set(running))
        return {"tunnels": [self._status(n) for n in names]}

    def recent_log(self, name: str | None = None) -> dict[str, Any]:
        entries = self._recent_log.entries(name) if self._recent_log is not None else []
        return {"entries": entries}

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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
