"""Replacing a file so that it is either entirely old or entirely new, never half-written.

Every file Tunseal writes goes through here (profiles, gateway configurations, exports, the
helper's records, its lockdown state, resolv.conf): a temporary file next to the target
(created with ``mode``, which the umask narrows; 0o600 for anything holding a secret, so such a
file never exists with wider permissions), flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import os


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    exact_mode: bool = False,
    sync_directory: bool = False,
    temp_prefix: str | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically. Raises OSError (nothing is left behind).

    ``exact_mode`` sets ``mode`` regardless of the umask and ``owner`` (uid, gid) chowns the
    new file before it takes the target's place: for a system file whose mode and owner must
    survive (resolv.conf). ``sync_directory`` also fsyncs the directory, so the rename itself
    survives a crash (the helper's records). The temporary file is named ``temp_prefix``
    (default ``.<name>.``) plus a random part and ``.tmp``, so a caller can find what a crash
    between write and rename left behind."""
    target = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(target))
    prefix = f".{base}." if temp_prefix is None else temp_prefix
    tmp = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if exact_mode:
                os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_directory:
        sync_dir(directory)


def symlink_atomic(path: str | os.PathLike[str], link: str, *, temp_prefix: str) -> None:
    """Replace ``path`` with a symbolic link to ``link`` atomically (a resolv.conf that was a
    link before Tunseal replaced it). Raises OSError."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f"{temp_prefix}{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(link, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, so that the entries created, renamed or removed in it are on disk.
    A directory that does not exist has nothing to sync."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
