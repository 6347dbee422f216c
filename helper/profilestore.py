"""The helper's profiles: one ``.tunseal`` file per profile in a root-only directory.

A file is ``<name>.tunseal`` holding ``core.profile.dumps(profile)``: never a ``[secrets]`` table
(keys live in the keyring, see :mod:`helper.keystore`). The directory is 0700 and each file 0600,
written atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
either the old profile or the new one. A file that does not read back as a profile is skipped by
:meth:`ProfileStore.list` with a warning naming it; :meth:`ProfileStore.get` raises instead.

Next to each profile, ``<name>.owner`` holds the uid of the user who created or imported it
(``{"uid": 1000}``), written the same way. Only the owner and root may read its secrets, change
it, its keys, or remove it (helper/service.py). A profile without that file (one stored before
owners were recorded) belongs to root.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core import fields
from core.atomicfile import sync_dir, write_atomic
from core.errors import ProfileError
from core.profile import Profile, dumps, load

__all__ = ["DEFAULT_DIRECTORY", "SUFFIX", "ProfileNotFound", "ProfileStore"]

log = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path("/var/lib/tunseal/profiles")
SUFFIX = ".tunseal"
OWNER_SUFFIX = ".owner"


class ProfileNotFound(ProfileError):
    """No profile of that name is stored."""

    def __init__(self, name: str, directory: Path):
        super().__init__(f"no such profile in {directory}", profile=name)


class ProfileStore:
    """Profiles kept as files in ``directory`` (created 0700 if missing, tightened if not)."""

    def __init__(self, directory: Path = DEFAULT_DIRECTORY) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._dir = directory.resolve()

    def __repr__(self) -> str:
        return f"ProfileStore({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    def list(self) -> list[Profile]:
        """Every readable profile, sorted by name; unreadable files are logged and skipped."""
        profiles = []
        for path in sorted(self._dir.glob("*" + SUFFIX)):
            try:
                profiles.append(self._read(path, path.name.removesuffix(SUFFIX)))
            except ProfileError as e:
                log.warning("skipping %s: %s", path, e)
        return sorted(profiles, key=lambda p: p.name)

    def get(self, name: str) -> Profile:
        """The profile called ``name``. Raises :class:`ProfileNotFound`, or
        :class:`~core.errors.ProfileError` if its file is not a valid profile."""
        path = self._path(name)
        if not path.exists():
            raise ProfileNotFound(name, self._dir)
        return self._read(path, name)

    def exists(self, name: str) -> bool:
        """Whether a file for ``name`` exists (a valid name is assumed, an invalid one is not)."""
        return fields.is_name(name) and self._path(name).exists()

    def put(self, profile: Profile) -> None:
        """Add ``profile``, or replace the one of the same name. Validates it first."""
        text = dumps(profile).encode("utf-8")
        target = self._path(profile.name)
        try:
            write_atomic(target, text, mode=0o600)
            sync_dir(self._dir)
        except OSError as e:
            raise ProfileError(
                f"cannot write {target}: {e.strerror or e}", profile=profile.name
            ) from e
        log.info("saved profile %r", profile.name)

    def owner(self, name: str) -> int | None:
        """The uid that owns ``name``, or None when none was recorded (root's, then)."""
        path = self._owner_path(name)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("%s is unreadable (%s): profile %r is treated as root's", path, e, name)
            return None
        uid = data.get("uid") if isinstance(data, dict) else None
        return uid if type(uid) is int and uid >= 0 else None

    def set_owner(self, name: str, uid: int) -> None:
        """Record that ``uid`` owns the profile ``name`` (written before the profile itself, so
        a profile never exists, even for a moment, with an owner it should not have)."""
        path = self._owner_path(name)
        try:
            write_atomic(path, json.dumps({"uid": uid}).encode() + b"\n", mode=0o600)
            sync_dir(self._dir)
        except OSError as e:
            raise ProfileError(f"cannot write {path}: {e.strerror or e}", profile=name) from e

    def remove(self, name: str) -> None:
        """Delete the profile called ``name``. Raises :class:`ProfileNotFound` if there is none."""
        path = self._path(name)
        try:
            path.unlink()
            self._owner_path(name).unlink(missing_ok=True)
            sync_dir(self._dir)
        except FileNotFoundError:
            raise ProfileNotFound(name, self._dir) from None
        except OSError as e:
            raise ProfileError(f"cannot remove {path}: {e.strerror or e}", profile=name) from e
        log.info("removed profile %r", name)

    def _path(self, name: str) -> Path:
        if not fields.is_name(name):
            shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
            raise ProfileError(
                f"{shown} is not a profile name; use 1-32 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                field="tunnel.name",
            )
        path = self._dir / (name + SUFFIX)
        # Names cannot hold a '/', but a planted symlink could still point elsewhere.
        if path.resolve().parent != self._dir:
            raise ProfileError(f"{path} leads outside {self._dir}; remove it", profile=name)
        return path

    def _owner_path(self, name: str) -> Path:
        path = self._path(name).with_suffix(OWNER_SUFFIX)
        if path.is_symlink():
            raise ProfileError(f"{path} is a symbolic link; remove it", profile=name)
        return path

    def _read(self, path: Path, name: str) -> Profile:
        self._path(name)  # the name rule and the containment check, for files found by list()
        profile, secrets = load(path)
        if profile.name != name:
            raise ProfileError(f"{path} holds a profile named {profile.name!r}", profile=name)
        if secrets is not None:
            raise ProfileError(
                f"{path} carries a [secrets] table; import it through the helper so the keys "
                "go to the keyring, then delete the file",
                profile=name,
            )
        return profile
