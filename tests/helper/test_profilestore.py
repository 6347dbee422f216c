"""helper.profilestore: .tunseal files in a root-only directory, written atomically."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from core.errors import ProfileError, ProfileInvalid
from core.profile import Profile, ProfileSecrets, dumps
from helper.profilestore import ProfileNotFound, ProfileStore

PUB = base64.b64encode(bytes(range(32))).decode()


def profile(name: str, **changes: object) -> Profile:
    fields: dict[str, object] = {
        "addresses": ("10.77.0.2/32",),
        "endpoint": "198.51.100.7:51900",
        "public_key": PUB,
        "private_key_ref": f"{name}.private",
    }
    fields.update(changes)
    return Profile(name, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "profiles")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_directory_is_created_private_and_tightened(tmp_path: Path) -> None:
    fresh = ProfileStore(tmp_path / "a" / "profiles")
    assert fresh.directory.is_dir()
    assert mode(fresh.directory) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    ProfileStore(loose)
    assert mode(loose) == 0o700


def test_put_get_round_trip_writes_a_private_canonical_file(store: ProfileStore) -> None:
    office = profile("office", dns=("10.77.0.1",), keepalive=25)
    store.put(office)
    assert store.get("office") == office
    assert store.exists("office")
    path = store.directory / "office.tunseal"
    assert mode(path) == 0o600
    assert path.read_text() == dumps(office)
    assert "[secrets]" not in path.read_text()


def test_list_is_sorted_by_name(store: ProfileStore) -> None:
    assert store.list() == []
    for name in ("zeta", "alpha", "Mid", "beta.2"):
        store.put(profile(name))
    assert [p.name for p in store.list()] == sorted(["zeta", "alpha", "Mid", "beta.2"])


def test_put_replaces_atomically_and_leaves_no_temporary_files(store: ProfileStore) -> None:
    store.put(profile("office", mtu=1400))
    path = store.directory / "office.tunseal"
    before = os.stat(path).st_ino
    store.put(profile("office", mtu=1280))
    assert store.get("office").mtu == 1280
    assert os.stat(path).st_ino != before  # a new file renamed over the old, not rewritten
    assert sorted(p.name for p in store.directory.iterdir()) == ["office.tunseal"]


def test_an_invalid_profile_is_not_written_and_the_old_one_survives(store: ProfileStore) -> None:
    store.put(profile("office"))
    with pytest.raises(ProfileInvalid):
        store.put(profile("office", mtu=100))
    assert store.get("office") == profile("office")
    assert sorted(p.name for p in store.directory.iterdir()) == ["office.tunseal"]


def test_remove(store: ProfileStore) -> None:
    store.put(profile("office"))
    store.put(profile("home"))
    store.remove("office")
    assert not store.exists("office")
    assert [p.name for p in store.list()] == ["home"]
    with pytest.raises(ProfileNotFound) as e:
        store.get("office")
    assert isinstance(e.value, ProfileError)
    assert "office" in str(e.value)
    with pytest.raises(ProfileNotFound):
        store.remove("office")


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a/b", ".hidden", "x" * 33, "of fice"])
def test_names_that_are_not_profile_names_never_touch_the_disk(
    store: ProfileStore, tmp_path: Path, name: str
) -> None:
    (tmp_path / "passwd.tunseal").write_text(dumps(profile("passwd")))
    assert not store.exists(name)
    with pytest.raises(ProfileError, match="not a profile name"):
        store.get(name)
    with pytest.raises(ProfileError, match="not a profile name"):
        store.remove(name)
    assert (tmp_path / "passwd.tunseal").exists()


def test_a_corrupt_file_is_skipped_with_a_warning_naming_it(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(profile("good"))
    broken = store.directory / "broken.tunseal"
    broken.write_text("format = 1\n[tunnel\nname = ")
    invalid = store.directory / "invalid.tunseal"
    invalid.write_text(dumps(profile("invalid")).replace("mtu = 1408", "mtu = 12"))
    (store.directory / "binary.tunseal").write_bytes(b"\xff\xfe\x00garbage")
    (store.directory / "adir.tunseal").mkdir()
    with caplog.at_level(logging.WARNING, logger="helper.profilestore"):
        assert [p.name for p in store.list()] == ["good"]
    for name in ("broken", "invalid", "binary", "adir"):
        assert str(store.directory / f"{name}.tunseal") in caplog.text
    with pytest.raises(ProfileError):
        store.get("broken")
    with pytest.raises(ProfileInvalid):
        store.get("invalid")


def test_a_file_whose_profile_has_another_name_is_refused(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    (store.directory / "office.tunseal").write_text(dumps(profile("home")))
    with caplog.at_level(logging.WARNING, logger="helper.profilestore"):
        assert store.list() == []
    assert "office.tunseal" in caplog.text
    with pytest.raises(ProfileError, match="holds a profile named 'home'"):
        store.get("office")


def test_a_file_carrying_secrets_is_refused(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    secret = bytes(range(100, 132))
    text = dumps(profile("office"), ProfileSecrets(private_key=secret))
    (store.directory / "office.tunseal").write_text(text)
    with caplog.at_level(logging.WARNING, logger="helper.profilestore"):
        assert store.list() == []
    assert "[secrets]" in caplog.text
    assert base64.b64encode(secret).decode() not in caplog.text
    with pytest.raises(ProfileError, match=r"\[secrets\]"):
        store.get("office")


def test_a_symlink_leading_outside_the_directory_is_refused(
    store: ProfileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside.tunseal"
    outside.write_text(dumps(profile("evil")))
    (store.directory / "evil.tunseal").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="helper.profilestore"):
        assert store.list() == []
    assert "evil.tunseal" in caplog.text
    with pytest.raises(ProfileError, match="leads outside"):
        store.get("evil")
    with pytest.raises(ProfileError, match="leads outside"):
        store.put(profile("evil"))
    assert outside.read_text() == dumps(profile("evil"))
