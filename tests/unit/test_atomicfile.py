"""core/atomicfile.py: the one atomic write (issue 12 item 4). Runs as any user; the ownership
option is checked with the caller's own uid/gid, which needs no privilege."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.atomicfile import symlink_atomic, sync_dir, write_atomic


def test_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new", sync_directory=True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_mode_is_narrowed_by_the_umask_unless_exact(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "a", b"x", mode=0o644)
        write_atomic(tmp_path / "b", b"x", mode=0o644, exact_mode=True,
                     owner=(os.getuid(), os.getgid()))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644
    assert ((tmp_path / "b").stat().st_uid, (tmp_path / "b").stat().st_gid) == (
        os.getuid(), os.getgid())


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_symlink_atomic_replaces_a_file_with_a_link(tmp_path: Path) -> None:
    target = tmp_path / "resolv.conf"
    target.write_bytes(b"ours")
    symlink_atomic(target, "../run/stub.conf", temp_prefix=".resolv.conf.tunseal-")
    assert os.readlink(target) == "../run/stub.conf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resolv.conf"]


def test_sync_dir_of_a_missing_directory_is_nothing(tmp_path: Path) -> None:
    sync_dir(tmp_path / "absent")
    sync_dir(tmp_path)
