"""Writing a file so that it is either entirely old or entirely new, never half-written.

Profiles, gateway configurations and exports go through here: a temporary file next to the
target (created with ``mode``, which the umask narrows; 0o600 for anything holding a secret,
so such a file never exists with wider permissions), flushed to disk, then renamed over the
target.
"""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically. Raises OSError (nothing is left behind)."""
    target = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(target))
    tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
